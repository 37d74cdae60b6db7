"""The training loop (DeepSpeed ZeRO) and its parts: engine setup, checkpoints, validation.

Importing this package is cheap: the loop (and DeepSpeed) load with :mod:`fmboost.training.trainer`.
"""

from pathlib import Path

from fmboost.config import PRECISIONS, FMBoostConfig, require


def validate_training(config: FMBoostConfig) -> None:
    """The ``train``, ``data`` and ``eval`` (periodic validation) sections."""
    from fmboost.flow.sampling import validate_solver

    train = config.train
    require(train.precision in PRECISIONS, "train.precision", f"choose one of {', '.join(PRECISIONS)}")
    require(
        not train.bf16_weights or train.precision in ("auto", "bf16"),
        "train.bf16_weights",
        f"needs train.precision bf16 (auto on a GPU), not {train.precision}",
    )
    require(
        not train.channels_last_group_norm or train.channels_last,
        "train.channels_last_group_norm",
        "needs train.channels_last: true (it only changes how NHWC activations are normalised)",
    )
    require(train.grad_clip >= 0, "train.grad_clip", "must not be negative (0 turns clipping off)")
    require(
        train.resume in ("auto", "never") or Path(train.resume).is_dir(),
        "train.resume",
        f"use auto, never or the directory of a checkpoint ({train.resume!r} is none of these)",
    )
    require(
        train.init_from is None or Path(train.init_from).expanduser().exists(),
        "train.init_from",
        f"{train.init_from} does not exist (give an exported stage, a checkpoint or a training run)",
    )
    require(
        train.keep_checkpoints != 1,
        "train.keep_checkpoints",
        "1 leaves nothing to fall back on if the newest checkpoint turns out broken; keep 2 or more (0: all)",
    )
    require(train.keep_checkpoints >= 0, "train.keep_checkpoints", "must not be negative (0 keeps all)")
    require(all(step > 0 for step in train.skip_steps), "train.skip_steps", "steps count from 1")
    require(train.stall_timeout_seconds >= 0, "train.stall_timeout_seconds", "must not be negative (0: off)")
    for key in ("stall_timeout_validation_seconds", "stall_timeout_checkpoint_seconds"):
        require(getattr(train, key) > 0, f"train.{key}", "must be positive")
    require(train.stop_check_seconds > 0, "train.stop_check_seconds", "must be positive")
    for key in ("max_steps", "log_every", "validate_every", "checkpoint_every", "grad_accum"):
        require(getattr(train, key) > 0, f"train.{key}", "must be positive")
    require(config.data.batch_size > 0, "data.batch_size", "must be positive")
    require(config.data.prefetch_factor > 0, "data.prefetch_factor", "must be positive")
    validate_solver(config.eval.solver, config.eval.nfe, "eval")
    require(config.eval.num_images > 0, "eval.num_images", "must be positive")
