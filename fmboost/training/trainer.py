"""The training loop: one function you can read top to bottom.

setup (distributed, data, model, DeepSpeed, EMA, tracking, validation) → resume → loop (forward,
backward, step, EMA after the step, log, validate, checkpoint) → finish (final checkpoint and export).
A stop request (the pre-emption signal of a cluster job) makes every rank save a checkpoint and return
``"preempted"``; a loss that is not finite stops every rank with a clear error and leaves the last good
checkpoint as ``latest``.
"""

import gc
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from fmboost.config import FlowConfig, FMBoostConfig, to_flat_dict, to_yaml
from fmboost.data import TrainStream, ValidationStream, make_loader
from fmboost.data.dataset import SampleTransform, resolve_for_model
from fmboost.data.shards import Manifest
from fmboost.data.streams import unwrap_worker_errors
from fmboost.devices import resolve_precision
from fmboost.distributed import DistributedEnv, all_ranks_agree, device_for, init_distributed
from fmboost.errors import FMBoostError
from fmboost.first_stage import build_first_stage
from fmboost.models import EMA, FMBoostModel
from fmboost.objectives import STUDENT_OBJECTIVES
from fmboost.tracking import Tracker
from fmboost.training.checkpointing import (
    EXPORT_DIR,
    Checkpointer,
    TrainerState,
    latest_checkpoint,
    load_trainer_state,
    new_run_id,
    saved_world_size,
)
from fmboost.training.efficiency import model_flops_utilisation, peak_flops, training_flops_per_sample
from fmboost.training.engine_setup import build_engine
from fmboost.training.hot_loop import LossWindow, StopCheck, freeze_setup_objects, memory_format
from fmboost.training.init_from import load_initial_weights
from fmboost.training.master_weights import master_weight_fragments
from fmboost.training.resume import choose_checkpoint, plan_global_batch
from fmboost.training.run_lock import RunFolderBusyError, RunFolderLock
from fmboost.training.validation import Validator
from fmboost.training.watchdog import (
    Allowances,
    Progress,
    StallReport,
    Watchdog,
    exit_after_stall,
    store_client,
)

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


def gradient_norm(module: torch.nn.Module) -> float:
    """L2 norm of all gradients: DeepSpeed reports it only from its ZeRO optimizers or when clipping."""
    norms = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


def build_validator(config: FMBoostConfig, device: torch.device) -> Validator | None:
    """Periodic validation on the held-out shards (rank 0), decoded with the first stage they record."""
    if not config.data.validation:
        return None
    dataset = resolve_for_model(config, "validation")
    transform = SampleTransform(dataset.manifest, config.flow.upsampling, config.data.crop_size)
    loader = make_loader(ValidationStream(dataset, transform, config.data.batch_size), 0)
    first_stage = build_first_stage(dataset.manifest.first_stage).to(device)
    return Validator(loader, first_stage, config.eval, device, config.train.seed)


def record_teacher(flow: FlowConfig, manifest: Manifest, initialised_from: Path | None) -> None:
    """A student records the stage it learns from (exported with it): the teacher of its pair shards,
    else the stage it was initialised from."""
    if flow.objective in STUDENT_OBJECTIVES and flow.teacher is None:
        teacher = (manifest.pairs or {}).get("teacher") or initialised_from
        flow.teacher = str(teacher) if teacher is not None else None


def stall_allowances(config: FMBoostConfig) -> Allowances:
    settings = config.train
    return Allowances(
        settings.stall_timeout_seconds,
        settings.stall_timeout_validation_seconds,
        settings.stall_timeout_checkpoint_seconds,
    )


def exit_naming_the_resume(run_dir: Path) -> Callable[[StallReport], None]:
    """What a stalled job does by default (torchrun, one process): say what stalled and how to go on."""

    def on_stall(report: StallReport) -> None:
        exit_after_stall(
            f"{report.describe()}; ending the job. Resume with the same command: "
            f"train.resume=auto continues from the last complete checkpoint in {run_dir / 'checkpoints'}"
        )

    return on_stall


