"""Peak memory of a tiled 2048² decode with an SD-sized VAE (random weights, same architecture).

    python bench/decode_memory.py [--latent 256] [--tile 64] [--overlap 16]

Builds ``AutoencoderKL`` from the bundled SD 1.x config, decodes a [1, 4, 256, 256] latent (a 2048²
image) through ``FirstStage.decode`` with tiling, and reports the peak resident memory of the process
before and after the decode. Target: peak <= 6 GB. (Untiled, the mid-block attention alone would
need (256²)² attention scores: tens of GB.)
"""

import argparse
import resource
import time
from pathlib import Path

import torch
from bench_output import report

from fmboost.first_stage.diffusers_vae import SD_VAE_CONFIG, DiffusersVAE, read_architecture


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--latent", type=int, default=256, help="latent size (256 → 2048 px)")
    parser.add_argument("--tile", type=int, default=64, help="tile size in latent pixels")
    parser.add_argument("--overlap", type=int, default=16, help="tile overlap in latent pixels")
    parser.add_argument(
        "--out", type=Path, default=Path("bench/results/decode_memory.json"), help="JSON output"
    )
    args = parser.parse_args()

    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = DiffusersVAE(
        AutoencoderKL.from_config(read_architecture(SD_VAE_CONFIG)),
        None,
        tile_size=args.tile,
        tile_overlap=args.overlap,
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    vae.to(device)
    latents = torch.randn(1, 4, args.latent, args.latent, device=device)
    before = peak_rss_gb()
    started = time.perf_counter()
    image = vae.decode(latents)
    seconds = time.perf_counter() - started
    result = {
        "device": str(device),
        "image_size": list(image.shape[-2:]),
        "tile_latent": args.tile,
        "overlap_latent": args.overlap,
        "peak_rss_gb_before_decode": round(before, 3),
        "peak_rss_gb": round(peak_rss_gb(), 3),
        "peak_cuda_gb": round(torch.cuda.max_memory_allocated() / 1024**3, 3)
        if device.type == "cuda"
        else None,
        "seconds": round(seconds, 1),
        "target_peak_gb": 6.0,
    }
    report(result, args.out)


if __name__ == "__main__":
    main()
