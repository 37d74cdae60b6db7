"""What patch-wise flow sampling costs in quality, time and memory, against whole-latent sampling.

    python bench/tiled_sampling.py [--stage runs/demo] [--tiles 64 128] [--overlap 32]

Takes held-out photos (the scikit-image photos ``make demo`` does not train on), halves them (the
training pipeline's antialiased resize), boosts them back with the stage once whole and once per tile
size, and reports PSNR/SSIM of each against the original photo, the PSNR of tiled against whole
sampling, seconds, and the peak memory of each variant (each runs in its own process, so the peaks
do not mix). Same seed everywhere, so the tiling is the only difference.
"""

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from bench_output import report

from fmboost.config import MemoryBound
from fmboost.image_processing import from_pil, resize_images
from fmboost.inference.pipeline import FMBoostPipeline
from fmboost.metrics import psnr, ssim
from fmboost.sample_photos import HELD_OUT_PHOTOS, photo_directory


def held_out_photo(name: str, multiple: int) -> torch.Tensor:
    """A held-out photo as a model image, cropped to a multiple of ``multiple``."""
    from PIL import Image

    image = Image.open(photo_directory() / name).convert("RGB")
    width, height = (side - side % multiple for side in image.size)
    return from_pil(image.crop((0, 0, width, height)))


def boost_all(stage: str, tile: int, overlap: int, nfe: int | None) -> dict:
    """One variant (``tile`` 0: whole latent), run in this process: outputs saved for the comparison."""
    memory = MemoryBound(flow_tile_size=tile, flow_tile_overlap=overlap)
    pipeline = FMBoostPipeline.from_pretrained([stage], device="cpu", memory=memory)
    multiple = 2 * pipeline.first_stage.downsampling_factor * pipeline.stages[0].size_multiple
    outputs, seconds = {}, 0.0
    for name in sorted(HELD_OUT_PHOTOS):
        photo = held_out_photo(name, multiple)
        low = resize_images(photo, (photo.shape[-2] // 2, photo.shape[-1] // 2)).clamp(-1, 1)
        started = time.perf_counter()
        result = pipeline(images=low, seed=0, nfe=nfe, consistency="none")
        seconds += time.perf_counter() - started
        outputs[name] = from_pil(result.images[0])
    return {"outputs": outputs, "seconds": seconds}


def run_variant(args: argparse.Namespace, tile: int, scratch: Path) -> dict:
    """Boost in a child process (its own peak memory) and read its outputs back."""
    saved = scratch / f"tile_{tile}.pt"
    command = [sys.executable, __file__, "--stage", args.stage, "--overlap", str(args.overlap)]
    command += ["--variant", str(tile), "--variant-out", str(saved)]
    command += ["--nfe", str(args.nfe)] if args.nfe else []
    subprocess.run(command, check=True)
    return torch.load(saved, weights_only=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stage", default="runs/demo", help="FMBoost model directory or run folder")
    parser.add_argument("--tiles", type=int, nargs="+", default=[64, 128], help="flow tile sizes to compare")
    parser.add_argument("--overlap", type=int, default=32, help="flow tile overlap")
    parser.add_argument("--nfe", type=int, default=None, help="network evaluations (default: trained)")
    parser.add_argument(
        "--out", type=Path, default=Path("bench/results/tiled_sampling.json"), help="JSON output"
    )
    parser.add_argument("--variant", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--variant-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant is not None:
        result = boost_all(args.stage, args.variant, args.overlap, args.nfe)
        result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
        torch.save(result, args.variant_out)
        return

    scratch = args.out.parent / "tiled_sampling_outputs"
    scratch.mkdir(parents=True, exist_ok=True)
    whole = run_variant(args, 0, scratch)
    photos = {name: held_out_photo(name, 1) for name in sorted(HELD_OUT_PHOTOS)}

    def versus_photo(outputs: dict) -> dict:
        pairs = [(outputs[n], photos[n][..., : outputs[n].shape[-2], : outputs[n].shape[-1]]) for n in photos]
        return {
            "psnr_vs_photo_db": round(sum(psnr(a, b).item() for a, b in pairs) / len(pairs), 3),
            "ssim_vs_photo": round(sum(ssim(a, b).item() for a, b in pairs) / len(pairs), 4),
        }

    variants = {
        "whole": {
            **versus_photo(whole["outputs"]),
            "seconds": round(whole["seconds"], 2),
            "peak_rss_gb": round(whole["peak_rss_gb"], 2),
        }
    }
    for tile in args.tiles:
        tiled = run_variant(args, tile, scratch)
        agreement = [psnr(tiled["outputs"][n], whole["outputs"][n]).item() for n in photos]
        variants[f"tile_{tile}"] = {
            **versus_photo(tiled["outputs"]),
            "psnr_vs_whole_db": round(sum(agreement) / len(agreement), 3),
            "seconds": round(tiled["seconds"], 2),
            "peak_rss_gb": round(tiled["peak_rss_gb"], 2),
        }
    sizes = {n: list(p.shape[-2:]) for n, p in photos.items()}
    report(
        {"stage": args.stage, "overlap": args.overlap, "photo_sizes_hw": sizes, "variants": variants},
        args.out,
    )


if __name__ == "__main__":
    main()
