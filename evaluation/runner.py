"""The evaluation itself: generate for every (model, solver, NFE) entry, accumulate metrics, merge shards.

Each task (array task, torchrun rank, or the only process) evaluates its share of the validation
shards and writes a *part*: per-entry sums (count, PSNR, SSIM, CLIP, seconds, NFE) and mergeable
feature statistics. Merging the parts gives exactly the numbers of a single-process run.
"""

import fcntl
import hashlib
import json
import logging
import math
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from evaluation.clip_score import ClipScorer
from evaluation.config import FEATURE_METRICS, EvalRunConfig
from evaluation.features import FeatureExtractor
from evaluation.frechet import FeatureStatistics, frechet_distance
from evaluation.pfid import native_crops, paired_crops
from fmboost.data import ValidationStream, make_loader, resolve_dataset
from fmboost.data.dataset import SampleTransform
from fmboost.errors import FMBoostError
from fmboost.first_stage.base import FirstStage
from fmboost.image_processing import from_uint8, resize_images, to_uint8
from fmboost.metrics import psnr, ssim
from fmboost.models import FMBoostModel
from fmboost.sampling import ADAPTIVE_SOLVERS, is_valid_nfe

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    """One row of the results: a model (or baseline) with a solver and an NFE budget."""

    model: str
    solver: str = "-"
    nfe: int = 0

    @property
    def key(self) -> str:
        return f"{self.model}|{self.solver}|{self.nfe}"


@dataclass
class Sums:
    count: int = 0
    psnr: float = 0.0
    ssim: float = 0.0
    clip: float = 0.0
    seconds: float = 0.0
    nfe_used: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def merge(self, other: "Sums") -> "Sums":
        merged = {
            name: getattr(self, name) + getattr(other, name)
            for name in asdict(self)
            if name != "stage_seconds"
        }
        stages = {
            k: self.stage_seconds.get(k, 0.0) + other.stage_seconds.get(k, 0.0)
            for k in {*self.stage_seconds, *other.stage_seconds}
        }
        return Sums(**merged, stage_seconds=stages)


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


def model_labels(paths: list[str]) -> list[str]:
    """Short names for results: ``runs/demo/checkpoints/step_N/export`` → ``demo``; duplicates numbered."""
    labels = []
    for path in paths:
        parts = [
            p for p in Path(path).parts if p != "export" and p != "checkpoints" and not p.startswith("step_")
        ]
        label = parts[-1] if parts else str(path)
        labels.append(label if label not in labels else f"{label}_{len(labels)}")
    return labels


def sweep_entries(config: EvalRunConfig, labels: list[str]) -> list[Entry]:
    """Baselines, then every model × solver × NFE the solver can spend exactly (dopri5 once, adaptive)."""
    entries = [Entry(name) for name in config.baselines]
    for label in labels:
        for solver in config.solvers:
            if solver in ADAPTIVE_SOLVERS:
                entries.append(Entry(label, solver, 0))
                continue
            entries += [Entry(label, solver, nfe) for nfe in config.nfe if is_valid_nfe(solver, nfe)]
    return entries


def batch_seed(seed: int, keys: list[str]) -> int:
    """Noise and crops depend on the samples, not on how the work was split into tasks or batches."""
    return zlib.crc32(f"{seed}:{keys[0]}".encode())


