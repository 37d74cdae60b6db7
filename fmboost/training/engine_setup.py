"""Everything DeepSpeed needs: its config (derived from ours), the optimizer, the LR warm-up, and the
engine built from them as the trainer steps it (the GPU check measures the same engine)."""

import copy
import logging
from typing import Any

import torch

from fmboost.config import FMBoostConfig
from fmboost.devices import precision_dtype, resolve_precision
from fmboost.distributed import import_deepspeed
from fmboost.errors import ConfigError
from fmboost.training.hot_loop import apply_throughput_options

logger = logging.getLogger(__name__)

OWNED_KEYS = {
    "train_micro_batch_size_per_gpu": "data.batch_size",
    "gradient_accumulation_steps": "train.grad_accum",
    "gradient_clipping": "train.grad_clip",
    "train_batch_size": "data.batch_size and train.grad_accum",
    "bf16": "train.precision",
    "fp16": "train.precision",
    "torch_autocast": "train.precision",
    "optimizer": "train.lr / train.weight_decay (FMBoost builds AdamW itself)",
    "scheduler": "train.warmup_steps",
}


def deepspeed_config(config: FMBoostConfig, device: torch.device) -> dict[str, Any]:
    """The ``deepspeed`` section plus the keys FMBoost derives from ``data``/``train``."""
    section = copy.deepcopy(config.deepspeed)
    for key, owner in OWNED_KEYS.items():
        if key in section:
            raise ConfigError(f"deepspeed.{key}: set by FMBoost from {owner}; set it there instead")
    stage = int(section.get("zero_optimization", {}).get("stage", 0))
    if stage not in (0, 1, 2):
        raise ConfigError(
            f"deepspeed.zero_optimization.stage: {stage} is not supported; ZeRO-3 partitions the weights, "
            "which the EMA and the export read whole every step. Use stage 0, 1 or 2."
        )
    precision = resolve_precision(config.train.precision, device)
    section.update(
        train_micro_batch_size_per_gpu=config.data.batch_size,
        gradient_accumulation_steps=config.train.grad_accum,
        gradient_clipping=config.train.grad_clip,
        zero_allow_untested_optimizer=True,
    )
    section.setdefault("steps_per_print", 10**12)
    section.setdefault("wall_clock_breakdown", False)
    if precision in ("bf16", "fp16"):
        section["torch_autocast"] = mixed_precision(precision)
    if config.train.bf16_weights:
        if precision != "bf16":
            raise ConfigError(
                f"train.bf16_weights: needs train.precision bf16, but it is {precision} on {device.type}"
            )
        if stage == 0 and accumulates_in_fp32(config):
            raise ConfigError(
                "deepspeed.data_types.grad_accum_dtype: fp32 accumulation with train.bf16_weights needs "
                "ZeRO stage 1 or 2 (DeepSpeed has no such optimizer at stage 0)"
            )
        section["bf16"] = {"enabled": True}
    return section


def mixed_precision(precision: str) -> dict[str, Any]:
    """The released trainer's "bf16-mixed": fp32 weights, gradients and optimizer; the forward autocast.

    DeepSpeed's ``torch_autocast`` keeps the module in fp32 and autocasts its forward (our objectives
    keep the path and the loss in fp32 inside it). No module is listed as lower-precision safe, so
    gradients are reduced in fp32, as with fp32 parameters under DDP.

    ``train.bf16_weights`` keeps this autocast (the inputs, the flow path and the fp32-listed ops
    stay as they are) and adds DeepSpeed's ``bf16`` mode: bf16 module weights, so the per-step casts
    of the weights go, and fp32 master weights in DeepSpeed's optimizer wrapper. Gradients are then
    bf16 and reduced in bf16; with ``train.grad_accum`` > 1 they are also accumulated in bf16 unless
    ``deepspeed.data_types.grad_accum_dtype`` is fp32 (ZeRO 1-2 only).
    """
    return {
        "enabled": True,
        "dtype": {"bf16": "bfloat16", "fp16": "float16"}[precision],
        "lower_precision_safe_modules": [],
    }


