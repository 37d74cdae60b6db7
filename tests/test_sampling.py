import math

import pytest
import torch

from fmboost.errors import ConfigError
from fmboost.flow.sampling import is_valid_nfe, solve_ode


class CountingVelocity:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.fn(x, t)


def test_one_euler_step_on_the_exact_straight_path_field_lands_on_x1():
    x0, x1 = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    solution = solve_ode(lambda x, t: x1 - x0, x0, solver="euler", nfe=1)
    torch.testing.assert_close(solution.x1, x1)
    assert solution.nfe == 1


@pytest.mark.parametrize(("solver", "nfe", "steps"), [("euler", 7, 7), ("midpoint", 8, 4), ("rk4", 12, 3)])
def test_fixed_step_solvers_spend_exactly_the_requested_evaluations(solver, nfe, steps):
    velocity = CountingVelocity(lambda x, t: -x)
    solution = solve_ode(velocity, torch.ones(2, 3), solver=solver, nfe=nfe, return_trajectory=True)
    assert velocity.calls == nfe == solution.nfe
    assert solution.trajectory.shape == (steps + 1, 2, 3)
    torch.testing.assert_close(solution.trajectory[0], torch.ones(2, 3))
    torch.testing.assert_close(solution.times[-1], torch.tensor(1.0))


def test_rk4_calls_the_network_four_times_per_step():
    velocity = CountingVelocity(lambda x, t: torch.zeros_like(x))
    solve_ode(velocity, torch.zeros(1, 1), solver="rk4", nfe=4)
    assert velocity.calls == 4


def test_dopri5_matches_the_closed_form_of_a_linear_ode_and_reports_its_nfe():
    # dx/dt = -2x + t  =>  x(t) = (x0 + 1/4) e^{-2t} + t/2 - 1/4
    x0 = torch.tensor([[1.0, -0.5, 2.0]], dtype=torch.float64)
    velocity = CountingVelocity(lambda x, t: -2 * x + t[:, None])
    solution = solve_ode(velocity, x0, solver="dopri5", atol=1e-9, rtol=1e-9)
    expected = (x0 + 0.25) * math.exp(-2.0) + 0.5 - 0.25
    torch.testing.assert_close(solution.x1, expected, atol=1e-7, rtol=1e-7)
    assert solution.nfe == velocity.calls > 6


def test_dopri5_trajectory_has_the_requested_points():
    solution = solve_ode(
        lambda x, t: -x, torch.ones(1, 2), solver="dopri5", return_trajectory=True, trajectory_points=5
    )
    assert solution.trajectory.shape == (5, 1, 2)
    torch.testing.assert_close(
        solution.trajectory[2], torch.full((1, 2), math.exp(-0.5)), atol=1e-4, rtol=1e-4
    )


def test_euler_is_first_order_accurate_on_a_curved_field():
    x0 = torch.ones(1, 1, dtype=torch.float64)
    coarse = solve_ode(lambda x, t: x, x0, solver="euler", nfe=10).x1
    assert coarse.item() == pytest.approx(1.1**10)


def test_solver_time_argument_is_a_batch_of_times():
    seen = []
    solve_ode(lambda x, t: seen.append(t.clone()) or torch.zeros_like(x), torch.zeros(4, 2), nfe=2)
    assert [t.tolist() for t in seen] == [[0.0] * 4, [0.5] * 4]


@pytest.mark.parametrize(("solver", "nfe"), [("midpoint", 3), ("rk4", 10), ("rk4", 2), ("euler", 0)])
def test_impossible_nfe_is_a_clear_error(solver, nfe):
    assert not is_valid_nfe(solver, nfe)
    with pytest.raises(ConfigError, match="nfe"):
        solve_ode(lambda x, t: x, torch.zeros(1, 1), solver=solver, nfe=nfe)


def test_unknown_solver_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown fixed-step solver 'heun'"):
        solve_ode(lambda x, t: x, torch.zeros(1, 1), solver="heun", nfe=2)
