"""Accumulating one task's metrics over its batches: per-image scores, feature statistics, timings."""

import math

import numpy as np
import torch

from evaluation.clip_score import ClipScorer
from evaluation.config import DETAIL_METRICS, EvalRunConfig
from evaluation.detail_metrics import detail_metrics
from evaluation.entries import Entry
from evaluation.features import FeatureExtractor
from evaluation.parts import Part, Sums
from evaluation.pfid import native_crops, paired_crops
from fmboost.image_processing import from_uint8
from fmboost.inference.upsampling_eval import score
from fmboost.metrics import psnr


def diversity(samples: list[torch.Tensor]) -> torch.Tensor:
    """Per image, the mean over pixels of the standard deviation across seeds (pixels in [0, 1]):
    0 when every seed gives the same image, as a student that collapsed to the mean does."""
    stacked = torch.stack([images.float() / 255.0 for images in samples])
    return stacked.std(dim=0, correction=0).flatten(1).mean(1)


class Recorder:
    """Turns generated images into this task's :class:`Part`.

    ``metrics`` are the metrics that will actually be computed (those whose weights loaded), so the
    configuration itself is never changed at run time; ``num_tasks`` is the resolved split of the work
    (from the config, Slurm or torchrun), which sets this task's share of ``num_images``.
    """

    def __init__(
        self,
        config: EvalRunConfig,
        metrics: list[str],
        extractor: FeatureExtractor | None,
        clip: ClipScorer | None,
        first_key: str,
        num_tasks: int = 1,
    ) -> None:
        self.config, self.metrics, self.extractor, self.clip = config, metrics, extractor, clip
        self.first_key = first_key  # the entry that also records the real images' statistics
        self.num_tasks = num_tasks
        self.part = Part()
        self.skipped_crops: set[str] = set()

    def images_for_this_task(self) -> int:
        return math.ceil(self.config.num_images / self.num_tasks)

    def features(self, name: str, images: torch.Tensor) -> None:
        self.part.add_stats(name, self.extractor(images))

    def crop_metrics(self, key: str, real: torch.Tensor, generated: torch.Tensor, seed: int) -> None:
        """p-FID crops; real crops use the same RNG stream in every entry, so they are computed once."""
        size = min(real.shape[-2:])
        if "pfid_fmboost" in self.metrics:
            if size >= self.config.pfid_crop:
                rng = np.random.default_rng([seed, 1])
                crops = paired_crops(
                    real, generated, self.config.pfid_crop, self.config.pfid_crops_per_image, rng
                )
                self.features(f"{key}|pfid_fmboost", crops[1])
                self.features(f"{key}|pfid_fmboost_real", crops[0])
            else:
                self.skipped_crops.add(f"pfid_fmboost ({self.config.pfid_crop}² crops)")
        if "pfid_anyres" in self.metrics:
            crop_size = self.config.anyres_crop
            if size >= crop_size:
                self.features(
                    f"{key}|pfid_anyres", native_crops(generated, crop_size, np.random.default_rng([seed, 2]))
                )
                if key == self.first_key:
                    self.features(
                        "real|pfid_anyres", native_crops(real, crop_size, np.random.default_rng([seed, 3]))
                    )
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
        upscale: int | None = None,
        teacher: torch.Tensor | None = None,
        variants: list[torch.Tensor] | None = None,
    ) -> None:
        """Add one batch of generated images (uint8) against the real ones; ``timings`` in s per stage.

        ``upscale`` (the factor from the low-res input) sets the band of the detail metrics;
        ``teacher``: the teacher's images from the same noise (``teacher_psnr``); ``variants``: the same
        entry's images from other seeds (``diversity``).
        """
        scores: dict[str, float] = {}
        if self.config.benchmark == "upsampling":
            scores |= {name: float(values.sum()) for name, values in score(generated, real, upscale).items()}
        if upscale is not None and any(metric in self.metrics for metric in DETAIL_METRICS):
            details = detail_metrics(generated, real, upscale)
            scores |= {name: float(values.sum()) for name, values in details.items() if name in self.metrics}
        if teacher is not None:
            scores["teacher_psnr"] = float(psnr(from_uint8(generated), from_uint8(teacher)).sum())
        if variants:
            scores["diversity"] = float(diversity([generated, *variants]).sum())
        if self.clip is not None and captions is not None:
            scores["clip"] = float(self.clip(generated, captions).sum())
        batch = Sums(len(generated), sum(timings.values()), nfe_used * len(generated), scores, dict(timings))
        self.part.sums[entry.key] = self.part.sums.get(entry.key, Sums()).merge(batch)
        if self.extractor is not None:
            if "fid" in self.metrics:
                self.features(f"{entry.key}|fid", generated)
                if entry.key == self.first_key:
                    self.features("real|fid", real)
            self.crop_metrics(entry.key, real, generated, seed)
