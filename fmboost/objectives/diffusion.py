r"""Conditional latent diffusion: the paper's "DM" baseline (after SR3, Saharia et al. 2022).

The forward process uses the cosine schedule of :mod:`fmboost.noise_schedule` (1000 steps):

.. math::
    x_k = \sqrt{\bar\alpha_k}\,x_1 + \sqrt{1-\bar\alpha_k}\,\varepsilon, \qquad k \sim U\{0, \dots, 999\},

the network sees :math:`[x_k, z_{up}]` (the clean context concatenated, as for CFM) and
:math:`t = k / 999`, and predicts :math:`v = \sqrt{\bar\alpha_k}\,\varepsilon - \sqrt{1-\bar\alpha_k}\,x_1`
(v-prediction: well conditioned at the pure-noise end, where ε-prediction cannot recover :math:`x_1`).
Sampling is deterministic DDIM (η = 0) from :math:`x_{999} \sim \mathcal N(0, I)` over ``nfe`` evenly
spaced (trailing) steps: one network evaluation per step, so NFE = steps.
"""

import math

import torch
import torch.nn.functional as F

from fmboost.flow.sampling import ODESolution
from fmboost.noise_schedule import NUM_STEPS, alpha_bar
from fmboost.objectives.base import OBJECTIVES, Objective, VelocityNet
from fmboost.randomness import randint, randn_like

ALPHA_BARS = torch.tensor([alpha_bar(k) for k in range(NUM_STEPS)], dtype=torch.float64)


def schedule_at(steps: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sqrt(ᾱ_k), sqrt(1 − ᾱ_k))`` for integer steps [B], shaped to broadcast against ``like``."""
    signal = ALPHA_BARS.to(like.device)[steps].to(torch.float32)
    shape = (-1, *([1] * (like.ndim - 1)))
    return signal.sqrt().view(shape), (1 - signal).sqrt().view(shape)


def ddim_steps(nfe: int) -> list[int]:
    """``nfe`` evenly spaced steps from 999 down, trailing (999, 500 for two): none is spent at k = 0,
    where a step would return its input unchanged."""
    if nfe < 1:
        raise ValueError(f"DDIM needs at least one step, got {nfe}")
    return [round((NUM_STEPS - 1) * (1 - i / nfe)) for i in range(nfe)]


@OBJECTIVES.register("dm")
class ConditionalDiffusion(Objective):
    """v-prediction diffusion conditioned on the upsampled latent; sampled with DDIM."""

    name = "dm"

    def input_channels(self, latent_channels: int) -> int:
        return 2 * latent_channels

    @staticmethod
    def predict(net: VelocityNet, x: torch.Tensor, steps: torch.Tensor, z_up: torch.Tensor) -> torch.Tensor:
        return net(torch.cat([x, z_up.to(x.dtype)], dim=1), steps.to(torch.float32) / (NUM_STEPS - 1))

    def loss(
        self, net: VelocityNet, x1: torch.Tensor, z_up: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        x1, z_up = x1.float(), z_up.float()
        noise = randn_like(x1, generator)
        steps = randint(NUM_STEPS, x1.shape[0], x1.device, generator)
        signal, sigma = schedule_at(steps, x1)
        prediction = self.predict(net, signal * x1 + sigma * noise, steps, z_up)
        return F.mse_loss(prediction.float(), signal * noise - sigma * x1)

    @torch.no_grad()
    def sample(
        self,
        net: VelocityNet,
        z_up: torch.Tensor,
        generator: torch.Generator | None = None,
        nfe: int = 40,
        return_trajectory: bool = False,
        **ignored_solver_options,
    ) -> ODESolution:
        steps = ddim_steps(nfe)
        x = randn_like(z_up, generator).float()
        trajectory = [x]
        for index, step in enumerate(steps):
            batch_steps = torch.full((x.shape[0],), step, device=x.device, dtype=torch.long)
            signal, sigma = schedule_at(batch_steps, x)
            v = self.predict(net, x.to(z_up.dtype), batch_steps, z_up).float()
            x1_hat, noise_hat = signal * x - sigma * v, sigma * x + signal * v
            next_signal = math.sqrt(ALPHA_BARS[steps[index + 1]].item()) if index + 1 < len(steps) else 1.0
            x = next_signal * x1_hat + math.sqrt(1 - next_signal**2) * noise_hat
            trajectory.append(x)
        x = x.to(z_up.dtype)
        if not return_trajectory:
            return ODESolution(x1=x, nfe=len(steps))
        times = torch.tensor([0.0, *[1 - s / (NUM_STEPS - 1) for s in steps]], device=x.device)
        return ODESolution(
            x1=x, nfe=len(steps), times=times, trajectory=torch.stack(trajectory).to(z_up.dtype)
        )
