"""One job per run folder: a live holder refuses others, a dead holder's lock is taken over."""

import json
import logging
import os
import subprocess
import sys
import time

import pytest

from fmboost.config_loading import load_config
from fmboost.distributed import DistributedEnv
from fmboost.training.run_lock import LOCK_NAME, RunFolderBusyError, RunFolderLock
from fmboost.training.trainer import train
from tests.conftest import REPO_ROOT
from tests.training.helpers import build_latents, training_overrides

HOLD_THE_LOCK = """
import sys, time
from pathlib import Path
from fmboost.training.run_lock import RunFolderLock
lock = RunFolderLock(Path(sys.argv[1]))
lock.acquire()
print("locked", flush=True)
time.sleep(600)
"""


def start_holder(run_dir) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK, str(run_dir)], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_job_is_refused_with_one_line_naming_the_live_holder(tmp_path):
    holder = start_holder(tmp_path)
    try:
        with pytest.raises(RunFolderBusyError) as error:
            RunFolderLock(tmp_path).acquire()
        message = str(error.value)
        assert "\n" not in message and f"pid {holder.pid}" in message and str(tmp_path) in message
        assert error.value.parameter == "train.run_dir"
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_job_is_stale_and_taken_over(tmp_path, caplog):
    holder = start_holder(tmp_path)
    holder.kill()  # kill -9: no clean-up ran, the holder record is still in the file
    holder.wait()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid
    caplog.set_level(logging.INFO)
    with RunFolderLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert any("from a job that is gone" in r.getMessage() for r in caplog.records)
    assert (tmp_path / LOCK_NAME).read_text() == ""  # released: nobody holds it


def test_a_requeued_job_in_the_same_slurm_job_reacquires_after_its_predecessor_exits(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    first = RunFolderLock(tmp_path)
    first.acquire()
    first.release()  # the pre-empted job exits after its checkpoint
    with RunFolderLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["slurm_job_id"] == "4242"


@pytest.mark.slow
def test_training_refuses_a_run_folder_another_job_holds_before_touching_it(tmp_path):
    latents = build_latents(tmp_path / "data")
    run_dir = tmp_path / "run"
    config = load_config(REPO_ROOT / "configs/demo/tiny_cpu.yaml", training_overrides(latents, run_dir))
    holder = start_holder(run_dir)
    try:
        started = time.monotonic()
        with pytest.raises(RunFolderBusyError, match=f"pid {holder.pid}"):
            train(config, DistributedEnv())
        assert time.monotonic() - started < 60
    finally:
        holder.kill()
        holder.wait()
    assert sorted(path.name for path in run_dir.iterdir()) == [LOCK_NAME]
