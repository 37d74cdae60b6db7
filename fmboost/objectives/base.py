"""The interface every objective implements, and their registry."""

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch

from fmboost.config import FlowConfig
from fmboost.flow.sampling import ODESolution
from fmboost.registry import Registry

VelocityNet = Callable[..., torch.Tensor]
"""The network ``net(input, t)``; ``input`` already holds any concatenated context, ``t`` is [B] in [0, 1].
Step-conditioned objectives pass the step size as a third argument ``d`` [B]."""

OBJECTIVES: "Registry[type[Objective]]" = Registry("objective")


class Objective(ABC):
    """Maps (upsampled low-res latent ``z_up``, high-res latent ``x1``) pairs to a loss, and samples.

    All latents are scaled and share one shape [B, C, H, W]. ``noise_aug_step`` is the cosine-schedule
    step used to noise the ODE start (see :mod:`fmboost.noise_schedule`); objectives without one ignore it.
    """

    name: str
    uses_start_points = False  # trains on stored ODE start points (teacher pairs), passed as ``x0``
    step_conditioned = False  # the network also takes the step size d (a third argument)

    def __init__(self, noise_aug_step: int = 400) -> None:
        self.noise_aug_step = noise_aug_step

    @classmethod
    def from_flow(cls, flow: FlowConfig) -> "Objective":
        """The objective a ``flow`` section describes (subclasses read the keys they use)."""
        return cls(flow.noise_aug_step)

    @abstractmethod
    def input_channels(self, latent_channels: int) -> int:
        """Channels of the network input for latents with ``latent_channels`` channels."""

    @abstractmethod
    def loss(
        self, net: VelocityNet, x1: torch.Tensor, z_up: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Scalar training loss for one batch."""

    @abstractmethod
    def sample(
        self,
        net: VelocityNet,
        z_up: torch.Tensor,
        generator: torch.Generator | None = None,
        **solver_options,
    ) -> ODESolution:
        """High-res latent predicted from ``z_up``; options go to :func:`fmboost.flow.sampling.solve_ode`."""
