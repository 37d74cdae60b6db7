"""Regression baselines: one network call predicts the high-res latent from the upsampled one."""

from abc import abstractmethod

import torch
import torch.nn.functional as F

from fmboost.flow.sampling import ODESolution
from fmboost.objectives.base import OBJECTIVES, Objective, VelocityNet


class RegressionObjective(Objective):
    """``x̂1 = net(z_up, t=0)``; subclasses choose the distance."""

    @abstractmethod
    def distance(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Chosen by each subclass."""

    def input_channels(self, latent_channels: int) -> int:
        return latent_channels

    @staticmethod
    def predict(net: VelocityNet, z_up: torch.Tensor) -> torch.Tensor:
        return net(z_up, torch.zeros(z_up.shape[0], device=z_up.device))

    def loss(
        self, net: VelocityNet, x1: torch.Tensor, z_up: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return self.distance(self.predict(net, z_up).float(), x1.float())

    @torch.no_grad()
    def sample(
        self,
        net: VelocityNet,
        z_up: torch.Tensor,
        generator: torch.Generator | None = None,
        return_trajectory: bool = False,
        **ignored_solver_options,
    ) -> ODESolution:
        prediction = self.predict(net, z_up)
        if not return_trajectory:
            return ODESolution(x1=prediction, nfe=1)
        times = torch.tensor([0.0, 1.0], device=z_up.device)
        return ODESolution(x1=prediction, nfe=1, times=times, trajectory=torch.stack([z_up, prediction]))


@OBJECTIVES.register("l1")
class L1Regression(RegressionObjective):
    name = "l1"

    def distance(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(prediction, target)


@OBJECTIVES.register("l2")
class L2Regression(RegressionObjective):
    name = "l2"

    def distance(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(prediction, target)
