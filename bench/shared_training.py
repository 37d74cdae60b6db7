"""Shared by the training benchmarks (``gpu_check.py``, ``profile_step.py``): the paper configs at
their size or tiny, and one training step through the trainer's own DeepSpeed engine setup on a
fixed random batch."""

from collections.abc import Callable

import torch

from fmboost.config import FMBoostConfig
from fmboost.config_loading import load_config

SMALL_MODEL = [
    "model.model_channels=32",
    "model.channel_mult=[1]",
    "model.num_res_blocks=1",
    "model.attention_resolutions=[]",
    "model.num_heads=2",
    "model.head_channels=16",
    "model.norm_groups=8",
]


def paper_config(path: str, small: bool, extra: list[str]) -> FMBoostConfig:
    """The config at ``path`` under ZeRO-2, then ``extra``; with ``small`` tiny, fp32 and uncompiled
    unless ``extra`` compiles (compiling on a CPU takes longer than the whole check otherwise)."""
    overrides = ["deepspeed.zero_optimization.stage=2", "train.warmup_steps=1"]
    if small:
        overrides += [*SMALL_MODEL, "data.batch_size=2", "data.crop_size=null", "train.precision=fp32"]
        overrides += ["train.compile=false", "train.channels_last=false"]
    return load_config(path, [*overrides, *extra])


def engine_step(
    model: "torch.nn.Module", config: FMBoostConfig, latent: int, device: torch.device
) -> tuple[object, Callable[[], torch.Tensor], list[str]]:
    """The trainer's engine for ``model`` (compiled if asked), and one training step of it on a fixed
    random batch of ``latent``² latents (returning the loss); also what the throughput options fell
    back on."""
    from fmboost.training.engine_setup import build_engine
    from fmboost.training.hot_loop import memory_format

    shape = (config.data.batch_size, config.model.out_channels, latent, latent)
    engine, _, notes = build_engine(model, config, device, shape)
    layout = memory_format(config.train)
    x1 = torch.randn(shape, device=device).contiguous(memory_format=layout)
    z_up = torch.randn(shape, device=device).contiguous(memory_format=layout)
    generator = torch.Generator(device).manual_seed(0)

    def step() -> torch.Tensor:
        loss = engine(x1, z_up, generator)
        engine.backward(loss)
        engine.step()
        return loss

    return engine, step, notes
