"""Training checkpoints: DeepSpeed state plus what exact resume needs, and the EMA export.

Layout under ``RUN/checkpoints/``::

    step_00000100/            DeepSpeed's files (per-rank optimizer shards, model states)
        trainer_state.json    step, images seen, batches served by the data stream, EMA updates,
                              world size and gradient accumulation of the job that wrote it
        ema.safetensors       EMA weights (float32)
        rng_rank{R}.safetensors  RNG states of rank R
        export/               model.safetensors + config.json of the EMA model (``from_pretrained``)
        MANIFEST.json         every file above with its size and CRC-32 (each rank describes its own)
        COMPLETE              written last by rank 0, once every rank has finished
    step_00000100-consolidated/  the ZeRO optimizer state by parameter, written when a job resumes
                              this checkpoint on another number of ranks (:mod:`.resharding`)
    broken_step_00000200/     a checkpoint that failed its check, set aside (:mod:`.resume`)
    latest                    the tag of the last COMPLETE checkpoint, replaced atomically

Durability: each rank fsyncs the files it wrote while it describes them; rank 0 then fsyncs the
checkpoint's folders, writes the file list and ``COMPLETE`` atomically (each fsynced with its folder),
moves ``latest``, and only then prunes older checkpoints. A power loss at any point leaves ``latest``
naming a checkpoint whose every file is on disk.

A run has an identity (``TrainerState.run_id``), made when it starts from nothing and carried by every
checkpoint after: what is derived from a checkpoint (its consolidated optimizer state) records it, so
a run folder restarted with ``train.resume=never`` never loads what an earlier run derived.
"""

import errno
import hashlib
import json
import logging
import shutil
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fmboost.atomic_files import fsync_directory, write_text_atomically
from fmboost.distributed import all_ranks_agree
from fmboost.errors import FMBoostError
from fmboost.run_folder import (
    COMPLETE,
    EXPORT_DIR,
    LATEST,
    checkpoint_root,
    complete_checkpoints,
    latest_checkpoint,
    tag_for,
)
from fmboost.training.checkpoint_files import describe_own_files, sync_folders, write_file_list
from fmboost.training.resharding import (
    consolidated_folder,
    ensure_consolidated,
    load_consolidated,
    optimizer_shard_files,
)

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.safetensors"
DISK_FULL_BYTES = 16 * 1024**2  # below this much free space, a failed write is taken for a full disk


@dataclass
class TrainerState:
    step: int = 0
    images_seen: int = 0
    batches_served: int = 0
    num_workers: int = 0
    ema_updates: int = 0
    world_size: int = 0  # 0: written before it was recorded (the RNG files tell)
    grad_accum: int = 1
    stream_origin: int = 0  # the step the data stream started from (a change of ranks starts a new one)
    run_id: str = ""  # the run's identity, made at its fresh start ("": written before it was recorded)
    samples_skipped: int = 0  # training samples skipped as unusable (non-finite latents), all ranks
    unusable_samples: dict[str, list[str]] = field(default_factory=dict)  # their keys by shard file name


def new_run_id() -> str:
    return uuid.uuid4().hex


def rng_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state(), "loss_generator": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def save_rng(directory: Path, rank: int, generator: torch.Generator) -> None:
    save_file(rng_state(generator), str(directory / f"rng_rank{rank}.safetensors"))


