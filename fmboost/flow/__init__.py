"""How a latent moves along the flow, below the models and objectives that use it.

- :mod:`.sampling`: the ODE solvers (fixed-step and adaptive, through torchdiffeq) that integrate a
  velocity field from t = 0 to 1, counting network evaluations;
- :mod:`.tiled_sampling`: the flow network evaluated in overlapping tiles, so inference memory is
  bounded by a tile;
- :mod:`.upsampling`: the context a stage starts from, the low-res latent brought to the high-res size
  (PSU through the first stage, or a latent resize).
"""
