"""Loading a training config for a job: merge the layers, then let every component check its section.

:mod:`fmboost.config` defines the sections and how they merge and imports no component; this module sits
above the components and composes their checks, so every dependency points one way and shows in the
imports.

Example:
    >>> config = load_config("configs/cfm_1k.yaml", ["train.lr=1e-4", "flow.nfe=20"])
    >>> config.train.lr
    0.0001
"""

from pathlib import Path

from omegaconf import DictConfig

from fmboost.config import FMBoostConfig, merge_layers, read_layers
from fmboost.first_stage import validate_first_stage
from fmboost.models.unet import validate_unet
from fmboost.objectives import validate_flow
from fmboost.training import validate_training


def validate(config: FMBoostConfig) -> None:
    """Checks that types alone cannot express, each by the component that owns the section."""
    validate_flow(config.flow, config.model)
    validate_unet(config.model)
    validate_first_stage(config.first_stage)
    validate_training(config)


def merge_config(layers: list[tuple[str, DictConfig | dict]]) -> FMBoostConfig:
    """Merge named layers onto the training defaults and validate the result."""
    config = merge_layers(FMBoostConfig, layers)
    validate(config)
    return config


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> FMBoostConfig:
    """Defaults ← YAML file ← ``key=value`` overrides, validated."""
    return merge_config(read_layers(path, overrides))
