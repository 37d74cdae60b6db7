"""A rank that dies (SIGKILL, a segmentation fault) ends every other rank within seconds, each naming the
dead rank and how it died in the same line (torchrun with gloo on CPU; the Slurm requeue: test_slurm)."""

import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from fmboost.training.watchdog import STALL_EXIT_CODE
from tests.conftest import REPO_ROOT, free_port
from tests.training.helpers import build_latents, training_overrides
from tests.training.test_stall import rank_process

pytestmark = pytest.mark.slow


def test_a_rank_that_dies_ends_every_rank_within_seconds_naming_it_and_how(tmp_path):
    """Rank 2 of 3 crashes in native code (SIGSEGV): both survivors name it and the fatal error its
    faulthandler wrote down its link. (A rank killed without a word, SIGKILL: the Slurm test.)"""
    ranks, victim, fault, how = 3, 2, signal.SIGSEGV, "it crashed (Segmentation fault)"
    latents = build_latents(tmp_path / "data")
    run_dir = tmp_path / "run"
    overrides = training_overrides(
        latents, run_dir, max_steps=100_000, log_every=1, checkpoint_every=5, validate_every=100_000
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks)]
    command += [f"--master_port={free_port()}", "-m", "fmboost.train", "configs/demo/tiny_cpu.yaml"]
    launcher = subprocess.Popen(
        [*command, *overrides], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(
        target=lambda: lines.extend((time.monotonic(), line) for line in launcher.stdout)
    )
    reader.start()
    try:
        deadline = time.monotonic() + 180
        while not (run_dir / "checkpoints" / "step_00000005" / "COMPLETE").exists():
            assert time.monotonic() < deadline and launcher.poll() is None, "".join(line for _, line in lines)
            time.sleep(0.1)
        dead = rank_process(psutil.Process(launcher.pid), rank=victim)
        dead.send_signal(fault)
        killed_at = time.monotonic()
        launcher.wait(timeout=120)
    finally:
        if launcher.poll() is None:
            os.killpg(os.getpgid(launcher.pid), signal.SIGKILL)
        reader.join(timeout=10)
    output = "".join(line for _, line in lines)
    survivors = [rank for rank in range(ranks) if rank != victim]
    named = {}
    for at, line in lines:
        for rank in survivors:
            if f"[rank {rank}] ERROR" in line and f"rank {victim} (pid {dead.pid} on " in line:
                named.setdefault(rank, (at, line.split(" ERROR ", 1)[1].split(": ", 1)[1]))
    assert sorted(named) == survivors, output
    assert all(at - killed_at < 10 for at, _ in named.values()), "every survivor ends within seconds"
    assert len({said for _, said in named.values()}) == 1, "the same line on every rank"
    said = next(iter(named.values()))[1]
    assert "died at step " in said and how in said and "Resume with the same command" in said
    assert f"exitcode  : {STALL_EXIT_CODE}" in output, "the survivors' code: running again resumes"
    assert "Connection closed by peer" not in output, "not gloo's error, but which rank died and how"
    assert launcher.returncode != 0
