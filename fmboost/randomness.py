"""Seeded random tensors that do not depend on where the model runs.

Noise is drawn on the generator's device (CPU by default) and then moved, so the same seed gives
the same samples on CPU and GPU and a CPU generator can drive a CUDA model.
"""

import torch


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise with the shape, dtype and device of ``x``."""
    device = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32)
    return noise.to(device=x.device, dtype=x.dtype)


def rand_uniform(n: int, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` samples of U[0, 1) on the device of ``like`` (float32, for time values)."""
    device = generator.device if generator is not None else like.device
    return torch.rand(n, generator=generator, device=device).to(like.device)