def start_watchdog(
    allowances: Allowances, env: DistributedEnv, progress: Progress, on_stall: Callable[[StallReport], None]
) -> Watchdog | None:
    """A watchdog on every rank of a multi-rank job (``train.stall_timeout_seconds`` > 0)."""
    if env.world_size == 1 or allowances.step == 0:
        return None
    store = store_client(env.master_addr, env.master_port, max(5.0, allowances.step / 2))
    watchdog = Watchdog(store, env.rank, env.world_size, allowances, progress, on_stall)
    watchdog.start()
    return watchdog


def train(
    config: FMBoostConfig,
    env: DistributedEnv,
    stop_requested: threading.Event | None = None,
    on_stall: Callable[[StallReport], None] | None = None,
) -> TrainResult:
    """Train a CFM stage as ``config`` says; resumable, and safe to call from torchrun or submitit tasks.

    The run folder is locked for the life of the job: a second job in it is refused (see
    :mod:`fmboost.training.run_lock`). On several ranks a watchdog (:mod:`fmboost.training.watchdog`)
    calls ``on_stall`` when the job stalls; by default every live rank says which rank stalled and exits
    with ``STALL_EXIT_CODE``.
    """
    run_dir = Path(config.train.run_dir).expanduser()
    run_dir.mkdir(parents=True, exist_ok=True)
    device = device_for(env)
    allowances = stall_allowances(config)
    init_distributed(env, timeout_seconds=allowances.longest + 60)
    lock = RunFolderLock(run_dir)
    refusal = None
    if env.is_main:
        try:
            lock.acquire()
        except RunFolderBusyError as error:
            refusal = error
    if all_ranks_agree(refusal is not None, device):
        raise refusal or RunFolderBusyError(f"{run_dir} is in use by another training job", "train.run_dir")
    progress = Progress()
    watchdog = start_watchdog(allowances, env, progress, on_stall or exit_naming_the_resume(run_dir))
    frozen_by_caller = gc.get_freeze_count() > 0
    try:
        return train_in_run_folder(
            config, env, run_dir, device, stop_requested or threading.Event(), progress
        )
    finally:
        if watchdog is not None:
            watchdog.stop()
        if not frozen_by_caller:  # undo the hot loop's freeze; a caller that froze its heap keeps it so
            gc.unfreeze()
        lock.release()


