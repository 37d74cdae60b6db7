"""Boost every image under a folder into another folder, resumably, split over tasks like encoding.

    fmboost-generate --stage runs/cfm_1k/export --input-dir photos/ --out boosted/
    python cluster/submit.py --array 8 configs/boost/folder.yaml input_dir=photos/ output=boosted/ \
        "stages=[runs/cfm_1k/export]"

``photos/a/b.jpg`` becomes ``boosted/a/b.png`` with ``boosted/a/b.json``, the sidecar
``fmboost-generate`` writes (input, seed, settings, timings). Both are written atomically, the sidecar
last, so an image counts as done exactly when its sidecar exists: a killed run loses no finished image
and a rerun skips them. Each image's seed comes from ``seed`` and its relative path, so a result does
not depend on the task, the split or the order that made it.

Every file under the folder is accounted for in ``_boost_summary.json``: boosted, done by an earlier
run, or skipped with its reason (not an image, unreadable, too large, a name clash). Each task writes
its own part under ``_boost_tasks/`` and merges all parts of its split into the summary.
"""

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from fmboost.atomic_files import atomic_path, exclusive_lock, write_json_atomically
from fmboost.config import (
    CONSISTENCY_MODES,
    PRECISIONS,
    FirstStageConfig,
    MemoryBound,
    merge_layers,
    read_layers,
)
from fmboost.devices import resolve_device, resolve_precision
from fmboost.errors import ConfigError, FMBoostError
from fmboost.image_decoding import IMAGE_SUFFIXES
from fmboost.randomness import keyed_seed
from fmboost.task_split import task_share, validate_task_split

logger = logging.getLogger("fmboost.folder_boost")

SUMMARY = "_boost_summary.json"
TASK_PARTS = "_boost_tasks"
BOOSTED, DONE_EARLIER, SKIPPED = "boosted", "done_earlier", "skipped"
OUT_OF_MEMORY = "out of memory; lower flow_tile_size or max_output_pixels"


@dataclass
class BoostFolderConfig:
    """What to boost (``input_dir`` → ``output``), with which stages and settings, and the task split.

    ``nfe`` and ``solver`` hold one value for every stage or one per stage; empty keeps each stage's
    trained value; ``consistency`` None keeps the last stage's default step. The other keys are
    ``fmboost-generate``'s flags of the same names.
    """

    input_dir: str = ""
    output: str = ""
    stages: list[str] = field(default_factory=list)
    nfe: list[int] = field(default_factory=list)
    solver: list[str] = field(default_factory=list)
    consistency: str | None = None
    seed: int = 0
    first_stage: str | None = None
    first_stage_path: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    flow_tile_size: int = MemoryBound.flow_tile_size
    flow_tile_overlap: int = MemoryBound.flow_tile_overlap
    max_output_pixels: int = MemoryBound.max_output_pixels
    task_index: int | None = None
    num_tasks: int | None = None

    def settings(self) -> dict[str, Any]:
        """What decides the results: a rerun into the same output must use the same. The device counts by
        its kind and the precision as it resolves there (``auto`` is bf16 on a GPU, fp32 on the CPU), so
        tasks on different GPUs of one kind agree, and a CPU rerun of a GPU folder does not."""
        device = resolve_device(self.device)
        return {
            "stages": [str(Path(stage).expanduser().resolve()) for stage in self.stages],
            "nfe": list(self.nfe),
            "solver": list(self.solver),
            "consistency": self.consistency,
            "seed": self.seed,
            "first_stage": self.first_stage,
            "first_stage_path": self.first_stage_path,
            "flow_tile_size": self.flow_tile_size,
            "flow_tile_overlap": self.flow_tile_overlap,
            "device": device.type,
            "dtype": resolve_precision(self.dtype, device),
            "compile": self.compile,
        }


def validate_boost_config(config: BoostFolderConfig) -> None:
    for key in ("input_dir", "output"):
        if not getattr(config, key):
            raise ConfigError(f"{key}: required (see fmboost-generate --help)")
    if not config.stages:
        raise ConfigError("stages: give at least one FMBoost model directory")
    if config.dtype not in PRECISIONS:
        raise ConfigError(f"dtype: choose one of {', '.join(PRECISIONS)}")
    if config.consistency is not None and config.consistency not in CONSISTENCY_MODES:
        raise ConfigError(f"consistency: choose one of {', '.join(CONSISTENCY_MODES)} (or null: the stage's)")
    validate_task_split(config.task_index, config.num_tasks)


