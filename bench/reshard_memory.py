"""Rank 0's memory while it writes the optimizer state by parameter (a resume on another number of ranks).

    python bench/reshard_memory.py                  # a 134 M-parameter model, ZeRO-1 on 2 ranks
    python bench/reshard_memory.py --small          # a 4 M-parameter model, any machine

Two gloo ranks train a stack of linear layers for one step with DeepSpeed ZeRO-1 and save a checkpoint
(each rank's partition of the fp32 masters and both Adam moments). Then, one after the other in a fresh
process, :func:`fmboost.training.resharding.consolidate` writes the state by parameter, and so does the
baseline: every partition loaded whole and every parameter concatenated in memory (what FMBoost did
before).
A thread samples the process's anonymous resident memory (``RssAnon``: what the process itself holds;
pages of memory-mapped files are the page cache's and can be dropped) every 5 ms; the peak above the
level before the call is the figure. Both must write the same tensors.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from bench_output import report

REPO = Path(__file__).resolve().parents[1]


def stacked_linears(width: int, depth: int) -> torch.nn.Module:
    return torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(depth)])


def save_two_rank_checkpoint(rank: int, folder: str, width: int, depth: int, port: int) -> None:
    """One rank of a two-rank ZeRO-1 job: one AdamW step on random data, then a DeepSpeed checkpoint."""
    import deepspeed

    from fmboost.distributed import DistributedEnv, init_distributed

    init_distributed(DistributedEnv(rank=rank, world_size=2, master_port=port))
    torch.manual_seed(0)
    model = stacked_linears(width, depth)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-4),
        config={
            "train_micro_batch_size_per_gpu": 1,
            "zero_optimization": {"stage": 1},
            "zero_allow_untested_optimizer": True,
        },
    )
    loss = engine(torch.randn(1, width)).square().mean()
    engine.backward(loss)
    engine.step()
    engine.save_checkpoint(folder, tag="step", save_latest=False)
    torch.distributed.destroy_process_group()


def anonymous_resident_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def peak_while(call) -> tuple[int, float]:
    """(peak anonymous resident bytes above the level before ``call``, its seconds)."""
    before = anonymous_resident_bytes()
    peak, done = [before], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], anonymous_resident_bytes())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    call()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    return max(peak[0], anonymous_resident_bytes()) - before, seconds


def consolidate_in_memory(directory: Path, target: Path) -> None:
    """The baseline: every partition loaded whole, every parameter's state concatenated, then written."""
    from safetensors.torch import save_file

    from fmboost.training.resharding import (
        STATE_KEYS,
        flat_state,
        optimizer_shard_files,
        parameter_pieces,
        read_shard,
    )

    shards = [read_shard(path) for path in optimizer_shard_files(directory)]
    tensors = {
        f"{name}/{key}": torch.cat(
            [flat_state(shards[p.shard], p.group, key).narrow(0, p.start, p.numel) for p in pieces]
        )
        for name, pieces in parameter_pieces(shards).items()
        for key in STATE_KEYS
    }
    save_file(tensors, str(target))


def measure(checkpoint: Path, folder: Path) -> None:
    """Both consolidations in this (fresh) process, each measured from where it starts; prints JSON."""
    from fmboost.training.resharding import (
        consolidate,
        consolidated_folder,
        consolidated_path,
        deepspeed_safe_globals,
    )

    deepspeed_safe_globals()  # imports DeepSpeed (and with it safetensors, numpy) before the measurement
    shutil.rmtree(consolidated_folder(checkpoint), ignore_errors=True)
    figures = {}
    peak, seconds = peak_while(lambda: consolidate(checkpoint, "bench"))  # first: the smaller peak
    shutil.copy(consolidated_path(checkpoint), folder / "streamed.safetensors")
    figures["streamed"] = {"peak_anonymous_bytes": peak, "seconds": round(seconds, 2)}
    peak, seconds = peak_while(lambda: consolidate_in_memory(checkpoint, folder / "baseline.safetensors"))
    figures["in_memory_baseline"] = {"peak_anonymous_bytes": peak, "seconds": round(seconds, 2)}
    print(json.dumps(figures))


def in_fresh_process(checkpoint: Path, folder: Path) -> dict:
    command = [sys.executable, __file__, "--measure", str(checkpoint), str(folder)]
    finished = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(finished.stdout.strip().splitlines()[-1])


def same_tensors(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    first, second = load_file(str(a)), load_file(str(b))
    return first.keys() >= second.keys() and all(first[k].equal(second[k]) for k in second)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", action="store_true", help="a 4 M-parameter model instead of 134 M")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/reshard_memory.json"))
    parser.add_argument("--measure", nargs=2, metavar=("CHECKPOINT", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(*map(Path, args.measure))
        return
    width, depth = (1024, 4) if args.small else (4096, 8)
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        torch.multiprocessing.spawn(
            save_two_rank_checkpoint, args=(folder, width, depth, port), nprocs=2, join=True
        )
        checkpoint = Path(folder) / "step"
        parameters = sum(p.numel() for p in stacked_linears(width, 1).parameters()) * depth
        optimizer_bytes = sum(p.stat().st_size for p in checkpoint.glob("*optim_states.pt"))
        figures = in_fresh_process(checkpoint, Path(folder))
        streamed, baseline = figures["streamed"], figures["in_memory_baseline"]
        identical = same_tensors(Path(folder) / "streamed.safetensors", Path(folder) / "baseline.safetensors")
    report(
        {
            "parameters": parameters,
            "ranks_written": 2,
            "optimizer_files_bytes": optimizer_bytes,
            "streamed": streamed
            | {"bytes_per_parameter": round(streamed["peak_anonymous_bytes"] / parameters, 2)},
            "in_memory_baseline": baseline
            | {"bytes_per_parameter": round(baseline["peak_anonymous_bytes"] / parameters, 2)},
            "same_tensors": identical,
            "largest_parameter": width * width,
            "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads(),
            "host_cpus": os.cpu_count(),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
