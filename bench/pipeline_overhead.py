"""Pipeline overhead: ``FMBoostPipeline`` wall time against its bare component calls, in one run.

    python bench/pipeline_overhead.py [--nfe 8] [--latent 32] [--repeats 3]

One CFM stage (a mid-sized U-Net, PSU context) on an SD-architecture VAE with random weights, from
given latents. *Bare*: the same calls made directly: PSU (decode, bilinear resize, encode), the U-Net
``nfe`` times on the Euler grid, and the final decode. Ratio = pipeline / bare; target <= 1.05.
"""

import argparse
import time
from pathlib import Path

import torch
from bench_output import report

from fmboost.config import FlowConfig, UNetConfig
from fmboost.first_stage.diffusers_vae import SD_VAE_CONFIG, DiffusersVAE, read_architecture
from fmboost.image_processing import resize_images
from fmboost.inference.pipeline import FMBoostPipeline
from fmboost.models import FMBoostModel
from fmboost.noise_schedule import noise_augment


def bare_calls(model: FMBoostModel, vae: DiffusersVAE, z_low: torch.Tensor, nfe: int) -> float:
    started = time.perf_counter()
    with torch.no_grad():
        image = vae.decode(vae.unscale_latents(z_low))
        size = (image.shape[-2] * 2, image.shape[-1] * 2)
        z_up = vae.scale_latents(vae.encode(resize_images(image, size).clamp(-1, 1)))
        x = noise_augment(z_up, model.flow_config.noise_aug_step, torch.Generator().manual_seed(0))
        for step in range(nfe):
            t = torch.full((x.shape[0],), step / nfe)
            x = x + model.net(torch.cat([x, z_up], dim=1), t) / nfe
        vae.decode(vae.unscale_latents(x))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nfe", type=int, default=8, help="Euler steps of the stage")
    parser.add_argument("--latent", type=int, default=32, help="low-res latent size")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions of each (the best counts)")
    parser.add_argument(
        "--out", type=Path, default=Path("bench/results/pipeline_overhead.json"), help="JSON output"
    )
    args = parser.parse_args()

    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = DiffusersVAE(AutoencoderKL.from_config(read_architecture(SD_VAE_CONFIG)), None, tile_size=None)
    unet = UNetConfig(
        in_channels=8,
        out_channels=4,
        model_channels=64,
        channel_mult=[1, 2, 2],
        num_res_blocks=1,
        attention_resolutions=[4],
        num_heads=None,
        head_channels=32,
    )
    model = FMBoostModel(unet, FlowConfig(nfe=args.nfe, solver="euler"), vae.record())
    pipeline = FMBoostPipeline(vae, [model], device="cpu", dtype="fp32")
    z_low = torch.randn(1, 4, args.latent, args.latent)

    pipeline(latents=z_low, seed=0, consistency="none")  # warm-up
    bare_calls(model, vae, z_low, args.nfe)
    pipeline_times, bare_times = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        pipeline(latents=z_low, seed=0, consistency="none")
        pipeline_times.append(time.perf_counter() - started)
        bare_times.append(bare_calls(model, vae, z_low, args.nfe))
    result = {
        "device": "cpu",
        "low_res_latent": args.latent,
        "nfe": args.nfe,
        "pipeline_s": round(min(pipeline_times), 3),
        "bare_components_s": round(min(bare_times), 3),
        "ratio": round(min(pipeline_times) / min(bare_times), 4),
        "target_ratio": 1.05,
    }
    report(result, args.out)


if __name__ == "__main__":
    main()