class Evaluator:
    """Accumulates one task's :class:`Part` over its validation batches."""

    def __init__(
        self,
        config: EvalRunConfig,
        first_stage: FirstStage,
        extractor: FeatureExtractor | None,
        clip: ClipScorer | None,
        device: torch.device,
    ) -> None:
        self.config, self.first_stage, self.extractor, self.clip, self.device = (
            config,
            first_stage,
            extractor,
            clip,
            device,
        )
        self.part = Part()
        self.skipped_crops: set[str] = set()

    def decode(self, scaled: torch.Tensor) -> torch.Tensor:
        return self.first_stage.decode_scaled(scaled.to(self.device)).cpu()

    def features(self, name: str, images: torch.Tensor) -> None:
        self.part.add_stats(name, self.extractor(images))

    def crop_metrics(self, key: str, real: torch.Tensor, generated: torch.Tensor, seed: int) -> None:
        """p-FID crops; real crops use the same RNG stream in every entry, so they are computed once."""
        metrics = self.config.metrics
        size = min(real.shape[-2:])
        if "pfid_fmboost" in metrics:
            if size >= self.config.pfid_crop:
                rng = np.random.default_rng([seed, 1])
                real_crops, fake_crops = paired_crops(
                    real, generated, self.config.pfid_crop, self.config.pfid_crops_per_image, rng
                )
                self.features(f"{key}|pfid_fmboost", fake_crops)
                self.features(f"{key}|pfid_fmboost_real", real_crops)
            else:
                self.skipped_crops.add(f"pfid_fmboost ({self.config.pfid_crop}² crops)")
        if "pfid_anyres" in metrics:
            crop_size = self.config.anyres_crop
            if size >= crop_size:
                fake_rng = np.random.default_rng([seed, 2])
                self.features(f"{key}|pfid_anyres", native_crops(generated, crop_size, fake_rng))
                if key == self.first_key:
                    real_rng = np.random.default_rng([seed, 3])
                    self.features("real|pfid_anyres", native_crops(real, crop_size, real_rng))
            else:
                self.skipped_crops.add(f"pfid_anyres ({crop_size}² crops)")

    def record(
        self,
        entry: Entry,
        generated: torch.Tensor,
        real: torch.Tensor,
        timings: dict[str, float],
        nfe_used: int,
        seed: int,
        captions: list[str] | None = None,
    ) -> None:
        """Add one batch of generated images (uint8) against the real ones; ``timings`` in s per stage."""
        sums = self.part.sums.setdefault(entry.key, Sums())
        sums.count += len(generated)
        sums.seconds += sum(timings.values())
        for stage, seconds in timings.items():
            sums.stage_seconds[stage] = sums.stage_seconds.get(stage, 0.0) + seconds
        sums.nfe_used += nfe_used * len(generated)
        if self.config.benchmark == "upsampling":
            as_float = from_uint8(generated), from_uint8(real)
            sums.psnr += psnr(*as_float).sum().item()
            sums.ssim += ssim(*as_float).sum().item()
        if self.clip is not None and captions is not None:
            sums.clip += float(self.clip(generated, captions).sum())
        if self.extractor is not None:
            if "fid" in self.config.metrics:
                self.features(f"{entry.key}|fid", generated)
                if entry.key == self.first_key:
                    self.features("real|fid", real)
            self.crop_metrics(entry.key, real, generated, seed)

    def run_upsampling(
        self, entries: list[Entry], models: dict[str, FMBoostModel], loader
    ) -> dict[str, torch.Tensor]:
        """Evaluate every entry on every batch; returns the first batch's images for the sample grid."""
        self.first_key = entries[0].key
        grid: dict[str, torch.Tensor] = {}
        budget = self.images_for_this_task()
        seen = 0
        progress = tqdm(total=budget * len(entries), unit="img", desc="generating")
        for batch_index, batch in enumerate(loader):
            if seen >= budget:
                break
            take = min(len(batch["keys"]), budget - seen)
            batch = {name: value[:take] for name, value in batch.items()}
            seen += take
            real = batch["images"] if "images" in batch else to_uint8(self.decode(batch["x1"]))
            for entry in entries:
                seed = batch_seed(self.config.seed, batch["keys"])
                started = time.perf_counter()
                latents, nfe_used = self.generate(entry, models, batch, seed)
                sampled = time.perf_counter()
                generated = to_uint8(self.decode(latents))
                timings = {"sample": sampled - started, "decode": time.perf_counter() - sampled}
                self.record(entry, generated, real, timings, nfe_used, seed)
                progress.update(take)
                if batch_index == 0:
                    label = (
                        entry.model if entry.solver == "-" else f"{entry.model} {entry.solver} {entry.nfe}"
                    )
                    grid[label] = generated
            if batch_index == 0:
                low = to_uint8(self.decode(batch["z_low"])).float()
                low = F.interpolate(low, size=real.shape[-2:], mode="nearest").byte()
                grid = {"low-res": low, **grid, "ground truth": real}
        progress.close()
        return grid

    def images_for_this_task(self) -> int:
        num_tasks = self.config.num_tasks or 1
        return math.ceil(self.config.num_images / num_tasks)

    def generate(self, entry: Entry, models: dict[str, FMBoostModel], batch: dict, seed: int):
        if entry.model == "bilinear":
            size = tuple(batch["x1"].shape[-2:])
            return resize_images(batch["z_low"], size, "bilinear"), 0
        if entry.model == "context":
            return batch["z_up"], 0
        model = models[entry.model]
        parameter = next(model.parameters())
        generator = torch.Generator().manual_seed(seed)
        solution = model.sample(
            batch["z_up"].to(parameter.device, parameter.dtype), generator, entry.solver, entry.nfe or None
        )
        return solution.x1, solution.nfe


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


