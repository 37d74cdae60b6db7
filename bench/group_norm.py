"""GroupNorm + SiLU at the paper U-Net's widths, in NCHW, in NHWC through ``nn.GroupNorm``, and in NHWC
in place (``train.channels_last_group_norm``), eager and compiled, in one run.

    python bench/group_norm.py --device cuda              # the paper's sizes (also gpu_check part (j))
    python bench/group_norm.py --small                    # tiny sizes, any machine

At each level of the paper U-Net (128 channels at 128² latents, 256 at 64², 512 at 32², 1024 at 16²;
32 groups; batch 16) one forward and backward of GroupNorm followed by SiLU, as every ResBlock starts.
On CUDA the input is bf16 and the norm runs under bf16 autocast, as in training; on a CPU all is fp32.

- *nchw*: ``nn.GroupNorm`` on NCHW activations (eager training's layout): the baseline.
- *nhwc_native*: ``nn.GroupNorm`` on NHWC activations, then the copy back to NHWC that the next NHWC
  convolution needs (PyTorch's CUDA kernel returns NCHW; on a CPU the copy is free).
- *nhwc_in_place*: :class:`ChannelsLastGroupNorm`, which reads and writes NHWC.

Each variant is first checked against ``nn.GroupNorm`` on NCHW (values and dtype), then timed eager and
compiled (``torch.compile``, static shapes): median milliseconds, and each variant's total over the four
levels relative to *nchw* in the same mode.
"""

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_output import report
from device_timing import seconds_after_warmup
from torch import nn

from fmboost.devices import autocast_to
from fmboost.models.group_norm import ChannelsLastGroupNorm

PAPER_LEVELS = [(128, 128), (256, 64), (512, 32), (1024, 16)]  # (channels, latent side) at batch 16
SMALL_LEVELS = [(32, 16), (64, 8)]
VARIANTS = ("nchw", "nhwc_native", "nhwc_in_place")


def variant_function(name: str, channels: int, groups: int, device: torch.device) -> Callable:
    """GroupNorm + SiLU as ``name`` runs it, with the same (random) affine parameters for every name."""
    torch.manual_seed(0)
    norm = (ChannelsLastGroupNorm if name == "nhwc_in_place" else nn.GroupNorm)(groups, channels).to(device)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    if name == "nhwc_native":
        return lambda x: F.silu(norm(x)).contiguous(memory_format=torch.channels_last)
    return lambda x: F.silu(norm(x))


def layout(name: str) -> torch.memory_format:
    return torch.contiguous_format if name == "nchw" else torch.channels_last


def level_ms(
    function: Callable, x: torch.Tensor, dtype: torch.dtype, device: torch.device, repeats: int
) -> float:
    """Median milliseconds of a forward and backward, the upstream gradient in the output's layout."""
    x = x.detach().requires_grad_()
    with autocast_to(dtype, device):
        upstream = torch.randn_like(function(x))

    def step() -> None:
        with autocast_to(dtype, device):
            out = function(x)
        out.backward(upstream)

    return 1000 * statistics.median(seconds_after_warmup(step, device, repeats, warmup=3))


def group_norm_figures(
    device: torch.device, batch: int, levels: list[tuple[int, int]], groups: int, repeats: int, compile: bool
) -> dict:
    """Checked outputs, then milliseconds per level and variant, eager (and compiled)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    modes = ["eager", "compiled"] if compile else ["eager"]
    figures: dict = {"batch": batch, "groups": groups, "precision": str(dtype).removeprefix("torch.")}
    totals = {(mode, name): 0.0 for mode in modes for name in VARIANTS}
    for channels, side in levels:
        x = torch.randn(batch, channels, side, side, device=device, dtype=dtype)
        with torch.no_grad(), autocast_to(dtype, device):
            expected = variant_function("nchw", channels, groups, device)(x)
            for name in VARIANTS:
                result = variant_function(name, channels, groups, device)(
                    x.contiguous(memory_format=layout(name))
                )
                assert result.dtype == expected.dtype, (
                    f"{name}: {result.dtype}, nn.GroupNorm {expected.dtype}"
                )
                torch.testing.assert_close(result, expected, atol=2e-2, rtol=2e-2, msg=f"{name} differs")
        level: dict = {}
        for mode in modes:
            for name in VARIANTS:
                function = variant_function(name, channels, groups, device)
                if mode == "compiled":
                    function = torch.compile(function, dynamic=False)
                ms = level_ms(function, x.contiguous(memory_format=layout(name)), dtype, device, repeats)
                level[f"{name}_{mode}_ms"] = round(ms, 3)
                totals[mode, name] += ms
        figures[f"{channels}_channels_at_{side}²"] = level
    for mode in modes:
        for name in VARIANTS[1:]:
            figures[f"{name}_{mode}_vs_nchw"] = round(totals[mode, name] / totals[mode, "nchw"], 3)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--small", action="store_true", help="batch 2, two small levels, 8 groups")
    parser.add_argument("--no-compile", action="store_true", help="time the eager variants only")
    parser.add_argument("--repeats", type=int, default=20, help="timed repetitions (the median counts)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/group_norm.json"), help="JSON output")
    args = parser.parse_args()
    device = torch.device(args.device)
    batch, levels, groups = (2, SMALL_LEVELS, 8) if args.small else (16, PAPER_LEVELS, 32)
    figures = group_norm_figures(device, batch, levels, groups, args.repeats, compile=not args.no_compile)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        **figures,
    }
    report(result, args.out)


if __name__ == "__main__":
    main()
