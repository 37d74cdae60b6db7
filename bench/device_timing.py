"""Wall-clock timing that is right on a GPU too: CUDA work is queued, so each timer waits for it."""

import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_seconds(function: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of ``function``, including the device work it queued."""
    synchronize(device)
    started = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - started


def seconds_after_warmup(
    function: Callable[[], object], device: torch.device, calls: int, warmup: int = 1
) -> list[float]:
    """Seconds of each of ``calls`` timed calls, after ``warmup`` untimed ones (kernel choice, allocator)."""
    for _ in range(warmup):
        function()
    return [timed_seconds(function, device) for _ in range(calls)]
