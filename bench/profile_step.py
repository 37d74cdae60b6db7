"""Where a training step's time goes: ``torch.profiler`` over DeepSpeed steps of a config's U-Net.

    python bench/profile_step.py configs/cfm_1k.yaml                      # on a CUDA machine
    python bench/profile_step.py configs/cfm_1k.yaml data.batch_size=8 deepspeed.zero_optimization.stage=0
    python bench/profile_step.py configs/cfm_1k.yaml --small              # tiny sizes, any machine

``--inference`` profiles a sampling step (one U-Net forward, no gradients) instead.
``bench/gpu_check.py`` says how fast a step is; this says why: the median step time, then the
operators that take the most device time (CPU time without a GPU), as torch.profiler's table. The
engine is the trainer's own (``engine_setup.build_engine``), stepped on in-memory tensors.
"""

import argparse
import statistics
from pathlib import Path

import torch
from bench_output import report
from device_timing import synchronize, timed_seconds
from shared_training import SMALL_MODEL, engine_step
from torch.profiler import ProfilerActivity, profile

from fmboost.config_loading import load_config
from fmboost.devices import precision_dtype
from fmboost.distributed import DistributedEnv, init_distributed
from fmboost.models import FMBoostModel
from fmboost.training.hot_loop import memory_format


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="training config, e.g. configs/cfm_1k.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides (omegaconf dotlist)")
    parser.add_argument(
        "--small", action="store_true", help="tiny U-Net and fp32: proves the script on a CPU"
    )
    parser.add_argument(
        "--latent",
        type=int,
        default=None,
        help="latent side (default: the training crop, else 128; 16 with --small)",
    )
    parser.add_argument(
        "--inference",
        action="store_true",
        help="profile one U-Net forward without gradients (a sampling step)",
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps before the profiled ones")
    parser.add_argument("--profiled", type=int, default=3, help="steps under the profiler")
    parser.add_argument("--rows", type=int, default=25, help="operators in the table")
    parser.add_argument("--out", type=Path, default=Path("bench/results/profile_step"), help="output folder")
    args = parser.parse_intermixed_args()  # overrides may come before or after the flags
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    init_distributed(DistributedEnv.from_environ())
    small = [*SMALL_MODEL, "data.batch_size=2", "train.precision=fp32"] if args.small else []
    config = load_config(args.config, ["train.warmup_steps=1", *small, *args.overrides])
    latent = args.latent or config.data.crop_size or (16 if args.small else 128)

    torch.manual_seed(0)
    engine, train_step, notes = engine_step(FMBoostModel.from_config(config), config, latent, device)
    batch = config.data.batch_size
    autocast_dtype = precision_dtype(config.train.precision, device)
    net_input = torch.randn(batch, engine.module.unet_config.in_channels, latent, latent, device=device)
    net_input = net_input.contiguous(memory_format=memory_format(config.train))
    times = torch.rand(batch, device=device)

    def step() -> None:
        if not args.inference:
            train_step()
            return
        mixed = autocast_dtype != torch.float32
        with torch.no_grad(), torch.autocast(device.type, autocast_dtype, enabled=mixed):
            engine.module.net(net_input, times)

    for _ in range(3):
        step()
    seconds = [timed_seconds(step, device) for _ in range(args.steps)]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        for _ in range(args.profiled):
            step()
        synchronize(device)
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = profiler.key_averages().table(sort_by=sort_by, row_limit=args.rows, max_name_column_width=60)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.txt").write_text(table)
    print(table)
    report(
        {
            "config": args.config,
            "overrides": args.overrides,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "latent": latent,
            "batch": config.data.batch_size,
            "inference": args.inference,
            "zero_stage": config.deepspeed.get("zero_optimization", {}).get("stage", 0),
            "step_ms_median": round(statistics.median(seconds) * 1000, 2),
            "notes": notes,
        },
        args.out / "summary.json",
    )


if __name__ == "__main__":
    main()