def result_rows(part: Part, entries: list[Entry], config: EvalRunConfig) -> list[dict[str, Any]]:
    """Means and Fréchet distances per entry."""
    rows = []
    for entry in entries:
        sums = part.sums.get(entry.key)
        if sums is None or sums.count == 0:
            continue
        row: dict[str, Any] = {
            "model": entry.model,
            "solver": entry.solver,
            "nfe": entry.nfe,
            "nfe_used": sums.nfe_used / sums.count,
            "images": sums.count,
            "seconds_per_image": sums.seconds / sums.count,
        }
        for stage, seconds in sorted(sums.stage_seconds.items()):
            row[f"seconds_per_image_{stage}"] = seconds / sums.count
        if config.benchmark == "upsampling":
            row["psnr"], row["ssim"] = sums.psnr / sums.count, sums.ssim / sums.count
        if "clip" in config.metrics and sums.clip:
            row["clip"] = sums.clip / sums.count
        for metric in FEATURE_METRICS:
            fake = part.stats.get(f"{entry.key}|{metric}")
            real = part.stats.get(
                f"{entry.key}|pfid_fmboost_real" if metric == "pfid_fmboost" else f"real|{metric}"
            )
            if fake is not None and real is not None and min(fake.count, real.count) >= 2:
                row[metric] = frechet_distance(real, fake)
        rows.append(row)
    return rows


def validation_loader(config: EvalRunConfig, model: FMBoostModel | None, task: int, num_tasks: int):
    dataset = resolve_dataset(config.data)
    upsampling = model.flow_config.upsampling if model is not None else dataset.manifest.psu_variant
    transform = SampleTransform(dataset.manifest, upsampling)
    return make_loader(ValidationStream(dataset, transform, config.batch_size, task, num_tasks), 0), dataset


def reference_like(real: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    """Reference images at the generated size (antialiased), so crops can be paired."""
    if real.shape[-2:] == generated.shape[-2:]:
        return real
    return to_uint8(resize_images(from_uint8(real), tuple(generated.shape[-2:])))


def run_zero_shot(evaluator: Evaluator, entries: list[Entry], pipeline, loader) -> dict[str, torch.Tensor]:
    """Prompts and reference images from held-out shards → base LDM → CFM stages; metrics per entry."""
    config = evaluator.config
    evaluator.first_key = entries[0].key
    grid: dict[str, torch.Tensor] = {}
    budget, seen = evaluator.images_for_this_task(), 0
    progress = tqdm(total=budget * len(entries), unit="img", desc="generating")
    for batch_index, batch in enumerate(loader):
        if seen >= budget:
            break
        if "images" not in batch:
            raise FMBoostError(
                f"{config.data}: zero-shot evaluation needs reference images (encode with save_images)"
            )
        take = min(len(batch["keys"]), budget - seen)
        captions, seen = batch["captions"][:take], seen + take
        for entry in entries:
            seed = batch_seed(config.seed, batch["keys"])
            output = pipeline(
                prompts=captions,
                seed=seed,
                nfe=entry.nfe or None,
                solver=entry.solver,
                num_inference_steps=config.base_steps,
                guidance_scale=config.guidance_scale,
            )
            generated = torch.stack(
                [torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1) for image in output.images]
            )
            real = reference_like(batch["images"][:take], generated)
            evaluator.record(entry, generated, real, output.timings, sum(output.nfe), seed, captions)
            progress.update(take)
            if batch_index == 0:
                grid[f"{entry.solver} {entry.nfe}"] = generated
        if batch_index == 0:
            grid["reference"] = reference_like(batch["images"][:take], next(iter(grid.values())))
    progress.close()
    return grid
