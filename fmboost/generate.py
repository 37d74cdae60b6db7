"""Generate high-resolution images: a base LDM and one or more CFM stages, or boost an existing image.

    python -m fmboost.generate --base sd-1.5/ --stage runs/cfm_1k/export --prompt "a red fox" --out out/
    python -m fmboost.generate --base sd-1.5/ --stage stage1/ --stage stage2/ --prompts-file prompts.txt
    python -m fmboost.generate --stage runs/cfm_1k/export --input-image photo.png --out out/
    python -m fmboost.generate --stage runs/cfm_1k/export --input-dir photos/ --out boosted/

Writes ``out/NNNNN.png`` and ``out/NNNNN.json`` (prompt or input, seed, settings, per-stage timings).
``--input-dir`` boosts every image under a folder into ``out/`` with the same relative paths
(``photos/a/b.jpg`` → ``boosted/a/b.png`` and ``b.json``), resumably: a rerun skips finished images, and
``out/_boost_summary.json`` accounts for every file (boosted, done earlier, or skipped with its reason).
On Slurm: ``python cluster/submit.py --array N configs/boost/folder.yaml``.
"""

import argparse
import json
import logging
from pathlib import Path

from fmboost.cli import (
    add_device_arguments,
    add_output_limit_argument,
    exit_without_collecting,
    report_errors,
)
from fmboost.config import CONSISTENCY_MODES, FirstStageConfig, MemoryBound
from fmboost.errors import FMBoostError
from fmboost.inference.sidecar import sidecar

logger = logging.getLogger("fmboost.generate")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fmboost.generate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", action="append", help="a text prompt (repeatable); needs --base")
    source.add_argument(
        "--prompts-file", type=Path, help="a text file with one prompt per line; needs --base"
    )
    source.add_argument(
        "--input-image", type=Path, action="append", help="boost this image instead (repeatable)"
    )
    source.add_argument(
        "--input-dir",
        type=Path,
        help="boost every image under this folder into --out, keeping relative paths; a rerun resumes",
    )
    parser.add_argument(
        "--base", help="diffusers pipeline directory or hub id that returns latents (e.g. SD 1.5)"
    )
    parser.add_argument(
        "--stage", action="append", required=True, help="FMBoost model directory (repeat to cascade)"
    )
    parser.add_argument(
        "--nfe",
        type=int,
        action="append",
        help="network evaluations per stage: once for all stages or once per stage (default: trained)",
    )
    parser.add_argument(
        "--solver",
        action="append",
        choices=("euler", "midpoint", "rk4", "dopri5"),
        help="ODE solver: once for all stages or once per stage (default: trained)",
    )
    parser.add_argument(
        "--consistency",
        choices=CONSISTENCY_MODES,
        help="after decoding, hold the result to its low-res input: projection (downsampling the result "
        "gives the input back), wavelet or adain (colours only), none (default: the last stage's, "
        "projection for clean stages; a cascade holds its last result to the original input)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the first batch; batch b uses seed + b")
    parser.add_argument("--batch-size", type=int, default=1, help="prompts or images per batch")
    parser.add_argument(
        "--steps", type=int, default=None, help="base sampler steps (default: the base's own)"
    )
    parser.add_argument(
        "--guidance-scale", type=float, default=None, help="base classifier-free guidance scale"
    )
    parser.add_argument(
        "--first-stage",
        help="first stage name (identity, diffusers, taesd); default: the base's "
        "VAE, else the one the stage was trained with",
    )
    parser.add_argument("--first-stage-path", help="weights of --first-stage")
    add_device_arguments(parser)
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the flow networks and the autoencoder (CUDA graphs on CUDA); the first batch of "
        "each shape compiles in an untimed warm-up, reported apart as warmup in the timings",
    )
    bound = MemoryBound()
    parser.add_argument(
        "--flow-tile-size",
        type=int,
        default=bound.flow_tile_size,
        help="run the flow network in overlapping tiles of at most this many latent positions per side, "
        "which bounds memory for large inputs; 0 never tiles (default: %(default)s)",
    )
    parser.add_argument(
        "--flow-tile-overlap",
        type=int,
        default=bound.flow_tile_overlap,
        help="latent positions neighbouring tiles share and blend over (default: %(default)s)",
    )
    add_output_limit_argument(parser)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("outputs"),
        help="output directory (created when the first image is written)",
    )
    return parser.parse_args(argv)


