"""What keeps the training step free of host syncs, and the throughput options a GPU user expects.

The loop never reads a device value per step (EDM's ``training_stats`` and DiT's logging do the same):
:class:`LossWindow` sums the loss on the device and is read at log, checkpoint and final steps, and at
the stop checks of :class:`StopCheck` (timed from the measured step time, so that slow steps still
honour a pre-emption signal in time), in one all-reduce that also carries the pre-emption flag and the
counts of samples the data stream skipped. A non-finite loss makes that sum non-finite, so it is still
caught before any checkpoint is written.

``train.channels_last`` feeds the U-Net NHWC batches: cuDNN then runs its convolutions, and so the
activations, in NHWC. The weights stay contiguous: DeepSpeed broadcasts and flattens them as plain
contiguous memory, which NHWC weights break. ``train.channels_last_group_norm`` has the U-Net's
GroupNorm layers normalise those NHWC activations where they lie instead of through NCHW copies
(:mod:`fmboost.models.group_norm`). ``train.compile`` compiles the U-Net (``nn.Module.compile``, so
parameter names and exports stay the same); it is tried once on a batch of the training shape before
DeepSpeed takes the model, and falls back with a warning.

Before the first step, everything setup created is frozen out of the garbage collector's reach
(:func:`freeze_setup_objects`): otherwise each full collection walks the whole heap of DeepSpeed,
MLflow, diffusers and the model's modules, none of which ever becomes garbage.
"""

import gc
import logging
import time
from dataclasses import dataclass

import torch

from fmboost.config import TrainConfig
from fmboost.models.group_norm import use_channels_last_group_norm

logger = logging.getLogger(__name__)


def freeze_setup_objects() -> None:
    """Collect once, then exempt every surviving object from later collections (``gc.freeze``).

    Measured on the CPU demo: one full collection of ~600k objects took ~300 ms and came every few
    dozen steps (~2 % of the step time); on several GPUs such a pause on one rank also stalls the others
    at the next collective. Objects created by the loop are still collected; :func:`gc.unfreeze` undoes
    this when training ends. Freezing before the DataLoader forks its workers also keeps their pages
    shared.
    """
    gc.collect()
    gc.freeze()


@dataclass(frozen=True)
class WindowSums:
    """What every rank learns at a sync point, summed over the ranks."""

    loss_sum: float  # over the window's micro-steps and the ranks
    stop: bool  # whether any rank was asked to stop
    seconds_per_step: float  # the ranks' mean
    samples_skipped: int  # unusable samples the streams skipped in the window
    new_unusable: int  # of which no rank had seen before in this job


class LossWindow:
    """The training loss summed on the device since the last read; reading it is the only host sync.

    It also counts, on the host, the unusable samples the stream skipped in the window."""

    def __init__(self, device: torch.device, first_step: int) -> None:
        self.device = device
        self.reset(first_step)

    def reset(self, first_step: int) -> None:
        self.total = torch.zeros((), device=self.device)
        self.micro_steps, self.first_step = 0, first_step
        self.samples_skipped, self.new_unusable = 0, 0

    def add(self, loss: torch.Tensor) -> None:
        self.total += loss.detach().float()
        self.micro_steps += 1

    def reduce(self, stop_requested: bool, seconds_per_step: float = 0.0) -> WindowSums:
        """One all-reduce, so every rank gets the same sums."""
        flags = [
            float(stop_requested),
            seconds_per_step,
            float(self.samples_skipped),
            float(self.new_unusable),
        ]
        packed = torch.cat([self.total.view(1), torch.tensor(flags, device=self.device)])
        torch.distributed.all_reduce(packed)
        loss_sum, stops, seconds, skipped, new = packed.tolist()
        self.samples_skipped, self.new_unusable = 0, 0
        return WindowSums(
            loss_sum, stops > 0, seconds / torch.distributed.get_world_size(), round(skipped), round(new)
        )


class StopCheck:
    """When the ranks next agree on a stop request: often enough that a pre-emption signal is honoured
    within about ``check_seconds`` however long a step takes, derived from the step time all ranks
    measured (so they all pick the same step), and never later than the next log step. The first check
    comes after the first step, before anything is known about the step time."""

    def __init__(self, check_seconds: float, first_step: int) -> None:
        self.check_seconds = check_seconds
        self.next_step = first_step + 1
        self.last_step, self.last_time = first_step, time.perf_counter()

    def due(self, step: int) -> bool:
        return step >= self.next_step

    def seconds_per_step(self, step: int) -> float:
        """This rank's wall time per step since the last check."""
        return (time.perf_counter() - self.last_time) / max(step - self.last_step, 1)

    def checked(self, step: int, seconds_per_step: float, log_every: int) -> None:
        """Plan the next check from the agreed step time."""
        steps = int(self.check_seconds / seconds_per_step) if seconds_per_step > 0 else log_every
        self.next_step = step + min(max(steps, 1), log_every)
        self.last_step, self.last_time = step, time.perf_counter()


def memory_format(settings: TrainConfig) -> torch.memory_format:
    return torch.channels_last if settings.channels_last else torch.contiguous_format


def apply_throughput_options(
    model: torch.nn.Module,
    settings: TrainConfig,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    example_shape: tuple[int, ...],
) -> list[str]:
    """Compile ``model.net`` if ``settings`` say so, after swapping in the NHWC GroupNorm if they say
    that; returns what fell back, in words."""
    notes = []
    if settings.channels_last_group_norm:
        replaced = use_channels_last_group_norm(model.net)
        logger.info("train.channels_last_group_norm: %d GroupNorm layers normalise NHWC in place", replaced)
    if settings.compile:
        model.net.compile()
        try:
            try_one_step(model, device, autocast_dtype, example_shape, memory_format(settings))
        except Exception as error:  # any backend failure: no compiler, unsupported op, Triton missing
            model.net._compiled_call_impl = None  # what nn.Module.compile set: back to eager
            note = (
                f"torch.compile failed ({type(error).__name__}: {str(error).strip().splitlines()[0][:160]}); "
                "training the U-Net uncompiled"
            )
            logger.warning(note)
            notes.append(note)
    return notes


def try_one_step(
    model: torch.nn.Module,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    shape: tuple[int, ...],
    layout: torch.memory_format,
) -> None:
    """One forward and backward on random data with its own generator; gradients are dropped after."""
    generator = torch.Generator(device).manual_seed(0)
    x1 = torch.randn(shape, generator=generator, device=device).contiguous(memory_format=layout)
    z_up = torch.randn(shape, generator=generator, device=device).contiguous(memory_format=layout)
    model.to(device)
    with torch.autocast(
        device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
    ):
        loss = model(x1, z_up, generator)
    loss.backward()
    model.zero_grad(set_to_none=True)
