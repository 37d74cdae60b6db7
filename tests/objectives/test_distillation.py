"""Few-step students: reflow learns the teacher's map, shortcut trains every step size it claims."""

import copy

import pytest
import torch

from fmboost.config import FlowConfig, UNetConfig
from fmboost.errors import ConfigError, FMBoostError
from fmboost.flow.sampling import solve_ode
from fmboost.models import FMBoostModel
from fmboost.objectives import Reflow, Shortcut, validate_flow
from tests.conftest import tiny_unet_config


class RecordingStepNet(torch.nn.Module):
    """Velocity ``scale · d`` per sample (the zero velocity at d = 0); records every (t, d) it is asked."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor, bool]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        self.calls.append((t.clone(), d.clone(), torch.is_grad_enabled()))
        return torch.ones_like(x[:, : x.shape[1] // 2]) * d.view(-1, 1, 1, 1)


def test_shortcut_trains_every_step_size_it_claims_even_at_batch_two():
    objective = Shortcut(trained_nfe=(1, 2, 4), bootstrap_share=0.25)
    generator = torch.Generator().manual_seed(0)
    trained_step_sizes = set()
    for _ in range(30):
        net = RecordingStepNet()
        objective.loss(net, torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4), generator)
        *targets, (t, d, with_grad) = net.calls
        assert with_grad and not any(grad for _, _, grad in targets)  # targets carry no gradient
        assert d.tolist()[1] == 0.0  # the rest of the batch is plain flow matching
        trained_step_sizes.add(d.tolist()[0])
    assert trained_step_sizes == {1.0, 0.5, 0.25}


def test_shortcut_target_is_two_half_steps_queried_at_half_the_size_or_the_flow_below_the_finest():
    objective = Shortcut(trained_nfe=(1, 2, 4))
    net = RecordingStepNet()
    x, z_up, t = torch.zeros(3, 1, 2, 2), torch.zeros(3, 1, 2, 2), torch.tensor([0.0, 0.5, 0.25])
    target = objective.two_half_steps(net, x, t, z_up, torch.tensor([1, 2, 4]))
    (t_first, d_first, _), (t_second, d_second, _) = net.calls
    assert d_first.tolist() == d_second.tolist() == [0.5, 0.25, 0.0]  # d/2 where trained, else the flow
    assert t_second.tolist() == [0.5, 0.75, 0.375]  # the second half step starts half a step later
    assert target[:, 0, 0, 0].tolist() == [0.5, 0.25, 0.0]  # the mean of two constant velocities


def test_shortcut_samples_with_the_step_size_of_its_nfe_and_the_flow_for_untrained_counts():
    objective = Shortcut(trained_nfe=(1, 2))
    for nfe, expected in ((1, 1.0), (2, 0.5), (8, 0.0)):
        net = RecordingStepNet()
        objective.sample(net, torch.zeros(1, 1, 2, 2), torch.Generator().manual_seed(0), nfe=nfe)
        assert {d.item() for _, d, _ in net.calls} == {expected} and len(net.calls) == nfe
    with pytest.raises(ConfigError, match="shortcut student samples with euler"):
        objective.sample(RecordingStepNet(), torch.zeros(1, 1, 2, 2), solver="rk4", nfe=4)


def test_a_reflow_student_reproduces_its_teachers_map_better_than_the_teachers_own_step():
    torch.manual_seed(0)
    flow = FlowConfig(objective="cfm")
    teacher = FMBoostModel(tiny_unet_config(3), flow)
    for parameter in teacher.net.parameters():  # a curved, non-trivial field
        torch.nn.init.normal_(parameter, std=0.15)
    z_up = torch.randn(4, 3, 8, 8)
    x0 = teacher.objective.start_point(z_up, torch.Generator().manual_seed(1))

    def integrate(model: FMBoostModel, nfe: int) -> torch.Tensor:
        field = lambda x, t: model.objective.velocity(model.net, x, t, z_up)  # noqa: E731
        return solve_ode(field, x0, solver="euler", nfe=nfe).x1

    with torch.no_grad():
        target = integrate(teacher, 40)
        naive = integrate(teacher, 1)
    student = FMBoostModel(tiny_unet_config(3), FlowConfig(objective="reflow", trained_nfe=[1], nfe=1))
    student.net.load_state_dict(copy.deepcopy(teacher.net.state_dict()))
    optimizer = torch.optim.Adam(student.net.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(2)
    for _ in range(120):
        optimizer.zero_grad()
        student(target, z_up, generator, x0).backward()
        optimizer.step()
    with torch.no_grad():
        learned = integrate(student, 1)
    student_error, naive_error = (float((y - target).pow(2).mean()) for y in (learned, naive))
    assert student_error < 0.5 * naive_error, (student_error, naive_error)


def test_reflow_needs_stored_start_points():
    with pytest.raises(FMBoostError, match="reflow trains on teacher pairs"):
        Reflow().loss(RecordingStepNet(), torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"objective": "reflow"}, "flow.trained_nfe: a reflow student needs the step counts"),
        ({"objective": "shortcut", "trained_nfe": [1, 3], "nfe": 1}, "must be powers of two"),
        ({"objective": "reflow", "trained_nfe": [1, 2], "nfe": 40}, "flow.nfe: a student's default NFE"),
        ({"objective": "reflow", "trained_nfe": [4], "nfe": 4, "solver": "rk4"}, "flow.solver"),
    ],
)
def test_a_student_names_the_step_counts_it_is_trained_for(settings, message):
    with pytest.raises(ConfigError, match=message):
        validate_flow(FlowConfig(**settings), UNetConfig())


def test_a_shortcut_student_starts_as_its_teacher_whatever_the_step_size():
    torch.manual_seed(0)
    teacher = FMBoostModel(tiny_unet_config(3), FlowConfig())
    for parameter in teacher.net.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    student = FMBoostModel(tiny_unet_config(3), FlowConfig(objective="shortcut", trained_nfe=[1, 2], nfe=1))
    assert student.unet_config.step_conditioning
    student.net.load_state_dict(teacher.net.state_dict(), strict=False)  # step_embed stays at its init
    x, t = torch.randn(2, 6, 8, 8), torch.tensor([0.1, 0.7])
    with torch.no_grad():
        expected = teacher.net(x, t)
        for d in (0.0, 0.5, 1.0):
            torch.testing.assert_close(student.net(x, t, torch.full_like(t, d)), expected)
