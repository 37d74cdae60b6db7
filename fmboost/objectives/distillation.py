r"""Few-step students of a trained CFM stage: why one Euler step of the teacher blurs, and two cures.

With noise augmentation the ODE starts at
:math:`x_0 = \sqrt{\bar\alpha}\,c + \sqrt{1-\bar\alpha}\,\varepsilon`, and :math:`\varepsilon` is
independent of :math:`x_1` given the context :math:`c`. The teacher's velocity at
:math:`t = 0` is therefore :math:`E[x_1 - x_0 \mid x_0]`, and one Euler step lands on the MMSE mean
:math:`E[x_1 \mid x_0]`: blurry. A student has to learn the teacher's *map*
:math:`x_0 \mapsto \Phi_T(x_0)` (its full-NFE solution) instead.

- ``reflow`` (rectified flow's 2-rectification; SinSR's setting): flow matching on stored teacher pairs,

  .. math:: x_t = t\,\Phi_T(x_0) + (1-t)\,x_0, \qquad u = \Phi_T(x_0) - x_0,

  so the learned paths are straight and Euler is exact at any step count. The pairs come from
  ``python -m data_pipeline.teacher_pairs`` (pair shards carry ``x0``).
- ``shortcut`` (Frans et al. 2024): the network also sees the step size :math:`d`. Flow matching trains
  :math:`d = 0`; for a share of the batch, the step of size :math:`d` is trained to equal two steps of
  size :math:`d/2` taken by the network itself (without gradient):

  .. math:: s(x_t, t, d) \leftarrow \tfrac12\bigl(s(x_t, t, \tfrac d2)
            + s(x_t + \tfrac d2 s(x_t, t, \tfrac d2), t + \tfrac d2, \tfrac d2)\bigr),

  with :math:`t` on the student's grid of step :math:`d`. The half steps query :math:`d/2` where it is
  itself a trained step size and the flow (:math:`d = 0`) below the finest one. Every step size in
  ``flow.trained_nfe`` (:math:`d = 1/n`) gets at least one sample in every batch, so none is starved at
  small batch sizes. No pairs are stored.

Both start at the noise-augmented context exactly like ``cfm``, so a student's output from a seed can be
compared with its teacher's output from the same seed (``teacher_psnr``).
"""

import torch
import torch.nn.functional as F

from fmboost.config import FlowConfig, require
from fmboost.errors import ConfigError, FMBoostError
from fmboost.flow.sampling import ODESolution, solve_ode
from fmboost.objectives.base import OBJECTIVES, VelocityNet
from fmboost.objectives.flow_matching import CouplingFlowMatching, interpolate, target_velocity
from fmboost.randomness import rand_uniform, randint

STUDENT_OBJECTIVES = ("reflow", "shortcut")


def validate_student(flow: FlowConfig) -> None:
    """A student names the step counts it is trained for, and its default NFE is one of them."""
    if flow.objective not in STUDENT_OBJECTIVES:
        return
    counts = flow.trained_nfe
    require(
        bool(counts) and all(n >= 1 for n in counts),
        "flow.trained_nfe",
        f"a {flow.objective} student needs the step counts it is trained for, e.g. [1, 2, 4]",
    )
    require(
        flow.nfe in counts,
        "flow.nfe",
        f"a student's default NFE is one of the step counts it was trained for {counts}, got {flow.nfe}",
    )
    require(flow.solver == "euler", "flow.solver", "students are few-step Euler samplers; use euler")
    if flow.objective == "shortcut":
        require(
            all(n & (n - 1) == 0 for n in counts),
            "flow.trained_nfe",
            f"shortcut step counts must be powers of two (each step is two of half its size), got {counts}",
        )
        require(0 < flow.bootstrap_share < 1, "flow.bootstrap_share", "must lie strictly between 0 and 1")


