"""The NHWC GroupNorm computes nn.GroupNorm's function, keeps NHWC memory, and swaps in without touching
the weights."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fmboost.models import UNet
from fmboost.models.group_norm import ChannelsLastGroupNorm, use_channels_last_group_norm
from tests.conftest import tiny_unet_config

NHWC = torch.channels_last


def randomised_norms(groups: int, channels: int) -> tuple[nn.GroupNorm, ChannelsLastGroupNorm]:
    """A native GroupNorm with random affine parameters, and ours with the same parameters."""
    torch.manual_seed(0)
    native = nn.GroupNorm(groups, channels)
    nn.init.normal_(native.weight)
    nn.init.normal_(native.bias)
    ours = ChannelsLastGroupNorm(groups, channels)
    ours.load_state_dict(native.state_dict())
    return native, ours


def test_a_hand_computed_group_is_normalised_over_its_channels_and_positions():
    x = torch.tensor([[[[1.0, 3.0]], [[5.0, 7.0]]]]).contiguous(memory_format=NHWC)  # [1, 2, 1, 2]
    norm = ChannelsLastGroupNorm(1, 2, eps=0.0)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0]))
        norm.bias.copy_(torch.tensor([0.0, 10.0]))
    # one group of four values: mean 4, biased variance (9 + 1 + 1 + 9) / 4 = 5
    expected = torch.tensor([[[[-3.0, -1.0]], [[2.0, 6.0]]]]) / math.sqrt(5)
    expected[:, 1] += 10.0
    torch.testing.assert_close(norm(x), expected)


@pytest.mark.parametrize(
    ("groups", "channels"), [(8, 64), (1, 16), (16, 16)], ids=["8 groups", "one", "per channel"]
)
def test_nhwc_inputs_give_nn_group_norm_values_and_gradients_and_stay_nhwc(groups, channels):
    native, ours = randomised_norms(groups, channels)
    x = torch.randn(3, channels, 6, 10)
    x_native = x.clone().requires_grad_()
    x_ours = x.contiguous(memory_format=NHWC).requires_grad_()
    expected, result = native(x_native), ours(x_ours)
    assert result.is_contiguous(memory_format=NHWC) and not result.is_contiguous()
    torch.testing.assert_close(result, expected)
    upstream = torch.randn_like(x)
    expected.backward(upstream)
    result.backward(upstream.contiguous(memory_format=NHWC))
    torch.testing.assert_close(x_ours.grad, x_native.grad)
    torch.testing.assert_close(ours.weight.grad, native.weight.grad)
    torch.testing.assert_close(ours.bias.grad, native.bias.grad)


def test_without_affine_parameters_only_the_statistics_apply():
    x = torch.randn(2, 12, 4, 6)
    result = ChannelsLastGroupNorm(3, 12, affine=False)(x.contiguous(memory_format=NHWC))
    torch.testing.assert_close(result, F.group_norm(x, 3))


def test_nchw_inputs_and_one_by_one_maps_take_the_native_kernel():
    native, ours = randomised_norms(4, 16)
    nchw = torch.randn(2, 16, 5, 5)
    torch.testing.assert_close(ours(nchw), native(nchw))
    assert ours(nchw).is_contiguous()
    both_layouts = torch.randn(2, 16, 1, 1)  # NCHW- and NHWC-contiguous at once
    assert torch.equal(ours(both_layouts), native(both_layouts))


def test_low_precision_inputs_keep_nn_group_norms_dtype_with_and_without_autocast():
    native, ours = randomised_norms(4, 32)
    x = torch.randn(2, 32, 8, 8).to(torch.bfloat16)
    expected = F.group_norm(x.float(), 4, native.weight, native.bias).to(torch.bfloat16)
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            result, reference = ours(x.contiguous(memory_format=NHWC)), native(x)
        assert result.dtype == reference.dtype == torch.bfloat16
        torch.testing.assert_close(result, expected)  # fp32 statistics, one rounding at the end


def test_swapping_keeps_the_parameters_their_names_and_the_networks_function():
    torch.manual_seed(0)
    net = UNet(tiny_unet_config(3))
    for parameter in net.parameters():
        nn.init.normal_(parameter, std=0.05)
    x, t = torch.randn(2, 6, 16, 16), torch.rand(2)
    expected = net(x, t)
    parameters = dict(net.named_parameters())
    native_count = sum(type(module) is nn.GroupNorm for module in net.modules())

    assert use_channels_last_group_norm(net) == native_count > 0
    assert not any(type(module) is nn.GroupNorm for module in net.modules())
    assert {name: id(p) for name, p in net.named_parameters()} == {
        name: id(p) for name, p in parameters.items()
    }
    torch.testing.assert_close(net(x.contiguous(memory_format=NHWC), t), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_compiled_it_matches_eager():
    native, ours = randomised_norms(8, 64)
    x = torch.randn(2, 64, 8, 8).contiguous(memory_format=NHWC)
    result = torch.compile(ours)(x)
    torch.testing.assert_close(result, native(x))
    assert result.is_contiguous(memory_format=NHWC)
