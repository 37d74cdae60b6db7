"""What training validation and evaluation share: upsample held-out pairs, decode, score, lay out grids.

Both run the same steps on a batch of a latent validation stream: generate the high-res latent with a
CFM stage (or a baseline), decode it to uint8 pixels, score it against the ground truth and show it
next to the low-res input. Training logs a few images every ``validate_every`` steps; evaluation sweeps
solvers and NFE over a whole held-out set.

Baselines (no model):

- ``bicubic``: the low-res latent decoded and the *image* enlarged with PIL's bicubic filter: what a
  user does without FMBoost;
- ``context``: the model's upsampled context ``z_up`` decoded (the ODE start without noise);
- ``latent_bilinear``: the low-res latent resized *in latent space*: an ablation, not a real baseline;
- ``first_stage_ceiling``: the ground truth's own high-res latent decoded: the ground truth encoded and
  decoded by the first stage, which no latent method can beat. It shows what the autoencoder costs.

Any result can go through a consistency step (:mod:`fmboost.consistency`) against the low-res input,
and :func:`score` adds its consistency with that input: LR-PSNR and LR-SSIM.

Example:
    >>> loader, dataset = validation_loader("data/latents/val", "psu_roundtrip", batch_size=8)
    >>> batch = next(iter(loader))
    >>> result = upsample(model, batch, first_stage, solver="euler", nfe=40, seed=0)
    >>> scores = score(result.images, ground_truth(batch, first_stage))
"""

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fmboost.consistency import downsample, enforce_consistency
from fmboost.data import LatentDataset, ValidationStream, make_loader, resolve_dataset
from fmboost.data.dataset import SampleTransform
from fmboost.first_stage.base import FirstStage
from fmboost.image_processing import from_uint8, resize_images, to_pil, to_uint8
from fmboost.metrics import psnr, ssim
from fmboost.models import FMBoostModel

BASELINES = ("bicubic", "context", "latent_bilinear", "first_stage_ceiling")
SSIM_WINDOW = 11  # SSIM's Gaussian window: low-res images smaller than this get no LR-SSIM


@dataclass
class Upsampled:
    """Generated uint8 images [B, 3, H, W], the network evaluations spent and seconds per step."""

    images: torch.Tensor
    nfe: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def validation_loader(
    spec: str,
    upsampling: str,
    batch_size: int,
    crop_size: int | None = None,
    task: int = 0,
    num_tasks: int = 1,
) -> tuple[object, LatentDataset]:
    """A finite, deterministic loader over this task's share of the held-out shards ``spec``."""
    dataset = resolve_dataset(spec)
    transform = SampleTransform(dataset.manifest, upsampling, crop_size)
    return make_loader(ValidationStream(dataset, transform, batch_size, task, num_tasks), 0), dataset


