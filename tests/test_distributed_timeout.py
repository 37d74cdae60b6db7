"""A collective that waits for a lost peer fails after the timeout the trainer sets, not after 30 minutes."""

import os
import subprocess
import sys
import time

from tests.conftest import REPO_ROOT, free_port

RANK = """
import sys, time
import torch
from fmboost.distributed import DistributedEnv, init_distributed

rank, port = int(sys.argv[1]), int(sys.argv[2])
init_distributed(DistributedEnv(rank=rank, world_size=2, master_port=port), timeout_seconds=3)
if rank == 1:
    time.sleep(30)  # a peer that never joins the collective
else:
    started = time.perf_counter()
    try:
        torch.distributed.all_reduce(torch.ones(1))
    except Exception as error:
        print(f"failed after {time.perf_counter() - started:.1f} s: {type(error).__name__}", flush=True)
"""


def test_a_collective_without_its_peer_fails_after_the_process_group_timeout():
    port = free_port()
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
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
    assert "failed after" in output, output
    waited = float(output.split("failed after ")[1].split(" s")[0])
    assert 2.5 <= waited < 10 and time.monotonic() - started < 60
