"""Compiled against eager sampling of one stage, interleaved in one run (target on CPU: not slower).

    python bench/compiled_sampling.py --stage runs/demo [--nfe 8] [--batch 4] [--repeats 5]

Boosts one batch of random low-res latents with ``FMBoostPipeline`` twice per repetition, eager and
``compile=True`` (the U-Net and the autoencoder; CUDA graphs on CUDA), after each has warmed up; the
compiler's warm-up is reported apart. Ratio = compiled / eager of the best repetitions; below 1 is faster.
"""

import argparse
import time
from pathlib import Path

import torch
from bench_output import report

from fmboost.devices import resolve_device
from fmboost.inference.pipeline import FMBoostPipeline


def timed(pipeline: FMBoostPipeline, latents: torch.Tensor, nfe: int) -> float:
    started = time.perf_counter()
    pipeline(latents=latents, seed=0, nfe=nfe, solver="euler", consistency="none")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stage", default="runs/demo", help="a stage: export, checkpoint or run folder")
    parser.add_argument("--nfe", type=int, default=8, help="Euler steps")
    parser.add_argument("--batch", type=int, default=4, help="latents per batch")
    parser.add_argument("--latent", type=int, default=16, help="low-res latent size")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions of each (the best counts)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--out", type=Path, default=Path("bench/results/compiled_sampling.json"), help="JSON output"
    )
    args = parser.parse_args()

    device = resolve_device(args.device)
    eager = FMBoostPipeline.from_pretrained([args.stage], device=str(device))
    compiled = FMBoostPipeline.from_pretrained([args.stage], device=str(device), compile=True)
    channels = eager.first_stage.latent_channels
    shape = (args.batch, channels, args.latent, args.latent)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    timed(eager, latents, args.nfe)  # warm-up (allocator, kernels)
    warmup = compiled(latents=latents, seed=0, nfe=args.nfe, solver="euler").timings["warmup"]
    eager_times, compiled_times = [], []
    for _ in range(args.repeats):
        eager_times.append(timed(eager, latents, args.nfe))
        compiled_times.append(timed(compiled, latents, args.nfe))
    report(
        {
            "device": str(device),
            "torch": torch.__version__,
            "stage": args.stage,
            "batch": args.batch,
            "low_res_latent": args.latent,
            "nfe": args.nfe,
            "compile_warmup_s": round(warmup, 2),
            "eager_s": [round(t, 4) for t in eager_times],
            "compiled_s": [round(t, 4) for t in compiled_times],
            "ratio_best": round(min(compiled_times) / min(eager_times), 3),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
