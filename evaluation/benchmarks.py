"""The benchmarks, one function each of the same shape: ``(recorder, entries, generators, loader) → grid``.

- ``upsampling`` (paper Tab. 2): held-out latent pairs; every model and baseline upsamples the stored
  context, once, and each consistency step corrects that output; PSNR/SSIM against the ground truth,
  LR-PSNR/LR-SSIM against the low-res input, FID and p-FID when Inception loads.
- ``zero_shot`` (paper Tab. 1): captions of held-out shards → base LDM → CFM stages; CLIP, FID, p-FID
  against the reference images.

The grid returned holds the first batch's images, one column per entry (low-res first, ground truth last).
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from evaluation.entries import Entry, batch_seed, variant_seed
from evaluation.recorder import Recorder
from fmboost.errors import FMBoostError
from fmboost.first_stage.base import FirstStage
from fmboost.image_processing import from_uint8, resize_images, to_uint8
from fmboost.inference.pipeline import FMBoostPipeline
from fmboost.inference.upsampling_eval import (
    Upsampled,
    baseline,
    consistency_input,
    ground_truth,
    low_res_preview,
    upsample,
    upscale_factor,
    with_consistency,
)
from fmboost.models import FMBoostModel

logger = logging.getLogger("evaluation.benchmarks")


@dataclass
class Generators:
    """What produces images: CFM stages by label (upsampling) or a base-to-stages pipeline (zero-shot);
    ``degraded_inputs``: the held-out low-res inputs were degraded at encode time."""

    first_stage: FirstStage
    models: dict[str, FMBoostModel] = field(default_factory=dict)
    pipeline: FMBoostPipeline | None = None
    degraded_inputs: bool = False


Grid = dict[str, torch.Tensor]


def batches_for_this_task(recorder: Recorder, loader, entries: list[Entry]):
    """This task's batches, cut to its share of ``num_images``, with a progress bar over all entries."""
    budget, seen = recorder.images_for_this_task(), 0
    with tqdm(total=budget * len(entries), unit="img", desc="generating") as progress:
        for batch in loader:
            if seen >= budget:
                break
            take = min(len(batch["keys"]), budget - seen)
            seen += take
            yield {name: value[:take] for name, value in batch.items()}
            progress.update(take * len(entries))


def teacher_reference(recorder: Recorder, generators: Generators, batch: dict, seed: int) -> Upsampled | None:
    """The teacher's output for ``batch`` from the batch's start noise (``teacher_psnr``'s reference)."""
    config = recorder.config
    if config.teacher is None:
        return None
    if config.teacher not in generators.models:
        raise FMBoostError(
            f"{config.teacher} is not one of the evaluated models ({', '.join(generators.models)})", "teacher"
        )
    model = generators.models[config.teacher]
    return upsample(model, batch, generators.first_stage, config.teacher_solver, config.teacher_nfe, seed)


def seed_variants(recorder: Recorder, generators: Generators, entry: Entry, batch: dict, seed: int) -> list:
    """The entry's images from ``diversity_seeds`` other seeds (none for baselines: they are fixed)."""
    if entry.is_baseline:
        return []
    model, fs = generators.models[entry.model], generators.first_stage
    return [
        upsample(model, batch, fs, entry.solver, entry.nfe or None, variant_seed(seed, variant)).images
        for variant in range(1, recorder.config.diversity_seeds + 1)
    ]


def warm_up(generators: Generators, batch: dict) -> None:
    """One untimed 1-NFE sample per model (and decode) on ``batch``: compiles before anything is timed."""
    for label, model in generators.models.items():
        started = time.perf_counter()
        upsample(model, batch, generators.first_stage, "euler", 1, 0)
        logger.info("warm-up of %s (torch.compile): %.1f s", label, time.perf_counter() - started)