def batches(items: list, size: int) -> list[list]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def boost_input_dir(args: argparse.Namespace) -> list[Path]:
    """``--input-dir``: the folder job of :mod:`fmboost.folder_boost`, with this command's settings."""
    from fmboost.folder_boost import BOOSTED, BoostFolderConfig, boost_folder, validate_boost_config

    if args.base or args.batch_size != 1:
        raise FMBoostError(
            "--input-dir boosts images one at a time, without a base: drop --base/--batch-size"
        )
    config = BoostFolderConfig(
        input_dir=str(args.input_dir),
        output=str(args.out),
        stages=list(args.stage),
        nfe=args.nfe or [],
        solver=args.solver or [],
        consistency=args.consistency,
        seed=args.seed,
        first_stage=args.first_stage,
        first_stage_path=args.first_stage_path,
        device=args.device,
        dtype=args.dtype,
        compile=args.compile,
        flow_tile_size=args.flow_tile_size,
        flow_tile_overlap=args.flow_tile_overlap,
        max_output_pixels=args.max_output_pixels,
    )
    validate_boost_config(config)
    summary = boost_folder(config)
    print(f"{args.input_dir}: {summary['totals']} (every file: {args.out / '_boost_summary.json'})")
    return [
        args.out / record["output"] for record in summary["files"].values() if record["status"] == BOOSTED
    ]


def run(args: argparse.Namespace) -> list[Path]:
    import torch

    from fmboost.image_processing import load_image
    from fmboost.inference.pipeline import FMBoostPipeline, one_or_per_stage

    if args.batch_size < 1:
        raise FMBoostError("--batch-size must be positive")
    if args.input_dir:
        return boost_input_dir(args)
    if not args.input_image and not args.base:
        raise FMBoostError(
            "--prompt/--prompts-file need --base (a diffusers pipeline); or boost an --input-image"
        )
    first_stage = (
        FirstStageConfig(name=args.first_stage, path=args.first_stage_path) if args.first_stage else None
    )
    memory = MemoryBound(args.flow_tile_size, args.flow_tile_overlap, args.max_output_pixels)
    pipeline = FMBoostPipeline.from_pretrained(
        args.stage, args.base, first_stage, args.device, args.dtype, memory, args.compile
    )
    nfe, solver = one_or_per_stage(args.nfe), one_or_per_stage(args.solver)
    base_kwargs = {}
    if args.steps is not None:
        base_kwargs["num_inference_steps"] = args.steps
    if args.guidance_scale is not None:
        base_kwargs["guidance_scale"] = args.guidance_scale

    if args.input_image:
        inputs = [
            ("image", str(path), load_image(path, pipeline.image_multiple)) for path in args.input_image
        ]
        for _, path, image in inputs:
            pipeline.check_image_size(image, f"--input-image {path}")
    else:
        prompts = args.prompt or [
            line.strip() for line in args.prompts_file.read_text().splitlines() if line.strip()
        ]
        if not prompts:
            raise FMBoostError(f"--prompts-file: {args.prompts_file} holds no prompts")
        inputs = [("prompt", prompt, None) for prompt in prompts]

    written, index = [], 0
    for batch_index, batch in enumerate(batches(inputs, args.batch_size)):
        seed = args.seed + batch_index
        if batch[0][0] == "image":
            shapes = {tuple(item[2].shape) for item in batch}
            if len(shapes) > 1:
                raise FMBoostError("--input-image: images in one batch must share a size; use --batch-size 1")
            output = pipeline(
                images=torch.cat([item[2] for item in batch]),
                seed=seed,
                nfe=nfe,
                solver=solver,
                consistency=args.consistency,
            )
        else:
            output = pipeline(
                prompts=[item[1] for item in batch],
                seed=seed,
                nfe=nfe,
                solver=solver,
                consistency=args.consistency,
                **base_kwargs,
            )
        for (kind, value, _), image in zip(batch, output.images, strict=True):
            args.out.mkdir(parents=True, exist_ok=True)
            path = args.out / f"{index:05d}.png"
            image.save(path)
            record = sidecar({kind: value}, seed, len(batch), image, args.stage, output, solver)
            record |= {"base": args.base, "base_kwargs": base_kwargs}
            path.with_suffix(".json").write_text(json.dumps(record, indent=2))
            written.append(path)
            index += 1
        logger.info("batch %d: %s", batch_index, {k: round(v, 3) for k, v in output.timings.items()})
    return written


FLAGS = {
    "base": "--base",
    "image": "--input-image",
    "input_dir": "--input-dir",
    "output": "--out",
    "first_stage": "--first-stage",
    "flow_tile_size": "--flow-tile-size",
    "flow_tile_overlap": "--flow-tile-overlap",
    "max_output_pixels": "--max-output-pixels",
}


@report_errors(FLAGS)
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    written = run(args)
    print(f"wrote {len(written)} images to {args.out}")
    return 0


if __name__ == "__main__":
    exit_without_collecting(main())
