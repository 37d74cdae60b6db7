"""A rank stopped with SIGSTOP ends the job within the stall timeout (torchrun with gloo on CPU)."""

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

pytestmark = pytest.mark.slow

STALL_SECONDS = 3.0
STALL_SETTINGS = [
    f"train.stall_timeout_seconds={STALL_SECONDS}",
    "train.stall_timeout_validation_seconds=60",
    "train.stall_timeout_checkpoint_seconds=60",
]


def rank_process(launcher: psutil.Process, rank: int) -> psutil.Process:
    """The worker of ``rank`` among the launcher's descendants (by its RANK variable)."""
    for child in launcher.children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "fmboost.train" in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    raise LookupError(f"no worker with RANK={rank}")


def test_a_rank_stopped_with_sigstop_ends_every_rank_within_the_stall_timeout(tmp_path):
    latents = build_latents(tmp_path / "data")
    run_dir = tmp_path / "run"
    overrides = training_overrides(
        latents, run_dir, max_steps=100_000, log_every=1, checkpoint_every=5, validate_every=100_000
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += [f"--master_port={free_port()}", "-m", "fmboost.train", "configs/demo/tiny_cpu.yaml"]
    launcher = subprocess.Popen(
        [*command, *overrides, *STALL_SETTINGS],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(
        target=lambda: lines.extend((time.monotonic(), line) for line in launcher.stdout)
    )
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoints" / "step_00000005" / "COMPLETE").exists():
            assert time.monotonic() < deadline and launcher.poll() is None, "".join(line for _, line in lines)
            time.sleep(0.1)
        stopped = rank_process(psutil.Process(launcher.pid), rank=1)
        stopped.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        while not any("rank 1 stalled at step" in line for _, line in lines) and launcher.poll() is None:
            assert time.monotonic() - stopped_at < 60, "".join(line for _, line in lines)
            time.sleep(0.1)
        # torchrun ends a stopped worker only 30 s after its SIGTERM; end it as Slurm's srun -K would
        stopped.kill()
        launcher.wait(timeout=60)
    finally:
        if launcher.poll() is None:
            os.killpg(os.getpgid(launcher.pid), signal.SIGKILL)
        reader.join(timeout=10)
    output = "".join(line for _, line in lines)
    named = [
        (at, line) for at, line in lines if "[rank 0] ERROR" in line and "rank 1 stalled at step" in line
    ]
    assert named, output
    assert named[0][0] - stopped_at < STALL_SECONDS + 5, "rank 0 ends within the timeout and a margin"
    assert "its heartbeat stopped too" in named[0][1] and "Resume with the same command" in named[0][1]
    assert f"exitcode  : {STALL_EXIT_CODE}" in output
    assert launcher.returncode != 0
