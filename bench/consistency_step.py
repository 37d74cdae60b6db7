"""What the consistency step costs next to the decode it follows, per mode, on this machine.

    python bench/consistency_step.py [--size 1024] [--factor 2] [--repeats 3]

A photo-like image (smoothed noise, the same seed each run) of ``--size`` pixels and its low-res input
(the data pipeline's antialiased downsample) go through every consistency step; the baseline in the
same run is the decode that makes such an image: TAEF2's decoder when ``--taef2`` names its weights,
else the SD VAE's architecture with random weights (``--tile`` latent pixels per tile, as the pipeline
decodes large images). Prints and writes the best of ``--repeats`` seconds per mode, its share of the
decode, and the LR-PSNR of the 8-bit result; with ``--memory SIZE``, also each step's peak memory
beyond its input at SIZE² (resident set, each step in a fresh process, one thread).
"""

import argparse
import multiprocessing
import resource
import time
from pathlib import Path

import torch
from bench_output import report

from fmboost.config import CONSISTENCY_MODES
from fmboost.consistency import downsample, enforce_consistency
from fmboost.image_processing import from_uint8, to_uint8
from fmboost.metrics import psnr


def best_seconds(function, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    return min(times)


def photo_like(size: int, factor: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A decoded result (smoothed noise, off by noise and a colour cast) and its low-res input."""
    generator = torch.Generator().manual_seed(0)
    noise = torch.rand(1, 3, size, size, generator=generator) * 2 - 1
    truth = torch.nn.functional.avg_pool2d(noise, 5, 1, 2, count_include_pad=False)
    output = (truth + 0.2 * torch.randn(truth.shape, generator=generator) + 0.1).clamp(-1, 1)
    return output.to(device), downsample(truth, (size // factor, size // factor)).to(device)


def peak_extra_mb(mode: str, size: int, factor: int) -> float:
    """The resident memory a step adds at its peak (run in a fresh process)."""
    torch.set_num_threads(1)
    output, low = photo_like(size, factor, torch.device("cpu"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    enforce_consistency(output, low, mode)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024  # Linux: KiB


def decoder(args: argparse.Namespace, device: torch.device):
    """The first stage whose decode is the baseline, and its latent for a ``--size`` image."""
    from fmboost.config import FirstStageConfig
    from fmboost.first_stage import build_first_stage

    if args.taef2:
        first_stage = build_first_stage(
            FirstStageConfig(name="taesd", path=str(args.taef2), tile_size=args.tile)
        )
    else:
        from diffusers import AutoencoderKL

        from fmboost.first_stage.diffusers_vae import SD_VAE_CONFIG, DiffusersVAE, read_architecture

        torch.manual_seed(0)
        vae = AutoencoderKL.from_config(read_architecture(SD_VAE_CONFIG))
        first_stage = DiffusersVAE(vae, None, tile_size=args.tile, tile_overlap=args.tile // 4)
    first_stage.to(device)
    side = args.size // first_stage.downsampling_factor
    latents = torch.randn(1, first_stage.latent_channels, side, side, device=device)
    return first_stage, latents


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=1024, help="side of the result in pixels")
    parser.add_argument("--factor", type=int, default=2, help="scale factor from the low-res input")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode (the best counts)")
    parser.add_argument(
        "--taef2", type=Path, help="TAEF2 weights directory: decode with it (default: SD VAE)"
    )
    parser.add_argument("--tile", type=int, default=64, help="decode tile in latent pixels")
    parser.add_argument("--memory", type=int, help="also measure each step's peak memory at this size (CPU)")
    parser.add_argument(
        "--out", type=Path, default=Path("bench/results/consistency_step.json"), help="JSON output"
    )
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    output, low = photo_like(args.size, args.factor, device)

    first_stage, latents = decoder(args, device)
    with torch.no_grad():
        decode_s = best_seconds(lambda: first_stage.decode_scaled(latents), 1, device)
    modes = {}
    for mode in CONSISTENCY_MODES[1:]:
        seconds = best_seconds(lambda mode=mode: enforce_consistency(output, low, mode), args.repeats, device)
        stored = from_uint8(to_uint8(enforce_consistency(output, low, mode)))
        lr_psnr = psnr(downsample(stored, tuple(low.shape[-2:])), low.cpu()).item()
        modes[mode] = {
            "seconds": round(seconds, 3),
            "share_of_decode": round(seconds / decode_s, 3),
            "lr_psnr_db": round(lr_psnr, 1),
        }
    if args.memory:
        with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
            for mode in modes:
                extra = pool.apply(peak_extra_mb, (mode, args.memory, args.factor))
                modes[mode][f"peak_extra_mb_at_{args.memory}"] = round(extra)
    raw = psnr(downsample(from_uint8(to_uint8(output)), tuple(low.shape[-2:])), low.cpu()).item()
    report(
        {
            "device": str(device),
            "size": args.size,
            "factor": args.factor,
            "decoder": "taef2" if args.taef2 else "sd_vae (random weights)",
            "decode_seconds": round(decode_s, 3),
            "lr_psnr_db_without_step": round(raw, 1),
            "modes": modes,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
