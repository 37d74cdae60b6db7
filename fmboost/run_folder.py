"""Where a training run keeps its checkpoints: the layout that training writes and that models,
generation and evaluation read (a run folder names its latest complete checkpoint's export).

    RUN/checkpoints/step_00000100/     one checkpoint (see :mod:`fmboost.training.checkpointing`)
    RUN/checkpoints/step_00000100/export/   the EMA model for ``from_pretrained``
    RUN/checkpoints/step_00000100/COMPLETE  written last: the checkpoint is whole
    RUN/checkpoints/latest             the tag of the last complete checkpoint
"""

from pathlib import Path

from fmboost.errors import FMBoostError

CHECKPOINTS_DIR = "checkpoints"
LATEST = "latest"
COMPLETE = "COMPLETE"
EXPORT_DIR = "export"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The last complete checkpoint, or ``None``; a pointer to an incomplete one is an error."""
    pointer = checkpoint_root(run_dir) / LATEST
    if not pointer.is_file():
        return None
    directory = checkpoint_root(run_dir) / pointer.read_text().strip()
    if not (directory / COMPLETE).is_file():
        raise FMBoostError(f"{pointer} names {directory.name}, which is not a complete checkpoint")
    return directory


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Every complete checkpoint of a run, oldest first."""
    return sorted(p for p in checkpoint_root(run_dir).glob("step_*") if (p / COMPLETE).is_file())
