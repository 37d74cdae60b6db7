"""Our U-Net against the plain functional reference (``bench/unet_reference.py``) on the same weights.

Used by ``bench/train_throughput.py`` (CPU) and ``bench/gpu_check.py`` (CUDA, bf16 autocast): the outputs
must match, then a forward and backward of each is timed in turn at an attention-heavy size (128
channels at 32×32 positions). Target: ours is not slower (ratio <= 1).
"""

import contextlib
import statistics
from collections.abc import Callable

import torch
from device_timing import timed_seconds
from unet_reference import unet_forward

from fmboost.config import UNetConfig
from fmboost.devices import autocast_to
from fmboost.models.unet import UNet

ATTENTION_HEAVY = UNetConfig(
    in_channels=8,
    out_channels=4,
    model_channels=128,
    channel_mult=[1],
    num_res_blocks=1,
    attention_resolutions=[1],
    num_heads=4,
    head_channels=32,
)


def time_alternating(
    first: Callable[[], None], second: Callable[[], None], rounds: int, device: torch.device
) -> tuple[float, float]:
    """Median seconds of ``first()`` and ``second()``, called in turn (so drift hits both alike)."""
    for _ in range(2):
        first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        times[0].append(timed_seconds(first, device))
        times[1].append(timed_seconds(second, device))
    return statistics.median(times[0]), statistics.median(times[1])


def model_level(rounds: int, device: torch.device, batch: int = 2, bf16: bool = False) -> dict:
    """Equal outputs (fp32), then median forward + backward milliseconds of both networks."""
    config = ATTENTION_HEAVY
    torch.manual_seed(0)
    net = UNet(config).to(device)
    for parameter in net.parameters():
        torch.nn.init.normal_(parameter, std=0.02)
    params = dict(net.named_parameters())
    x, t = torch.randn(batch, 8, 32, 32, device=device), torch.rand(batch, device=device)
    tolerance = 1e-3 if device.type == "cuda" else 1e-5  # cuDNN may pick TF32 convolutions
    with torch.no_grad():
        torch.testing.assert_close(
            unet_forward(params, config, x, t), net(x, t), rtol=10 * tolerance, atol=tolerance
        )

    def autocast() -> contextlib.AbstractContextManager:
        return autocast_to(torch.bfloat16 if bf16 else torch.float32, device)

    def ours() -> None:
        with autocast():
            loss = net(x, t).float().square().mean()
        loss.backward()

    def reference() -> None:
        with autocast():
            loss = unet_forward(params, config, x, t).float().square().mean()
        loss.backward()

    ours_s, reference_s = time_alternating(ours, reference, rounds, device)
    return {
        "size": f"128 channels at 32x32 positions, 4 heads x 32, batch {batch}, forward + backward",
        "precision": "bf16 autocast" if bf16 else "fp32",
        "ours_ms": round(ours_s * 1000, 2),
        "reference_ms": round(reference_s * 1000, 2),
        "ratio": round(ours_s / reference_s, 3),
        "target_ratio": 1.0,
    }