def raw_output(
    recorder: Recorder,
    generators: Generators,
    entry: Entry,
    batch: dict,
    seed: int,
    teacher: Upsampled | None,
) -> Upsampled:
    """The entry's output before any consistency step (the teacher's reference is not sampled twice)."""
    config, fs = recorder.config, generators.first_stage
    if entry.is_baseline:
        return baseline(entry.model, batch, fs)
    if teacher is not None and entry == Entry(
        config.teacher or "", config.teacher_solver, config.teacher_nfe
    ):
        return teacher
    return upsample(generators.models[entry.model], batch, fs, entry.solver, entry.nfe or None, seed)


def run_upsampling(recorder: Recorder, entries: list[Entry], generators: Generators, loader) -> Grid:
    """Every entry on every held-out batch, from the stored contexts; the teacher's reference once a batch.
    Entries that differ only in their consistency step correct one sample."""
    config, fs, grid = recorder.config, generators.first_stage, {}
    for batch_index, batch in enumerate(batches_for_this_task(recorder, loader, entries)):
        if config.compile and batch_index == 0:
            warm_up(generators, batch)
        real = ground_truth(batch, fs)
        low = consistency_input(batch, fs, real, generators.degraded_inputs)
        seed = batch_seed(config.seed, batch["keys"])
        reference = teacher_reference(recorder, generators, batch, seed)
        raw: dict[Entry, Upsampled] = {}
        for entry in entries:
            plain = entry.without_consistency
            if plain not in raw:
                raw[plain] = raw_output(recorder, generators, plain, batch, seed, reference)
            result = with_consistency(raw[plain], low, entry.consistency)
            compares_to_teacher = reference is not None and result is not reference and entry == plain
            recorder.record(
                entry,
                result.images,
                real,
                result.timings,
                result.nfe,
                seed,
                upscale=upscale_factor(batch),
                teacher=reference.images if compares_to_teacher else None,
                variants=seed_variants(recorder, generators, entry, batch, seed) if entry == plain else None,
            )
            if batch_index == 0:
                grid[entry.label] = result.images
        if batch_index == 0:
            grid = {
                "low-res": low_res_preview(batch, fs, tuple(real.shape[-2:])),
                **grid,
                "ground truth": real,
            }
    return grid


def reference_like(real: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    """Reference images at the generated size (antialiased), so crops can be paired."""
    if real.shape[-2:] == generated.shape[-2:]:
        return real
    return to_uint8(resize_images(from_uint8(real), tuple(generated.shape[-2:])))


def run_zero_shot(recorder: Recorder, entries: list[Entry], generators: Generators, loader) -> Grid:
    """Prompts and reference images from held-out shards → base LDM → CFM stages."""
    config, grid = recorder.config, {}
    for batch_index, batch in enumerate(batches_for_this_task(recorder, loader, entries)):
        if "images" not in batch:
            raise FMBoostError(
                f"{config.data}: zero-shot evaluation needs reference images (encode with save_images)"
            )
        captions = batch["captions"]
        seed = batch_seed(config.seed, batch["keys"])
        for entry in entries:
            output = generators.pipeline(
                prompts=captions,
                seed=seed,
                nfe=entry.nfe or None,
                solver=entry.solver,
                consistency=entry.consistency,
                num_inference_steps=config.base_steps,
                guidance_scale=config.guidance_scale,
            )
            generated = torch.stack(
                [torch.from_numpy(np.asarray(i).copy()).permute(2, 0, 1) for i in output.images]
            )
            real = reference_like(batch["images"], generated)
            recorder.record(entry, generated, real, output.timings, sum(output.nfe), seed, captions)
            if batch_index == 0:
                grid[f"{entry.solver} {entry.nfe}"] = generated
        if batch_index == 0:
            grid["reference"] = reference_like(batch["images"], next(iter(grid.values())))
    return grid


BENCHMARKS: dict[str, Callable[[Recorder, list[Entry], Generators, object], Grid]] = {
    "upsampling": run_upsampling,
    "zero_shot": run_zero_shot,
}
