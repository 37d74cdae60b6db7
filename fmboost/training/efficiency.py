"""How much of the hardware a training run uses: model FLOPs per sample and MFU.

FLOPs are counted once at start with ``torch.utils.flop_counter`` on a copy of the model on the
``meta`` device (no memory, no compute, the real model and its random state untouched): one training
forward and backward of one sample at the training size. MFU (model FLOPs utilisation, as in PaLM) is
those FLOPs times the samples per second, over the peak of the devices doing the work.
"""

import torch
from torch.utils.flop_counter import FlopCounterMode

from fmboost.config import FMBoostConfig

PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12}
"""Dense bf16 tensor-core peaks per device (SXM parts; NVIDIA's data sheets), matched by name."""


def training_flops_per_sample(config: FMBoostConfig, latent_size: int) -> float:
    """FLOPs of one training step (forward and backward) for one sample of ``latent_size``² latents."""
    from fmboost.models import FMBoostModel

    channels, batch = config.model.out_channels, config.data.batch_size
    with torch.device("meta"):
        model = FMBoostModel.from_config(config)
        # A whole batch: a shortcut student spends extra no-grad evaluations on a share of it.
        x1, z_up, x0 = (torch.empty(batch, channels, latent_size, latent_size) for _ in range(3))
        with FlopCounterMode(display=False) as counter:
            model(x1, z_up, None, x0).backward()
    return float(counter.get_total_flops()) / batch


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The bf16 peak of ``device`` if it is in :data:`PEAK_BF16_FLOPS` and training runs in bf16."""
    if device.type != "cuda" or precision != "bf16":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


def model_flops_utilisation(
    flops_per_sample: float, samples_per_s: float, peak_per_device: float, world_size: int
) -> float:
    """Achieved model FLOP/s over the peak of all ``world_size`` devices."""
    return flops_per_sample * samples_per_s / (peak_per_device * world_size)
