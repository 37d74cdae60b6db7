"""Patch-wise evaluation of the flow network, so inference memory is bounded by a tile, not the image.

The U-Net's activations grow with the latent's area (and attention with its square), so boosting a
large photo in one piece runs out of memory. :class:`TiledNet` wraps the network: an input larger than
``tile_size`` on either side is cut into overlapping ``tile_size``² tiles, each tile is evaluated on
its own and the outputs are blended with weights that ramp linearly across the overlap (as
MultiDiffusion and tiled diffusion upscalers do). Blending happens at *every* network evaluation, so
all tiles integrate one shared state and no seams are left to stitch at the end.

The price: a tile sees only its own neighbourhood, and the U-Net's group normalisation and attention
take their statistics over the tile instead of the whole latent (``bench/tiled_sampling.py`` measures
the difference).
"""

from collections.abc import Callable

import torch

from fmboost.errors import FMBoostError
from fmboost.tiling import blend_ramp, tile_starts

Net = Callable[..., torch.Tensor]


def validate_tiling(tile_size: int, overlap: int, size_multiple: int) -> None:
    """A tile must fit the U-Net (a multiple of its downsampling) and be wider than its overlap."""
    if tile_size <= 0 or tile_size % size_multiple:
        raise FMBoostError(
            f"flow tile size must be a positive multiple of {size_multiple} (the U-Net's downsampling), "
            f"got {tile_size}",
            "flow_tile_size",
        )
    if not 0 <= overlap < tile_size:
        raise FMBoostError(
            f"flow tile overlap must be at least 0 and less than the tile size {tile_size}, got {overlap}",
            "flow_tile_overlap",
        )


class TiledNet:
    """``net(x, t)`` evaluated in overlapping tiles of at most ``tile_size``² positions, then blended."""

    def __init__(self, net: Net, tile_size: int, overlap: int) -> None:
        self.net, self.tile_size, self.overlap = net, tile_size, overlap

    def __call__(self, x: torch.Tensor, t: torch.Tensor, *conditioning: torch.Tensor) -> torch.Tensor:
        """``conditioning``: per-sample inputs passed on unchanged to every tile (a student's step size)."""
        height, width = x.shape[-2:]
        if height <= self.tile_size and width <= self.tile_size:
            return self.net(x, t, *conditioning)
        tile_h, tile_w = min(self.tile_size, height), min(self.tile_size, width)
        weight = (blend_ramp(tile_h, self.overlap)[:, None] * blend_ramp(tile_w, self.overlap)[None, :]).to(
            x.device
        )
        blended = total = None
        for top in tile_starts(height, self.tile_size, self.overlap):
            for left in tile_starts(width, self.tile_size, self.overlap):
                window = (..., slice(top, top + tile_h), slice(left, left + tile_w))
                output = self.net(x[window], t, *conditioning)
                if blended is None:
                    blended = x.new_zeros((*output.shape[:-2], height, width), dtype=torch.float32)
                    total = x.new_zeros((height, width), dtype=torch.float32)
                blended[window] += output.float() * weight
                total[window[1:]] += weight
        return (blended / total).to(output.dtype)
