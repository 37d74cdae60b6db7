"""A ready GPU check: paper-size training and inference figures in one JSON.

    python bench/gpu_check.py                 # on a CUDA machine (make gpu-check)
    python bench/gpu_check.py --small         # tiny sizes, any machine (CI runs this)

With ``--small`` (fp32 on a CPU, to prove the script) one variant is compiled, part (b)'s training step:
compiling on a CPU costs a minute per graph, the compiled pipeline of part (g) is the library's own
(``tests/pipeline/test_compiled.py`` checks it against eager), and part (j) runs eager only.

(a) ``configs/cfm_1k.yaml``'s U-Net, 64² → 128² latents, batch 16, bf16, DeepSpeed ZeRO-2 on one
device, eager: samples/s, step time, peak memory, MFU; (b) the same with ``train.compile`` and
``train.channels_last``; (c) ``configs/cascade_2k.yaml`` at its training crop, as configured; (d)
inference: a batch of 4 from 64² latents through a 40-NFE Euler CFM stage and an SD-sized VAE (random
weights built from the SD 1.x VAE config, tiled as each stage's config says) decoding to 1024², seconds
per step (the paper's A100 figure: 1.388 s for the batch, SD included); (e) the 2048² cascade (both
stages) for one image, with peak memory; (f) our U-Net against the plain functional reference
(``bench/model_level.py``), bf16, at batch 16 (bound by operator launches on a GPU) and 128 (bound by
the kernels); (g) part (d) compiled (``FMBoostPipeline(compile=True)``: the U-Net and the autoencoder,
CUDA graphs on CUDA) at NFE 40, 4, 2 and 1, weights in NCHW (as the pipeline leaves them) and then in
NHWC (not with ``--small``): warm-up apart, the context, ms per evaluation, decode per image;
(h) eager, the same U-Net and decoder in NCHW and NHWC, the decode in fp32 and bf16; (i) training as
(a) at ZeRO stage 0 (what a one-GPU run should use): eager and with ``train.compile`` +
``train.channels_last``, each with and without ``train.fused_optimizer``, and with ``train.bf16_weights``
(bf16 module weights, fp32 masters; compiled only on a GPU) at ZeRO-0 and at ZeRO-1 with fp32
gradient accumulation, and NHWC eager and compiled with ``train.channels_last_group_norm`` (GroupNorm in
NHWC in place; compiled only on a GPU), and at ZeRO-2 with the fused AdamW, eager and compiled (compiled
only on a GPU) (``--variants`` picks some); (j) GroupNorm + SiLU alone at the
paper U-Net's four widths, NCHW against NHWC, eager and compiled (``bench/group_norm.py``).
Weights are random (nothing is downloaded): speed and memory do not depend on them. The pipeline parts
run without the consistency step (``consistency="none"``), as the paper's pipeline and the earlier
figures did; ``bench/consistency_step.py`` measures the step against the decode.
Training steps run on in-memory tensors through the same DeepSpeed engine setup the trainer uses.
"""

import argparse
import json
import os
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_output import report, write
from device_timing import seconds_after_warmup, synchronize
from group_norm import PAPER_LEVELS, SMALL_LEVELS, group_norm_figures
from model_level import model_level
from shared_training import engine_step, paper_config

