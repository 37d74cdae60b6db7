"""Seeded random tensors that do not depend on where the model runs.

Noise is drawn on the generator's device (CPU by default) and then moved, so the same seed gives
the same samples on CPU and GPU and a CPU generator can drive a CUDA model.
"""

import zlib

import torch


def _generator_device(generator: torch.Generator | None, default: torch.device) -> torch.device:
    """Where to draw: the generator's own device, so that a seed means the same numbers everywhere."""
    return generator.device if generator is not None else default


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise with the shape, dtype and device of ``x``."""
    device = _generator_device(generator, x.device)
    noise = torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32)
    return noise.to(device=x.device, dtype=x.dtype)


def rand_uniform(n: int, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` samples of U[0, 1) on the device of ``like`` (float32, for time values)."""
    drawn = torch.rand(n, generator=generator, device=_generator_device(generator, like.device))
    return drawn.to(like.device)


def randint(
    high: int, n: int, device: torch.device, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``n`` integers in [0, high) on ``device``."""
    drawn = torch.randint(high, (n,), generator=generator, device=_generator_device(generator, device))
    return drawn.to(device)


def keyed_seed(seed: int, key: str) -> int:
    """A sample's own seed from a job's seed and the sample's key (its name or path), so that its result
    does not depend on the batch, the task or the order that made it."""
    return zlib.crc32(f"{seed}:{key}".encode())
