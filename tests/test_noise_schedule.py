import math

import pytest
import torch

from fmboost.noise_schedule import NUM_STEPS, alpha_bar, noise_augment


def test_default_step_400_keeps_about_65_percent_signal():
    assert alpha_bar(400) == pytest.approx(0.654, abs=1e-3)


def test_alpha_bar_matches_the_hand_computed_formula():
    t = 250 / 999
    expected = 1 / (1 + math.exp(2 * math.log(math.tan(math.pi * t / 2) + 1e-5)))
    assert alpha_bar(250) == pytest.approx(expected, rel=1e-12)


def test_schedule_runs_from_clean_to_pure_noise_monotonically():
    values = [alpha_bar(k) for k in range(NUM_STEPS)]
    assert values[0] == pytest.approx(1.0, abs=1e-9)
    assert values[-1] < 1e-6
    assert all(a > b for a, b in zip(values, values[1:], strict=False))


def test_cosine_schedule_is_cos_squared_away_from_the_epsilon():
    t = 600 / 999
    assert alpha_bar(600) == pytest.approx(math.cos(math.pi * t / 2) ** 2, rel=1e-4)


@pytest.mark.parametrize("step", [-1, NUM_STEPS])
def test_out_of_range_steps_are_refused(step):
    with pytest.raises(ValueError, match="noise step"):
        alpha_bar(step)


def test_noise_augment_mixes_signal_and_seeded_noise():
    z = torch.randn(2, 4, 8, 8)
    generator = torch.Generator().manual_seed(3)
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(3))
    a = alpha_bar(400)
    expected = math.sqrt(a) * z + math.sqrt(1 - a) * eps
    torch.testing.assert_close(noise_augment(z, 400, generator), expected)
