"""The training loop: one function you can read top to bottom.

setup (distributed, data, model, DeepSpeed, EMA, tracking) → resume → loop (forward, backward, step,
EMA after the step, log, validate, checkpoint) → export. A stop request (the pre-emption signal of a
cluster job) makes every rank save a checkpoint and return ``"preempted"``; a loss that is not
finite stops every rank with a clear error and leaves the last good checkpoint as ``latest``.
"""

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

from fmboost.config import FMBoostConfig, to_flat_dict, to_yaml
from fmboost.data import TrainStream, ValidationStream, check_compatible, make_loader, resolve_dataset
from fmboost.data.dataset import SampleTransform
from fmboost.devices import resolve_precision
from fmboost.distributed import DistributedEnv, all_ranks_agree, device_for, init_distributed, mean_over_ranks
from fmboost.errors import FMBoostError
from fmboost.first_stage import build_first_stage
from fmboost.models import FMBoostModel
from fmboost.models.ema import EMA
from fmboost.tracking import Tracker
from fmboost.training import checkpointing as ckpt
from fmboost.training.engine_setup import build_optimizer, deepspeed_config, warmup_schedule
from fmboost.training.validation import Validator

logger = logging.getLogger(__name__)


class NonFiniteLossError(FMBoostError):
    """The loss became NaN or infinite; training stopped without saving."""


@dataclass
class TrainResult:
    status: str  # "finished" or "preempted"
    step: int
    images_seen: int
    run_dir: Path
    export_dir: Path | None
    mlflow_run_id: str | None


def train(
    config: FMBoostConfig, env: DistributedEnv, stop_requested: threading.Event | None = None
) -> TrainResult:
    """Train a CFM stage as ``config`` says; resumable, and safe to call from torchrun or submitit tasks."""
    stop_requested = stop_requested or threading.Event()
    run_dir = Path(config.train.run_dir).expanduser()
    run_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ distributed + data
    device = device_for(env)
    init_distributed(env)
    train_set = resolve_dataset(config.data.train)
    manifest = train_set.manifest
    flow = config.flow
    check_compatible(
        manifest, config.model.out_channels, flow.scale_factor, config.first_stage.name, flow.upsampling
    )
    transform = SampleTransform(manifest, config.flow.upsampling, config.data.crop_size)

    # ------------------------------------------------------------------ model, DeepSpeed, EMA
    torch.manual_seed(config.train.seed)
    model = FMBoostModel.from_config(config, manifest.first_stage)
    optimizer = build_optimizer(model, config)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=warmup_schedule(optimizer, config.train.warmup_steps),
        config=deepspeed_config(config, device),
    )
    ema = None
    if env.is_main:  # the module stays fp32 under mixed precision: the EMA averages master weights
        ema = EMA(
            engine.module, config.train.ema_beta, config.train.ema_power, config.train.ema_update_after_step
        )
    loss_generator = torch.Generator().manual_seed(config.train.seed * 1000 + env.rank)

    # ------------------------------------------------------------------ resume
    state = ckpt.TrainerState(num_workers=config.data.num_workers)
    resume_from = None
    if config.train.resume == "auto":
        resume_from = ckpt.latest_checkpoint(run_dir)
    elif config.train.resume != "never":
        resume_from = Path(config.train.resume)
    if resume_from is not None:
        engine.load_checkpoint(str(resume_from.parent), tag=resume_from.name)
        state = ckpt.load_trainer_state(resume_from)
        ckpt.load_rng(resume_from, env.rank, loss_generator)
        if ema is not None:
            ema.shadow.load_state_dict(ckpt.load_ema_state(resume_from))
            ema.num_updates.fill_(state.ema_updates)
        if state.num_workers != config.data.num_workers:
            logger.warning("data.num_workers changed from %d to %d: the data order will differ from an "
                           "uninterrupted run", state.num_workers, config.data.num_workers)  # fmt: skip
        logger.info("resumed from %s at step %d (%d images seen)", resume_from, state.step, state.images_seen)

    logging_config = config.logging
    tracker = Tracker(
        run_dir, logging_config.tracking_uri, logging_config.experiment, logging_config.run_name, env.is_main
    )
    if env.is_main:
        (run_dir / "config.yaml").write_text(to_yaml(config))
        tracker.log_params(to_flat_dict(config))
        tracker.log_artifact(run_dir / "config.yaml")

    validator = None
    if env.is_main and config.data.validation:
        validation_set = resolve_dataset(config.data.validation)
        check_compatible(
            validation_set.manifest, config.model.out_channels, flow.scale_factor, upsampling=flow.upsampling
        )
        validation_transform = SampleTransform(
            validation_set.manifest, config.flow.upsampling, config.data.crop_size
        )
        stream = ValidationStream(validation_set, validation_transform, config.data.batch_size)
        first_stage = build_first_stage(config.first_stage).to(device)
        validator = Validator(make_loader(stream, 0), first_stage, config.eval, device, config.train.seed)

    stream = TrainStream(
        train_set, transform, config.data.batch_size, env.rank, env.world_size, config.train.seed,
        config.data.shuffle_buffer, start_batch=state.batches_served,
    )  # fmt: skip
    loader = make_loader(stream, config.data.num_workers)

    def save_checkpoint() -> Path:
        directory = ckpt.checkpoint_root(run_dir) / ckpt.tag_for(state.step)
        engine.save_checkpoint(str(directory.parent), tag=directory.name, save_latest=False)
        ckpt.save_rng(directory, env.rank, loss_generator)
        if env.is_main:
            state.ema_updates = int(ema.num_updates)
            ckpt.save_main_process_files(directory, state, ema.shadow.state_dict())
            ema.shadow.save_pretrained(directory / ckpt.EXPORT_DIR)
        dist.barrier()
        if env.is_main:
            ckpt.mark_complete(run_dir, directory, config.train.keep_checkpoints)
            logger.info("checkpoint %s (step %d, %d images seen)", directory, state.step, state.images_seen)
        dist.barrier()
        return directory

    # ------------------------------------------------------------------ loop
    logger.info("training %s: %d → %d steps, %d ranks, %s on %s", run_dir, state.step, config.train.max_steps,
                env.world_size, resolve_precision(config.train.precision, device), device)  # fmt: skip
    engine.train()
    global_batch = config.data.batch_size * env.world_size
    window_loss, window_micro, window_start = 0.0, 0, time.perf_counter()
    last_saved_step = state.step if resume_from is not None else -1
    status = "finished"
    batches = iter(loader)
    while state.step < config.train.max_steps:
        batch = next(batches)
        x1 = batch["x1"].to(device, non_blocking=True)
        z_up = batch["z_up"].to(device, non_blocking=True)
        loss = engine(x1, z_up, loss_generator)
        if all_ranks_agree(not torch.isfinite(loss).item(), device):
            latest = ckpt.latest_checkpoint(run_dir)
            raise NonFiniteLossError(
                f"the loss became {loss.item()} at step {state.step} (rank {env.rank}); stopping. "
                f"The last good checkpoint is {latest or 'none (no checkpoint was written yet)'}; "
                "lower train.lr or check the data, then resume"
            )
        boundary = engine.is_gradient_accumulation_boundary()
        engine.backward(loss)
        engine.step()
        state.batches_served += 1
        state.images_seen += global_batch
        window_loss, window_micro = window_loss + loss.item(), window_micro + 1
        if not boundary:
            continue
        state.step += 1
        if ema is not None:
            ema.update(engine.module)  # after the optimizer step, so the average holds the new weights

        if state.step % config.train.log_every == 0:
            elapsed = time.perf_counter() - window_start
            metrics = {
                "train/loss": mean_over_ranks(window_loss / window_micro, device),
                "train/grad_norm": float(engine.get_global_grad_norm() or 0.0),
                "train/lr": scheduler.get_last_lr()[0],
                "train/samples_per_s": window_micro * global_batch / elapsed,
                "train/images_seen": state.images_seen,
            }
            tracker.log_metrics(metrics, state.step)
            logger.info("step %d: loss %.5f, grad norm %.3f, lr %.2e, %.1f samples/s", state.step,
                        metrics["train/loss"], metrics["train/grad_norm"], metrics["train/lr"],
                        metrics["train/samples_per_s"])  # fmt: skip
            window_loss, window_micro, window_start = 0.0, 0, time.perf_counter()

        if validator is not None and state.step % config.train.validate_every == 0:
            metrics, grid = validator.run(ema.shadow, state.step, run_dir / "samples")
            tracker.log_metrics(metrics, state.step)
            tracker.log_artifact(grid, "samples")
            logger.info("step %d validation: %s", state.step, {k: round(v, 4) for k, v in metrics.items()})

        if all_ranks_agree(stop_requested.is_set(), device):
            save_checkpoint()
            status = "preempted"
            break
        if state.step % config.train.checkpoint_every == 0:
            save_checkpoint()
            last_saved_step = state.step

    # ------------------------------------------------------------------ finish
    export_dir = None
    if status == "finished":
        already_saved = last_saved_step == state.step
        directory = (
            ckpt.checkpoint_root(run_dir) / ckpt.tag_for(state.step) if already_saved else save_checkpoint()
        )
        export_dir = directory / ckpt.EXPORT_DIR
        if env.is_main:
            tracker.log_artifact(export_dir, "model")
    tracker.finish("FINISHED" if status == "finished" else "KILLED")
    logger.info("%s at step %d (%d images seen)", status, state.step, state.images_seen)
    return TrainResult(status, state.step, state.images_seen, run_dir, export_dir, tracker.run_id)
