"""Which checkpoint a job resumes from, and what changes when the number of ranks did.

**Fallback.** ``train.resume=auto`` tries the complete checkpoints newest first (the one ``latest``
names, then older ones). Rank 0 lists them and sends its list to every rank, so that ranks whose view
of a shared file system lags (attribute caching) still try the same ones in the same order. Every rank
checks each against its file list (:mod:`fmboost.training.checkpoint_files`) and all ranks take the union
of what they found, so they agree and load the same one. A broken checkpoint is named with what is wrong
with it; once an older one checks out, the broken ones are renamed ``broken_step_N`` (never deleted,
never tried again) and ``latest`` points at the good one. When none checks out nothing is renamed and the
job stops with one line: it never starts over from step 0 while checkpoints exist.

**World size.** The global batch is ``data.batch_size × ranks × train.grad_accum``. When the number of
ranks changes and ``train.keep_global_batch`` is on, ``train.grad_accum`` is rescaled to keep it where
the numbers divide (the learning rate was tuned for it); otherwise the global batch changes, and one
log line says from what to what.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from fmboost.atomic_files import write_text_atomically
from fmboost.errors import FMBoostError
from fmboost.run_folder import LATEST, checkpoint_root, complete_checkpoints
from fmboost.training.checkpoint_files import problems

logger = logging.getLogger(__name__)
BROKEN_PREFIX = "broken_"


class CheckpointError(FMBoostError):
    """A checkpoint cannot be resumed from; the message names it and what to do."""


def agreed_problems(directory: Path, rank: int, world_size: int) -> list[str]:
    """What any rank found wrong with ``directory`` (each checks its share of the checksums)."""
    found = problems(directory, rank, world_size)
    if world_size == 1:
        return found
    gathered: list[list[str] | None] = [None] * world_size
    torch.distributed.all_gather_object(gathered, found)
    return sorted({problem for share in gathered for problem in share or []})


def resume_candidates(run_dir: Path) -> list[Path]:
    """Complete checkpoints, the one ``latest`` names first, then the older ones newest first."""
    root = checkpoint_root(run_dir)
    complete = complete_checkpoints(run_dir)[::-1]
    pointer = root / LATEST
    named = root / pointer.read_text().strip() if pointer.is_file() else None
    if named in complete:
        return [named, *(p for p in complete if p.name < named.name)]
    return complete


def set_aside(directory: Path) -> Path:
    """Rename a broken checkpoint so that no later job tries it; its files stay for inspection."""
    target = directory.with_name(BROKEN_PREFIX + directory.name)
    suffix = 1
    while target.exists():
        suffix += 1
        target = directory.with_name(f"{BROKEN_PREFIX}{directory.name}_{suffix}")
    directory.rename(target)
    return target


def list_checkpoints(run_dir: Path) -> tuple[list[Path], list[Path], str | None]:
    """(resume candidates, checkpoints set aside before, why the folder could not be read)."""
    try:
        set_aside_before = sorted(checkpoint_root(run_dir).glob(BROKEN_PREFIX + "step_*"))
        return resume_candidates(run_dir), set_aside_before, None
    except OSError as error:
        return [], [], error.strerror or type(error).__name__


def as_rank_zero_sees(value: object, world_size: int) -> object:
    """Rank 0's ``value`` on every rank (each passes its own; only rank 0's is kept)."""
    if world_size == 1:
        return value
    holder = [value]
    torch.distributed.broadcast_object_list(holder, src=0)
    return holder[0]


def choose_checkpoint(run_dir: Path, resume: str, rank: int, world_size: int) -> Path | None:
    """The checkpoint this job loads (``None``: a fresh start), chosen by rank 0 and checked on every rank."""
    if resume == "never":
        return None
    if resume != "auto":
        explicit = Path(resume)
        if found := agreed_problems(explicit, rank, world_size):
            raise CheckpointError(f"{explicit} is broken: {'; '.join(found)}", "train.resume")
        return explicit
    listed = list_checkpoints(run_dir) if rank == 0 else None
    candidates, set_aside_before, failure = as_rank_zero_sees(listed, world_size)
    if failure:
        raise CheckpointError(f"{checkpoint_root(run_dir)} could not be read ({failure})", "train.resume")
    if not candidates:
        if set_aside_before:
            raise CheckpointError(
                f"every checkpoint in {checkpoint_root(run_dir)} was set aside as broken "
                f"({', '.join(p.name for p in set_aside_before)}); train.resume=never starts the run over",
                "train.resume",
            )
        return None
    rejected: list[tuple[Path, list[str]]] = []
    for directory in candidates:
        found = agreed_problems(directory, rank, world_size)
        if not found:
            if rejected and rank == 0:
                for broken, _ in rejected:
                    logger.warning("set %s aside as %s", broken, set_aside(broken).name)
                write_text_atomically(checkpoint_root(run_dir) / LATEST, directory.name)
            if world_size > 1:
                torch.distributed.barrier()
            return directory
        logger.warning("checkpoint %s is broken: %s; trying an older one", directory.name, "; ".join(found))
        rejected.append((directory, found))
    named = "; ".join(f"{d.name} ({found[0]})" for d, found in rejected)
    raise CheckpointError(
        f"no checkpoint in {checkpoint_root(run_dir)} checks out: {named}. Nothing was moved or deleted; "
        "restore the files, or set train.resume=never to start the run over",
        "train.resume",
    )


@dataclass(frozen=True)
class GlobalBatch:
    """The gradient accumulation a resumed job uses, and the log line that explains it (if any)."""

    grad_accum: int
    message: str | None


def plan_global_batch(
    batch_size: int,
    saved_ranks: int,
    saved_accum: int,
    ranks: int,
    configured_accum: int,
    keep: bool,
) -> GlobalBatch:
    """Keep ``batch_size × ranks × grad_accum`` across a change of world size where the numbers divide."""
    before, configured = batch_size * saved_ranks * saved_accum, batch_size * ranks * configured_accum
    if saved_ranks == ranks or not keep:
        if before == configured:
            return GlobalBatch(configured_accum, None)
        return GlobalBatch(
            configured_accum,
            f"global batch changes from {before} to {configured} ({saved_ranks} → {ranks} ranks, "
            f"train.grad_accum {saved_accum} → {configured_accum})",
        )
    if (saved_ranks * saved_accum) % ranks == 0:
        accum = saved_ranks * saved_accum // ranks
        return GlobalBatch(
            accum,
            f"global batch kept at {before} on {ranks} ranks instead of {saved_ranks}: "
            f"train.grad_accum {saved_accum} → {accum}",
        )
    return GlobalBatch(
        configured_accum,
        f"global batch changes from {before} to {configured}: {saved_ranks} ranks × {saved_accum} "
        f"accumulation steps do not divide over {ranks} ranks (train.grad_accum stays {configured_accum})",
    )
