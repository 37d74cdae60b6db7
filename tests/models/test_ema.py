import pytest
import torch

from fmboost.models.ema import EMA, ema_decay


def test_decay_warms_up_with_power_three_quarters_and_caps_at_beta():
    assert ema_decay(0, beta=0.999, power=0.75, update_after_step=0) == 0.0
    assert ema_decay(1, beta=0.999, power=0.75, update_after_step=0) == 0.0
    assert ema_decay(2, beta=0.999, power=0.75, update_after_step=0) == pytest.approx(1 - 2**-0.75)
    assert ema_decay(10_001, beta=0.9999, power=0.75, update_after_step=0) == pytest.approx(0.999, abs=1e-6)
    assert ema_decay(10**7, beta=0.999, power=0.75, update_after_step=0) == 0.999


def test_updates_during_warm_up_copy_the_online_weights():
    assert ema_decay(5, beta=0.999, power=0.75, update_after_step=10) == 0.0


def test_update_after_the_optimizer_step_averages_the_new_weights():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, beta=0.5, power=0.75)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)

    expected = 1.0
    for _ in range(4):
        decay = ema.current_decay()
        model(torch.ones(1, 2)).sum().backward()  # gradient 1 per weight: each step subtracts 1
        optimizer.step()
        optimizer.zero_grad()
        ema.update(model)
        expected = decay * expected + (1 - decay) * model.weight[0, 0].item()
        assert ema.shadow.weight[0, 0].item() == pytest.approx(expected)
    assert ema.shadow.weight[0, 0].item() != model.weight[0, 0].item()


def test_shadow_is_frozen_and_its_state_survives_a_state_dict_round_trip():
    model = torch.nn.Linear(3, 3)
    ema = EMA(model)
    ema.update(model)
    assert not any(p.requires_grad for p in ema.shadow.parameters())
    restored = EMA(torch.nn.Linear(3, 3))
    restored.load_state_dict(ema.state_dict())
    assert int(restored.num_updates) == 1
    torch.testing.assert_close(restored.shadow.weight, model.weight)


def test_the_ema_refuses_to_average_a_low_precision_copy_of_the_weights():
    """Mixed precision keeps fp32 master weights; averaging a bf16 copy would lose the small updates."""
    model = torch.nn.Linear(2, 1)
    ema = EMA(model)
    with pytest.raises(TypeError, match=r"averages torch.float32 weights, but weight is torch.bfloat16"):
        ema.update(torch.nn.Linear(2, 1).bfloat16())


def test_following_master_weights_averages_the_fp32_masters_piece_by_piece():
    """With bf16 module weights the EMA reads the optimizer's fp32 masters, which may come in pieces
    (offset into the flattened parameter, flat tensor): 1 + 2**-10 survives, its bf16 copy would be 1."""
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, beta=0.5)
    low = model.bfloat16()
    weight_master = torch.full((4,), 1 + 2**-10)
    bias_master = torch.tensor([3.0, 5.0])
    ema.follow_master_weights(
        {"weight": [(0, weight_master[:3]), (3, weight_master[3:])], "bias": [(0, bias_master)]},
        partitioned=False,
    )
    ema.update(low)
    ema.update(low)  # two warm-up copies
    decay = ema.current_decay()
    assert decay == pytest.approx(1 - 2**-0.75)
    bias_master.fill_(1.0)  # the optimizer steps the masters in place
    ema.update(low)
    torch.testing.assert_close(ema.shadow.bias, torch.tensor([3.0, 5.0]) * decay + (1 - decay))
    torch.testing.assert_close(ema.shadow.weight, torch.full((2, 2), 1 + 2**-10), rtol=0, atol=0)
