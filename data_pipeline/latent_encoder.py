"""Batched encoding of high-res crops into the three stored latents, on GPU with autocast if present."""

import contextlib

import numpy as np
import torch

from data_pipeline.preprocess import Reason
from fmboost.devices import autocast_to, precision_dtype
from fmboost.first_stage.base import FirstStage
from fmboost.flow.upsampling import upsample_latents
from fmboost.image_processing import from_uint8, resize_images

FLOAT16_MAX = 65504.0


def unstorable(arrays: dict[str, np.ndarray]) -> tuple[str, str] | None:
    """Why one sample's latents cannot be stored, as (rejection reason, detail naming the array), or None:
    NaN or infinite values (a broken first stage or teacher), or values float16 storage would turn into
    infinities. Either one, read in training, turns the loss into NaN."""
    for name, array in arrays.items():
        finite = np.isfinite(array)
        if not finite.all():
            nan = int(np.isnan(array).sum())
            detail = f"{name} has {nan} NaN and {array.size - int(finite.sum()) - nan} infinite values"
            return Reason.NON_FINITE_LATENT, detail
        if (peak := float(np.abs(array).max())) >= FLOAT16_MAX:
            return Reason.LATENT_OVERFLOW, f"{name} reaches {peak:.4g}, beyond float16's {FLOAT16_MAX:g}"
    return None


class LatentEncoder:
    """``encode(uint8 crops)`` → unscaled ``latent``, ``latent_lowres`` and ``latent_psu`` arrays (float32).

    The low-res image is an antialiased downsample of the crop, or the given (degraded) ``low_crops``;
    the context is built from it. Precision ``auto`` means bf16 autocast on CUDA and fp32 on CPU.
    """

    def __init__(
        self, first_stage: FirstStage, low_res: int, psu_variant: str, device: torch.device, precision: str
    ) -> None:
        self.first_stage = first_stage.to(device)
        self.low_res, self.psu_variant, self.device = low_res, psu_variant, device
        self.dtype = precision_dtype(precision, device)

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast_to(self.dtype, self.device)

    @torch.no_grad()
    def encode(self, crops: torch.Tensor, low_crops: torch.Tensor | None = None) -> dict[str, np.ndarray]:
        high = from_uint8(crops.to(self.device, non_blocking=True))
        if low_crops is None:
            low = resize_images(high, (self.low_res, self.low_res)).clamp(-1, 1)
        else:
            low = from_uint8(low_crops.to(self.device, non_blocking=True))
        factor = high.shape[-1] // self.low_res
        with self.autocast():
            latent = self.first_stage.encode(high)
            latent_low = self.first_stage.encode(low)
            latent_psu = upsample_latents(
                latent_low, self.psu_variant, self.first_stage, factor, image_low=low
            )
        return {
            "latent": latent.float().cpu().numpy(),
            "latent_lowres": latent_low.float().cpu().numpy(),
            "latent_psu": latent_psu.float().cpu().numpy(),
        }
