"""A checkpoint on a disk that fills up: a clear error naming the last good checkpoint, then a clean resume.

The disk is a real, small tmpfs (mounting needs root; elsewhere the test is skipped, saying why).
"""

import shutil
import subprocess

import pytest

from fmboost.config_loading import load_config
from fmboost.distributed import DistributedEnv
from fmboost.training.checkpointing import CheckpointWriteError
from fmboost.training.trainer import train
from tests.conftest import REPO_ROOT
from tests.training.helpers import build_latents, training_overrides

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path):
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount_point)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", "--lazy", str(mount_point)], check=True)  # MLflow keeps its SQLite store open


def folder_bytes(path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def test_a_full_disk_during_a_checkpoint_says_so_and_names_the_last_good_one(tmp_path, small_disk):
    latents = build_latents(tmp_path / "data")
    run_dir = small_disk / "run"
    overrides = training_overrides(latents, run_dir, max_steps=3, checkpoint_every=3, validate_every=100)
    train(load_config(REPO_ROOT / "configs/demo/tiny_cpu.yaml", overrides), DistributedEnv())
    checkpoint = folder_bytes(run_dir / "checkpoints" / "step_00000003")
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - checkpoint // 2))

    config = load_config(REPO_ROOT / "configs/demo/tiny_cpu.yaml", overrides)
    config.train.max_steps = 6
    with pytest.raises(CheckpointWriteError) as error:
        train(config, DistributedEnv())
    message = str(error.value)
    assert message.startswith("the disk is full: checkpoint ") and "\n" not in message
    assert f"the last good checkpoint is {run_dir / 'checkpoints' / 'step_00000003'}" in message
    assert not (run_dir / "checkpoints" / "step_00000006").exists()  # the partial one is gone

    filler.unlink()
    result = train(config, DistributedEnv())
    assert (result.status, result.step) == ("finished", 6)
