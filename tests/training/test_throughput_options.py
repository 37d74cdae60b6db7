"""Throughput options and efficiency accounting: they change speed, never the network or its numbers."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fmboost.config import FlowConfig, TrainConfig
from fmboost.config_loading import load_config
from fmboost.errors import ConfigError
from fmboost.models import FMBoostModel
from fmboost.models.group_norm import ChannelsLastGroupNorm
from fmboost.training.efficiency import model_flops_utilisation, peak_flops, training_flops_per_sample
from fmboost.training.hot_loop import LossWindow, StopCheck, apply_throughput_options, memory_format
from tests.conftest import REPO_ROOT, tiny_unet_config
from tests.training.helpers import TINY_MODEL


def tiny_model() -> FMBoostModel:
    torch.manual_seed(0)
    model = FMBoostModel(tiny_unet_config(3), FlowConfig())
    for parameter in model.net.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    return model


def test_flops_counted_on_the_meta_device_match_a_count_on_real_tensors():
    config = load_config(REPO_ROOT / "configs/demo/tiny_cpu.yaml", TINY_MODEL)
    torch.manual_seed(0)
    model = FMBoostModel.from_config(config)
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 16, 16), torch.randn(1, 3, 16, 16)).backward()
    # The attention kernel differs (math on meta, flash on CPU) and so does its counting formula.
    assert training_flops_per_sample(config, 16) == pytest.approx(counter.get_total_flops(), rel=0.1)


def test_mfu_is_achieved_model_flops_over_the_peak_of_all_devices():
    assert model_flops_utilisation(1e12, 10.0, 100e12, world_size=2) == 0.05
    assert peak_flops(torch.device("cpu"), "bf16") is None  # no CPU peak table: MFU is not logged


def test_channels_last_batches_give_the_same_result_and_leave_the_weights_to_deepspeed():
    model = tiny_model()
    settings = TrainConfig(channels_last=True)
    assert apply_throughput_options(model, settings, torch.device("cpu"), None, (2, 3, 16, 16)) == []
    assert memory_format(settings) == torch.channels_last
    assert all(p.is_contiguous() for p in model.parameters())  # DeepSpeed flattens contiguous weights
    x, t = torch.randn(2, 6, 16, 16), torch.rand(2)
    torch.testing.assert_close(model.net(x.contiguous(memory_format=torch.channels_last), t), model.net(x, t))


def test_the_nhwc_group_norm_replaces_every_group_norm_and_needs_channels_last():
    model = tiny_model()
    x, t = torch.randn(2, 6, 16, 16), torch.rand(2)
    expected = model.net(x, t)
    settings = TrainConfig(channels_last=True, channels_last_group_norm=True)
    assert apply_throughput_options(model, settings, torch.device("cpu"), None, (2, 3, 16, 16)) == []
    norms = [type(m) for m in model.net.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and set(norms) == {ChannelsLastGroupNorm}
    nhwc = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(model.net(nhwc, t), expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match="train.channels_last_group_norm: needs train.channels_last"):
        load_config(None, ["train.channels_last=false", "train.channels_last_group_norm=true"])


def test_a_compile_that_fails_falls_back_to_eager_with_one_message(monkeypatch):
    def failing_compile(function, *args, **kwargs):
        def compiled(*call_args, **call_kwargs):
            raise RuntimeError("no working C++ compiler\nsecond line")

        return compiled

    monkeypatch.setattr(torch, "compile", failing_compile)
    model = tiny_model()
    notes = apply_throughput_options(
        model, TrainConfig(compile=True), torch.device("cpu"), None, (2, 3, 16, 16)
    )
    assert notes == [
        "torch.compile failed (RuntimeError: no working C++ compiler); training the U-Net uncompiled"
    ]
    x, t = torch.randn(2, 6, 16, 16), torch.rand(2)
    torch.testing.assert_close(model.net(x, t), tiny_model().net(x, t))
    assert all(p.grad is None for p in model.parameters()), "the trial step leaves no gradients behind"


def test_the_loss_window_sums_on_the_device_and_reads_once(monkeypatch):
    window = LossWindow(torch.device("cpu"), first_step=0)
    for value in (1.0, 2.0, float("nan")):
        window.add(torch.tensor(value))
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda tensor: tensor)  # a world of one rank
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 1)
    window.samples_skipped, window.new_unusable = 2, 1
    sums = window.reduce(stop_requested=True, seconds_per_step=0.25)
    assert sums.loss_sum != sums.loss_sum and sums.stop and window.micro_steps == 3  # NaN survives the sum
    assert (sums.seconds_per_step, sums.samples_skipped, sums.new_unusable) == (0.25, 2, 1)


def test_the_stop_check_comes_after_the_first_step_then_every_check_seconds_of_steps():
    check = StopCheck(check_seconds=10.0, first_step=100)  # a resumed run
    assert not check.due(100) and check.due(101)
    check.checked(101, seconds_per_step=3.0, log_every=50)
    assert check.next_step == 104  # three 3-second steps fit in 10 s
    check.checked(104, seconds_per_step=60.0, log_every=50)
    assert check.next_step == 105  # slower than the check time: every step
    check.checked(105, seconds_per_step=0.001, log_every=50)
    assert check.next_step == 155  # fast steps: the log steps suffice