from fmboost.config import FMBoostConfig
from fmboost.devices import DTYPES, autocast_to, resolve_precision
from fmboost.distributed import DistributedEnv, init_distributed
from fmboost.training.efficiency import model_flops_utilisation, peak_flops, training_flops_per_sample


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1024**3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def training_figures(config: FMBoostConfig, latent: int, device: torch.device, steps: int) -> dict:
    """Samples/s, step time, peak memory and MFU of ``steps`` timed DeepSpeed steps (after 3 untimed)."""
    from fmboost.models import FMBoostModel

    reset_peak(device)
    torch.manual_seed(0)
    model = FMBoostModel.from_config(config)
    precision = resolve_precision(config.train.precision, device)
    batch = config.data.batch_size
    started = time.perf_counter()
    engine, step, notes = engine_step(model, config, latent, device)
    setup_s = time.perf_counter() - started
    for index in range(3 + steps):
        if index == 3:
            synchronize(device)
            started = time.perf_counter()
        loss = step()
    synchronize(device)
    seconds = (time.perf_counter() - started) / steps
    samples_per_s = batch / seconds
    flops = training_flops_per_sample(config, latent)
    peak = peak_flops(device, precision)
    figures = {
        "latent": f"{latent}²",
        "batch": batch,
        "precision": precision,
        "channels_last": config.train.channels_last,
        "compile": config.train.compile,
        "bf16_weights": config.train.bf16_weights,
        "channels_last_group_norm": config.train.channels_last_group_norm,
        "engine_setup_s": round(setup_s, 1),
        "zero_stage": config.deepspeed["zero_optimization"]["stage"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "samples_per_s": round(samples_per_s, 2),
        "step_s": round(seconds, 4),
        "peak_memory_gb": round(peak_memory_gb(device), 2),
        "model_tflops_per_sample": round(flops / 1e12, 4),
        "mfu": round(model_flops_utilisation(flops, samples_per_s, peak, 1), 4) if peak else None,
        "loss_finite": bool(torch.isfinite(loss).item()),
    }
    if notes:
        figures["notes"] = notes
    engine.destroy()
    return figures


def random_stage(config: FMBoostConfig, first_stage_record) -> "torch.nn.Module":
    from fmboost.models import FMBoostModel

    torch.manual_seed(1)
    model = FMBoostModel.from_config(config, first_stage_record)
    for parameter in model.net.parameters():
        torch.nn.init.normal_(parameter, std=0.02)
    return model


def sd_sized_autoencoder(small: bool):
    """The SD 1.x VAE architecture with random weights (tiny with ``--small``)."""
    from diffusers import AutoencoderKL

    from fmboost.first_stage.diffusers_vae import SD_VAE_CONFIG, read_architecture

    torch.manual_seed(0)
    if small:
        return AutoencoderKL(
            block_out_channels=[16, 32],
            down_block_types=["DownEncoderBlock2D"] * 2,
            up_block_types=["UpDecoderBlock2D"] * 2,
            latent_channels=4,
            norm_num_groups=8,
        )
    return AutoencoderKL.from_config(read_architecture(SD_VAE_CONFIG))


def first_stage(autoencoder, config: FMBoostConfig):
    """``autoencoder`` tiled as ``config`` says: 1024² decodes whole for cfm_1k, 2048² in 512-px tiles."""
    from fmboost.first_stage.diffusers_vae import DiffusersVAE

    tiling = config.first_stage
    return DiffusersVAE(autoencoder, None, tile_size=tiling.tile_size, tile_overlap=tiling.tile_overlap)


def inference_figures(stages: list, vae, device: torch.device, batch: int, latent: int, nfe: int) -> dict:
    from fmboost.inference.pipeline import FMBoostPipeline

    reset_peak(device)
    pipeline = FMBoostPipeline(vae, stages, device=device, dtype="auto")
    latents = torch.randn(batch, 4, latent, latent)
    pipeline(
        latents=latents, seed=0, nfe=nfe, solver="euler", consistency="none"
    )  # warm-up (kernels, allocator)
    reset_peak(device)
    output = pipeline(latents=latents, seed=0, nfe=nfe, solver="euler", consistency="none")
    decoded = output.latents.shape[-1]
    return {
        "batch": batch,
        "from_latent": f"{latent}²",
        "image": f"{output.images[0].size[0]}²",
        "decode": "whole" if not vae.tile_size or decoded <= vae.tile_size else f"tiles of {vae.tile_size}²",
        "nfe_per_stage": output.nfe,
        "seconds": {name: round(value, 3) for name, value in output.timings.items()},
        "total_s": round(sum(output.timings.values()), 3),
        "decode_per_image_s": round(output.timings["decode"] / batch, 4),
        "peak_memory_gb": round(peak_memory_gb(device), 2),
    }


def set_layout(modules: list, layout: torch.memory_format) -> None:
    """Weights in ``layout``: cuDNN then runs a convolution in NHWC if its weight is NHWC."""
    for module in modules:
        module.to(memory_format=layout)


def compiled_inference_figures(
    stage, vae, device: torch.device, batch: int, latent: int, nfes: list, layout: torch.memory_format
) -> dict:
    """Part (d) compiled, with the U-Net's and autoencoder's weights in ``layout``: per NFE, the warm-up
    (compilation) apart from a timed call of the same shape; the context upsampling apart from the
    solve."""
    from fmboost.inference.pipeline import FMBoostPipeline

    set_layout([stage.net, *vae.autoencoder_modules()], layout)
    pipeline = FMBoostPipeline(vae, [stage], device=device, dtype="auto", compile=True)
    latents = torch.randn(batch, 4, latent, latent)
    figures: dict = {"batch": batch, "from_latent": f"{latent}²", "layout": str(layout), "nfe": {}}
    for nfe in nfes:
        warmup = pipeline(latents=latents, seed=0, nfe=nfe, solver="euler", consistency="none").timings[
            "warmup"
        ]
        timings = pipeline(latents=latents, seed=0, nfe=nfe, solver="euler", consistency="none").timings
        figures["nfe"][str(nfe)] = {
            "warmup_s": round(warmup, 2),
            "context_s": round(timings["context_1"], 4),
            "stage_s": round(timings["stage_1"], 4),
            "per_evaluation_ms": round(1000 * timings["stage_1"] / nfe, 2),
            "decode_per_image_s": round(timings["decode"] / batch, 4),
            "total_s": round(sum(timings.values()), 4),
        }
    figures["peak_memory_gb"] = round(peak_memory_gb(device), 2)
    return figures


def median_seconds(function: Callable[[], object], device: torch.device) -> float:
    return statistics.median(seconds_after_warmup(function, device, calls=5))


def eager_layout_figures(stage, vae, device: torch.device, batch: int, latent: int, nfe: int) -> dict:
    """Eager milliseconds per U-Net evaluation (bf16) and seconds per decoded image, in NCHW and NHWC,
    and the decode in fp32 and bf16: which layout and precision the compiled path starts from."""
    stage.to(device, torch.bfloat16)
    vae.to(device)
    z_up = torch.randn(batch, 4, 2 * latent, 2 * latent, device=device)
    generator = torch.Generator().manual_seed(0)
    autoencoder = vae.autoencoder_modules()
    figures: dict = {"batch": batch, "latent": f"{2 * latent}²", "nfe": nfe}
    decodes = {"nchw": ("fp32", "bf16"), "nhwc": ("bf16",)}  # fp32: the baseline, in one layout
    for name, layout in LAYOUTS.items():
        set_layout([stage.net, *autoencoder], layout)
        seconds = median_seconds(lambda: stage.sample(z_up, generator, "euler", nfe), device)
        figures[f"unet_bf16_{name}_ms_per_evaluation"] = round(1000 * seconds / nfe, 2)
        for precision in decodes[name]:

            def decode(dtype: torch.dtype = DTYPES[precision]) -> torch.Tensor:
                with torch.no_grad(), autocast_to(dtype, device):
                    return vae.decode(z_up, tiled=False)

            seconds = median_seconds(decode, device)
            figures[f"decode_{precision}_{name}_s_per_image"] = round(seconds / batch, 4)
    set_layout([stage.net, *autoencoder], torch.contiguous_format)
    figures["peak_memory_gb"] = round(peak_memory_gb(device), 2)
    return figures


EAGER = ["train.compile=false", "train.channels_last=false", "train.fused_optimizer=false"]  # (a), (b)
LAYOUTS = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}  # the pipeline's first
COMPILED_FUSED = ["train.compile=true", "train.channels_last=true", "train.fused_optimizer=true"]
BF16_WEIGHTS = ["train.precision=bf16", "train.bf16_weights=true"]
ZERO_2 = ["deepspeed.zero_optimization.stage=2"]
NHWC_GROUP_NORM = ["train.channels_last=true", "train.channels_last_group_norm=true"]
# fp32 gradient accumulation with bf16 weights needs ZeRO 1-2: DeepSpeed's BF16_Optimizer, flat buffers
BF16_WEIGHTS_ZERO_1 = [
    *BF16_WEIGHTS,
    "deepspeed.zero_optimization.stage=1",
    "deepspeed.data_types.grad_accum_dtype=fp32",
]
TRAINING_VARIANTS = {  # part (i): one GPU, ZeRO stage 0 (what a one-GPU run should use) unless named
    "zero0_compile_channels_last": [*EAGER, "train.compile=true", "train.channels_last=true"],
    "zero0_compile_channels_last_fused_adamw": COMPILED_FUSED,
    "zero0_eager": EAGER,
    "zero0_eager_fused_adamw": [*EAGER, "train.fused_optimizer=true"],
    # bf16 weights at ZeRO-0 go through DeepSpeed's FP16_UnfusedOptimizer (per-parameter fp32 gradient
    # copies, an overflow check each step); at ZeRO-1 with fp32 accumulation through BF16_Optimizer
    "zero0_eager_bf16_weights": [*EAGER, *BF16_WEIGHTS],
    "zero0_compile_channels_last_fused_adamw_bf16_weights": [*COMPILED_FUSED, *BF16_WEIGHTS],
    "zero1_eager_bf16_weights_fp32_accumulation": [*EAGER, *BF16_WEIGHTS_ZERO_1],
    "zero1_compile_channels_last_fused_adamw_bf16_weights_fp32_accumulation": [
        *COMPILED_FUSED,
        *BF16_WEIGHTS_ZERO_1,
    ],
    # NHWC eager: nn.GroupNorm's CUDA kernel reads and returns NCHW; the in-place one stays NHWC
    "zero0_eager_channels_last": [*EAGER, "train.channels_last=true"],
    "zero0_eager_channels_last_group_norm": [*EAGER, *NHWC_GROUP_NORM],
    "zero0_compile_channels_last_fused_adamw_group_norm": [*COMPILED_FUSED, *NHWC_GROUP_NORM],
    # ZeRO-2 (part (a)'s stage, what a multi-GPU run uses) with the fused AdamW, eager and compiled
    "zero2_eager_fused_adamw": [*EAGER, "train.fused_optimizer=true", *ZERO_2],
    "zero2_compile_channels_last_fused_adamw": [*COMPILED_FUSED, *ZERO_2],
}
# With --small: these graphs compiled on a CPU take a minute more each and run no code that part (b)'s
# compiled step (whose graph the other compiled variants share) and the eager variants do not already run.
NOT_SMALL = {
    name
    for name in TRAINING_VARIANTS
    if "compile" in name and ("bf16_weights" in name or "group_norm" in name or name.startswith("zero2"))
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--small", action="store_true", help="tiny sizes and fp32: proves the script on a CPU"
    )
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default 20, small 2)")
    parser.add_argument(
        "--parts",
        default="abcdefghij",
        help="which parts to run, by letter (default: all); (f) is our U-Net against the functional "
        "reference, bf16, batch 16 and 128; (g) the compiled pipeline at NFE 40, 4, 2, 1 (weights NCHW, "
        "then NHWC; not with --small); (h) eager U-Net and decode in NCHW and NHWC, decode in fp32 "
        "and bf16; (i) training at ZeRO stage 0: compile + channels_last, fused AdamW, eager, and bf16 "
        "module weights with fp32 masters (train.bf16_weights), NHWC GroupNorm in place "
        "(train.channels_last_group_norm); (j) GroupNorm + SiLU alone in NCHW and NHWC (eager only with "
        "--small)",
    )
    parser.add_argument(
        "--variants",
        default=",".join(TRAINING_VARIANTS),
        help=f"part (i)'s variants, comma-separated (default: all of {', '.join(TRAINING_VARIANTS)})",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu_check.json"), help="JSON output")
    args = parser.parse_args()
    if not args.parts or set(args.parts) - set("abcdefghij"):
        parser.error(f"--parts takes letters a-j, not {args.parts!r}")
    args.variants = args.variants.split(",")
    if unknown := set(args.variants) - set(TRAINING_VARIANTS):
        parser.error(
            f"--variants: no variant {', '.join(sorted(unknown))}; choose from {', '.join(TRAINING_VARIANTS)}"
        )
    if not torch.cuda.is_available() and not args.small:
        parser.error("no CUDA device: run with --small to check the script on a CPU")
    args.steps = args.steps or (2 if args.small else 20)
    return args


def training_parts(
    args: argparse.Namespace, device: torch.device, record: Callable[[str, dict], None]
) -> None:
    """(a), (b), (c) and (i): training steps of the paper configs."""
    high, steps = (16 if args.small else 128), args.steps
    if "a" in args.parts:
        eager = paper_config("configs/cfm_1k.yaml", args.small, [*EAGER])
        record("a_train_cfm_1k", training_figures(eager, high, device, steps))
    if "b" in args.parts:
        fast = paper_config(
            "configs/cfm_1k.yaml", args.small, [*EAGER, "train.compile=true", "train.channels_last=true"]
        )
        record("b_train_cfm_1k_compile_channels_last", training_figures(fast, high, device, steps))
    if "c" in args.parts:
        cascade = paper_config("configs/cascade_2k.yaml", args.small, [])
        crop = cascade.data.crop_size or 2 * high
        record("c_train_cascade_2k_crop", training_figures(cascade, crop, device, steps))
    if "i" in args.parts:
        for name in args.variants:
            if args.small and name in NOT_SMALL:
                continue
            one_gpu = ["deepspeed.zero_optimization.stage=0", *TRAINING_VARIANTS[name]]
            config = paper_config("configs/cfm_1k.yaml", args.small, one_gpu)
            record(f"i_train_cfm_1k_{name}", training_figures(config, high, device, steps))


def inference_parts(
    args: argparse.Namespace, device: torch.device, record: Callable[[str, dict], None]
) -> None:
    """(d), (e), (f), (g) and (h): the pipeline, the cascade, the U-Net alone, compiled and eager layouts."""
    low, batch, nfe = (8, 2, 2) if args.small else (64, 4, 40)
    cfm_1k = paper_config("configs/cfm_1k.yaml", args.small, [])
    cascade = paper_config("configs/cascade_2k.yaml", args.small, [])
    if set("deh") & set(args.parts):
        autoencoder = sd_sized_autoencoder(args.small)
        vae_1k, vae_2k = first_stage(autoencoder, cfm_1k), first_stage(autoencoder, cascade)
        stage_1 = random_stage(cfm_1k, vae_1k.record())
    if "d" in args.parts:
        record("d_inference_1k", inference_figures([stage_1], vae_1k, device, batch, low, nfe))
    if "e" in args.parts:
        stages = [stage_1, random_stage(cascade, vae_2k.record())]
        record("e_inference_2k_cascade", inference_figures(stages, vae_2k, device, 1, low, nfe))
    if "f" in args.parts:
        batches = [2] if args.small else [16, 128]  # launch-bound, then compute-bound on a GPU
        figures = {f"batch_{b}": model_level(args.steps, device, b, bf16=not args.small) for b in batches}
        record("f_model_level", figures)
    if "h" in args.parts:
        record("h_eager_layouts_1k", eager_layout_figures(stage_1, vae_1k, device, batch, low, nfe))
    if "g" in args.parts and not args.small:  # --small compiles part (b) only
        for name, layout in LAYOUTS.items():  # fresh modules: compiled code assumes its weights' layout
            vae = first_stage(sd_sized_autoencoder(args.small), cfm_1k)
            stage = random_stage(cfm_1k, vae.record())
            figures = compiled_inference_figures(stage, vae, device, batch, low, [40, 4, 2, 1], layout)
            record(f"g_inference_1k_compiled_{name}", figures)


def main() -> None:
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    init_distributed(DistributedEnv.from_environ())
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "small": args.small,
    }

    def record(key: str, figures: dict) -> None:
        """Each part's figures are written as soon as they exist, so a run cut short keeps them."""
        result[key] = figures
        write(result, args.out)
        print(f"{key}: {json.dumps(figures)}", flush=True)

    training_parts(args, device, record)
    inference_parts(args, device, record)
    if "j" in args.parts:
        batch, levels, groups = (2, SMALL_LEVELS, 8) if args.small else (16, PAPER_LEVELS, 32)
        figures = group_norm_figures(device, batch, levels, groups, args.steps, compile=not args.small)
        record("j_group_norm", figures)
    report(result, args.out)


if __name__ == "__main__":
    main()
