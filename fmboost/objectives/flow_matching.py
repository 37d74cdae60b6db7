r"""Flow matching along the straight path (σ_min = 0).

.. math::
    x_t = t\,x_1 + (1 - t)\,x_0, \qquad u = x_1 - x_0, \qquad
    \mathcal L = \mathbb E_{t \sim U[0,1]} \lVert v_\theta([x_t, c], t) - u \rVert^2,

with the clean upsampled latent :math:`c = z_{up}` concatenated on channels (never noised). The
objectives differ only in the start point :math:`x_0`: ``cfm`` couples it to the data,
:math:`x_0 = \sqrt{\bar\alpha} z_{up} + \sqrt{1-\bar\alpha}\varepsilon`; ``fm`` uses pure noise.

Mixed precision as in the released trainer (bf16-mixed): :math:`x_0`, :math:`x_t`, :math:`u` and the
loss are fp32 whatever the inputs' dtype; only the network runs under the caller's autocast.
"""

from abc import abstractmethod

import torch
import torch.nn.functional as F

from fmboost.flow.sampling import ODESolution, solve_ode
from fmboost.noise_schedule import noise_augment
from fmboost.objectives.base import OBJECTIVES, Objective, VelocityNet
from fmboost.randomness import rand_uniform, randn_like


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The straight path ``x_t = t·x1 + (1 − t)·x0`` with ``t`` of shape [B]."""
    t = t.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return t * x1 + (1 - t) * x0


def target_velocity(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """The straight path's constant velocity ``u = x1 − x0``."""
    return x1 - x0


class FlowMatchingObjective(Objective):
    """Shared loss and sampler; subclasses choose the ODE start point."""

    @abstractmethod
    def start_point(self, z_up: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Chosen by each subclass."""

    def input_channels(self, latent_channels: int) -> int:
        return 2 * latent_channels

    @staticmethod
    def velocity(net: VelocityNet, x: torch.Tensor, t: torch.Tensor, z_up: torch.Tensor) -> torch.Tensor:
        return net(torch.cat([x, z_up.to(x.dtype)], dim=1), t)

    def loss(
        self, net: VelocityNet, x1: torch.Tensor, z_up: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        z_up = z_up.float()
        return self.path_loss(net, self.start_point(z_up, generator), x1.float(), z_up, generator)

    def path_loss(
        self,
        net: VelocityNet,
        x0: torch.Tensor,
        x1: torch.Tensor,
        z_up: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """The flow-matching loss on the straight paths from ``x0`` to ``x1`` (fp32), t ~ U[0, 1]."""
        t = rand_uniform(x1.shape[0], x1, generator)
        prediction = self.velocity(net, interpolate(x0, x1, t), t, z_up)
        return F.mse_loss(prediction.float(), target_velocity(x0, x1))

    def sample(
        self,
        net: VelocityNet,
        z_up: torch.Tensor,
        generator: torch.Generator | None = None,
        **solver_options,
    ) -> ODESolution:
        x0 = self.start_point(z_up, generator)
        return solve_ode(lambda x, t: self.velocity(net, x, t, z_up), x0, **solver_options)


@OBJECTIVES.register("cfm")
class CouplingFlowMatching(FlowMatchingObjective):
    """Ours: start at the noise-augmented upsampled latent (``noise_aug_step``, default 400)."""

    name = "cfm"

    def start_point(self, z_up: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return noise_augment(z_up, self.noise_aug_step, generator)


@OBJECTIVES.register("fm")
class NaiveFlowMatching(FlowMatchingObjective):
    """Baseline: start at Gaussian noise; the upsampled latent is only the concatenated context."""

    name = "fm"

    def start_point(self, z_up: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return randn_like(z_up, generator)