def load_boost_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> BoostFolderConfig:
    """Defaults ← YAML file ← ``key=value`` overrides, validated."""
    config = merge_layers(BoostFolderConfig, read_layers(path, overrides))
    validate_boost_config(config)
    return config


@dataclass
class Entry:
    """One file under the input folder and what becomes of it."""

    relative: str
    output: str | None
    reason: str | None = None

    def sidecar(self, root: Path) -> Path:
        return (root / self.output).with_suffix(".json")


def plan(input_dir: Path) -> list[Entry]:
    """Every file under ``input_dir``, sorted, each with its output path or the reason it has none.

    Two images whose outputs would coincide (``a.jpg`` and ``a.png``) keep the first in sorted order.
    """
    entries, owners = [], {}
    reserved = {SUMMARY, TASK_PARTS}
    for path in sorted(p for p in input_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(input_dir)
        output = relative.with_suffix(".png").as_posix()
        entry = Entry(relative.as_posix(), output)
        if any(part.startswith(".") for part in relative.parts):
            entry.output, entry.reason = None, "hidden file"
        elif relative.suffix.lower() not in IMAGE_SUFFIXES:
            entry.output, entry.reason = None, f"not an image file (suffix {relative.suffix or 'none'!r})"
        elif relative.parts[0] in reserved:
            entry.output, entry.reason = None, f"its output would overwrite the run's own {relative.parts[0]}"
        elif output in owners:
            entry.output, entry.reason = None, f"its output {output} is already that of {owners[output]}"
        else:
            owners[output] = entry.relative
        entries.append(entry)
    return entries


def recorded_settings(sidecar: Path) -> dict[str, Any] | None:
    """The settings a finished image was made with; None when its sidecar is missing or unreadable."""
    try:
        return json.loads(sidecar.read_text())["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def refuse_other_settings(recorded: dict[str, dict | None], root: Path, settings: dict[str, Any]) -> None:
    """A rerun with other settings would mix two kinds of results in one folder: refuse before any work.

    ``recorded`` holds, by output, the settings its sidecar records (None: not finished)."""
    for output, record in recorded.items():
        if record is not None and record != settings:
            changed = sorted(key for key in settings if record.get(key) != settings[key])
            raise FMBoostError(
                f"{root} already holds results made with other settings (another {', '.join(changed)}; "
                f"e.g. {output}); boost into another output folder",
                "output",
            )


def build_pipeline(config: BoostFolderConfig):
    from fmboost.inference.pipeline import FMBoostPipeline

    first_stage = (
        FirstStageConfig(name=config.first_stage, path=config.first_stage_path)
        if config.first_stage
        else None
    )
    memory = MemoryBound(config.flow_tile_size, config.flow_tile_overlap, config.max_output_pixels)
    return FMBoostPipeline.from_pretrained(
        config.stages, None, first_stage, config.device, config.dtype, memory, config.compile
    )


def boost_one(pipeline, source: Path, entry: Entry, root: Path, config: BoostFolderConfig) -> None:
    """Boost one image into ``root``; its output is written before its sidecar, both atomically."""
    from fmboost.image_processing import load_image
    from fmboost.inference.pipeline import one_or_per_stage
    from fmboost.inference.sidecar import sidecar

    image = load_image(source, pipeline.image_multiple)
    pipeline.check_image_size(image, entry.relative)
    seed = keyed_seed(config.seed, entry.relative)
    output = pipeline(
        images=image,
        seed=seed,
        nfe=one_or_per_stage(config.nfe),
        solver=one_or_per_stage(config.solver),
        consistency=config.consistency,
    )
    target = root / entry.output
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as partial:
        output.images[0].save(partial, format="PNG")
    record = sidecar(
        {"image": str(source), "input": entry.relative},
        seed,
        1,
        output.images[0],
        config.stages,
        output,
        one_or_per_stage(config.solver),
    )
    write_json_atomically(entry.sidecar(root), record | {"settings": config.settings()})


def merge_summary(root: Path, input_dir: Path, num_tasks: int, settings: dict[str, Any]) -> dict[str, Any]:
    """Every task part of this split merged into ``_boost_summary.json`` (tasks take turns)."""
    with exclusive_lock(root / TASK_PARTS / ".lock"):
        files, reported = {}, []
        for part in sorted((root / TASK_PARTS).glob(f"task-*-of-{num_tasks:05d}.json")):
            record = json.loads(part.read_text())
            files.update(record["files"])
            reported.append(record["task_index"])
        totals = {status: 0 for status in (BOOSTED, DONE_EARLIER, SKIPPED)}
        for record in files.values():
            totals[record["status"]] += 1
        summary = {
            "input_dir": str(input_dir),
            "output": str(root),
            "settings": settings,
            "num_tasks": num_tasks,
            "tasks_reported": reported,
            "totals": totals,
            "files": dict(sorted(files.items())),
        }
        write_json_atomically(root / SUMMARY, summary)
    return summary


def boost_folder(config: BoostFolderConfig) -> dict[str, Any]:
    """Boost this task's share of ``config.input_dir``; returns the merged summary."""
    started = time.perf_counter()
    input_dir = Path(config.input_dir).expanduser().resolve()
    root = Path(config.output).expanduser().resolve()
    if not input_dir.is_dir():
        raise FMBoostError(f"{input_dir} is not a folder", "input_dir")
    if root == input_dir or input_dir in root.parents:
        raise FMBoostError(
            f"the output {root} is inside the input folder; a rerun would boost the results", "output"
        )
    task_index, num_tasks = task_share(config.task_index, config.num_tasks)
    entries = plan(input_dir)
    mine = [entry for index, entry in enumerate(entries) if index % num_tasks == task_index]
    settings = config.settings()
    recorded = {e.output: recorded_settings(e.sidecar(root)) for e in mine if e.output is not None}
    refuse_other_settings(recorded, root, settings)
    todo = [  # an image is done when its output exists and its sidecar, written last, is readable
        entry
        for entry in mine
        if entry.output is not None
        and (recorded[entry.output] is None or not (root / entry.output).is_file())
    ]
    logger.info(
        "task %d/%d: %d of %d files are mine, %d to boost, %d done earlier, %d skipped",
        task_index,
        num_tasks,
        len(mine),
        len(entries),
        len(todo),
        sum(entry.output is not None for entry in mine) - len(todo),
        sum(entry.output is None for entry in mine),
    )
    records, waiting = {}, {entry.relative for entry in todo}
    for entry in mine:
        if entry.output is None:
            records[entry.relative] = {"status": SKIPPED, "reason": entry.reason}
        elif entry.relative not in waiting:
            records[entry.relative] = {"status": DONE_EARLIER, "output": entry.output}
    if todo:
        pipeline = build_pipeline(config)
        for entry in tqdm(todo, desc=f"task {task_index}", unit="img", dynamic_ncols=True):
            try:
                boost_one(pipeline, input_dir / entry.relative, entry, root, config)
                records[entry.relative] = {"status": BOOSTED, "output": entry.output}
            except (FMBoostError, torch.OutOfMemoryError) as error:
                reason = error.message if isinstance(error, FMBoostError) else OUT_OF_MEMORY
                records[entry.relative] = {"status": SKIPPED, "reason": reason}
                logger.warning("skipped %s: %s", entry.relative, reason)
    part = {"task_index": task_index, "num_tasks": num_tasks, "files": records}
    (root / TASK_PARTS).mkdir(parents=True, exist_ok=True)
    write_json_atomically(root / TASK_PARTS / f"task-{task_index:05d}-of-{num_tasks:05d}.json", part)
    summary = merge_summary(root, input_dir, num_tasks, settings)
    logger.info(
        "task %d/%d done in %.0f s: %s; all tasks so far: %s (summary: %s)",
        task_index,
        num_tasks,
        time.perf_counter() - started,
        {status: sum(r["status"] == status for r in records.values()) for status in summary["totals"]},
        summary["totals"],
        root / SUMMARY,
    )
    return summary
