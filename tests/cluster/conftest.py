"""Slurm tests need the local cluster that .ci/run starts (cluster/slurm/start_slurm.sh).

Without it they are skipped, unless FMBOOST_REQUIRE_SLURM=1 (as in CI), where a missing cluster fails.
"""

import os
import shutil
import subprocess

import pytest


def slurm_available() -> bool:
    if not shutil.which("sinfo"):
        return False
    try:
        result = subprocess.run(
            ["sinfo", "-h", "-t", "idle,mix,alloc", "-o", "%N"], capture_output=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0 and bool(result.stdout.strip())


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    if slurm_available():
        return
    message = "no local Slurm cluster (start it with: bash cluster/slurm/start_slurm.sh)"
    if os.environ.get("FMBOOST_REQUIRE_SLURM") == "1":
        pytest.fail(message)
    pytest.skip(message)
