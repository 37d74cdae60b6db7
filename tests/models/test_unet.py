import math

import pytest
import torch

from fmboost.models.unet import AttentionBlock, UNet, UNetConfig, timestep_embedding
from tests.conftest import tiny_unet_config


def naive_attention(block: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """Reference: per head, softmax(q·kᵀ/√d)·v with qkv channels ordered (q|k|v, head, dim)."""
    b, c, h, w = x.shape
    heads, d = block.num_heads, c // block.num_heads
    qkv = block.qkv(block.norm(x).reshape(b, c, h * w))  # [B, 3C, L]
    out = torch.empty(b, c, h * w)
    for head in range(heads):
        q = qkv[:, head * d : (head + 1) * d]
        k = qkv[:, c + head * d : c + (head + 1) * d]
        v = qkv[:, 2 * c + head * d : 2 * c + (head + 1) * d]
        weights = torch.softmax(torch.einsum("bdi,bdj->bij", q, k) / math.sqrt(d), dim=-1)
        out[:, head * d : (head + 1) * d] = torch.einsum("bij,bdj->bdi", weights, v)
    return x + block.proj_out(out).reshape(b, c, h, w)


def randomised_attention(channels: int = 32, head_channels: int = 8) -> AttentionBlock:
    torch.manual_seed(0)
    block = AttentionBlock(channels, head_channels, groups=4)
    torch.nn.init.normal_(block.proj_out.weight, std=0.2)  # undo the zero init so the output is informative
    return block


def test_attention_matches_a_naive_per_head_reference():
    block = randomised_attention()
    x = torch.randn(2, 32, 5, 6)
    torch.testing.assert_close(block(x), naive_attention(block, x), atol=1e-5, rtol=1e-5)


def test_attention_is_equivariant_to_permuting_positions():
    """Mixing channels with positions (a reshape without transpose) would break this."""
    block = randomised_attention()
    x = torch.randn(1, 32, 4, 4)
    permutation = torch.randperm(16)
    permuted_input = x.flatten(2)[:, :, permutation].reshape_as(x)
    expected = block(x).flatten(2)[:, :, permutation].reshape_as(x)
    torch.testing.assert_close(block(permuted_input), expected, atol=1e-5, rtol=1e-5)


def test_untrained_unet_predicts_zero_because_its_output_conv_starts_at_zero():
    net = UNet(tiny_unet_config())
    assert torch.count_nonzero(net(torch.randn(2, 6, 16, 16), torch.rand(2))) == 0


def test_unet_output_shape_and_time_dependence_once_trained_weights_are_nonzero():
    net = UNet(tiny_unet_config())
    for parameter in net.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    x = torch.randn(2, 6, 16, 12)
    out_early, out_late = net(x, torch.zeros(2)), net(x, torch.ones(2))
    assert out_early.shape == (2, 3, 16, 12)
    assert not torch.allclose(out_early, out_late)


def test_attention_is_placed_at_the_configured_downsampling_factors():
    config = tiny_unet_config()
    net = UNet(config)
    attention_levels = [level for level in net.down if getattr(level, "attention", None) is not None]
    # channel_mult [1, 2] reaches factors 1 and 2; attention only at factor 2 (one res block there)
    assert len(attention_levels) == 1
    assert attention_levels[0].res.skip.out_channels == 2 * config.model_channels


def test_input_not_divisible_by_the_downsampling_is_a_clear_error():
    net = UNet(tiny_unet_config())
    with pytest.raises(ValueError, match="divisible by 2"):
        net(torch.randn(1, 6, 15, 16), torch.zeros(1))


def test_timestep_embedding_is_cos_sin_of_scaled_time():
    embedding = timestep_embedding(torch.tensor([0.0, 500.0]), 8)
    torch.testing.assert_close(embedding[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(4) / 4)
    torch.testing.assert_close(embedding[1, :4], torch.cos(500.0 * frequencies))


def test_paper_configuration_builds_and_reports_its_parameter_count():
    net = UNet(UNetConfig())  # 8 in, 128 channels, mult [1,2,4,8], 3 res blocks, attention at 8 and 16
    parameters = sum(p.numel() for p in net.parameters())
    print(f"paper U-Net (64²→128² SD latents): {parameters / 1e6:.1f} M parameters")
    assert net.input_conv.in_channels == 8
    assert net.out[-1].out_channels == 4
    assert 300e6 < parameters < 360e6
