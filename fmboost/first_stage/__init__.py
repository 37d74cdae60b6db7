"""Frozen first stages (autoencoders) behind one interface, built by name from the config.

Builders import their backend lazily: diffusers takes seconds to import, and ``import fmboost``
should stay cheap for users who never touch a VAE.
"""

from collections.abc import Callable

from fmboost.config import FirstStageConfig, require
from fmboost.errors import ConfigError
from fmboost.first_stage.base import FirstStage
from fmboost.registry import Registry

FIRST_STAGES: "Registry[Callable[[FirstStageConfig], FirstStage]]" = Registry("first stage")


def validate_first_stage(section: FirstStageConfig, key: str = "first_stage") -> None:
    """A known first stage with a sensible tiling."""
    FIRST_STAGES.get(section.name, f"{key}.name")
    require(
        section.tile_size is None or section.tile_size > 0, f"{key}.tile_size", "must be positive or null"
    )
    require(section.tile_overlap >= 0, f"{key}.tile_overlap", "must not be negative")


@FIRST_STAGES.register("identity")
def build_identity(config: FirstStageConfig) -> FirstStage:
    from fmboost.first_stage.identity import IdentityFirstStage

    return IdentityFirstStage()


@FIRST_STAGES.register("diffusers")
def build_diffusers(config: FirstStageConfig) -> FirstStage:
    from fmboost.first_stage.diffusers_vae import DiffusersVAE, load_autoencoder_kl

    if not config.path:
        raise ConfigError(
            "first_stage.path: the diffusers first stage needs a directory, hub id or weights file"
        )
    vae = load_autoencoder_kl(config.path, config.config, config.subfolder)
    return DiffusersVAE(
        vae, config.path, config.tile_size, config.tile_overlap, config.subfolder, config.config
    )


@FIRST_STAGES.register("taesd")
def build_taesd(config: FirstStageConfig) -> FirstStage:
    from fmboost.first_stage.taesd import TinyAutoencoder

    if not config.path:
        raise ConfigError("first_stage.path: the taesd first stage needs the directory of its two .pth files")
    return TinyAutoencoder(config.path, config.tile_size, config.tile_overlap)


def build_first_stage(config: FirstStageConfig | dict) -> FirstStage:
    """The first stage a config or a stored record describes, frozen; its scale/shift override the model's.

    A record written by :meth:`FirstStage.record` (a manifest's or a model's) rebuilds exactly that
    first stage: the same weights, scale, shift and tiling.
    """
    config = FirstStageConfig.from_record(config)
    first_stage = FIRST_STAGES.get(config.name, "first_stage.name")(config)
    if config.scale is not None:
        first_stage.scale = float(config.scale)
    if config.shift is not None:
        first_stage.shift = float(config.shift)
    return first_stage


__all__ = ["FIRST_STAGES", "FirstStage", "build_first_stage", "validate_first_stage"]
