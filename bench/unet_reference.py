"""A plain functional reference of FMBoost's U-Net: the same network, written with ``torch.nn.functional``
only, reading the same parameter tensors by name. Benchmarks compare our module against it (same
weights, so the outputs must match too); nothing in the library uses it.
"""

import math

import torch
import torch.nn.functional as F

from fmboost.config import UNetConfig

Params = dict[str, torch.Tensor]


def group_norm_silu(x: torch.Tensor, p: Params, name: str, groups: int) -> torch.Tensor:
    return F.silu(F.group_norm(x, groups, p[f"{name}.weight"], p[f"{name}.bias"]))


def res_block(x: torch.Tensor, emb: torch.Tensor, p: Params, name: str, groups: int) -> torch.Tensor:
    h = F.conv2d(
        group_norm_silu(x, p, f"{name}.in_layers.0", groups),
        p[f"{name}.in_layers.2.weight"],
        p[f"{name}.in_layers.2.bias"],
        padding=1,
    )
    scale, shift = F.linear(F.silu(emb), p[f"{name}.emb_layers.1.weight"], p[f"{name}.emb_layers.1.bias"])[
        :, :, None, None
    ].chunk(2, dim=1)
    h = (
        F.group_norm(h, groups, p[f"{name}.out_norm.weight"], p[f"{name}.out_norm.bias"]) * (1 + scale)
        + shift
    )
    h = F.conv2d(F.silu(h), p[f"{name}.out_layers.2.weight"], p[f"{name}.out_layers.2.bias"], padding=1)
    skip = (
        x if f"{name}.skip.weight" not in p else F.conv2d(x, p[f"{name}.skip.weight"], p[f"{name}.skip.bias"])
    )
    return skip + h


def attention(
    x: torch.Tensor, p: Params, name: str, groups: int, heads: int, head_channels: int
) -> torch.Tensor:
    b, c, height, width = x.shape
    normed = F.group_norm(x, groups, p[f"{name}.norm.weight"], p[f"{name}.norm.bias"]).view(b, c, -1)
    qkv = F.conv1d(normed, p[f"{name}.qkv.weight"], p[f"{name}.qkv.bias"])
    q, k, v = qkv.view(b, 3, heads, head_channels, -1).permute(1, 0, 2, 4, 3).contiguous().unbind(0)
    h = F.scaled_dot_product_attention(q, k, v).transpose(2, 3).reshape(b, heads * head_channels, -1)
    return x + F.conv1d(h, p[f"{name}.proj_out.weight"], p[f"{name}.proj_out.bias"]).view(b, c, height, width)


def unet_forward(p: Params, config: UNetConfig, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The U-Net of :class:`fmboost.models.unet.UNet`, step by step, with parameters ``p`` by name."""
    mc, groups = config.model_channels, config.norm_groups
    half = mc // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=x.device) / half)
    args = (t * config.time_scale).float()[:, None] * freqs[None]
    emb = F.linear(
        torch.cat([torch.cos(args), torch.sin(args)], dim=-1),
        p["time_embed.0.weight"],
        p["time_embed.0.bias"],
    )
    emb = F.linear(F.silu(emb), p["time_embed.2.weight"], p["time_embed.2.bias"])

    def level(h: torch.Tensor, name: str) -> torch.Tensor:
        h = res_block(h, emb, p, f"{name}.res", groups)
        if f"{name}.attention.qkv.weight" in p:
            h = attention(
                h, p, f"{name}.attention", groups, config.attention_heads(h.shape[1]), config.head_channels
            )
        return h

    h = F.conv2d(x, p["input_conv.weight"], p["input_conv.bias"], padding=1)
    skips, index = [h], 0
    while f"down.{index}.conv.weight" in p or f"down.{index}.res.in_layers.2.weight" in p:
        if f"down.{index}.conv.weight" in p:
            h = F.conv2d(h, p[f"down.{index}.conv.weight"], p[f"down.{index}.conv.bias"], stride=2, padding=1)
        else:
            h = level(h, f"down.{index}")
        skips.append(h)
        index += 1
    h = res_block(h, emb, p, "middle.0", groups)
    h = attention(h, p, "middle.1", groups, config.attention_heads(h.shape[1]), config.head_channels)
    h = res_block(h, emb, p, "middle.2", groups)
    index = 0
    while f"up.{index}.conv.weight" in p or f"up.{index}.res.in_layers.2.weight" in p:
        if f"up.{index}.conv.weight" in p:
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = F.conv2d(h, p[f"up.{index}.conv.weight"], p[f"up.{index}.conv.bias"], padding=1)
        else:
            h = level(torch.cat([h, skips.pop()], dim=1), f"up.{index}")
        index += 1
    h = group_norm_silu(h, p, "out.0", groups)
    return F.conv2d(h, p["out.2.weight"], p["out.2.bias"], padding=1)
