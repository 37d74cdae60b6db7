import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from fmboost.config import UNetConfig
from fmboost.config_loading import load_config
from fmboost.models import FMBoostModel
from fmboost.models.unet import AttentionBlock, ResBlock, UNet, timestep_embedding
from tests.conftest import REPO_ROOT, tiny_unet_config


def naive_attention(block: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """Reference: per head, softmax(q·kᵀ/√d)·v with qkv channels ordered (q|k|v, head, dim)."""
    b, c, h, w = x.shape
    heads, d = block.num_heads, block.head_channels
    inner = heads * d
    qkv = block.qkv(block.norm(x).reshape(b, c, h * w))  # [B, 3·inner, L]
    out = torch.empty(b, inner, h * w)
    for head in range(heads):
        q = qkv[:, head * d : (head + 1) * d]
        k = qkv[:, inner + head * d : inner + (head + 1) * d]
        v = qkv[:, 2 * inner + head * d : 2 * inner + (head + 1) * d]
        weights = torch.softmax(torch.einsum("bdi,bdj->bij", q, k) / math.sqrt(d), dim=-1)
        out[:, head * d : (head + 1) * d] = torch.einsum("bij,bdj->bdi", weights, v)
    return x + block.proj_out(out).reshape(b, c, h, w)


def randomised_attention(channels: int = 32, num_heads: int = 4, head_channels: int = 8) -> AttentionBlock:
    torch.manual_seed(0)
    block = AttentionBlock(channels, num_heads, head_channels, groups=4)
    torch.nn.init.normal_(block.proj_out.weight, std=0.2)  # undo the zero init so the output is informative
    return block


@pytest.mark.parametrize(
    ("num_heads", "head_channels"), [(4, 8), (4, 16), (2, 4)], ids=["inner=C", "inner>C", "inner<C"]
)
def test_attention_matches_a_naive_per_head_reference(num_heads, head_channels):
    block = randomised_attention(32, num_heads, head_channels)
    x = torch.randn(2, 32, 5, 6)
    torch.testing.assert_close(block(x), naive_attention(block, x), atol=1e-5, rtol=1e-5)


def test_attention_hands_sdpa_contiguous_heads_with_head_dim_last():
    block = randomised_attention(32, 4, 16)
    qkv = block.qkv(block.norm(torch.randn(2, 32, 4, 4)).view(2, 32, 16))
    for tensor in block.split_heads(qkv):
        assert tensor.shape == (2, 4, 16, 16) and tensor.is_contiguous()


def test_attention_is_equivariant_to_permuting_positions():
    """Mixing channels with positions (a reshape without transpose) would break this."""
    block = randomised_attention()
    x = torch.randn(1, 32, 4, 4)
    permutation = torch.randperm(16)
    permuted_input = x.flatten(2)[:, :, permutation].reshape_as(x)
    expected = block(x).flatten(2)[:, :, permutation].reshape_as(x)
    torch.testing.assert_close(block(permuted_input), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("channels_out", [16, 32], ids=["identity skip", "1x1 conv skip"])
def test_res_block_is_scale_shift_norm_written_out_by_hand(channels_out):
    torch.manual_seed(0)
    block = ResBlock(16, emb_channels=12, out_channels=channels_out, dropout=0.0, groups=4)
    for parameter in block.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    x, emb = torch.randn(2, 16, 8, 8), torch.randn(2, 12)
    h = block.in_layers[2](F.silu(block.in_layers[0](x)))
    scale, shift = block.emb_layers[1](F.silu(emb)).chunk(2, dim=1)  # the SiLU of the released layout
    h = block.out_norm(h) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
    expected = block.skip(x) + block.out_layers[2](F.silu(h))
    # UNet.forward applies the embedding's SiLU once for all blocks.
    torch.testing.assert_close(block(x, F.silu(emb)), expected)
    assert {name for name, _ in block.named_parameters()} >= {
        "in_layers.0.weight",
        "in_layers.2.weight",
        "emb_layers.1.weight",
        "out_norm.weight",
        "out_layers.2.weight",
    }  # the released layout's names: checkpoints load unchanged


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


def test_time_scale_multiplies_t_before_the_embedding():
    config = tiny_unet_config()
    net, scaled = UNet(config), UNet(replace(config, time_scale=1000.0))
    for parameter in net.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    scaled.load_state_dict(net.state_dict())
    x = torch.randn(1, 6, 8, 8)
    torch.testing.assert_close(scaled(x, torch.tensor([0.0005])), net(x, torch.tensor([0.5])))


def test_timestep_embedding_is_cos_sin_of_scaled_time():
    embedding = timestep_embedding(torch.tensor([0.0, 500.0]), 8)
    torch.testing.assert_close(embedding[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(4) / 4)
    torch.testing.assert_close(embedding[1, :4], torch.cos(500.0 * frequencies))


@pytest.mark.parametrize("path", ["configs/cfm_1k.yaml", "configs/cascade_2k.yaml", None])
def test_paper_configs_build_the_released_network_parameter_for_parameter(path):
    net = FMBoostModel.from_config(load_config(REPO_ROOT / path if path else None)).net
    assert sum(p.numel() for p in net.parameters()) == 305_806_340
    assert net.input_conv.in_channels == 8 and net.out[-1].out_channels == 4
    assert net.config.time_scale == 1.0, "the released U-Net embeds t in [0, 1] unscaled"


def test_paper_attention_is_four_heads_of_64_in_every_layer_whatever_its_width():
    net = UNet(replace(UNetConfig(), in_channels=8))
    layers = {name: block for name, block in net.named_modules() if isinstance(block, AttentionBlock)}
    assert sorted(layers) == [
        "down.12.attention",
        "down.13.attention",
        "down.14.attention",
        "middle.1",
        "up.0.attention",
        "up.1.attention",
        "up.2.attention",
        "up.3.attention",
    ]
    for block in layers.values():
        assert (block.num_heads, block.head_channels) == (4, 64)
        assert block.qkv.weight.shape == (768, 1024, 1) and block.proj_out.weight.shape == (1024, 256, 1)
        assert torch.count_nonzero(block.proj_out.weight) == 0


def test_without_num_heads_each_layer_has_one_head_per_head_channels():
    net = UNet(replace(tiny_unet_config(), num_heads=None, head_channels=8))
    widths = [(b.num_heads, b.head_channels) for b in net.modules() if isinstance(b, AttentionBlock)]
    assert widths and all(heads * d == 32 and d == 8 for heads, d in widths)
