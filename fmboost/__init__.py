"""FMBoost: boosting latent diffusion with Coupling Flow Matching.

Importing the package is free of side effects (no downloads, no prints). The main entry points:

- :class:`fmboost.model.FMBoostModel`: a CFM stage (loss, ``upsample``,
  ``save_pretrained``/``from_pretrained``);
- :func:`fmboost.first_stage.build_first_stage`: frozen autoencoders (identity, diffusers, taesd);
- :func:`fmboost.config.load_config`: typed configs with ``key=value`` overrides.
"""

__version__ = "0.1.0"
