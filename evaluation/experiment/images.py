"""The experiment's split of images: the training folders minus every ``holdout_every``-th image are
linked under ``images/train``, the evaluation folders and those held-out images under ``images/eval``;
with ``validation_every``, every N-th remaining training image goes to ``images/validation`` instead.
No evaluation or validation image (or crop of one) is ever trained on, and the two never share one."""

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


def every(n: int, index: int) -> bool:
    """Whether the ``index``-th item is one of every ``n`` (the last of each run of n; never for 0)."""
    return bool(n) and index % n == n - 1


def split_images(config: ExperimentConfig, root: Path) -> dict[str, int]:
    """Link the images into ``root/train``, ``root/eval`` (and ``root/validation``); returns counts."""
    held_out: list[str] = []
    counts = {"train": 0, "eval": 0, **({"validation": 0} if config.validation_every else {})}
    for split, folders in (("train", config.train_images), ("eval", config.eval_images)):
        for folder in map(Path, folders):
            remaining = 0  # training images not held out, counted for the validation split
            for index, path in enumerate(image_files(folder.expanduser())):
                relative = Path(folder.name) / path.relative_to(folder.expanduser())
                hold_out = split == "train" and every(config.holdout_every, index)
                destination = "eval" if hold_out else split
                if destination == "train":
                    destination = "validation" if every(config.validation_every, remaining) else "train"
                    remaining += 1
                link(path, root / destination / relative)
                counts[destination] += 1
                if hold_out:
                    held_out.append(str(relative))
    (root / "held_out.txt").write_text("".join(f"{name}\n" for name in held_out))
    if 0 in counts.values():
        raise FMBoostError(f"the experiment needs images in every split, found {counts}")
    return counts
