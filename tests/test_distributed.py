"""Two CPU ranks join a process group the way the trainer does (``init_distributed``, real gloo)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, free_port

RANK = """
import sys, time
import deepspeed.comm
import torch
from fmboost.distributed import DistributedEnv, init_distributed

rank, port = int(sys.argv[1]), int(sys.argv[2])
init_distributed(DistributedEnv(rank=rank, world_size=2, master_port=port), timeout_seconds=3)
print(f"shared-memory op: {deepspeed.comm.comm.cdb.shm_comm_op}", flush=True)
if rank == 1:
    time.sleep(30)  # a peer that never joins the collective
else:
    started = time.perf_counter()
    try:
        torch.distributed.all_reduce(torch.ones(1))
    except Exception as error:
        print(f"failed after {time.perf_counter() - started:.1f} s: {type(error).__name__}", flush=True)
"""


@pytest.fixture(scope="module")
def lost_peer(tmp_path_factory) -> tuple[str, float, Path]:
    """Rank 0's output when rank 1 never joins its collective, the seconds it took, and the folder
    where torch would have built C++ extensions."""
    port, extensions = free_port(), tmp_path_factory.mktemp("torch-extensions")
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": str(extensions)}
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", RANK, str(rank), str(port)],
            cwd=REPO_ROOT,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for rank in (0, 1)
    ]
    started = time.monotonic()
    try:
        output, _ = ranks[0].communicate(timeout=60)
    finally:
        for process in ranks:
            process.kill()
            process.wait()
    return output, time.monotonic() - started, extensions


def test_a_collective_without_its_peer_fails_after_the_process_group_timeout(lost_peer):
    output, elapsed, _ = lost_peer
    assert "failed after" in output, output
    waited = float(output.split("failed after ")[1].split(" s")[0])
    assert 2.5 <= waited < 10 and elapsed < 60


def test_joining_on_cpu_compiles_no_shared_memory_op(lost_peer):
    """DeepSpeed's shared-memory all-reduce serves only its inference; building it costs ~25 s of g++."""
    output, _, extensions = lost_peer
    assert "shared-memory op: None" in output, output
    assert not any(extensions.iterdir())
