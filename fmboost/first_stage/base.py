r"""The frozen first stage (autoencoder) interface shared by every implementation.

Images are [B, 3, H, W] in [-1, 1]. :meth:`FirstStage.encode` returns the *unscaled* posterior mode
(what latent shards store); models work on scaled latents

.. math::  z = (E(x) - \text{shift}) \cdot \text{scale},

obtained with :meth:`FirstStage.scale_latents` and undone with :meth:`FirstStage.unscale_latents`.
Large inputs are encoded/decoded in overlapping tiles (see :mod:`fmboost.first_stage.tiling`).
"""

import copy
import math
from abc import ABC, abstractmethod
from pathlib import Path

import torch
from torch import nn

from fmboost.config import FirstStageConfig
from fmboost.errors import WeightsError
from fmboost.first_stage.tiling import apply_tiled


def absolute(path: str | None) -> str | None:
    """A local path made absolute; hub ids and ``None`` stay as they are."""
    if path is None:
        return None
    local = Path(path).expanduser()
    return str(local.resolve()) if local.exists() else path


class FirstStage(nn.Module, ABC):
    """Frozen autoencoder with tiled encode/decode.

    Subclasses implement :meth:`_encode` and :meth:`_decode` on a batch that fits in memory and set
    ``latent_channels``, ``downsampling_factor``, ``scale`` and ``shift``.

    Args:
        tile_size: tile edge in latent pixels above which encode/decode tile automatically
            (``None``: never tile unless asked).
        tile_overlap: overlap between tiles in latent pixels.
        path: where the weights came from, as recorded by :meth:`record`; a local path is made
            absolute so a record works from any directory.
        subfolder: the weights' subfolder inside ``path``, as recorded.
        config_file: the architecture's config file, as recorded (made absolute like ``path``).
    """

    name: str
    latent_channels: int
    downsampling_factor: int

    def __init__(
        self,
        scale: float,
        shift: float,
        tile_size: int | None = None,
        tile_overlap: int = 16,
        path: str | None = None,
        subfolder: str | None = None,
        config_file: str | None = None,
    ) -> None:
        super().__init__()
        self.scale, self.shift = float(scale), float(shift)
        self.tile_size, self.tile_overlap = tile_size, tile_overlap
        self.path, self.subfolder, self.config_file = absolute(path), subfolder, absolute(config_file)

    @abstractmethod
    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        """Unscaled latent mode of a batch of images in [-1, 1]."""

    @abstractmethod
    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (not clamped) from unscaled latents."""

    def autoencoder_modules(self) -> list[nn.Module]:
        """The modules that encode and decode (what compiled inference compiles; a module never called
        is never compiled); none for a first stage without weights."""
        return []

    def record(self) -> FirstStageConfig:
        """Everything that shapes this first stage's latents, stored wherever latents are stored or used.

        The weights' origin, scale, shift and tiling (tiles change what a large image encodes to);
        :func:`fmboost.first_stage.build_first_stage` rebuilds exactly this first stage from it.
        """
        return FirstStageConfig(
            name=self.name,
            path=self.path,
            config=self.config_file,
            subfolder=self.subfolder,
            scale=self.scale,
            shift=self.shift,
            tile_size=self.tile_size,
            tile_overlap=self.tile_overlap,
        )

    def with_recorded_tiling(self, record: FirstStageConfig, owner: str) -> "FirstStage":
        """This first stage (weights shared), tiled as ``record`` says: contexts made as in training.

        ``owner`` names the record in errors. Scale and shift must agree: latents move between the two.
        """
        for key in ("scale", "shift"):
            recorded = getattr(record, key)
            if recorded is not None and not math.isclose(recorded, getattr(self, key), rel_tol=1e-6):
                raise WeightsError(
                    f"{owner} was trained on latents with {key} {recorded}, but the first stage "
                    f"{self.name!r} uses {getattr(self, key)}"
                )
        view = copy.copy(self)  # shares parameters and submodules with self
        view.tile_size, view.tile_overlap = record.tile_size, record.tile_overlap
        return view

    def scale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents - self.shift) * self.scale

    def unscale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return latents / self.scale + self.shift

    def _placement(self, like: torch.Tensor) -> tuple[torch.device, torch.dtype]:
        parameter = next(self.parameters(), None)
        if parameter is None:
            return like.device, like.dtype
        return parameter.device, parameter.dtype

    def _use_tiles(self, latent_size: tuple[int, int], tiled: bool | None) -> bool:
        if tiled is not None:
            return tiled
        return self.tile_size is not None and max(latent_size) > self.tile_size

    @torch.no_grad()
    def encode(self, images: torch.Tensor, tiled: bool | None = None) -> torch.Tensor:
        """Unscaled latents of ``images``; tiles when larger than ``tile_size`` (or when ``tiled``)."""
        f = self.downsampling_factor
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape [B, 3, H, W], got {tuple(images.shape)}")
        if images.shape[-2] % f or images.shape[-1] % f:
            raise ValueError(f"image size {tuple(images.shape[-2:])} is not divisible by the factor {f}")
        device, dtype = self._placement(images)
        images = images.to(device=device, dtype=dtype)
        latent_size = (images.shape[-2] // f, images.shape[-1] // f)
        if self._use_tiles(latent_size, tiled):
            tile = self.tile_size or max(latent_size)
            return apply_tiled(self._encode, images, tile * f, self.tile_overlap * f, 1.0 / f)
        return self._encode(images)

    def encode_scaled(self, images: torch.Tensor) -> torch.Tensor:
        """Scaled float32 latents of model images in [-1, 1]: what CFM stages consume."""
        return self.scale_latents(self.encode(images).float())

    def decode_scaled(self, latents: torch.Tensor) -> torch.Tensor:
        """Model images (float32, not clamped) from scaled latents on any device."""
        return self.decode(self.unscale_latents(latents.float())).float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, tiled: bool | None = None) -> torch.Tensor:
        """Images in [-1, 1] from unscaled latents; tiles when larger than ``tile_size``."""
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"expected latents of shape [B, {self.latent_channels}, h, w], got {tuple(latents.shape)}"
            )
        device, dtype = self._placement(latents)
        latents = latents.to(device=device, dtype=dtype)
        if self._use_tiles(tuple(latents.shape[-2:]), tiled):
            tile = self.tile_size or max(latents.shape[-2:])
            return apply_tiled(
                self._decode, latents, tile, self.tile_overlap, float(self.downsampling_factor)
            )
        return self._decode(latents)