def train_in_run_folder(
    config: FMBoostConfig,
    env: DistributedEnv,
    run_dir: Path,
    device: torch.device,
    stop_requested: threading.Event,
    progress: Progress,
) -> TrainResult:
    """The job itself, once this job holds the run folder; ``progress`` tells the watchdog how far it got."""
    settings = config.train

    # ------------------------------------------------------------------ setup: data
    train_set = resolve_for_model(config, "train")
    manifest, flow = train_set.manifest, config.flow

    # ------------------------------------------------------------------ choose the checkpoint to resume
    resume_from = choose_checkpoint(run_dir, settings.resume, env.rank, env.world_size)
    saved = load_trainer_state(resume_from) if resume_from is not None else None
    saved_ranks = saved_world_size(resume_from, saved) if saved is not None else env.world_size
    if saved is not None:
        plan = plan_global_batch(
            config.data.batch_size,
            saved_ranks,
            saved.grad_accum,
            env.world_size,
            settings.grad_accum,
            settings.keep_global_batch,
        )
        settings.grad_accum = plan.grad_accum
        if plan.message:
            logger.warning(plan.message)

    # ------------------------------------------------------------------ setup: model, DeepSpeed, EMA
    torch.manual_seed(settings.seed)
    model = FMBoostModel.from_config(config, manifest.first_stage)
    initialised_from = None
    if settings.init_from:  # a resume below replaces these weights with the run's own checkpoint
        initialised_from = load_initial_weights(model, settings.init_from)
        logger.info("initialised the weights (and the EMA) from %s", initialised_from)
    record_teacher(model.flow_config, manifest, initialised_from)
    # Every rank keeps the EMA (ZeRO 0-2 leave each rank the whole weights), so none waits for it; with
    # train.bf16_weights it averages the fp32 masters, and under ZeRO 1-2 each rank its own part of them.
    ema = EMA(model, settings.ema_beta, settings.ema_power, settings.ema_update_after_step)
    ema.shadow.to(device)  # its update counter stays on the CPU: reading it is no device sync
    precision = resolve_precision(settings.precision, device)
    latent_size = config.data.crop_size or manifest.high_res_latent
    batch_shape = (config.data.batch_size, config.model.out_channels, latent_size, latent_size)
    engine, scheduler, _ = build_engine(model, config, device, batch_shape)
    # Noise for the objective comes from a per-rank generator on the training device (no copies).
    loss_generator = torch.Generator(device).manual_seed(settings.seed * 1000 + env.rank)
    checkpointer = Checkpointer(
        run_dir, engine, ema, loss_generator, env.rank, settings.keep_checkpoints, settings.seed
    )

    # ------------------------------------------------------------------ resume
    state = TrainerState(num_workers=config.data.num_workers, run_id=new_run_id())
    if resume_from is not None:
        state = saved
        checkpointer.restore(resume_from, state)
        if (saved_ranks, state.num_workers) != (env.world_size, config.data.num_workers):
            # Per-rank stream positions mean nothing on another layout: a new stream starts here, with
            # segments keyed by this step, so the start of the run is not replayed.
            logger.warning(
                "the data stream continues with fresh segments from step %d (%d → %d ranks, %d → %d "
                "data workers per rank)",
                state.step,
                saved_ranks,
                env.world_size,
                state.num_workers,
                config.data.num_workers,
            )
            state.stream_origin, state.batches_served = state.step, 0
            state.num_workers = config.data.num_workers
        logger.info("resumed from %s at step %d (%d images seen)", resume_from, state.step, state.images_seen)
    state.world_size, state.grad_accum = env.world_size, settings.grad_accum
    if settings.bf16_weights:  # the optimizer's fp32 masters, found once the checkpoint is loaded
        ema.follow_master_weights(
            master_weight_fragments(engine), engine.zero_optimization() and env.world_size > 1
        )

    # ------------------------------------------------------------------ setup: tracking, validation, stream
    logging_config = config.logging
    tracker = Tracker(
        run_dir, logging_config.tracking_uri, logging_config.experiment, logging_config.run_name, env.is_main
    )
    if env.is_main:
        (run_dir / "config.yaml").write_text(to_yaml(config))
        tracker.log_params(to_flat_dict(config))
        tracker.log_artifact(run_dir / "config.yaml")
    validator = build_validator(config, device) if env.is_main else None
    stream = TrainStream(
        train_set,
        SampleTransform(manifest, flow.upsampling, config.data.crop_size),
        config.data.batch_size,
        env.rank,
        env.world_size,
        settings.seed,
        config.data.shuffle_buffer,
        start_batch=state.batches_served,
        origin=state.stream_origin,
    )
    loader = make_loader(
        stream,
        config.data.num_workers,
        pin_memory=config.data.pin_memory and device.type == "cuda",
        prefetch_factor=config.data.prefetch_factor,
    )
    batches = unwrap_worker_errors(loader)
    flops_per_sample = training_flops_per_sample(config, latent_size)
    peak = peak_flops(device, precision)

    def save_checkpoint() -> Path:
        progress.mark(state.step, "checkpoint")
        directory = checkpointer.save(state)
        progress.mark(state.step)
        logger.info("checkpoint %s (step %d, %d images seen)", directory, state.step, state.images_seen)
        return directory

    # ------------------------------------------------------------------ loop
    logger.info(
        "training %s: %d → %d steps, %d ranks, %s on %s",
        run_dir,
        state.step,
        settings.max_steps,
        env.world_size,
        precision,
        device,
    )
    engine.train()
    freeze_setup_objects()  # undone in train() when the job ends
    global_batch = config.data.batch_size * env.world_size
    tracker.log_metrics(
        {"train/world_size": env.world_size, "train/global_batch": global_batch * settings.grad_accum},
        state.step,
    )
    layout = memory_format(settings)
    window, window_start = LossWindow(device, state.step), time.perf_counter()
    stop_check = StopCheck(settings.stop_check_seconds, state.step)
    last_saved_step = state.step if resume_from is not None else -1
    status = "finished"
    while state.step < settings.max_steps:
        batch = next(batches)
        progress.mark(state.step)  # a rank stuck reading data goes quiet before the ranks waiting for it
        x1, z_up = (batch[key].to(device, non_blocking=True, memory_format=layout) for key in ("x1", "z_up"))
        x0 = batch["x0"].to(device, non_blocking=True, memory_format=layout) if "x0" in batch else None
        loss = engine(x1, z_up, loss_generator, x0)
        boundary = engine.is_gradient_accumulation_boundary()
        engine.backward(loss)
        logging_step = boundary and (state.step + 1) % settings.log_every == 0
        own_grad_norm = (
            gradient_norm(engine.module) if logging_step and not engine.zero_optimization() else None
        )
        engine.step()
        progress.mark(state.step)
        window.add(loss)  # stays on the device: no host sync in the step
        state.batches_served += 1
        state.images_seen += global_batch
        if not boundary:
            continue
        state.step += 1
        ema.update(engine.module)  # after the optimizer step, so the average holds the new weights

        # Log, checkpoint, final and stop-check steps are the loop's only host syncs: one all-reduce
        # carries the loss (non-finite if any loss was), the stop flag and the measured step time.
        if (
            logging_step
            or state.step % settings.checkpoint_every == 0
            or state.step == settings.max_steps
            or stop_check.due(state.step)
        ):
            loss_sum, stop, seconds_per_step = window.reduce(
                stop_requested.is_set(), stop_check.seconds_per_step(state.step)
            )
            stop_check.checked(state.step, seconds_per_step, settings.log_every)
            if not math.isfinite(loss_sum):
                first, last = window.first_step, state.step - 1
                when = f"at step {first}" if first == last else f"between steps {first} and {last}"
                latest = latest_checkpoint(run_dir)
                raise NonFiniteLossError(
                    f"the loss became {loss_sum} {when}; stopping. The last good checkpoint is "
                    f"{latest or 'none (no checkpoint was written yet)'}; lower train.lr or check the "
                    "data, then resume"
                )
            if logging_step:
                samples_per_s = window.micro_steps * global_batch / (time.perf_counter() - window_start)
                metrics = {
                    "train/loss": loss_sum / (window.micro_steps * env.world_size),
                    "train/grad_norm": float(engine.get_global_grad_norm() or own_grad_norm or 0.0),
                    "train/lr": scheduler.get_last_lr()[0],
                    "train/samples_per_s": samples_per_s,
                    "train/images_seen": state.images_seen,
                    "train/model_tflops_per_sample": flops_per_sample / 1e12,
                    "train/model_tflops_per_s": flops_per_sample * samples_per_s / 1e12,
                }
                if peak is not None:
                    metrics["train/mfu"] = model_flops_utilisation(
                        flops_per_sample, samples_per_s, peak, env.world_size
                    )
                tracker.log_metrics(metrics, state.step)
                logger.info("step %d: %s", state.step, {k: round(v, 5) for k, v in metrics.items()})
                window.reset(state.step)
                window_start = time.perf_counter()
            if stop:
                save_checkpoint()
                status = "preempted"
                break

        if state.step % settings.validate_every == 0:
            progress.mark(state.step, "validation")
            ema.make_whole()  # on every rank: with partitioned masters each holds a part of the average
            if validator is not None:
                metrics, grid = validator.run(ema.shadow, state.step, run_dir / "samples")
                tracker.log_metrics(metrics, state.step)
                tracker.log_artifact(grid, "samples")
                logger.info(
                    "step %d validation: %s", state.step, {k: round(v, 4) for k, v in metrics.items()}
                )
            progress.mark(state.step)

        if state.step % settings.checkpoint_every == 0:
            save_checkpoint()
            last_saved_step = state.step

    # ------------------------------------------------------------------ finish
    export_dir = None
    if status == "finished":
        directory = (
            checkpointer.directory_for(state.step) if last_saved_step == state.step else save_checkpoint()
        )
        export_dir = directory / EXPORT_DIR
        if env.is_main:
            tracker.log_artifact(export_dir, "model")
    tracker.finish("FINISHED" if status == "finished" else "KILLED")
    logger.info("%s at step %d (%d images seen)", status, state.step, state.images_seen)
    return TrainResult(status, state.step, state.images_seen, run_dir, export_dir, tracker.run_id)