@OBJECTIVES.register("reflow")
class Reflow(CouplingFlowMatching):
    """Flow matching on a teacher's (start, result) pairs: the straightened map, sampled like ``cfm``."""

    name = "reflow"
    uses_start_points = True

    def loss(
        self,
        net: VelocityNet,
        x1: torch.Tensor,
        z_up: torch.Tensor,
        generator: torch.Generator | None = None,
        x0: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x1``: the teacher's results; ``x0``: the start points they were integrated from."""
        if x0 is None:
            raise FMBoostError(
                "reflow trains on teacher pairs, and this batch has no start points: set data.train to "
                "pair shards made by `python -m data_pipeline.teacher_pairs`",
                "data.train",
            )
        return self.path_loss(net, x0.float(), x1.float(), z_up.float(), generator)


@OBJECTIVES.register("shortcut")
class Shortcut(CouplingFlowMatching):
    """Step-size-conditioned self-distillation; ``trained_nfe`` are powers of two."""

    name = "shortcut"
    step_conditioned = True

    def __init__(
        self,
        noise_aug_step: int = 400,
        trained_nfe: tuple[int, ...] = (1, 2, 4),
        bootstrap_share: float = 0.25,
    ) -> None:
        super().__init__(noise_aug_step)
        self.trained_nfe = tuple(sorted(set(trained_nfe)))
        self.bootstrap_share = bootstrap_share

    @classmethod
    def from_flow(cls, flow: FlowConfig) -> "Shortcut":
        return cls(flow.noise_aug_step, tuple(flow.trained_nfe) or (1,), flow.bootstrap_share)

    @staticmethod
    def velocity(
        net: VelocityNet, x: torch.Tensor, t: torch.Tensor, z_up: torch.Tensor, d: torch.Tensor | None = None
    ) -> torch.Tensor:
        d = torch.zeros_like(t) if d is None else d
        return net(torch.cat([x, z_up.to(x.dtype)], dim=1), t, d)

    def step_size(self, nfe: int) -> float:
        """The ``d`` an ``nfe``-step sampler conditions on: 1/nfe if trained, else 0 (the plain flow)."""
        return 1.0 / nfe if nfe in self.trained_nfe else 0.0

    def bootstrap_count(self, batch: int) -> int:
        """Samples of a batch trained on self-consistency: the share, but at least one per step size."""
        if batch < 2:
            raise ConfigError("data.batch_size: a shortcut batch needs at least 2 samples (flow + bootstrap)")
        return min(batch - 1, max(len(self.trained_nfe), round(self.bootstrap_share * batch)))

    def bootstrap_bins(
        self, count: int, device: torch.device, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Step counts for ``count`` samples: every trained count in turn from a random offset."""
        offset = int(randint(len(self.trained_nfe), 1, torch.device("cpu"), generator))
        choice = (torch.arange(count) + offset) % len(self.trained_nfe)
        return torch.tensor(self.trained_nfe, dtype=torch.long)[choice].to(device)

    @torch.no_grad()
    def two_half_steps(
        self, net: VelocityNet, x: torch.Tensor, t: torch.Tensor, z_up: torch.Tensor, steps: torch.Tensor
    ) -> torch.Tensor:
        """The average velocity of two steps of size d/2 (d = 1/steps) by the network itself."""
        half = 0.5 / steps.to(x.dtype)
        query = torch.where(
            torch.isin(2 * steps, torch.tensor(self.trained_nfe, device=steps.device)), half, 0.0
        )
        shape = (-1, *([1] * (x.ndim - 1)))
        first = self.velocity(net, x, t, z_up, query).float()
        second = self.velocity(net, x + half.view(shape) * first, t + half, z_up, query).float()
        return (first + second) / 2

    def loss(
        self, net: VelocityNet, x1: torch.Tensor, z_up: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        x1, z_up = x1.float(), z_up.float()
        x0 = self.start_point(z_up, generator)
        count = self.bootstrap_count(x1.shape[0])
        flow = slice(count, None)
        t_flow = rand_uniform(x1.shape[0] - count, x1, generator)
        steps = self.bootstrap_bins(count, x1.device, generator)
        grid = (rand_uniform(count, x1, generator) * steps).floor().clamp(max=steps - 1)
        t_boot = grid / steps
        x_boot = interpolate(x0[:count], x1[:count], t_boot)
        target_boot = self.two_half_steps(net, x_boot, t_boot, z_up[:count], steps)
        x_t = torch.cat([x_boot, interpolate(x0[flow], x1[flow], t_flow)])
        t = torch.cat([t_boot, t_flow])
        d = torch.cat([1.0 / steps.to(x1.dtype), torch.zeros_like(t_flow)])
        target = torch.cat([target_boot, target_velocity(x0[flow], x1[flow])])
        return F.mse_loss(self.velocity(net, x_t, t, z_up, d).float(), target)

    def sample(
        self,
        net: VelocityNet,
        z_up: torch.Tensor,
        generator: torch.Generator | None = None,
        solver: str = "euler",
        nfe: int = 1,
        **solver_options,
    ) -> ODESolution:
        if solver != "euler":
            raise ConfigError(f"solver: a shortcut student samples with euler, got {solver}")
        x0 = self.start_point(z_up, generator)
        d = self.step_size(nfe)

        def field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.velocity(net, x, t, z_up, torch.full_like(t, d))

        return solve_ode(field, x0, solver=solver, nfe=nfe, **solver_options)
