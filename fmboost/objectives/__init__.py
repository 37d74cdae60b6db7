"""Training objectives, one class each with the same interface (paper Sec. 3 and its baselines).

- ``cfm``: Coupling Flow Matching, ours: the ODE starts at the noise-augmented upsampled latent.
- ``fm``: naive flow matching from Gaussian noise, conditioned on the upsampled latent.
- ``l1`` / ``l2``: direct regression of the high-res latent, one network call, no ODE.
"""

from fmboost.objectives.base import OBJECTIVES, Objective, VelocityNet
from fmboost.objectives.flow_matching import CouplingFlowMatching, NaiveFlowMatching
from fmboost.objectives.regression import L1Regression, L2Regression

__all__ = [
    "OBJECTIVES",
    "CouplingFlowMatching",
    "L1Regression",
    "L2Regression",
    "NaiveFlowMatching",
    "Objective",
    "VelocityNet",
]
