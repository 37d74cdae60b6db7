"""Each task's share of an evaluation (a *part*), merged exactly into the numbers of one run.

A part holds per-entry sums (count, per-image scores, seconds, NFE) and mergeable feature statistics;
the last task to finish merges every part and turns the sums into means and Fréchet distances.
"""

import fcntl
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.config import FEATURE_METRICS, EvalRunConfig
from evaluation.entries import Entry
from evaluation.frechet import FeatureStatistics, frechet_distance


def add_dicts(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {key: a.get(key, 0.0) + b.get(key, 0.0) for key in {*a, *b}}


@dataclass
class Sums:
    """Totals over the images of one entry: per-image scores (PSNR, SSIM, CLIP, ...) are summed by name."""

    count: int = 0
    seconds: float = 0.0
    nfe_used: float = 0.0
    scores: dict[str, float] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def merge(self, other: "Sums") -> "Sums":
        return Sums(
            self.count + other.count,
            self.seconds + other.seconds,
            self.nfe_used + other.nfe_used,
            add_dicts(self.scores, other.scores),
            add_dicts(self.stage_seconds, other.stage_seconds),
        )


@dataclass
class Part:
    """What one task contributes: sums and feature statistics per entry, and for the real images."""

    sums: dict[str, Sums] = field(default_factory=dict)
    stats: dict[str, FeatureStatistics] = field(default_factory=dict)

    def add_stats(self, name: str, features: np.ndarray) -> None:
        current = self.stats.get(name)
        self.stats[name] = FeatureStatistics.of(features) if current is None else current.add(features)

    def save(self, directory: Path, task: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        sums = {key: asdict(value) for key, value in self.sums.items()}
        (directory / f"task_{task:04d}.json").write_text(
            json.dumps({"sums": sums, "stats": sorted(self.stats)})
        )
        for name, statistics in self.stats.items():
            statistics.save(directory / f"task_{task:04d}.{name.replace('|', '~')}.npz")

    @classmethod
    def load(cls, directory: Path, task: int) -> "Part":
        saved = json.loads((directory / f"task_{task:04d}.json").read_text())
        part = cls({key: Sums(**value) for key, value in saved["sums"].items()})
        for name in saved["stats"]:
            part.stats[name] = FeatureStatistics.load(
                directory / f"task_{task:04d}.{name.replace('|', '~')}.npz"
            )
        return part

    def merge(self, other: "Part") -> "Part":
        sums = {k: self.sums[k].merge(other.sums[k]) if k in self.sums else other.sums[k] for k in other.sums}
        stats = {
            k: self.stats[k].merge(other.stats[k]) if k in self.stats else other.stats[k] for k in other.stats
        }
        return Part({**self.sums, **sums}, {**self.stats, **stats})


def settings_digest(config: EvalRunConfig) -> str:
    """Parts of one evaluation live under a digest of its settings, so stale parts are never mixed in."""
    settings = {key: value for key, value in asdict(config).items() if key != "task_index"}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def merge_parts(directory: Path, num_tasks: int) -> Part | None:
    """The merged part once every task has written its own, else ``None``.

    Tasks finishing together may both see every part; a lock and a marker naming the merged part
    files (with their modification times) make exactly one of them report.
    """
    files = [directory / f"task_{task:04d}.json" for task in range(num_tasks)]
    with open(directory / ".merge.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not all(path.is_file() for path in files):
            return None
        signature = json.dumps([[path.name, path.stat().st_mtime_ns] for path in files])
        marker = directory / "merged.json"
        if marker.is_file() and marker.read_text() == signature:
            return None
        merged = Part()
        for task in range(num_tasks):
            merged = merged.merge(Part.load(directory, task))
        marker.write_text(signature)
        return merged


def result_rows(part: Part, entries: list[Entry]) -> list[dict[str, Any]]:
    """Means of the per-image scores and Fréchet distances, one row per entry."""
    rows = []
    for entry in entries:
        sums = part.sums.get(entry.key)
        if sums is None or sums.count == 0:
            continue
        row: dict[str, Any] = {
            "model": entry.model,
            "solver": entry.solver,
            "nfe": entry.nfe,
            "consistency": entry.consistency,
            "nfe_used": sums.nfe_used / sums.count,
            "images": sums.count,
            "seconds_per_image": sums.seconds / sums.count,
        }
        for stage, seconds in sorted(sums.stage_seconds.items()):
            row[f"seconds_per_image_{stage}"] = seconds / sums.count
        row |= {metric: total / sums.count for metric, total in sorted(sums.scores.items())}
        for metric in FEATURE_METRICS:
            fake = part.stats.get(f"{entry.key}|{metric}")
            real = part.stats.get(
                f"{entry.key}|pfid_fmboost_real" if metric == "pfid_fmboost" else f"real|{metric}"
            )
            if fake is not None and real is not None and min(fake.count, real.count) >= 2:
                row[metric] = frechet_distance(real, fake)
        rows.append(row)
    return rows
