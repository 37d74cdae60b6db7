"""FMBoost: boosting latent diffusion with Coupling Flow Matching.

    from fmboost import FMBoostModel, FMBoostPipeline, build_first_stage, load_config

- :class:`FMBoostModel`: a CFM stage (loss, ``upsample``, ``save_pretrained``/``from_pretrained``);
- :class:`FMBoostPipeline`: a base LDM (or given latents/images) → CFM stages → the VAE decoder;
- :func:`build_first_stage`: frozen autoencoders (identity, diffusers, taesd);
- :func:`load_config`: typed configs with ``key=value`` overrides.

``import fmboost`` alone is cheap and free of side effects (no torch, no downloads, no prints): the
names above are imported on first use (PEP 562), as diffusers does.
"""

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "FMBoostModel": "fmboost.models",
    "FMBoostPipeline": "fmboost.inference.pipeline",
    "build_first_stage": "fmboost.first_stage",
    "load_config": "fmboost.config_loading",
    "FMBoostError": "fmboost.errors",
}
__all__ = ["FMBoostError", "FMBoostModel", "FMBoostPipeline", "build_first_stage", "load_config"]

if TYPE_CHECKING:
    from fmboost.config_loading import load_config
    from fmboost.errors import FMBoostError
    from fmboost.first_stage import build_first_stage
    from fmboost.inference.pipeline import FMBoostPipeline
    from fmboost.models import FMBoostModel


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fmboost' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
