"""Tiled application of an image-to-image function, for encoding and decoding large images.

A 2048² image does not fit through an SD-sized VAE at once (the decoder's mid-block attention alone
needs tens of GB). We cut the input into overlapping tiles, run each tile alone, and blend the
outputs with weights that ramp linearly across the overlap, so seams are invisible and memory is
bounded by one tile.
"""

from collections.abc import Callable

import torch

from fmboost.tiling import blend_ramp, tile_starts


def apply_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile: int,
    overlap: int,
    scale: float,
) -> torch.Tensor:
    """Apply ``fn`` to ``x`` [B, C, H, W] tile by tile and blend the results.

    Args:
        fn: maps a [B, C, h, w] tile to [B, C', h·scale, w·scale].
        tile: tile size in input pixels.
        overlap: overlap between neighbouring tiles in input pixels.
        scale: output/input size ratio (8 for a decoder with factor 8, 1/8 for the encoder).
    """
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must lie in [0, tile), got overlap={overlap}, tile={tile}")
    _, _, height, width = x.shape
    rows = tile_starts(height, tile, overlap)
    cols = tile_starts(width, tile, overlap)
    out_overlap = round(overlap * scale)
    output: torch.Tensor | None = None
    total_weight: torch.Tensor | None = None
    for top in rows:
        for left in cols:
            piece = fn(x[:, :, top : top + tile, left : left + tile])
            if output is None:
                out_shape = (x.shape[0], piece.shape[1], round(height * scale), round(width * scale))
                output = torch.zeros(out_shape, device=piece.device, dtype=torch.float32)
                total_weight = torch.zeros(out_shape[-2:], device=piece.device, dtype=torch.float32)
            out_top, out_left = round(top * scale), round(left * scale)
            ph, pw = piece.shape[-2:]
            # ramps only where a neighbour overlaps: the image's own edges keep full weight
            weight = (
                blend_ramp(ph, out_overlap, top != rows[0], top != rows[-1], piece.device)[:, None]
                * (blend_ramp(pw, out_overlap, left != cols[0], left != cols[-1], piece.device)[None, :])
            )
            output[:, :, out_top : out_top + ph, out_left : out_left + pw] += piece.float() * weight
            total_weight[out_top : out_top + ph, out_left : out_left + pw] += weight
    return (output / total_weight).to(piece.dtype)
