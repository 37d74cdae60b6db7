"""Encoding pipeline throughput against the bare first stage, measured in one run.

    python bench/encode_throughput.py [--first-stage-path ../shared/weights] [--high-res 128]

*Pipeline*: the full ``encode_shards`` job (tar reading, decoding and cropping in DataLoader workers,
encoding, PSU, ``.npy``/JPEG serialisation, tar writing) on the sample dataset. *Model only*: the same
``LatentEncoder`` on the same number of pre-decoded crops in the same batch size. Target: ratio >= 0.9.
"""

import argparse
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from bench_output import report

from data_pipeline.config import EncodeConfig
from data_pipeline.encode_shards import run
from data_pipeline.latent_encoder import LatentEncoder
from data_pipeline.sample_data import build_sample_dataset
from fmboost.config import FirstStageConfig
from fmboost.devices import resolve_device
from fmboost.first_stage import build_first_stage


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--first-stage", default="taesd", help="first stage name (default taesd)")
    parser.add_argument(
        "--first-stage-path", default="../shared/weights", help="its weights (TAEF2 by default)"
    )
    parser.add_argument("--high-res", type=int, default=128, help="high-res crop size in pixels")
    parser.add_argument("--batch-size", type=int, default=8, help="encoder batch size")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers of the pipeline")
    parser.add_argument(
        "--out", type=Path, default=Path("bench/results/encode_throughput.json"), help="JSON output"
    )
    args = parser.parse_args()

    first_stage_config = FirstStageConfig(name=args.first_stage, path=args.first_stage_path)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        build_sample_dataset(scratch / "sample")
        config = EncodeConfig(
            input=str(scratch / "sample" / "shards" / "{00000..00004}.tar"),
            output=str(scratch / "latents"),
            first_stage=first_stage_config,
            high_res=args.high_res,
            low_res=args.high_res // 2,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
        )
        summary = run(config)
        pipeline_rate = summary.written / summary.seconds

    first_stage = build_first_stage(first_stage_config)
    encoder = LatentEncoder(first_stage, args.high_res // 2, "psu_roundtrip", resolve_device("auto"), "auto")
    crops = torch.randint(0, 256, (args.batch_size, 3, args.high_res, args.high_res), dtype=torch.uint8)
    encoder.encode(crops)  # warm-up
    batches = -(-summary.written // args.batch_size)
    started = time.perf_counter()
    for _ in range(batches):
        encoder.encode(crops)
    model_rate = batches * args.batch_size / (time.perf_counter() - started)

    result = {
        "first_stage": asdict(first_stage.record()),
        "device": str(encoder.device),
        "high_res": args.high_res,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "images": summary.written,
        "pipeline_images_per_s": round(pipeline_rate, 3),
        "model_only_images_per_s": round(model_rate, 3),
        "ratio": round(pipeline_rate / model_rate, 3),
        "target_ratio": 0.9,
    }
    report(result, args.out)


if __name__ == "__main__":
    main()
