r"""Bringing the low-res latent onto the high-res grid, so that x0 and x1 share one shape.

Modes (``flow.upsampling``), all on *unscaled* latents of factor-``f`` first stages:

- ``psu_roundtrip``: pixel-space upsampling :math:`E(\mathrm{UP}(D(z_{low})))`; matches inference exactly
  (our default).
- ``psu_pixel``: :math:`E(\mathrm{UP}(x_{low}))` from the low-res *image*, which only exists at encode time
  (what the paper's released code does). Without an image it decodes :math:`z_{low}` first, i.e. it
  equals ``psu_roundtrip``, which is the only thing inference can do.
- ``bilinear``, ``nearest``: resize the latent itself (ablation baselines).

UP is a bilinear resize; downsampling always uses antialiasing.
"""

from collections.abc import Callable

import torch

from fmboost.first_stage.base import FirstStage
from fmboost.image_processing import resize_images
from fmboost.registry import Registry

LatentUpsampler = Callable[[torch.Tensor, FirstStage, int, "torch.Tensor | None"], torch.Tensor]
UPSAMPLERS: Registry[LatentUpsampler] = Registry("upsampling mode")


def scaled_size(latents: torch.Tensor, factor: int) -> tuple[int, int]:
    return latents.shape[-2] * factor, latents.shape[-1] * factor


@UPSAMPLERS.register("psu_roundtrip")
def psu_roundtrip(
    z_low: torch.Tensor, first_stage: FirstStage, factor: int, image_low: torch.Tensor | None = None
) -> torch.Tensor:
    """``E(UP(D(z_low)))``; ``image_low`` is ignored (the round trip is the point)."""
    return psu_from_image(first_stage.decode(z_low), first_stage, factor)


@UPSAMPLERS.register("psu_pixel")
def psu_pixel(
    z_low: torch.Tensor, first_stage: FirstStage, factor: int, image_low: torch.Tensor | None = None
) -> torch.Tensor:
    """``E(UP(x_low))`` from the low-res image; decodes ``z_low`` when no image is given."""
    image = image_low if image_low is not None else first_stage.decode(z_low)
    return psu_from_image(image, first_stage, factor)


def psu_from_image(image_low: torch.Tensor, first_stage: FirstStage, factor: int) -> torch.Tensor:
    size = scaled_size(image_low, factor)
    return first_stage.encode(resize_images(image_low.float(), size).clamp(-1, 1)).to(image_low.dtype)


@UPSAMPLERS.register("bilinear")
def bilinear(
    z_low: torch.Tensor, first_stage: FirstStage, factor: int, image_low: torch.Tensor | None = None
) -> torch.Tensor:
    return resize_images(z_low, scaled_size(z_low, factor), "bilinear")


@UPSAMPLERS.register("nearest")
def nearest(
    z_low: torch.Tensor, first_stage: FirstStage, factor: int, image_low: torch.Tensor | None = None
) -> torch.Tensor:
    return resize_images(z_low, scaled_size(z_low, factor), "nearest")


def upsample_latents(
    z_low: torch.Tensor,
    mode: str,
    first_stage: FirstStage,
    factor: int,
    image_low: torch.Tensor | None = None,
) -> torch.Tensor:
    """Unscaled low-res latents → unscaled latents ``factor`` times larger, with the named ``mode``."""
    return UPSAMPLERS.get(mode, "flow.upsampling")(z_low, first_stage, factor, image_low)
