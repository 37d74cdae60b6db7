r"""ADM-style U-Net (Dhariwal & Nichol 2021), the paper's "EfficientUNet".

ResBlocks condition on time through scale-shift norm, :math:`h = \mathrm{GN}(h)(1 + s) + b`;
self-attention runs at chosen downsampling factors and in the middle block; the output convolution
starts at zero so that an untrained model predicts a zero velocity. Time arrives in [0, 1] and is
multiplied by ``time_scale`` before the sinusoidal embedding (1: the released code embeds t ∈ [0, 1]
as it is).

Every attention layer has the same inner width ``num_heads · head_channels`` (the released
``EfficientUNet``: 4 heads × 64 = 256, whatever the layer's channel count), unless ``num_heads`` is
``None``, in which case a layer has as many heads of ``head_channels`` as it has channels.

``UNet(UNetConfig())`` is the paper's network for 64² → 128² SD latents, parameter for parameter:
8 input channels, 128 base channels, multipliers [1, 2, 4, 8], 3 res blocks, attention at factor 8
(the deepest level) and in the middle block: 305,806,340 parameters.

With ``step_conditioning`` the network also takes a step size :math:`d` (shortcut students, Frans et
al. 2024), embedded like time and added to the time embedding; that embedding's last layer starts at
zero, so a student initialised from a teacher computes exactly the teacher's velocity at first.
"""

import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from fmboost.config import UNetConfig, require

MAX_PARAMETERS = 4_000_000_000
"""A sane upper bound (13× the paper's 306 M network, 16 GB of fp32 weights): a larger ``model`` section
is a typo far more often than an intention, and would otherwise try to allocate it."""


def validate_unet(model: UNetConfig) -> None:
    """The ``model`` section: positive sizes that split into groups, and attention that fits."""
    require(
        bool(model.channel_mult) and all(m > 0 for m in model.channel_mult),
        "model.channel_mult",
        "needs positive entries",
    )
    for key in ("out_channels", "model_channels", "num_res_blocks", "norm_groups"):
        require(getattr(model, key) > 0, f"model.{key}", "must be positive")
    for mult in model.channel_mult:
        require(
            (mult * model.model_channels) % model.norm_groups == 0,
            "model.norm_groups",
            f"{mult * model.model_channels} channels do not split into {model.norm_groups} groups",
        )
    require(model.time_scale > 0, "model.time_scale", "must be positive")
    factors = model.downsampling_factors()
    unreachable = [f for f in model.attention_resolutions if f not in factors]
    require(
        not unreachable,
        "model.attention_resolutions",
        f"factor(s) {unreachable} never occur with {len(model.channel_mult)} levels "
        f"(factors {', '.join(map(str, factors))})",
    )
    require(model.head_channels > 0, "model.head_channels", "must be positive")
    if model.num_heads is not None:
        require(
            model.num_heads > 0, "model.num_heads", "must be positive (or null: one head per head_channels)"
        )
    else:
        check_head_split(model, factors)
    check_size(model)


def check_head_split(model: UNetConfig, factors: list[int]) -> None:
    """With ``num_heads: null``, every attending width must split into heads of ``head_channels``."""
    widths = {model.model_channels * model.channel_mult[-1]}  # the middle block always attends
    widths |= {
        model.model_channels * m
        for m, f in zip(model.channel_mult, factors, strict=True)
        if f in model.attention_resolutions
    }
    for width in sorted(widths):
        require(
            width % model.head_channels == 0,
            "model.head_channels",
            f"{width} channels do not split into heads of {model.head_channels} (or set model.num_heads)",
        )


def check_size(model: UNetConfig) -> None:
    """Refuse networks above :data:`MAX_PARAMETERS` before any memory is allocated for them."""
    count = parameter_count(model)
    require(
        count <= MAX_PARAMETERS,
        "model",
        f"this network would have {count / 1e9:.1f} billion parameters, more than the "
        f"{MAX_PARAMETERS / 1e9:.0f} billion FMBoost builds (check model_channels and channel_mult)",
    )


def parameter_count(model: UNetConfig) -> int:
    """Exact parameter count of the network, built on the ``meta`` device (no memory is allocated)."""
    if model.in_channels is None:
        model = replace(model, in_channels=2 * model.out_channels)
    with torch.device("meta"):
        return sum(parameter.numel() for parameter in UNet(model).parameters())


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos | sin] of (already scaled) times ``t`` of shape [B]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GN-SiLU-conv, time conditioning by scale-shift norm, GN-SiLU-dropout-zero conv, plus a skip."""

    def __init__(
        self, channels: int, emb_channels: int, out_channels: int, dropout: float, groups: int
    ) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            nn.GroupNorm(groups, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        # The released layout's SiLU at index 0 runs once per forward, in UNet.forward (every block
        # gets the same embedding); the Identity keeps the projection's weight names (emb_layers.1.*).
        self.emb_layers = nn.Sequential(nn.Identity(), nn.Linear(emb_channels, 2 * out_channels))
        self.out_norm = nn.GroupNorm(groups, out_channels)
        self.out_layers = nn.Sequential(
            nn.SiLU(),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),  # p = 0 would still copy in training
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``emb``: the time embedding after its SiLU. The layers are called one by one, with fused
        scale-shift, because at small batches a step is bound by how many operations are launched."""
        norm_in, _, conv_in = self.in_layers
        h = conv_in(F.silu(norm_in(x)))
        scale, shift = self.emb_layers[1](emb).unflatten(1, (2, -1, 1, 1)).unbind(1)
        h = torch.addcmul(shift, self.out_norm(h), 1 + scale)
        _, dropout, conv_out = self.out_layers
        h = conv_out(dropout(F.silu(h)))
        return (x if isinstance(self.skip, nn.Identity) else self.skip(x)) + h


