"""Pixel space as a first stage: the weight-free default (the paper's code supports it too)."""

import torch

from fmboost.first_stage.base import FirstStage


class IdentityFirstStage(FirstStage):
    """Latents are the images themselves: 3 channels, factor 1, scale 1, shift 0."""

    name = "identity"
    latent_channels = 3
    downsampling_factor = 1

    def __init__(self) -> None:
        super().__init__(scale=1.0, shift=0.0, tile_size=None)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents
