"""The training loop: a :class:`Trainer` whose methods are the steps of training, read top to bottom.

:func:`train` holds the run folder and watches the job, then runs one :class:`Trainer`:
:meth:`~Trainer.set_up` (data, the checkpoint to resume, model, DeepSpeed and EMA, the restore, tracking,
validation, the data stream) → :meth:`~Trainer.run_loop` (:meth:`~Trainer.train_step`, then at sync
points :meth:`~Trainer.check_window` and :meth:`~Trainer.log`; :meth:`~Trainer.validate`;
:meth:`~Trainer.save_checkpoint`) → :meth:`~Trainer.finish` (the final checkpoint and the export).

A stop request (the pre-emption signal of a cluster job) makes every rank save a checkpoint and return
``"preempted"``. A loss that is not finite stops every rank and leaves the last good checkpoint as
``latest``; the job then re-runs those steps from the state before them to tell a data fault from a
transient one (:mod:`fmboost.training.rerun`).
"""

import gc
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fmboost.config import FlowConfig, FMBoostConfig, to_flat_dict, to_yaml
from fmboost.data import TrainStream, ValidationStream, make_loader
from fmboost.data.dataset import SampleTransform, resolve_for_model
from fmboost.data.shards import Manifest
from fmboost.data.streams import unwrap_worker_errors
from fmboost.devices import resolve_precision
from fmboost.distributed import DistributedEnv, all_ranks_agree, device_for, init_distributed
from fmboost.first_stage import build_first_stage
from fmboost.models import EMA, FMBoostModel
from fmboost.objectives import STUDENT_OBJECTIVES
from fmboost.run_folder import EXPORT_DIR, latest_checkpoint
from fmboost.tracking import Tracker
from fmboost.training.checkpointing import (
    Checkpointer,
    TrainerState,
    load_trainer_state,
    new_run_id,
    saved_world_size,
)
from fmboost.training.efficiency import model_flops_utilisation, peak_flops, training_flops_per_sample
from fmboost.training.engine_setup import build_engine
from fmboost.training.faults import FaultMonitor, Verdict
from fmboost.training.hot_loop import LossWindow, StopCheck, WindowSums, freeze_setup_objects, memory_format
from fmboost.training.init_from import load_initial_weights
from fmboost.training.master_weights import master_weight_fragments
from fmboost.training.rerun import (
    TRANSIENT_RERUNS,
    NonFiniteLossError,
    Rerun,
    batches_at_fault,
    data_fault,
    non_finite_text,
)
from fmboost.training.resume import choose_checkpoint, plan_global_batch
from fmboost.training.run_lock import RunFolderBusyError, RunFolderLock
from fmboost.training.skipped_samples import SkippedSamples
from fmboost.training.validation import Validator
from fmboost.training.watchdog import Allowances, Progress, exit_after_fault

__all__ = ["NonFiniteLossError", "TrainResult", "Trainer", "train"]

logger = logging.getLogger(__name__)

VERDICT_HANDLING_SECONDS = 180.0  # a requeue takes up to a minute; the handler's own waits are bounded


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


def end_naming_the_resume(run_dir: Path) -> Callable[[Verdict, FaultMonitor], None]:
    """What a job does by default when a rank stalls or dies (torchrun): say what happened and how to go
    on; a rank's error that the user must fix ends the job like the error itself (exit code 2)."""

    def on_fault(verdict: Verdict, monitor: FaultMonitor) -> None:
        if verdict.kind == "error":
            exit_after_fault(f"{verdict.text}; ending the job", code=2)
        exit_after_fault(
            f"{verdict.text}; ending the job. Resume with the same command: train.resume=auto continues "
            f"from the last complete checkpoint in {run_dir / 'checkpoints'}"
        )

    return on_fault


