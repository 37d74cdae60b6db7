import math

import pytest
import torch

from fmboost.noise_schedule import alpha_bar
from fmboost.objectives import (
    OBJECTIVES,
    ConditionalDiffusion,
    CouplingFlowMatching,
    L1Regression,
    L2Regression,
    NaiveFlowMatching,
)
from fmboost.objectives.flow_matching import interpolate, target_velocity


class RecordingNet:
    """Returns a fixed prediction and records what the objective fed it."""

    def __init__(self, output: torch.Tensor | None = None) -> None:
        self.output, self.inputs, self.times = output, [], []

    def __call__(self, x, t):
        self.inputs.append(x.clone())
        self.times.append(t.clone())
        return self.output if self.output is not None else torch.zeros_like(x[:, : x.shape[1] // 2])


def test_registry_offers_the_objectives_and_students_with_one_interface():
    assert OBJECTIVES.names() == ["cfm", "dm", "fm", "l1", "l2", "reflow", "shortcut"]
    assert [OBJECTIVES.get(n)().input_channels(4) for n in OBJECTIVES.names()] == [8, 8, 8, 4, 4, 8, 8]


def test_straight_path_interpolates_and_has_constant_velocity():
    x0, x1 = torch.zeros(2, 1, 1, 1), torch.ones(2, 1, 1, 1) * 4
    torch.testing.assert_close(
        interpolate(x0, x1, torch.tensor([0.25, 1.0])).flatten(), torch.tensor([1.0, 4.0])
    )
    torch.testing.assert_close(target_velocity(x0, x1), x1 - x0)


def test_cfm_loss_regresses_x1_minus_the_noise_augmented_start():
    x1, z_up = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    net = RecordingNet(torch.zeros(2, 4, 8, 8))
    loss = CouplingFlowMatching(noise_aug_step=400).loss(net, x1, z_up, torch.Generator().manual_seed(0))

    # Replay the generator: the noise for x0 is drawn first, then t.
    replay = torch.Generator().manual_seed(0)
    a = alpha_bar(400)
    x0 = math.sqrt(a) * z_up + math.sqrt(1 - a) * torch.randn(z_up.shape, generator=replay)
    t = torch.rand(2, generator=replay)
    torch.testing.assert_close(loss, ((x1 - x0) ** 2).mean())
    net_input = net.inputs[0]
    torch.testing.assert_close(net_input[:, :4], interpolate(x0, x1, t))
    torch.testing.assert_close(net_input[:, 4:], z_up, msg="the context must be the clean upsampled latent")
    torch.testing.assert_close(net.times[0], t)


def test_cfm_with_the_exact_velocity_samples_x1_in_one_euler_step():
    x1, z_up = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    objective = CouplingFlowMatching(noise_aug_step=400)
    x0 = objective.start_point(z_up, torch.Generator().manual_seed(1))
    exact = RecordingNet(x1 - x0)
    solution = objective.sample(exact, z_up, torch.Generator().manual_seed(1), solver="euler", nfe=1)
    torch.testing.assert_close(solution.x1, x1)


def test_naive_fm_starts_from_pure_noise_and_keeps_the_context():
    z_up = torch.full((2, 4, 8, 8), 5.0)
    net = RecordingNet()
    NaiveFlowMatching().sample(net, z_up, torch.Generator().manual_seed(2), solver="euler", nfe=1)
    start = net.inputs[0][:, :4]
    torch.testing.assert_close(start, torch.randn(z_up.shape, generator=torch.Generator().manual_seed(2)))
    torch.testing.assert_close(net.inputs[0][:, 4:], z_up)


@pytest.mark.parametrize(("objective", "expected"), [(L1Regression(), 1.5), (L2Regression(), 2.5)])
def test_regression_losses_compare_one_prediction_with_x1(objective, expected):
    x1 = torch.zeros(1, 1, 1, 2)
    net = RecordingNet(torch.tensor([[[[1.0, 2.0]]]]))
    assert objective.loss(net, x1, torch.zeros(1, 1, 1, 2)).item() == pytest.approx(expected)
    solution = objective.sample(net, torch.zeros(1, 1, 1, 2), nfe=40, solver="euler")
    assert solution.nfe == 1 and len(net.inputs) == 2
    assert net.inputs[0].shape[1] == 1, "regression sees only the context"


@pytest.mark.parametrize("objective", [CouplingFlowMatching(noise_aug_step=400), NaiveFlowMatching()])
def test_under_bf16_autocast_only_the_network_is_low_precision_and_the_path_and_loss_stay_fp32(objective):
    """bf16-mixed as released: x0, x_t, the target and the loss in fp32; the network autocasts."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 4, 3, padding=1)
    seen = {}

    def net(x, t):
        seen["input"] = x
        seen["output"] = conv(x)  # a conv under autocast runs in bf16
        return seen["output"]

    x1, z_up = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = objective.loss(net, x1, z_up, torch.Generator().manual_seed(3))
    assert seen["output"].dtype == torch.bfloat16
    assert seen["input"].dtype == torch.float32 and loss.dtype == torch.float32

    generator = torch.Generator().manual_seed(3)  # the same draws, recomputed by hand in fp32
    x0 = objective.start_point(z_up, generator)
    t = torch.rand(2, generator=generator).view(-1, 1, 1, 1)
    x_t = t * x1 + (1 - t) * x0
    torch.testing.assert_close(seen["input"], torch.cat([x_t, z_up], dim=1), rtol=0, atol=0)
    expected = ((seen["output"].float() - (x1 - x0)) ** 2).mean()
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)


def test_bf16_inputs_still_build_the_path_in_fp32():
    seen = {}

    def net(x, t):
        seen["input"] = x
        return torch.zeros_like(x[:, :4])

    x1, z_up = torch.randn(2, 4, 8, 8).bfloat16(), torch.randn(2, 4, 8, 8).bfloat16()
    loss = CouplingFlowMatching().loss(net, x1, z_up, torch.Generator().manual_seed(0))
    assert seen["input"].dtype == torch.float32 and loss.dtype == torch.float32


def test_dm_loss_regresses_v_of_the_noised_high_res_latent_at_a_random_step():
    x1, z_up = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    net = RecordingNet(torch.zeros(3, 4, 8, 8))
    loss = ConditionalDiffusion().loss(net, x1, z_up, torch.Generator().manual_seed(0))

    generator = torch.Generator().manual_seed(0)  # the same draws, by hand
    noise = torch.randn(x1.shape, generator=generator)
    steps = torch.randint(0, 1000, (3,), generator=generator)
    signal = torch.tensor([math.sqrt(alpha_bar(int(k))) for k in steps]).view(-1, 1, 1, 1)
    sigma = (1 - signal**2).sqrt()
    torch.testing.assert_close(net.inputs[0], torch.cat([signal * x1 + sigma * noise, z_up], dim=1))
    torch.testing.assert_close(net.times[0], steps.float() / 999)
    torch.testing.assert_close(loss, ((signal * noise - sigma * x1) ** 2).mean())


@pytest.mark.parametrize("nfe", [1, 2, 5, 40])
def test_ddim_with_the_exact_v_of_a_single_target_lands_on_it_in_nfe_steps(nfe):
    """For data that is one point c, v*(x_k) is known in closed form; DDIM then recovers c exactly."""
    target = torch.randn(2, 4, 8, 8)
    calls = []

    def exact_v(inputs, t):
        calls.append(t)
        x = inputs[:, :4]
        signal = torch.tensor([math.sqrt(alpha_bar(round(float(s) * 999))) for s in t]).view(-1, 1, 1, 1)
        sigma = (1 - signal**2).sqrt()
        noise = torch.where(sigma > 1e-6, (x - signal * target) / sigma.clamp_min(1e-6), 0.0)  # k = 0: x is c
        return signal * noise - sigma * target

    solution = ConditionalDiffusion().sample(
        exact_v, torch.zeros_like(target), torch.Generator().manual_seed(1), nfe=nfe
    )
    assert solution.nfe == nfe == len(calls)
    torch.testing.assert_close(solution.x1, target, atol=1e-4, rtol=1e-4)
    assert float(calls[0][0]) == 1.0 and all(float(t[0]) > 0 for t in calls), "no step wasted at k = 0"
    assert len({float(t[0]) for t in calls}) == nfe
