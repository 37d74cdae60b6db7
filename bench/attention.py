"""Attention speed: our ``AttentionBlock`` against a contiguous reference of the same computation, in one run.

    python bench/attention.py [--channels 128] [--size 32] [--heads 4] [--head-channels 32] [--batch 2]

*Ours*: ``fmboost.models.unet.AttentionBlock``. *Reference*: the same weights applied with plain tensor
ops written here, q/k/v produced directly as [B, heads, L, d] (head_dim last, contiguous) and handed to
``scaled_dot_product_attention``. *Strided*: the layout FMBoost used before, whose ``head_dim`` axis had
stride L, kept to show what the contiguous layout is worth. Median milliseconds of forward and of
forward + backward; ratio = ours / reference (target <= 1.0 within noise).
"""

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_output import report
from device_timing import seconds_after_warmup

from fmboost.models.unet import AttentionBlock


def contiguous_reference(block: AttentionBlock) -> Callable[[torch.Tensor], torch.Tensor]:
    """The block's computation with q/k/v projected straight into a contiguous [B, heads, L, d] layout."""
    heads, d = block.num_heads, block.head_channels
    w_qkv = block.qkv.weight[:, :, 0].view(3, heads, d, -1)
    b_qkv = block.qkv.bias.view(3, heads, 1, d)

    def forward(x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        tokens = block.norm(x).flatten(2).transpose(1, 2)  # [B, L, C]
        q, k, v = (torch.einsum("blc,hdc->bhld", tokens, w_qkv[i]) + b_qkv[i] for i in range(3))
        h = F.scaled_dot_product_attention(q, k, v).transpose(2, 3).reshape(b, heads * d, height * width)
        return x + block.proj_out(h).view(b, c, height, width)

    return forward


def strided_layout(block: AttentionBlock) -> Callable[[torch.Tensor], torch.Tensor]:
    """The earlier layout: ``view`` + ``permute`` without a copy, so ``head_dim`` has stride L."""
    heads, d = block.num_heads, block.head_channels

    def forward(x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        qkv = block.qkv(block.norm(x).view(b, c, height * width))
        q, k, v = qkv.view(b, 3, heads, d, height * width).permute(1, 0, 2, 4, 3)
        h = F.scaled_dot_product_attention(q, k, v).transpose(2, 3).reshape(b, heads * d, height * width)
        return x + block.proj_out(h).view(b, c, height, width)

    return forward


def median_ms(function: Callable[[], object], repeats: int, device: torch.device) -> float:
    return round(1000 * statistics.median(seconds_after_warmup(function, device, repeats, warmup=2)), 3)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--channels", type=int, default=128, help="channels of the attention layer's input")
    parser.add_argument("--size", type=int, default=32, help="height and width in positions (L = size²)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads")
    parser.add_argument("--head-channels", type=int, default=32, help="channels per head")
    parser.add_argument("--batch", type=int, default=2, help="batch size")
    parser.add_argument("--repeats", type=int, default=15, help="timed repetitions (the median counts)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", type=Path, default=Path("bench/results/attention.json"), help="JSON output")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    block = AttentionBlock(args.channels, args.heads, args.head_channels, groups=32).to(device)
    torch.nn.init.normal_(block.proj_out.weight, std=0.02)
    x = torch.randn(args.batch, args.channels, args.size, args.size, device=device, requires_grad=True)
    variants = {"ours": block, "reference": contiguous_reference(block), "strided": strided_layout(block)}
    with torch.no_grad():
        expected = block(x)
        for name, forward in variants.items():
            torch.testing.assert_close(forward(x), expected, atol=1e-4, rtol=1e-4, msg=f"{name} differs")

    timings: dict[str, dict[str, float]] = {}
    for name, forward in variants.items():

        def forward_only(forward=forward) -> None:
            with torch.no_grad():
                forward(x)

        def forward_backward(forward=forward) -> None:
            forward(x).square().mean().backward()

        timings[name] = {
            "forward_ms": median_ms(forward_only, args.repeats, device),
            "forward_backward_ms": median_ms(forward_backward, args.repeats, device),
        }
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "shape": {"batch": args.batch, "channels": args.channels, "positions": args.size**2},
        "heads": f"{args.heads} x {args.head_channels}",
        **timings,
        "ratio_forward": round(timings["ours"]["forward_ms"] / timings["reference"]["forward_ms"], 3),
        "ratio_forward_backward": round(
            timings["ours"]["forward_backward_ms"] / timings["reference"]["forward_backward_ms"], 3
        ),
    }
    report(result, args.out)


if __name__ == "__main__":
    main()
