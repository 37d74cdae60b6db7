"""A tiny autoencoder (TAESD family) in NHWC against NCHW, one after the other in one run.

    python bench/first_stage_layout.py --weights DIR [--size 256] [--batch 8] [--repeats 3]

Decodes a batch of random latents and encodes a batch of random images with the same weights in both
memory layouts (the first stage runs NHWC; NCHW is the baseline), after one warm-up call each. Reports
seconds per image (best repetition), NCHW / NHWC speed-up and the largest output difference.
"""

import argparse
from pathlib import Path

import torch
from bench_output import report
from device_timing import timed_seconds
from torch import nn

from fmboost.first_stage.taesd import TinyAutoencoder


def best_seconds(module: nn.Module, batch: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor]:
    """Best wall time of ``repeats`` calls after a warm-up, and the output."""
    with torch.no_grad():
        output = module(batch)
        seconds = min(timed_seconds(lambda: module(batch), batch.device) for _ in range(repeats))
    return seconds, output


def compare(module: nn.Module, batch: torch.Tensor, repeats: int) -> dict[str, float]:
    """The module in both layouts on the same batch; it is left in NHWC."""
    module.to(memory_format=torch.contiguous_format)
    nchw_seconds, nchw = best_seconds(module, batch.contiguous(), repeats)
    module.to(memory_format=torch.channels_last)
    nhwc_seconds, nhwc = best_seconds(module, batch.contiguous(memory_format=torch.channels_last), repeats)
    images = batch.shape[0]
    return {
        "nchw_s_per_image": nchw_seconds / images,
        "nhwc_s_per_image": nhwc_seconds / images,
        "speedup": nchw_seconds / nhwc_seconds,
        "max_abs_difference": (nhwc - nchw).abs().max().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--weights", type=Path, required=True, help="directory with *encoder.pth, *decoder.pth"
    )
    parser.add_argument("--size", type=int, default=256, help="image size in pixels (latents are 1/8)")
    parser.add_argument("--batch", type=int, default=8, help="images per call")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per layout (the best counts)")
    parser.add_argument(
        "--out", type=Path, default=Path("bench/results/first_stage_layout.json"), help="JSON output"
    )
    args = parser.parse_args()

    first_stage = TinyAutoencoder(args.weights)
    generator = torch.Generator().manual_seed(0)
    latent = args.size // first_stage.downsampling_factor
    latents = torch.randn(args.batch, first_stage.latent_channels, latent, latent, generator=generator)
    images = torch.rand(args.batch, 3, args.size, args.size, generator=generator)
    report(
        {
            "device": "cpu",
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "weights": str(args.weights),
            "image_size": args.size,
            "batch": args.batch,
            "decode": compare(first_stage.decoder, latents, args.repeats),
            "encode": compare(first_stage.encoder, images, args.repeats),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