class AttentionBlock(nn.Module):
    r"""Multi-head self-attention over spatial positions with a residual connection.

    .. math::  y = x + W_{out}\,\mathrm{MHA}(W_{qkv}\,\mathrm{GN}(x)),

    with :math:`W_{qkv}: C \to 3 \cdot heads \cdot d` and :math:`W_{out}: heads \cdot d \to C` (zero at
    init). The qkv channels are laid out as (3, heads, d); they are separated with an explicit
    ``view`` + ``permute`` (channels are never mixed with positions) and made contiguous with ``d``
    last, which ``scaled_dot_product_attention`` needs for its fast kernels.
    """

    def __init__(self, channels: int, num_heads: int, head_channels: int, groups: int) -> None:
        super().__init__()
        if num_heads < 1 or head_channels < 1:
            raise ValueError(
                f"attention needs at least one head of one channel, got {num_heads} × {head_channels}"
            )
        self.num_heads, self.head_channels = num_heads, head_channels
        inner = num_heads * head_channels
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * inner, 1)
        self.proj_out = zero_module(nn.Conv1d(inner, channels, 1))

    def split_heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[B, 3·heads·d, L] → three contiguous tensors [B, heads, L, d]."""
        b, _, length = qkv.shape
        qkv = qkv.view(b, 3, self.num_heads, self.head_channels, length).permute(1, 0, 2, 4, 3)
        return qkv.contiguous().unbind(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        q, k, v = self.split_heads(self.qkv(self.norm(x).view(b, c, height * width)))
        h = F.scaled_dot_product_attention(q, k, v)  # [B, heads, L, d]
        h = h.transpose(2, 3).reshape(b, self.num_heads * self.head_channels, height * width)
        return x + self.proj_out(h).view(b, c, height, width)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One U-Net stage: a ResBlock, followed by self-attention at the configured factors."""

    def __init__(self, res: ResBlock, attention: AttentionBlock | None) -> None:
        super().__init__()
        self.res = res
        self.attention = attention

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.res(x, emb)
        return self.attention(x) if self.attention is not None else x


FRESH_STUDENT_PARAMETERS = ("step_embed.",)
"""Parameters a student adds to its teacher's network; they start at their initialisation (zero output)."""


class UNet(nn.Module):
    """``UNet(config)(x, t)`` → velocity with ``out_channels`` channels; ``t`` in [0, 1] of shape [B]."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        if config.in_channels is None:
            raise ValueError("UNetConfig.in_channels is unset; FMBoostModel derives it from the objective")
        self.config = config
        mc, groups = config.model_channels, config.norm_groups
        emb_dim = 4 * mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.step_embed = (
            nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), zero_module(nn.Linear(emb_dim, emb_dim)))
            if config.step_conditioning
            else None
        )

        def attention(channels: int) -> AttentionBlock:
            return AttentionBlock(channels, config.attention_heads(channels), config.head_channels, groups)

        def level(ch_in: int, ch_out: int, factor: int) -> Level:
            block = attention(ch_out) if factor in config.attention_resolutions else None
            return Level(ResBlock(ch_in, emb_dim, ch_out, config.dropout, groups), block)

        self.input_conv = nn.Conv2d(config.in_channels, mc, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels, ch, factor = [mc], mc, 1
        for index, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                self.down.append(level(ch, mult * mc, factor))
                ch = mult * mc
                skip_channels.append(ch)
            if index < len(config.channel_mult) - 1:
                self.down.append(Downsample(ch))
                skip_channels.append(ch)
                factor *= 2

        self.middle = nn.ModuleList(
            [
                ResBlock(ch, emb_dim, ch, config.dropout, groups),
                attention(ch),
                ResBlock(ch, emb_dim, ch, config.dropout, groups),
            ]
        )

        self.up = nn.ModuleList()
        for index, mult in reversed(list(enumerate(config.channel_mult))):
            for block in range(config.num_res_blocks + 1):
                self.up.append(level(ch + skip_channels.pop(), mult * mc, factor))
                ch = mult * mc
                if index > 0 and block == config.num_res_blocks:
                    self.up.append(Upsample(ch))
                    factor //= 2

        self.out = nn.Sequential(
            nn.GroupNorm(groups, ch), nn.SiLU(), zero_module(nn.Conv2d(ch, config.out_channels, 3, padding=1))
        )
        self.size_multiple = 2 ** (len(config.channel_mult) - 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, d: torch.Tensor | None = None) -> torch.Tensor:
        """``d`` [B]: the step size of a step-conditioned network (``None``: 0, the instantaneous flow)."""
        if x.shape[-1] % self.size_multiple or x.shape[-2] % self.size_multiple:
            raise ValueError(
                f"U-Net input size {tuple(x.shape[-2:])} must be divisible by {self.size_multiple} "
                f"({len(self.config.channel_mult)} levels)"
            )
        sinusoid = timestep_embedding(t * self.config.time_scale, self.config.model_channels)
        dtype = self.time_embed[0].weight.dtype
        emb = self.time_embed(sinusoid.to(dtype))
        if self.step_embed is not None:
            d = torch.zeros_like(t) if d is None else d
            emb = emb + self.step_embed(
                timestep_embedding(d * self.config.time_scale, self.config.model_channels).to(dtype)
            )
        emb = F.silu(emb)
        h = self.input_conv(x)
        skips = [h]
        for block in self.down:
            h = block(h, emb) if isinstance(block, Level) else block(h)
            skips.append(h)
        h = self.middle[2](self.middle[1](self.middle[0](h, emb)), emb)
        for block in self.up:
            h = block(torch.cat([h, skips.pop()], dim=1), emb) if isinstance(block, Level) else block(h)
        return self.out(h)
