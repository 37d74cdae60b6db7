"""Overlapping tiles and the weights that blend them: the one definition for the first stage's tiled
encoding and decoding (:mod:`fmboost.first_stage.tiling`) and the flow network's tiles
(:mod:`fmboost.flow.tiled_sampling`).

Tiles of ``tile`` positions cover a side of ``length``, neighbours sharing ``overlap`` positions, the
last one ending at the edge. Their outputs are blended with weights that ramp linearly across each
overlap, so that no seam shows (as MultiDiffusion and tiled VAEs do); every weight is positive, so the
blend is a weighted mean.
"""

import torch


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` positions covering ``length``, neighbours sharing ``overlap``."""
    if length <= tile:
        return [0]
    return [*range(0, length - tile, tile - overlap), length - tile]


def blend_ramp(
    length: int,
    overlap: int,
    ramp_start: bool = True,
    ramp_end: bool = True,
    device: torch.device | None = None,
) -> torch.Tensor:
    """1-D weights: ``(i + 1) / (overlap + 1)`` over the ``overlap`` positions at each end that meets a
    neighbour (``ramp_start``, ``ramp_end``), 1 in between; never 0."""
    positions = torch.arange(length, dtype=torch.float32, device=device)
    rising = (positions + 1) / (overlap + 1) if ramp_start else torch.ones_like(positions)
    falling = (length - positions) / (overlap + 1) if ramp_end else torch.ones_like(positions)
    return torch.minimum(rising, falling).clamp(max=1.0)
