"""Training objectives, one class each with the same interface (paper Sec. 3 and its baselines).

- ``cfm``: Coupling Flow Matching, ours: the ODE starts at the noise-augmented upsampled latent.
- ``fm``: naive flow matching from Gaussian noise, conditioned on the upsampled latent.
- ``dm``: conditional diffusion (v-prediction, cosine schedule), sampled with DDIM: the paper's "DM".
- ``l1`` / ``l2``: direct regression of the high-res latent, one network call, no ODE.
- ``reflow`` / ``shortcut``: few-step students of a trained ``cfm`` stage (:mod:`.distillation`).
"""

from fmboost.config import CONSISTENCY_MODES, FlowConfig, UNetConfig, require
from fmboost.flow.sampling import validate_solver
from fmboost.flow.upsampling import UPSAMPLERS
from fmboost.noise_schedule import NUM_STEPS
from fmboost.objectives.base import OBJECTIVES, Objective, VelocityNet
from fmboost.objectives.diffusion import ConditionalDiffusion
from fmboost.objectives.distillation import STUDENT_OBJECTIVES, Reflow, Shortcut, validate_student
from fmboost.objectives.flow_matching import CouplingFlowMatching, NaiveFlowMatching
from fmboost.objectives.regression import L1Regression, L2Regression


def build_objective(flow: FlowConfig) -> Objective:
    """The objective ``flow.objective`` names, with the settings of ``flow`` it uses."""
    return OBJECTIVES.get(flow.objective, "flow.objective").from_flow(flow)


def network_input_channels(flow: FlowConfig, model: UNetConfig) -> int:
    """Channels the objective feeds the network for ``model.out_channels``-channel latents."""
    return OBJECTIVES.get(flow.objective, "flow.objective")().input_channels(model.out_channels)


def validate_flow(flow: FlowConfig, model: UNetConfig) -> None:
    """The ``flow`` section, and the network input it implies (``model.in_channels``, when set)."""
    expected = network_input_channels(flow, model)
    UPSAMPLERS.get(flow.upsampling, "flow.upsampling")
    validate_solver(flow.solver, flow.nfe, "flow")
    require(0 <= flow.noise_aug_step < NUM_STEPS, "flow.noise_aug_step", f"must lie in [0, {NUM_STEPS - 1}]")
    require(flow.scale_factor >= 1, "flow.scale_factor", "must be at least 1")
    require(
        flow.consistency in CONSISTENCY_MODES,
        "flow.consistency",
        f"unknown step {flow.consistency!r}; choose one of {', '.join(CONSISTENCY_MODES)}",
    )
    validate_student(flow)
    require(
        model.in_channels in (None, expected),
        "model.in_channels",
        f"the {flow.objective} objective feeds {expected} channels for {model.out_channels}-channel latents "
        f"(model.out_channels), got {model.in_channels}; leave it unset to derive it",
    )


__all__ = [
    "OBJECTIVES",
    "STUDENT_OBJECTIVES",
    "build_objective",
    "Reflow",
    "Shortcut",
    "network_input_channels",
    "validate_flow",
    "ConditionalDiffusion",
    "CouplingFlowMatching",
    "L1Regression",
    "L2Regression",
    "NaiveFlowMatching",
    "Objective",
    "VelocityNet",
]