def single_gpu_zero_advice(config: FMBoostConfig, device: torch.device, world_size: int) -> str | None:
    """A hint for a ZeRO stage that partitions across one GPU only: measured on an H100 (README), the
    paper step took 161 ms at stage 2 against 140 ms at stage 0."""
    stage = int(config.deepspeed.get("zero_optimization", {}).get("stage", 0))
    if device.type != "cuda" or world_size != 1 or stage == 0:
        return None
    return (
        f"ZeRO stage {stage} on a single GPU partitions nothing and slows each step (15 % on an H100 for "
        "the paper U-Net); deepspeed.zero_optimization.stage=0 is faster for one-GPU runs"
    )


FP32_NAMES = ("fp32", "float32", "float", "torch.float32")  # what DeepSpeed's DtypeEnum reads as fp32


def accumulates_in_fp32(config: FMBoostConfig) -> bool:
    """Whether ``deepspeed.data_types.grad_accum_dtype`` asks for fp32 (unset: the weights' dtype)."""
    return str(config.deepspeed.get("data_types", {}).get("grad_accum_dtype")) in FP32_NAMES


def bf16_accumulation_advice(config: FMBoostConfig) -> str | None:
    """A warning for ``train.bf16_weights`` with gradient accumulation in bf16 (DeepSpeed's default for
    bf16 weights): summing the micro-batches' gradients in bf16 loses the small ones as the sum grows."""
    if not config.train.bf16_weights or config.train.grad_accum == 1 or accumulates_in_fp32(config):
        return None
    return (
        f"train.bf16_weights with train.grad_accum={config.train.grad_accum} accumulates the gradients in "
        "bf16; deepspeed.data_types.grad_accum_dtype=fp32 (ZeRO stage 1 or 2) accumulates them in fp32"
    )


def build_optimizer(model: torch.nn.Module, config: FMBoostConfig) -> torch.optim.Optimizer:
    """AdamW, the Adam-family optimizer of the paper (weight decay 0 by default).

    ``train.fused_optimizer`` takes PyTorch's fused kernel (one launch for all parameters instead of the
    default multi-tensor ``foreach`` loop); the update rule is the same.
    """
    return torch.optim.AdamW(
        model.parameters(),
        lr=config.train.lr,
        weight_decay=config.train.weight_decay,
        fused=config.train.fused_optimizer or None,
    )


def warmup_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps`` optimizer steps, then constant (as in the paper)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / max(1, warmup_steps))
    )


def build_engine(
    model: torch.nn.Module, config: FMBoostConfig, device: torch.device, batch_shape: tuple[int, ...]
) -> tuple[Any, torch.optim.lr_scheduler.LambdaLR, list[str]]:
    """The DeepSpeed engine, its LR schedule, and what the throughput options fell back on.

    The throughput options (``train.compile``) are applied first, on a batch of ``batch_shape``, because
    DeepSpeed takes the model over. On a single rank without ZeRO the gradient all-reduce is switched
    off: averaging over one rank only copies the gradients.
    """
    precision = resolve_precision(config.train.precision, device)
    autocast_dtype = None if precision == "fp32" else precision_dtype(precision, device)
    notes = apply_throughput_options(model, config.train, device, autocast_dtype, batch_shape)
    for advice in (
        single_gpu_zero_advice(config, device, torch.distributed.get_world_size()),
        bf16_accumulation_advice(config),
    ):
        if advice:
            logger.warning(advice)
    optimizer = build_optimizer(model, config)
    engine, _, _, scheduler = import_deepspeed().initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=warmup_schedule(optimizer, config.train.warmup_steps),
        config=deepspeed_config(config, device),
    )
    if torch.distributed.get_world_size() == 1 and not engine.zero_optimization():
        engine.enable_backward_allreduce = False
    return engine, scheduler, notes