def decode(first_stage: FirstStage, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents → uint8 images on the CPU (decoded wherever the first stage lives)."""
    return to_uint8(first_stage.decode_scaled(latents))


def ground_truth(batch: dict, first_stage: FirstStage) -> torch.Tensor:
    """The stored high-res images when the shards have them, else the decoded high-res latents."""
    return batch["images"] if "images" in batch else decode(first_stage, batch["x1"])


def upscale_factor(batch: dict) -> int:
    """How many times larger the high-res latents of ``batch`` are than its low-res ones."""
    return batch["x1"].shape[-1] // batch["z_low"].shape[-1]


def low_res_size(images: torch.Tensor, upscale: int) -> tuple[int, int]:
    return images.shape[-2] // upscale, images.shape[-1] // upscale


def consistency_input(
    batch: dict, first_stage: FirstStage, real: torch.Tensor, degraded: bool
) -> torch.Tensor:
    """The low-res input a consistency step corrects against, as model images.

    Clean inputs were made from the high-res crop by :func:`~fmboost.consistency.downsample`, so the
    ground truth downsampled the same way is the input (up to the stored JPEG's error). Degraded inputs
    are not stored: their low-res latent, decoded, stands in for them.
    """
    if degraded:
        return first_stage.decode_scaled(batch["z_low"]).float().cpu()
    return downsample(from_uint8(real), low_res_size(real, upscale_factor(batch)))


def with_consistency(result: "Upsampled", low: torch.Tensor, mode: str) -> "Upsampled":
    """``result`` corrected by the consistency step ``mode`` against the low-res input ``low``."""
    if mode == "none":
        return result
    started = time.perf_counter()
    images = to_uint8(enforce_consistency(from_uint8(result.images), low, mode))
    return Upsampled(images, result.nfe, {**result.timings, "consistency": time.perf_counter() - started})


def low_res_preview(batch: dict, first_stage: FirstStage, size: tuple[int, int]) -> torch.Tensor:
    """The low-res input decoded and enlarged (nearest) to ``size``, for grids."""
    low = decode(first_stage, batch["z_low"]).float()
    return F.interpolate(low, size=size, mode="nearest").to(torch.uint8)


def bicubic(low: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 images enlarged to ``size`` (height, width) with PIL's bicubic filter."""
    enlarged = [
        np.asarray(image.resize((size[1], size[0]), Image.Resampling.BICUBIC))
        for image in to_pil(from_uint8(low))
    ]
    return torch.from_numpy(np.stack(enlarged)).permute(0, 3, 1, 2).contiguous()


def baseline(name: str, batch: dict, first_stage: FirstStage) -> Upsampled:
    """One of :data:`BASELINES` for ``batch``."""
    started = time.perf_counter()
    if name == "bicubic":
        low = decode(first_stage, batch["z_low"])
        factor = upscale_factor(batch)
        images = bicubic(low, (low.shape[-2] * factor, low.shape[-1] * factor))
        return Upsampled(images, 0, {"sample": 0.0, "decode": time.perf_counter() - started})
    if name == "context":
        latents = batch["z_up"]
    elif name == "first_stage_ceiling":
        latents = batch["x1"]
    elif name == "latent_bilinear":
        latents = resize_images(batch["z_low"], tuple(batch["x1"].shape[-2:]), "bilinear")
    else:
        raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
    made = time.perf_counter()
    images = decode(first_stage, latents)
    return Upsampled(images, 0, {"sample": made - started, "decode": time.perf_counter() - made})


@torch.no_grad()
def upsample(
    model: FMBoostModel, batch: dict, first_stage: FirstStage, solver: str, nfe: int | None, seed: int
) -> Upsampled:
    """The model's high-res sample from the batch's stored context, with noise seeded by ``seed``."""
    started = time.perf_counter()
    parameter = next(model.parameters())
    solution = model.sample(
        batch["z_up"].to(parameter.device, parameter.dtype), torch.Generator().manual_seed(seed), solver, nfe
    )
    sampled = time.perf_counter()
    images = decode(first_stage, solution.x1)
    return Upsampled(
        images, solution.nfe, {"sample": sampled - started, "decode": time.perf_counter() - sampled}
    )


def score(generated: torch.Tensor, real: torch.Tensor, upscale: int | None = None) -> dict[str, torch.Tensor]:
    """Per-image PSNR (dB) and SSIM of uint8 images against the ground truth; with the ``upscale``
    factor from the low-res input, also LR-PSNR and LR-SSIM: both downsampled by the kernel that made
    the input (:func:`~fmboost.consistency.downsample`), i.e. the output against the clean low-res image."""
    as_float = from_uint8(generated), from_uint8(real)
    scores = {"psnr": psnr(*as_float), "ssim": ssim(*as_float)}
    if upscale is not None:
        size = low_res_size(real, upscale)
        low_generated, low_real = (downsample(images, size) for images in as_float)
        scores["lr_psnr"] = psnr(low_generated, low_real)
        if min(size) >= SSIM_WINDOW:
            scores["lr_ssim"] = ssim(low_generated, low_real)
    return scores
