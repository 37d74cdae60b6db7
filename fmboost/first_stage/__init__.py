"""Frozen first stages (autoencoders) behind one interface, built by name from the config.

Builders import their backend lazily: diffusers takes seconds to import, and ``import fmboost``
should stay cheap for users who never touch a VAE.
"""

from collections.abc import Callable
from typing import TYPE_CHECKING

from fmboost.errors import ConfigError
from fmboost.first_stage.base import FirstStage
from fmboost.registry import Registry

if TYPE_CHECKING:
    from fmboost.config import FirstStageConfig

FIRST_STAGES: "Registry[Callable[[FirstStageConfig], FirstStage]]" = Registry("first stage")


@FIRST_STAGES.register("identity")
def build_identity(config: "FirstStageConfig") -> FirstStage:
    from fmboost.first_stage.identity import IdentityFirstStage

    return IdentityFirstStage()


@FIRST_STAGES.register("diffusers")
def build_diffusers(config: "FirstStageConfig") -> FirstStage:
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
def build_taesd(config: "FirstStageConfig") -> FirstStage:
    from fmboost.first_stage.taesd import TinyAutoencoder

    if not config.path:
        raise ConfigError("first_stage.path: the taesd first stage needs the directory of its two .pth files")
    return TinyAutoencoder(config.path, config.tile_size, config.tile_overlap)


def build_first_stage(config: "FirstStageConfig") -> FirstStage:
    """The first stage a config describes, frozen; the config's scale/shift override its own."""
    first_stage = FIRST_STAGES.get(config.name, "first_stage.name")(config)
    if config.scale is not None:
        first_stage.scale = float(config.scale)
    if config.shift is not None:
        first_stage.shift = float(config.shift)
    return first_stage


RECORDED_SETTINGS = ("name", "path", "subfolder", "config", "scale", "shift", "tile_size", "tile_overlap")


def build_recorded_first_stage(info: dict) -> FirstStage:
    """Rebuild exactly the first stage that :meth:`FirstStage.describe` recorded (manifest, model config)."""
    from fmboost.config import FirstStageConfig  # imported here: fmboost.config imports this package

    settings = {key: info[key] for key in RECORDED_SETTINGS if key in info}
    if "path" not in settings and info.get("source") not in (None, "none"):  # records that kept only a source
        settings["path"] = info["source"]
    return build_first_stage(FirstStageConfig(**settings))


__all__ = ["FIRST_STAGES", "FirstStage", "build_first_stage", "build_recorded_first_stage"]