def start_fault_monitor(
    allowances: Allowances,
    env: DistributedEnv,
    progress: Progress,
    on_fault: Callable[[Verdict, FaultMonitor], None],
) -> FaultMonitor | None:
    """On every rank of a multi-rank job: the stall watchdog and the links that see a rank die."""
    if env.world_size == 1:
        return None
    monitor = FaultMonitor(env, allowances, progress, on_fault)
    monitor.start()
    if "TORCHELASTIC_RUN_ID" in os.environ:  # torchrun ends the others with SIGTERM when one rank dies
        signal.signal(signal.SIGTERM, finish_the_verdict_first(monitor))
    return monitor


def finish_the_verdict_first(monitor: FaultMonitor) -> Callable[[int, Any], None]:
    """A SIGTERM that arrives while this rank acts on a verdict waits for it (the verdict's handler ends
    the process with its one line); any other ends the process as SIGTERM does by default."""

    def on_sigterm(signum: int, frame: Any) -> None:
        if monitor.acted.is_set():
            return
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    return on_sigterm


def train(
    config: FMBoostConfig,
    env: DistributedEnv,
    stop_requested: threading.Event | None = None,
    on_fault: Callable[[Verdict, FaultMonitor], None] | None = None,
) -> TrainResult:
    """Train a CFM stage as ``config`` says; resumable, and safe to call from torchrun or submitit tasks.

    The run folder is locked for the life of the job: a second job in it is refused (see
    :mod:`fmboost.training.run_lock`). On several ranks a fault monitor (:mod:`fmboost.training.faults`)
    calls ``on_fault`` when a rank stalls or dies; by default every live rank says which rank and how,
    and exits with ``STALL_EXIT_CODE``.
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
    monitor = start_fault_monitor(allowances, env, progress, on_fault or end_naming_the_resume(run_dir))
    frozen_by_caller = gc.get_freeze_count() > 0
    try:
        result = train_with_reruns(
            config, env, run_dir, device, stop_requested or threading.Event(), progress, monitor
        )
    except BaseException as error:
        if monitor is not None and monitor.ending(error):
            time.sleep(VERDICT_HANDLING_SECONDS)  # the verdict's handler ends this process meanwhile
        raise
    finally:
        if not frozen_by_caller:  # undo the hot loop's freeze; a caller that froze its heap keeps it so
            gc.unfreeze()
        lock.release()
    if monitor is not None:
        monitor.ending(None)
    return result


def train_with_reruns(
    config: FMBoostConfig,
    env: DistributedEnv,
    run_dir: Path,
    device: torch.device,
    stop_requested: threading.Event,
    progress: Progress,
    monitor: FaultMonitor | None,
) -> TrainResult:
    """Run the job; a non-finite loss is re-run once from the state before it (:mod:`.rerun`)."""
    rerun = None
    while True:
        trainer = Trainer(config, env, run_dir, device, stop_requested, progress, rerun, monitor)
        try:
            return trainer.run()
        except NonFiniteLossError as error:
            if error.window is None:  # a re-run found the data at fault
                raise
            if rerun is not None and rerun.number >= TRANSIENT_RERUNS:
                raise NonFiniteLossError(
                    f"{error.message}. It is non-finite loss number {rerun.number + 1} in this job that a "
                    "re-run did not reproduce: the hardware looks faulty"
                ) from None
            rerun = Rerun(trainer.last_checkpoint, *error.window, (rerun.number if rerun else 0) + 1)
            logger.warning(
                "%s; re-running from %s with a check after every step, to tell a data fault from a "
                "transient one (re-run %d of at most %d in this job)",
                rerun.describe(),
                rerun.source(),
                rerun.number,
                TRANSIENT_RERUNS,
            )
            del trainer
            gc.collect()


class Trainer:
    """One job of a run, once it holds the run folder; ``progress`` tells the watchdog how far it got,
    and ``rerun`` (a re-run of a non-finite loss) where to start and which steps to check."""

    def __init__(
        self,
        config: FMBoostConfig,
        env: DistributedEnv,
        run_dir: Path,
        device: torch.device,
        stop_requested: threading.Event,
        progress: Progress,
        rerun: Rerun | None = None,
        monitor: FaultMonitor | None = None,
    ) -> None:
        self.config, self.settings, self.env, self.run_dir = config, config.train, env, run_dir
        self.device, self.stop_requested, self.progress, self.rerun = device, stop_requested, progress, rerun
        self.monitor = monitor
        self.last_checkpoint: Path | None = None  # the state a re-run starts from

    def run(self) -> TrainResult:
        self.set_up()
        return self.finish(self.run_loop())

    # ------------------------------------------------------------------ set up
    def set_up(self) -> None:
        self.train_set = resolve_for_model(self.config, "train")
        if self.rerun is not None:
            resume_from = self.rerun.checkpoint
        else:
            resume_from = choose_checkpoint(
                self.run_dir, self.settings.resume, self.env.rank, self.env.world_size
            )
        saved = self.read_saved_state(resume_from)
        self.build_model_and_engine()
        self.state = self.restore(resume_from, saved)
        self.start_tracking()
        self.open_stream()

    def read_saved_state(self, resume_from: Path | None) -> TrainerState | None:
        """The checkpoint's trainer state; on another number of ranks, the gradient accumulation that keeps
        the global batch (``train.grad_accum`` is set to it)."""
        if resume_from is None:
            return None
        saved = load_trainer_state(resume_from)
        self.saved_ranks = saved_world_size(resume_from, saved)
        plan = plan_global_batch(
            self.config.data.batch_size,
            self.saved_ranks,
            saved.grad_accum,
            self.env.world_size,
            self.settings.grad_accum,
            self.settings.keep_global_batch,
        )
        self.settings.grad_accum = plan.grad_accum
        if plan.message:
            logger.warning(plan.message)
        return saved

    def build_model_and_engine(self) -> None:
        """The model (initialised from ``train.init_from`` if set), its EMA and the DeepSpeed engine."""
        settings, manifest = self.settings, self.train_set.manifest
        torch.manual_seed(settings.seed)
        model = FMBoostModel.from_config(self.config, manifest.first_stage)
        initialised_from = None
        if settings.init_from:  # a resume replaces these weights with the run's own checkpoint
            initialised_from = load_initial_weights(model, settings.init_from)
            logger.info("initialised the weights (and the EMA) from %s", initialised_from)
        record_teacher(model.flow_config, manifest, initialised_from)
        # Every rank keeps the EMA (ZeRO 0-2 leave each rank the whole weights), so none waits for it; with
        # train.bf16_weights it averages the fp32 masters, and under ZeRO 1-2 each rank its own part of them.
        self.ema = EMA(model, settings.ema_beta, settings.ema_power, settings.ema_update_after_step)
        self.ema.shadow.to(self.device)  # its update counter stays on the CPU: reading it is no device sync
        self.precision = resolve_precision(settings.precision, self.device)
        self.latent_size = self.config.data.crop_size or manifest.high_res_latent
        size = self.latent_size
        batch_shape = (self.config.data.batch_size, self.config.model.out_channels, size, size)
        self.engine, self.scheduler, _ = build_engine(model, self.config, self.device, batch_shape)
        # Noise for the objective comes from a per-rank generator on the training device (no copies).
        self.loss_generator = torch.Generator(self.device).manual_seed(settings.seed * 1000 + self.env.rank)
        self.checkpointer = Checkpointer(
            self.run_dir,
            self.engine,
            self.ema,
            self.loss_generator,
            self.env.rank,
            settings.keep_checkpoints,
            settings.seed,
        )

    def restore(self, resume_from: Path | None, saved: TrainerState | None) -> TrainerState:
        """The trainer state to go on from: the checkpoint's, restored into the engine, or a fresh one."""
        state = TrainerState(num_workers=self.config.data.num_workers, run_id=new_run_id())
        if resume_from is not None:
            state = saved
            self.checkpointer.restore(resume_from, state)
            self.last_checkpoint = resume_from
            layout = (self.env.world_size, self.config.data.num_workers)
            if (self.saved_ranks, state.num_workers) != layout:
                # Per-rank stream positions mean nothing on another layout: a new stream starts here, with
                # segments keyed by this step, so the start of the run is not replayed.
                logger.warning(
                    "the data stream continues with fresh segments from step %d (%d → %d ranks, %d → %d "
                    "data workers per rank)",
                    state.step,
                    self.saved_ranks,
                    self.env.world_size,
                    state.num_workers,
                    self.config.data.num_workers,
                )
                state.stream_origin, state.batches_served = state.step, 0
                state.num_workers = self.config.data.num_workers
            logger.info(
                "resumed from %s at step %d (%d images seen)", resume_from, state.step, state.images_seen
            )
        state.world_size, state.grad_accum = self.env.world_size, self.settings.grad_accum
        if self.settings.bf16_weights:  # the optimizer's fp32 masters, found once the checkpoint is loaded
            self.ema.follow_master_weights(
                master_weight_fragments(self.engine),
                self.engine.zero_optimization() and self.env.world_size > 1,
            )
        return state

    def start_tracking(self) -> None:
        """MLflow (rank 0), the config in the run folder, and the periodic validation."""
        logging_config, is_main = self.config.logging, self.env.is_main
        self.tracker = Tracker(
            self.run_dir,
            logging_config.tracking_uri,
            logging_config.experiment,
            logging_config.run_name,
            is_main,
        )
        if is_main:
            (self.run_dir / "config.yaml").write_text(to_yaml(self.config))
            self.tracker.log_params(to_flat_dict(self.config))
            self.tracker.log_artifact(self.run_dir / "config.yaml")
        self.validator = build_validator(self.config, self.device) if is_main else None

    def open_stream(self) -> None:
        """This rank's training stream at the state's position, and its loader."""
        state, data = self.state, self.config.data
        stream = TrainStream(
            self.train_set,
            SampleTransform(self.train_set.manifest, self.config.flow.upsampling, data.crop_size),
            data.batch_size,
            self.env.rank,
            self.env.world_size,
            self.settings.seed,
            data.shuffle_buffer,
            start_batch=state.batches_served,
            origin=state.stream_origin,
            unusable=state.unusable_samples,
        )
        loader = make_loader(
            stream,
            data.num_workers,
            pin_memory=data.pin_memory and self.device.type == "cuda",
            prefetch_factor=data.prefetch_factor,
        )
        self.batches = unwrap_worker_errors(loader)
        self.skipped = SkippedSamples(self.run_dir, self.env.rank, state.unusable_samples)

    # ------------------------------------------------------------------ the loop
    def run_loop(self) -> str:
        """Train to ``train.max_steps``; returns ``"finished"``, or ``"preempted"`` after a stop request."""
        settings, state = self.settings, self.state
        logger.info(
            "training %s: %d → %d steps, %d ranks, %s on %s",
            self.run_dir,
            state.step,
            settings.max_steps,
            self.env.world_size,
            self.precision,
            self.device,
        )
        self.engine.train()
        freeze_setup_objects()  # undone in train() when the job ends
        self.global_batch = self.config.data.batch_size * self.env.world_size
        self.tracker.log_metrics(
            {
                "train/world_size": self.env.world_size,
                "train/global_batch": self.global_batch * settings.grad_accum,
            },
            state.step,
        )
        self.layout = memory_format(settings)
        self.flops_per_sample = training_flops_per_sample(self.config, self.latent_size)
        self.peak = peak_flops(self.device, self.precision)
        self.window, self.window_start = LossWindow(self.device, state.step), time.perf_counter()
        self.stop_check = StopCheck(settings.stop_check_seconds, state.step)
        self.last_saved_step = state.step if self.last_checkpoint is not None else -1
        while state.step < settings.max_steps:
            self.train_step()
            if self.at_sync_point() and self.sync():
                self.save_checkpoint()
                return "preempted"
            if state.step % settings.validate_every == 0:
                self.validate()
            if state.step % settings.checkpoint_every == 0:
                self.save_checkpoint()
        return "finished"

    def next_batch(self) -> dict[str, Any]:
        batch = next(self.batches)
        self.progress.mark(self.state.step)  # a rank stuck reading data goes quiet before the ranks waiting
        skipped, new = self.skipped.add(batch.get("skipped", []), self.state.step + 1)
        self.window.samples_skipped += skipped
        self.window.new_unusable += new
        return batch

    def skip_batches_of_this_step(self) -> None:
        """``train.skip_steps``: every rank draws the batches of the coming step and discards them."""
        step = self.state.step + 1
        keys = []
        for _ in range(self.settings.grad_accum):
            keys += self.next_batch()["keys"]
            self.state.batches_served += 1
        logger.warning(
            "step %d: skipped its batches as train.skip_steps says (rank %d: %s)",
            step,
            self.env.rank,
            ", ".join(keys),
        )

    def train_step(self) -> None:
        """One optimizer step: ``train.grad_accum`` micro-steps, then the EMA after the optimizer."""
        engine, state = self.engine, self.state
        if state.step + 1 in self.settings.skip_steps:
            self.skip_batches_of_this_step()
        keys: list[str] = []
        while True:
            batch = self.next_batch()
            keys += batch["keys"]
            x1, z_up = (
                batch[key].to(self.device, non_blocking=True, memory_format=self.layout)
                for key in ("x1", "z_up")
            )
            x0 = (
                batch["x0"].to(self.device, non_blocking=True, memory_format=self.layout)
                if "x0" in batch
                else None
            )
            loss = engine(x1, z_up, self.loss_generator, x0)
            if self.rerun is not None and state.step < self.rerun.last:
                self.check_loss_now(loss, keys)
            boundary = engine.is_gradient_accumulation_boundary()
            engine.backward(loss)
            self.logging_step = boundary and (state.step + 1) % self.settings.log_every == 0
            self.own_grad_norm = (
                gradient_norm(engine.module) if self.logging_step and not engine.zero_optimization() else None
            )
            engine.step()
            self.progress.mark(state.step)
            self.window.add(loss)  # stays on the device: no host sync in the step
            state.batches_served += 1
            state.images_seen += self.global_batch
            if boundary:
                break
        state.step += 1
        self.ema.update(engine.module)  # after the optimizer step, so the average holds the new weights
        if self.rerun is not None and state.step == self.rerun.last:
            logger.warning(
                "%s, but not when re-run from %s: this looks like a transient fault (a bit flip, a GPU "
                "error), not the data; training goes on",
                self.rerun.describe(),
                self.rerun.source(),
            )

    def check_loss_now(self, loss: torch.Tensor, keys: list[str]) -> None:
        """During a re-run, before the step is taken: a non-finite loss on any rank is a data fault."""
        value = float(loss.detach())
        if not all_ranks_agree(not math.isfinite(value), self.device):
            return
        batches = batches_at_fault(math.isfinite(value), keys, self.env.rank)
        raise data_fault(self.rerun, self.state.step + 1, value, batches, self.settings.skip_steps)

    def at_sync_point(self) -> bool:
        """Log, checkpoint, final and stop-check steps are the loop's only host syncs."""
        step, settings = self.state.step, self.settings
        return (
            self.logging_step
            or step % settings.checkpoint_every == 0
            or step == settings.max_steps
            or self.stop_check.due(step)
        )

    def sync(self) -> bool:
        """One all-reduce carries the loss (non-finite if any loss was), the stop flag, the measured step
        time and the skipped samples; returns whether to stop."""
        sums = self.window.reduce(
            self.stop_requested.is_set(), self.stop_check.seconds_per_step(self.state.step)
        )
        self.stop_check.checked(self.state.step, sums.seconds_per_step, self.settings.log_every)
        self.check_window(sums)
        self.state.samples_skipped += sums.samples_skipped
        if sums.new_unusable:
            self.skipped.share(self.state.unusable_samples)
        if self.logging_step:
            self.log(sums)
        return sums.stop

    def check_window(self, sums: WindowSums) -> None:
        if math.isfinite(sums.loss_sum):
            return
        first, last = (
            self.window.first_step + 1,
            self.state.step,
        )  # the window's steps, as metrics number them
        latest = latest_checkpoint(self.run_dir)
        error = NonFiniteLossError(
            f"{non_finite_text(sums.loss_sum, first, last)}; stopping. The last good checkpoint is "
            f"{latest or 'none (no checkpoint was written yet)'}; lower train.lr or check the data, then "
            "resume"
        )
        error.window = (first, last, sums.loss_sum)
        raise error

    def log(self, sums: WindowSums) -> None:
        state, env = self.state, self.env
        samples_per_s = (
            self.window.micro_steps * self.global_batch / (time.perf_counter() - self.window_start)
        )
        metrics = {
            "train/loss": sums.loss_sum / (self.window.micro_steps * env.world_size),
            "train/grad_norm": float(self.engine.get_global_grad_norm() or self.own_grad_norm or 0.0),
            "train/lr": self.scheduler.get_last_lr()[0],
            "train/samples_per_s": samples_per_s,
            "train/images_seen": state.images_seen,
            "train/samples_skipped": state.samples_skipped,
            "train/model_tflops_per_sample": self.flops_per_sample / 1e12,
            "train/model_tflops_per_s": self.flops_per_sample * samples_per_s / 1e12,
        }
        if self.peak is not None:
            metrics["train/mfu"] = model_flops_utilisation(
                self.flops_per_sample, samples_per_s, self.peak, env.world_size
            )
        self.tracker.log_metrics(metrics, state.step)
        logger.info("step %d: %s", state.step, {k: round(v, 5) for k, v in metrics.items()})
        self.window.reset(state.step)
        self.window_start = time.perf_counter()

    def validate(self) -> None:
        self.progress.mark(self.state.step, "validation")
        self.ema.make_whole()  # on every rank: with partitioned masters each holds a part of the average
        if self.validator is not None:
            metrics, grid = self.validator.run(self.ema.shadow, self.state.step, self.run_dir / "samples")
            self.tracker.log_metrics(metrics, self.state.step)
            self.tracker.log_artifact(grid, "samples")
            logger.info(
                "step %d validation: %s", self.state.step, {k: round(v, 4) for k, v in metrics.items()}
            )
        self.progress.mark(self.state.step)

    def save_checkpoint(self) -> Path:
        self.progress.mark(self.state.step, "checkpoint")
        directory = self.checkpointer.save(self.state)
        self.progress.mark(self.state.step)
        self.last_checkpoint, self.last_saved_step = directory, self.state.step
        logger.info(
            "checkpoint %s (step %d, %d images seen)", directory, self.state.step, self.state.images_seen
        )
        return directory

    # ------------------------------------------------------------------ finish
    def finish(self, status: str) -> TrainResult:
        """The final checkpoint (unless this step's was just written) and the export; MLflow closed."""
        state, export_dir = self.state, None
        if status == "finished":
            if self.last_saved_step == state.step:
                directory = self.checkpointer.directory_for(state.step)
            else:
                directory = self.save_checkpoint()
            export_dir = directory / EXPORT_DIR
            if self.env.is_main:
                self.tracker.log_artifact(export_dir, "model")
        self.tracker.finish("FINISHED" if status == "finished" else "KILLED")
        logger.info("%s at step %d (%d images seen)", status, state.step, state.images_seen)
        return TrainResult(
            status, state.step, state.images_seen, self.run_dir, export_dir, self.tracker.run_id
        )
