"""Configuration of the teacher-pair job (``configs/distill/pairs_*.yaml``), validated like the others."""

from dataclasses import dataclass
from pathlib import Path

from fmboost.config import PRECISIONS, merge_layers, read_layers
from fmboost.errors import ConfigError
from fmboost.flow.sampling import FIXED_STEP_EVALS, validate_solver
from fmboost.task_split import validate_task_split


@dataclass
class PairsConfig:
    """Which teacher runs over which latent shards, with which solver, and how the work is split.

    ``teacher`` is an exported stage, a checkpoint or a training run; ``input`` a latent dataset
    directory (``make encode-shards`` output); ``output`` the pair dataset. The start point of every
    sample is drawn from a seed derived from ``seed`` and its key, so pairs do not depend on the batch
    or the task that made them.
    """

    teacher: str = ""
    input: str = ""
    output: str = ""
    solver: str = "euler"
    nfe: int = 40
    seed: int = 0
    batch_size: int = 16
    device: str = "auto"
    precision: str = "auto"
    task_index: int | None = None
    num_tasks: int | None = None


def validate_pairs_config(config: PairsConfig) -> None:
    for key in ("teacher", "input", "output"):
        if not getattr(config, key):
            raise ConfigError(f"{key}: required (see python -m data_pipeline.teacher_pairs --help)")
    if config.solver not in FIXED_STEP_EVALS:
        raise ConfigError(f"solver: pairs need a fixed-step solver ({', '.join(FIXED_STEP_EVALS)})")
    validate_solver(config.solver, config.nfe, "pairs")
    if config.precision not in PRECISIONS:
        raise ConfigError(f"precision: choose one of {', '.join(PRECISIONS)}")
    if config.batch_size < 1:
        raise ConfigError("batch_size: must be positive")
    validate_task_split(config.task_index, config.num_tasks)


def load_pairs_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PairsConfig:
    """Defaults ← YAML file ← ``key=value`` overrides, validated."""
    config = merge_layers(PairsConfig, read_layers(path, overrides))
    validate_pairs_config(config)
    return config
