r"""GroupNorm that computes on NHWC (``channels_last``) activations where they lie.

PyTorch's CUDA GroupNorm kernel reads NCHW memory: an NHWC input is copied to NCHW first and the output
comes back NCHW, which the next convolution (NHWC under ``train.channels_last``) copies back again.
The H100 profile put such NCHW↔NHWC transposes at 14 % of a training step's GPU time. Here the
NHWC memory is viewed, without a copy, as [B, H·W, groups, C/groups]; the statistics are reduced over
positions and each group's channels, and the result is NHWC again:

.. math::  y = \frac{x - \mu_{b,g}}{\sqrt{\sigma^2_{b,g} + \epsilon}}\,\gamma_c + \beta_c,

the same formula as ``nn.GroupNorm`` (biased variance, statistics and normalisation in fp32), with the
same output dtype: fp32 under CUDA autocast (``group_norm`` is on its fp32 list), else the input's. As
PyTorch's CUDA kernel does, the statistics and the affine parameters are folded into one scale and
shift per sample and channel, :math:`y = x\,s + t`: the normalisation is one pass over the activations.
Every other input (NCHW, or a tensor that is both layouts at once, as at 1×1) takes ``nn.GroupNorm``'s
own kernel. The parameters and their names are ``nn.GroupNorm``'s, so checkpoints do not change.
"""

import torch
from torch import nn


def is_channels_last_only(x: torch.Tensor) -> bool:
    """An NHWC tensor whose memory is not also NCHW-contiguous (where NCHW kernels would need a copy)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def output_dtype(x: torch.Tensor) -> torch.dtype:
    """``group_norm``'s output dtype for input ``x``: CUDA autocast runs it in fp32; CPU autocast and no
    autocast keep the input's dtype."""
    return torch.float32 if x.is_cuda and torch.is_autocast_enabled("cuda") else x.dtype


def channels_last_group_norm(
    x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """``F.group_norm`` of an NHWC tensor ``x`` [B, C, H, W], computed and returned in NHWC memory."""
    b, c, height, width = x.shape
    nhwc = x.permute(0, 2, 3, 1)  # a view: channels are the fastest axis in memory
    grouped = nhwc.reshape(b, height * width, groups, c // groups).float()
    variance, mean = torch.var_mean(grouped, dim=(1, 3), keepdim=True, correction=0)
    scale = torch.rsqrt(variance + eps)  # [B, 1, groups, 1], then per channel with the weight
    if weight is not None:
        scale = scale * weight.float().view(1, 1, groups, -1)
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias.float().view(1, 1, groups, -1)
    normalised = torch.addcmul(shift, grouped, scale).view(b, height, width, c)
    return normalised.to(output_dtype(x)).permute(0, 3, 1, 2)


class ChannelsLastGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` whose NHWC inputs stay NHWC (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not is_channels_last_only(x):
            return super().forward(x)
        return channels_last_group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


def use_channels_last_group_norm(model: nn.Module) -> int:
    """Replace every ``nn.GroupNorm`` in ``model`` by a :class:`ChannelsLastGroupNorm` holding the same
    parameter objects (an optimizer built before still updates them); returns how many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.GroupNorm:
                continue
            norm = ChannelsLastGroupNorm(child.num_groups, child.num_channels, child.eps, affine=False)
            norm.affine, norm.weight, norm.bias = child.affine, child.weight, child.bias
            setattr(parent, name, norm)
            replaced += 1
    return replaced
