"""Crops for patch FID, the two named variants of DESIGN.md.

- ``pfid_fmboost``: ``count`` random ``size``² crops per image (512² in the paper) at the *same* offsets
  in the real and the generated image (paired), features as for FID.
- ``pfid_anyres`` (Chai et al. 2022): random 299² crops at native resolution, no resize, drawn
  independently for real and generated images.
"""

import numpy as np
import torch


def random_offsets(
    height: int, width: int, size: int, count: int, rng: np.random.Generator
) -> list[tuple[int, int]]:
    if size > min(height, width):
        raise ValueError(f"a {size}² crop does not fit a {height}×{width} image")
    return [
        (int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1)))
        for _ in range(count)
    ]


def crop(images: torch.Tensor, offsets: list[tuple[int, int]], size: int) -> torch.Tensor:
    """[B, C, H, W] → [B·len(offsets), C, size, size], the offsets applied to every image."""
    return torch.cat([images[:, :, top : top + size, left : left + size] for top, left in offsets])


def paired_crops(
    real: torch.Tensor, generated: torch.Tensor, size: int, count: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``pfid_fmboost``: the same random offsets for each real/generated pair."""
    real_crops, generated_crops = [], []
    for index in range(len(real)):
        offsets = random_offsets(real.shape[-2], real.shape[-1], size, count, rng)
        real_crops.append(crop(real[index : index + 1], offsets, size))
        generated_crops.append(crop(generated[index : index + 1], offsets, size))
    return torch.cat(real_crops), torch.cat(generated_crops)


def native_crops(images: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """``pfid_anyres``: one random crop per image, independent offsets, no resize."""
    return torch.cat(
        [
            crop(images[i : i + 1], random_offsets(images.shape[-2], images.shape[-1], size, 1, rng), size)
            for i in range(len(images))
        ]
    )
