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
