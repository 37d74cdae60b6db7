"""Training speed against plain baselines, in one run: the loop's overhead and the network's own speed.

    python bench/train_throughput.py [--steps 60] [--batch-size 8] [--out bench/results/train_throughput.json]

1. *Full loop*: ``fmboost.training.trainer.train`` (DeepSpeed engine, data stream from latent shards,
   EMA, NaN checks, logging; validation and checkpoints pushed past the end) on the sample dataset.
   *Bare loop*: the same model, batch size and AdamW on tensors already in memory. Both skip a warm-up;
   the trainer's rate is its own ``train/samples_per_s`` metric; the bare loop runs before and after it
   and their mean counts (both are reported: their difference is this machine's noise). Target: overhead
   <= 3 % (at ZeRO stage 0; ``--zero-stage 1`` shows what DeepSpeed's partitioning adds on one process).
   Inside the trainer, its engine calls are timed too: ``loop_share_of_step`` is the part of a step
   spent outside forward, backward and optimizer step (data, EMA, bookkeeping), free of the noise
   between separate runs.
2. *Model level*: a forward and backward of our U-Net against ``bench/unet_reference.py`` (the same
   network in plain ``torch.nn.functional`` calls, on the same weights, so outputs must match) at an
   attention-heavy size: 128 channels at 32×32 positions. Target: ours is not slower (ratio <= 1).
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import deepspeed
import torch
from bench_output import report
from unet_reference import unet_forward

from data_pipeline.config import load_encode_config
from data_pipeline.encode_shards import run as encode
from data_pipeline.sample_data import build_sample_dataset
from fmboost.config import UNetConfig, load_config
from fmboost.distributed import DistributedEnv
from fmboost.models import FMBoostModel
from fmboost.models.unet import UNet
from fmboost.training.trainer import train


def bare_rate(config, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    model = FMBoostModel.from_config(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr)
    size, low = config.model.out_channels, 64
    x1, z_up = (
        torch.randn(config.data.batch_size, size, low, low),
        torch.randn(config.data.batch_size, size, low, low),
    )
    generator = torch.Generator().manual_seed(0)
    for step in range(warmup + steps):
        if step == warmup:
            started = time.perf_counter()
        loss = model(x1, z_up, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        optimizer.step()
    return steps * config.data.batch_size / (time.perf_counter() - started)


@contextmanager
def engine_call_timer(warmup: int) -> Iterator[dict[str, list[float]]]:
    """Seconds of every DeepSpeed forward/backward/step the trainer makes, and of its whole steps.

    What a whole step costs beyond its engine calls is the loop's own work (data, EMA, bookkeeping),
    measured inside the trainer itself, free of the run-to-run noise between processes.
    """
    times: dict[str, list[float]] = {"forward": [], "backward": [], "step": [], "whole_step": []}
    original = deepspeed.initialize
    last_step_end = [None]

    def timed(call, name):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            result = call(*args, **kwargs)
            ended = time.perf_counter()
            times[name].append(ended - started)
            if name == "step":
                if last_step_end[0] is not None:
                    times["whole_step"].append(ended - last_step_end[0])
                last_step_end[0] = ended
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


def time_alternating(first, second, rounds: int) -> tuple[float, float]:
    """Median seconds of ``first()`` and ``second()``, called in turn (so drift hits both alike)."""
    for _ in range(2):
        first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for step, record in ((first, times[0]), (second, times[1])):
            started = time.perf_counter()
            step()
            record.append(time.perf_counter() - started)
    return statistics.median(times[0]), statistics.median(times[1])


def model_level(rounds: int) -> dict:
    """Our U-Net against the functional reference on the same weights: equal outputs, then timings."""
    config = UNetConfig(
        in_channels=8,
        out_channels=4,
        model_channels=128,
        channel_mult=[1],
        num_res_blocks=1,
        attention_resolutions=[1],
        num_heads=4,
        head_channels=32,
    )
    torch.manual_seed(0)
    net = UNet(config)
    for parameter in net.parameters():
        torch.nn.init.normal_(parameter, std=0.02)
    params = dict(net.named_parameters())
    x, t = torch.randn(2, 8, 32, 32), torch.rand(2)
    torch.testing.assert_close(unet_forward(params, config, x, t), net(x, t), rtol=1e-4, atol=1e-5)

    def ours() -> None:
        net(x, t).square().mean().backward()

    def reference() -> None:
        unet_forward(params, config, x, t).square().mean().backward()

    ours_s, reference_s = time_alternating(ours, reference, rounds)
    return {
        "size": "128 channels at 32x32 positions, 4 heads x 32, batch 2, forward + backward",
        "ours_ms": round(ours_s * 1000, 2),
        "reference_ms": round(reference_s * 1000, 2),
        "ratio": round(ours_s / reference_s, 3),
        "target_ratio": 1.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=60, help="timed optimizer steps per loop")
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
        default=1,
        help="DataLoader workers of the full loop (0: read shards in the training process; default: 1)",
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
                f"train.log_every={args.warmup}",
                f"train.checkpoint_every={total * 10}",
                f"train.validate_every={total * 10}",
                "train.grad_clip=1.0",
                f"data.num_workers={args.num_workers}",
                f"deepspeed.zero_optimization.stage={args.zero_stage}",
            ],
        )
        bare_before = bare_rate(config, args.steps, args.warmup)
        with engine_call_timer(args.warmup) as calls:
            train(config, DistributedEnv())
        rates = [
            json.loads(line)["train/samples_per_s"]
            for line in (scratch / "run" / "metrics.jsonl").read_text().splitlines()
            if "train/samples_per_s" in line
        ]
        full_rate = sum(rates[1:]) / len(rates[1:])
    bare_after = bare_rate(config, args.steps, args.warmup)
    engine_s = sum(statistics.median(calls[name]) for name in ("forward", "backward", "step"))
    bare = (bare_before + bare_after) / 2
    result = {
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "batch_size": args.batch_size,
        "zero_stage": args.zero_stage,
        "steps": args.steps,
        "full_loop_samples_per_s": round(full_rate, 2),
        "bare_loop_samples_per_s": round(bare, 2),
        "bare_loop_before_and_after": [round(bare_before, 2), round(bare_after, 2)],
        "overhead": round(1 - full_rate / bare, 4),
        "target_overhead": 0.03,
        "in_trainer_ms": {name: round(statistics.median(values) * 1000, 2) for name, values in calls.items()},
        "loop_share_of_step": round(1 - engine_s / statistics.median(calls["whole_step"]), 4),
        "model_level": model_level(args.rounds),
    }
    report(result, args.out)


if __name__ == "__main__":
    main()
