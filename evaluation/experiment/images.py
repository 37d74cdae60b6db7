"""The experiment's split of images: the training folders minus every ``holdout_every``-th image are
linked under ``images/train``, the evaluation folders and those held-out images under ``images/eval``.
No evaluation image (or crop of one) is ever trained on."""

from pathlib import Path

from evaluation.experiment.config import ExperimentConfig
from fmboost.errors import FMBoostError
from fmboost.image_decoding import IMAGE_SUFFIXES


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def link(source: Path, target: Path) -> None:
    """``target`` → ``source`` (with a ``.txt`` caption sidecar when there is one)."""
    for path, destination in ((source, target), (source.with_suffix(".txt"), target.with_suffix(".txt"))):
        if path.is_file() and not destination.is_symlink():
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.symlink_to(path.resolve())


def split_images(config: ExperimentConfig, root: Path) -> dict[str, int]:
    """Link the training and evaluation images into ``root/train`` and ``root/eval``; returns counts."""
    held_out: list[str] = []
    counts = {"train": 0, "eval": 0}
    for split, folders in (("train", config.train_images), ("eval", config.eval_images)):
        for folder in map(Path, folders):
            for index, path in enumerate(image_files(folder.expanduser())):
                relative = Path(folder.name) / path.relative_to(folder.expanduser())
                hold_out = (
                    split == "train"
                    and config.holdout_every
                    and index % config.holdout_every == config.holdout_every - 1
                )
                destination = "eval" if hold_out else split
                link(path, root / destination / relative)
                counts[destination] += 1
                if hold_out:
                    held_out.append(str(relative))
    (root / "held_out.txt").write_text("".join(f"{name}\n" for name in held_out))
    if counts["train"] == 0 or counts["eval"] == 0:
        raise FMBoostError(f"the experiment needs training and evaluation images, found {counts}")
    return counts