def derived_seed(seed: int, step: int, rank: int) -> int:
    """A seed for a rank that did not exist when the checkpoint of ``step`` was written."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{step}:{rank}".encode()).digest()[:8], "little") >> 1


def load_rng(directory: Path, rank: int, generator: torch.Generator, seed: int, step: int) -> bool:
    """This rank's RNG states as saved; a rank the checkpoint has none for seeds them from
    (seed, step, rank). Returns whether they were restored."""
    path = directory / f"rng_rank{rank}.safetensors"
    if not path.is_file():
        derived = derived_seed(seed, step, rank)
        torch.manual_seed(derived)
        generator.manual_seed(derived)
        return False
    state = load_file(str(path))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["loss_generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    return True


def saved_world_size(directory: Path, state: TrainerState) -> int:
    """Ranks of the job that wrote ``directory`` (older checkpoints: one RNG file per rank)."""
    return state.world_size or len(list(directory.glob("rng_rank*.safetensors")))


def save_main_process_files(directory: Path, state: TrainerState, ema_state: dict[str, torch.Tensor]) -> None:
    (directory / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
    save_file({k: v.detach().contiguous().cpu() for k, v in ema_state.items()}, str(directory / EMA_FILE))


def load_trainer_state(directory: Path) -> TrainerState:
    try:
        return TrainerState(**json.loads((directory / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError) as error:
        raise FMBoostError(
            f"{directory / STATE_FILE} is unreadable ({error}); rename {directory.name} to resume from an "
            "older checkpoint, or set train.resume=never to start over",
            "train.resume",
        ) from None


def load_ema_state(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / EMA_FILE))


def mark_complete(run_dir: Path, directory: Path, keep: int) -> None:
    """Declare ``directory`` (whose files and file list are durable) complete, point ``latest`` at it, and
    only then prune older checkpoints: each step is fsynced with its folder before the next."""
    write_text_atomically(directory / COMPLETE, "")
    pointer = checkpoint_root(run_dir) / LATEST
    write_text_atomically(pointer, directory.name)
    complete = complete_checkpoints(run_dir)
    for old in complete[:-keep] if keep > 0 else []:
        remove_checkpoint(old)
    fsync_directory(checkpoint_root(run_dir))


def remove_checkpoint(directory: Path) -> None:
    """A checkpoint and what was derived from it."""
    shutil.rmtree(directory, ignore_errors=True)
    shutil.rmtree(consolidated_folder(directory), ignore_errors=True)


class CheckpointWriteError(FMBoostError):
    """A checkpoint could not be written; the message names the last good one."""


def write_failure_message(directory: Path, error: BaseException | None, rank: int) -> str:
    """Why ``directory`` could not be written, in words: a full disk is said to be one."""
    last_good = latest_checkpoint(directory.parent.parent)
    resume = f"the last good checkpoint is {last_good or 'none (no checkpoint was written yet)'}"
    if error is None:
        return f"another rank failed to write checkpoint {directory}; {resume}"
    free = shutil.disk_usage(directory.parent).free if directory.parent.exists() else None
    no_space = getattr(error, "errno", None) == errno.ENOSPC or (free is not None and free < DISK_FULL_BYTES)
    if no_space:
        return (
            f"the disk is full: checkpoint {directory} could not be written ({free} bytes free); "
            f"{resume}. Free space (or set train.keep_checkpoints lower) and resume"
        )
    detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    return f"rank {rank} could not write checkpoint {directory} ({detail}); {resume}"


class Checkpointer:
    """Saves and restores everything an exact resume needs, for one rank of one run.

    Every rank writes its DeepSpeed shards and RNG state; rank 0 writes the trainer state, the EMA
    weights (every rank holds the same average) and the export, then (after a barrier) marks the
    checkpoint complete and moves ``latest``.
    """

    def __init__(
        self, run_dir: Path, engine, ema, loss_generator: torch.Generator, rank: int, keep: int, seed: int
    ) -> None:
        self.run_dir, self.engine, self.ema, self.loss_generator = run_dir, engine, ema, loss_generator
        self.rank, self.keep, self.seed = rank, keep, seed

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def directory_for(self, step: int) -> Path:
        return checkpoint_root(self.run_dir) / tag_for(step)

    def restore(self, directory: Path, state: TrainerState) -> None:
        """Engine, RNG and EMA (every rank keeps one) as they were when ``directory`` (whose trainer state
        is ``state``) was saved; on another number of ranks the ZeRO optimizer state is first written by
        parameter (rank 0) and re-cut.

        Any failure, DeepSpeed's and torch's own included, stops every rank with one line naming the
        checkpoint.
        """
        reshard = self.engine.zero_optimization() and len(optimizer_shard_files(directory)) not in (
            0,
            torch.distributed.get_world_size(),
        )
        if reshard:
            self.on_every_rank_or_none(
                directory, lambda: ensure_consolidated(directory, state.run_id) if self.is_main else None
            )
        self.on_every_rank_or_none(directory, lambda: self.load_states(directory, state, reshard))

    def on_every_rank_or_none(self, directory: Path, load: Callable[[], object]) -> None:
        """Run ``load`` on this rank; if it fails on any rank, every rank stops with one line."""
        failure = None
        try:
            load()
        except Exception as error:  # DeepSpeed's and torch's own errors, one line each
            failure = error
        if all_ranks_agree(failure is not None, self.engine.device):
            detail = str(failure).strip().splitlines()[0][:300] if failure and str(failure).strip() else None
            raise FMBoostError(
                f"checkpoint {directory} could not be loaded ({detail or 'on another rank'}); "
                "rename it to resume from an older one, or set train.resume=never to start over",
                "train.resume",
            ) from None

    def load_states(self, directory: Path, state: TrainerState, reshard: bool) -> None:
        """DeepSpeed's state (with ``reshard``, the optimizer's from the state by parameter), RNG, EMA."""
        self.engine.load_checkpoint(
            str(directory.parent), tag=directory.name, load_optimizer_states=not reshard
        )
        if reshard:
            load_consolidated(self.engine, directory)
            # Without its state dict the optimizer still holds the schedule's first learning rate.
            learning_rates = self.engine.lr_scheduler.get_last_lr()
            for group, lr in zip(self.engine.optimizer.param_groups, learning_rates, strict=True):
                group["lr"] = lr
        if not load_rng(directory, self.rank, self.loss_generator, self.seed, state.step):
            logger.info("rank %d: no RNG state in %s, seeded from (seed, step, rank)", self.rank, directory)
        self.ema.shadow.load_state_dict(load_ema_state(directory))
        self.ema.num_updates.fill_(state.ema_updates)

    def save(self, state: TrainerState) -> Path:
        """Write the checkpoint of ``state.step`` on every rank; returns its directory once complete."""
        import torch.distributed as dist

        directory = self.directory_for(state.step)
        self.ema.make_whole()
        if self.is_main and (directory.exists() or consolidated_folder(directory).exists()):
            # a run folder restarted with train.resume=never: the earlier run's files would mix with ours
            logger.warning("replacing %s, which an earlier run in this folder wrote", directory)
            remove_checkpoint(directory)
        dist.barrier()
        failure = None
        try:
            self.engine.save_checkpoint(str(directory.parent), tag=directory.name, save_latest=False)
            save_rng(directory, self.rank, self.loss_generator)
            if self.is_main:
                state.ema_updates = int(self.ema.num_updates)
                save_main_process_files(directory, state, self.ema.shadow.state_dict())
                self.ema.shadow.save_pretrained(directory / EXPORT_DIR)
            own_files = describe_own_files(directory, self.rank)
        except (OSError, RuntimeError) as error:  # torch.save reports a full disk as a RuntimeError
            failure = error
        if all_ranks_agree(failure is not None, self.engine.device):  # every rank stops, none waits
            if self.is_main:
                shutil.rmtree(directory, ignore_errors=True)  # never complete; frees the space it took
            raise CheckpointWriteError(write_failure_message(directory, failure, self.rank))
        described: list[dict | None] = [None] * dist.get_world_size()
        dist.all_gather_object(described, own_files)
        if self.is_main:
            sync_folders(directory)
            write_file_list(directory, {name: entry for files in described for name, entry in files.items()})
            mark_complete(self.run_dir, directory, self.keep)
        dist.barrier()
        return directory
