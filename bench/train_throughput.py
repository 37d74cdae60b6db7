"""Training speed against plain baselines, in one run: the loop's overhead and the network's own speed.

    python bench/train_throughput.py [--steps 100] [--batch-size 8] [--out DIR/train_throughput.json]

1. *Full loop against a bare loop, interleaved*: ``fmboost.training.trainer.train`` (DeepSpeed engine,
   data stream from latent shards, EMA, NaN checks, logging every ``train.log_every`` steps;
   validation and checkpoints pushed past the end) runs on the sample dataset, and after each of its
   optimizer steps one step of a *bare loop* runs in the same process: the same network, batch size,
   AdamW and gradient clipping on tensors already in memory, no DeepSpeed. Both see the same machine
   at the same moments, so the comparison is free of the drift between separate runs (on this 2-core
   machine identical runs minutes apart differ by up to 5 %). ``overhead`` compares their mean step
   times after a warm-up. Target: <= 3 % (at ZeRO stage 0; ``--zero-stage 1`` shows what DeepSpeed's
   partitioning adds on one process). ``--num-workers`` defaults to 0 so that all data work is counted
   in the full loop's steps (a worker process would also prefetch while the bare step runs).
   ``in_trainer_ms`` splits the full loop's step into its engine calls; ``loop_share_of_step`` is the
   part spent outside forward, backward and optimizer step (data, EMA, bookkeeping).
2. *Model level* (``bench/model_level.py``): a forward and backward of our U-Net against
   ``bench/unet_reference.py`` (the same network in plain ``torch.nn.functional`` calls, on the same
   weights, so outputs must match) at an attention-heavy size: 128 channels at 32×32 positions.
   Target: ours is not slower (ratio <= 1).
"""

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import deepspeed
import torch
from bench_output import report
from model_level import model_level

from data_pipeline.config import load_encode_config
from data_pipeline.encode_shards import run as encode
from data_pipeline.sample_data import build_sample_dataset
from fmboost.config import FMBoostConfig
from fmboost.config_loading import load_config
from fmboost.distributed import DistributedEnv
from fmboost.models import FMBoostModel
from fmboost.training.trainer import train


def bare_step(config: FMBoostConfig) -> Callable[[], None]:
    """One step of the bare loop: forward, backward, clipping and AdamW on in-memory tensors."""
    torch.manual_seed(0)
    model = FMBoostModel.from_config(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr)
    size, low = config.model.out_channels, 64
    x1 = torch.randn(config.data.batch_size, size, low, low)
    z_up = torch.randn(config.data.batch_size, size, low, low)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        loss = model(x1, z_up, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        optimizer.step()

    return step


@contextmanager
def interleaved_timer(warmup: int, bare: Callable[[], None]) -> Iterator[dict[str, list[float]]]:
    """Seconds of the trainer's engine calls and whole steps, with one bare step run after each.

    ``whole_step`` is the trainer's own time from the end of one bare step to the end of its next
    optimizer step; ``bare_step`` is the bare step that follows.
    """
    times: dict[str, list[float]] = {
        name: [] for name in ("forward", "backward", "step", "whole_step", "bare_step")
    }
    original = deepspeed.initialize
    last_bare_end: list[float | None] = [None]

    def timed(call, name):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            result = call(*args, **kwargs)
            ended = time.perf_counter()
            times[name].append(ended - started)
            if name == "step":
                if last_bare_end[0] is not None:
                    times["whole_step"].append(ended - last_bare_end[0])
                bare()
                last_bare_end[0] = time.perf_counter()
                times["bare_step"].append(last_bare_end[0] - ended)
            return result

        return wrapper

    def initialize(*args, **kwargs):
        engine, *rest = original(*args, **kwargs)
        for name in ("forward", "backward", "step"):
            setattr(engine, name, timed(getattr(engine, name), name))
        return (engine, *rest)

    deepspeed.initialize = initialize
    try:
        yield times
    finally:
        deepspeed.initialize = original
        for name in times:
            del times[name][:warmup]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=100, help="timed optimizer steps of each loop")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=8, help="batch size of both loops")
    parser.add_argument(
        "--zero-stage",
        type=int,
        default=0,
        help="ZeRO stage of the full loop; stage 0 on one process measures the loop itself, stages 1-2 add "
        "DeepSpeed's gradient partitioning, which only pays off across devices (default: 0)",
    )
    parser.add_argument("--rounds", type=int, default=20, help="timed steps of each network (model level)")
    parser.add_argument(
        "--num-workers",
        type=int,
        default=0,
        help="DataLoader workers of the full loop (default 0: shards are read inside its steps, so all data "
        "work is counted; a worker would also prefetch while the bare step runs)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("bench/results/train_throughput.json"), help="JSON output"
    )
    args = parser.parse_args()
    os.environ.setdefault("MASTER_PORT", "29611")

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        build_sample_dataset(scratch / "sample")
        encode(
            load_encode_config(
                "configs/encode/sample.yaml",
                [f"input={scratch}/sample/shards/{{00000..00004}}.tar", f"output={scratch}/latents"],
            )
        )
        total = args.warmup + args.steps
        config = load_config(
            "configs/demo/tiny_cpu.yaml",
            [
                f"data.train={scratch}/latents",
                "data.validation=null",
                f"data.batch_size={args.batch_size}",
                f"train.run_dir={scratch}/run",
                f"train.max_steps={total}",
                f"train.checkpoint_every={total * 10}",
                f"train.validate_every={total * 10}",
                "train.grad_clip=1.0",
                f"data.num_workers={args.num_workers}",
                f"deepspeed.zero_optimization.stage={args.zero_stage}",
            ],
        )
        with interleaved_timer(args.warmup, bare_step(config)) as times:
            train(config, DistributedEnv())
    full_s, bare_s = statistics.mean(times["whole_step"]), statistics.mean(times["bare_step"])
    engine_s = sum(statistics.median(times[name]) for name in ("forward", "backward", "step"))
    result = {
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "batch_size": args.batch_size,
        "zero_stage": args.zero_stage,
        "num_workers": args.num_workers,
        "steps": len(times["whole_step"]),
        "full_loop_samples_per_s": round(args.batch_size / full_s, 2),
        "bare_loop_samples_per_s": round(args.batch_size / bare_s, 2),
        "overhead": round(full_s / bare_s - 1, 4),
        "target_overhead": 0.03,
        "in_trainer_ms": {name: round(statistics.median(values) * 1000, 2) for name, values in times.items()},
        "loop_share_of_step": round(1 - engine_s / statistics.median(times["whole_step"]), 4),
        "model_level": model_level(args.rounds, torch.device("cpu")),
    }
    report(result, args.out)


if __name__ == "__main__":
    main()
