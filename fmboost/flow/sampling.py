r"""Integrating the learned flow :math:`\dot x = v_\theta(x, t)` from :math:`t = 0` to :math:`t = 1`.

Fixed-step solvers take the number of function evaluations (NFE) as the user-facing knob:
``euler`` uses one evaluation per step, ``midpoint`` two and ``rk4`` four, so ``nfe=40`` means 40,
20 and 10 steps. The adaptive ``dopri5`` takes ``atol``/``rtol`` and reports the NFE it used.
NFE is always *counted* by wrapping the vector field, never derived from a formula.

Example:
    >>> solution = solve_ode(lambda x, t: x1 - x0, x0, solver="euler", nfe=1)
    >>> torch.allclose(solution.x1, x1), solution.nfe
    (True, 1)
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fmboost.config import require
from fmboost.errors import ConfigError

VelocityField = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``v(x, t)`` with ``x`` of shape [B, ...] and ``t`` of shape [B]."""

FIXED_STEP_EVALS = {"euler": 1, "midpoint": 2, "rk4": 4}
ADAPTIVE_SOLVERS = ("dopri5",)
SOLVERS = (*FIXED_STEP_EVALS, *ADAPTIVE_SOLVERS)


@dataclass
class ODESolution:
    """End state, counted NFE and, if asked for, the states at ``times`` (shape [T, B, ...])."""

    x1: torch.Tensor
    nfe: int
    times: torch.Tensor | None = None
    trajectory: torch.Tensor | None = None


class CountingField(torch.nn.Module):
    """Adapts ``v(x, t)`` to torchdiffeq's ``f(t, x)`` and counts every evaluation.

    The state is integrated in float32; the field sees ``x`` in ``field_dtype`` (e.g. bf16 on GPU).
    """

    def __init__(self, velocity: VelocityField, field_dtype: torch.dtype) -> None:
        super().__init__()
        self.velocity = velocity
        self.field_dtype = field_dtype
        self.calls = 0

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        t_batch = t.to(torch.float32).expand(x.shape[0])
        return self.velocity(x.to(self.field_dtype), t_batch).to(torch.float32)


class ReportingNet:
    """``net`` that calls ``report()`` before each evaluation, so a caller (a UI) can show progress."""

    def __init__(self, net: Callable[..., torch.Tensor], report: Callable[[], None]) -> None:
        self.net, self.report = net, report

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        self.report()
        return self.net(*inputs)


def steps_for_nfe(solver: str, nfe: int) -> int:
    """Number of steps a fixed-step ``solver`` takes for ``nfe`` evaluations; a clear error if impossible."""
    if solver not in FIXED_STEP_EVALS:
        raise ConfigError(f"solver: unknown fixed-step solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    per_step = FIXED_STEP_EVALS[solver]
    if nfe < per_step or nfe % per_step:
        raise ConfigError(
            f"nfe: {solver} uses {per_step} evaluations per step, so nfe must be a positive "
            f"multiple of {per_step}; got {nfe}"
        )
    return nfe // per_step


def validate_solver(solver: str, nfe: int, section: str) -> None:
    """``section.solver`` is known and ``section.nfe`` is a budget it can spend exactly."""
    require(
        solver in SOLVERS,
        f"{section}.solver",
        f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}",
    )
    require(is_valid_nfe(solver, nfe), f"{section}.nfe", f"{nfe} evaluations do not fit the {solver} solver")


def is_valid_nfe(solver: str, nfe: int) -> bool:
    """Whether ``solver`` can spend exactly ``nfe`` evaluations (adaptive solvers choose their own)."""
    if solver in ADAPTIVE_SOLVERS:
        return True
    return (
        solver in FIXED_STEP_EVALS and nfe >= FIXED_STEP_EVALS[solver] and nfe % FIXED_STEP_EVALS[solver] == 0
    )


@torch.no_grad()
def solve_ode(
    velocity: VelocityField,
    x0: torch.Tensor,
    solver: str = "euler",
    nfe: int = 40,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    return_trajectory: bool = False,
    trajectory_points: int = 11,
) -> ODESolution:
    """Integrate ``velocity`` from ``x0`` at t=0 to t=1.

    Args:
        velocity: the vector field ``v(x, t)``.
        x0: start state [B, ...].
        solver: ``euler``, ``midpoint``, ``rk4`` (fixed steps) or ``dopri5`` (adaptive).
        nfe: evaluations for fixed-step solvers; ignored by ``dopri5``.
        atol: absolute tolerance of ``dopri5``.
        rtol: relative tolerance of ``dopri5``.
        return_trajectory: also return intermediate states; fixed-step solvers return every
            step, ``dopri5`` returns ``trajectory_points`` evenly spaced times.
    """
    from torchdiffeq import odeint  # here, not at the top: it imports scipy.integrate (0.4 s a process)

    field = CountingField(velocity, x0.dtype)
    state = x0.to(torch.float32)
    if solver in ADAPTIVE_SOLVERS:
        points = trajectory_points if return_trajectory else 2
        times = torch.linspace(0.0, 1.0, points, device=x0.device)
        states = odeint(field, state, times, method=solver, atol=atol, rtol=rtol)
    else:
        steps = steps_for_nfe(solver, nfe)
        # With no step_size, torchdiffeq's fixed-grid solvers step exactly along the given times.
        times = torch.linspace(0.0, 1.0, steps + 1, device=x0.device)
        states = odeint(field, state, times, method=solver)
    states = states.to(x0.dtype)
    return ODESolution(
        x1=states[-1],
        nfe=field.calls,
        times=times if return_trajectory else None,
        trajectory=states if return_trajectory else None,
    )
