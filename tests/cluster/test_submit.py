import json
import os
import subprocess
import sys

import pytest

from cluster.jobs import master_address, master_port
from cluster.submit import main
from fmboost.training import checkpointing as ckpt
from tests.conftest import REPO_ROOT
from tests.training.helpers import build_latents, training_overrides


def test_dry_run_validates_and_prints_the_config_and_job_parameters(capsys):
    assert (
        main(
            [
                "--dry-run",
                "--cluster",
                "local",
                "--nodes",
                "8",
                "--time",
                "90",
                "configs/cascade_2k.yaml",
                "train.lr=1e-4",
            ]
        )
        == 0
    )
    output = capsys.readouterr().out
    assert "lr: 0.0001" in output and "crop_size: 128" in output
    assert "'nodes': 8" in output and "'tasks_per_node': 8" in output and "'timeout_min': 90" in output
    assert "requeued at most 100 times" in output  # a long run outlives submitit's default of 3


def test_a_config_typo_is_one_line_before_anything_is_submitted(capsys):
    assert main(["--dry-run", "configs/cfm_1k.yaml", "train.lrr=1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: command line: train.lrr: Key 'lrr' not in 'TrainConfig'. Did you mean: 'lr'?"
    )


def test_help_explains_every_flag():
    result = subprocess.run(
        [sys.executable, "cluster/submit.py", "--help"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    for flag in (
        "--nodes",
        "--gpus-per-node",
        "--partition",
        "--time",
        "--cluster",
        "--dry-run",
        "--array",
        "--wait",
    ):
        assert flag in result.stdout


def test_master_port_is_stable_per_job_and_address_resolution_falls_back(monkeypatch):
    assert master_port("1234") == master_port("1234") != master_port("1235")
    assert all(20000 <= master_port(job) < 32768 for job in ("98765_3", "31078", "59999"))  # not ephemeral
    assert master_address("localhost") == "127.0.0.1"
    monkeypatch.setenv("PATH", "/nonexistent")
    assert master_address("no-such-host.invalid") == "no-such-host.invalid"


@pytest.mark.slow
def test_local_cluster_runs_two_deepspeed_tasks_with_zero_2(tmp_path):
    """(The demo runs the same job with ZeRO-1.)"""
    latents = build_latents(tmp_path)
    run_dir = tmp_path / "run"
    overrides = training_overrides(latents, run_dir, max_steps=4, checkpoint_every=4, validate_every=4)
    overrides.append("deepspeed.zero_optimization.stage=2")
    command = [
        sys.executable,
        "cluster/submit.py",
        "--cluster",
        "local",
        "--nodes",
        "1",
        "--gpus-per-node",
        "2",
        "--wait",
        "configs/demo/tiny_cpu.yaml",
        *overrides,
    ]
    result = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=os.environ
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "'status': 'finished', 'step': 4, 'images_seen': 32" in result.stdout
    latest = ckpt.latest_checkpoint(run_dir)
    assert sorted(p.name for p in latest.glob("rng_rank*")) == [
        "rng_rank0.safetensors",
        "rng_rank1.safetensors",
    ]
    assert (latest / "export" / "model.safetensors").is_file()


@pytest.mark.slow
def test_an_evaluation_config_runs_as_local_array_tasks_and_the_last_one_merges(tmp_path):
    from tests.pipeline.tiny_models import save_tiny_stage

    latents = build_latents(tmp_path)
    stage = save_tiny_stage(
        tmp_path / "model", latent_channels=3, first_stage={"name": "identity", "source": "none"}
    )
    command = [
        sys.executable,
        "cluster/submit.py",
        "--cluster",
        "local",
        "--array",
        "2",
        "--wait",
        "configs/eval/upsampling.yaml",
        f"models=[{stage}]",
        f"data={latents}/shards/{{000003..000004}}.tar",
        "require_feature_metrics=false",
        "metrics=[psnr,ssim]",
        "num_images=16",
        "batch_size=4",
        "nfe=[2]",
        f"results_dir={tmp_path}/results",
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("'merged': True") == 1
    rows = json.loads((tmp_path / "results" / "results.json").read_text())["results"]
    assert {(row["model"], row["consistency"]) for row in rows} == {
        (model, consistency)
        for model in ("bicubic", "context", "latent_bilinear", "first_stage_ceiling", "model")
        for consistency in ("none", "projection")
    }
    assert all(row["images"] == 16 for row in rows)


def test_a_missing_training_dataset_is_one_line_before_anything_is_submitted(tmp_path, capsys):
    missing = tmp_path / "no-such-dataset"
    arguments = ["--cluster", "local", "configs/demo/tiny_cpu.yaml", f"data.train={missing}"]
    assert main([*arguments, f"train.run_dir={tmp_path / 'run'}"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        f"error: data.train: {missing} does not exist "
        "(give a latent dataset directory or a brace pattern of its shards)"
    )
    assert not (tmp_path / "run").exists()  # no job folder: nothing was submitted


def test_a_second_job_on_a_busy_run_folder_is_one_line_before_anything_is_written(tmp_path, capsys):
    from fmboost.training.run_lock import RunFolderLock

    latents = build_latents(tmp_path)
    run_dir = tmp_path / "run"
    arguments = [
        "--cluster",
        "local",
        "--wait",
        "configs/demo/tiny_cpu.yaml",
        *training_overrides(latents, run_dir),
    ]
    capsys.readouterr()  # the dataset's encoding progress
    with RunFolderLock(run_dir):  # the first job, still running
        assert main(arguments) == 2
        assert [path.name for path in run_dir.iterdir()] == ["run.lock"]  # no submitit folder, no logs
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"error: train.run_dir: {run_dir} is in use")
    assert f"pid {os.getpid()}" in error


@pytest.mark.slow
def test_an_error_inside_a_job_comes_out_of_wait_as_its_one_line(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    arguments = ["--cluster", "local", "--array", "1", "--wait", "configs/eval/upsampling.yaml"]
    assert main([*arguments, f"models=[{missing}]", f"results_dir={tmp_path / 'results'}"]) == 2
    error = capsys.readouterr().err
    assert error == f"error: {missing} does not exist\n"  # raised in the job, not by the launcher
    assert list((tmp_path / "results" / "submitit").glob("*/*_fmboost_error.json"))


FAILED_JOB = """
import sys
from pathlib import Path

from cluster.jobs import requeue_after_fault
from fmboost.distributed import DistributedEnv
from fmboost.training.faults import FaultMonitor, Verdict
from fmboost.training.watchdog import Allowances, Progress, StallReport

kind = sys.argv[2]
on_fault = requeue_after_fault(Path(sys.argv[1]), DistributedEnv(rank=0, world_size=2), "12345", {kind: 2})
monitor = FaultMonitor(DistributedEnv(rank=0, world_size=2), Allowances(3, 9, 9), Progress(), on_fault)
if kind == "stall":
    verdict = Verdict.from_stall(StallReport(1, 7, "step", 4.0, 3.0, "its heartbeat stopped too"))
elif kind == "crash":
    verdict = Verdict("crash", 1, 7, "rank 1 (pid 99 on n2) died at step 7: it ended without a word")
else:
    verdict = Verdict("error", 1, 7, "rank 1 (pid 99 on n2) stopped at step 7: data.train: a damaged shard")
on_fault(verdict, monitor)
"""


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        (
            "error",
            "rank 1 (pid 99 on n2) stopped at step 7: data.train: a damaged shard; ending job 12345; not "
            "requeued: an error to fix, then resubmit",
        ),
        (
            "stall",
            "rank 1 stalled at step 7 (step): no rank made progress for 4 s, 3 s allowed (its heartbeat "
            "stopped too); ending job 12345; not requeued: it stalled 3 times before any checkpoint "
            "without writing a new one (--max-stall-requeues 2)",
        ),
        (
            "crash",
            "rank 1 (pid 99 on n2) died at step 7: it ended without a word; ending job 12345; not "
            "requeued: it lost a rank 3 times before any checkpoint without writing a new one "
            "(--max-failure-requeues 2)",
        ),
    ],
)
def test_a_job_that_keeps_failing_or_failed_by_a_user_error_is_not_requeued_and_says_so(tmp_path, kind, said):
    from cluster.jobs import record_requeue
    from fmboost.training.watchdog import STALL_EXIT_CODE

    record_requeue(tmp_path, None, kind, 2, {"kind": kind})  # two requeues already, no checkpoint since
    failed = subprocess.run(
        [sys.executable, "-c", FAILED_JOB, str(tmp_path), kind], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert failed.returncode == (2 if kind == "error" else STALL_EXIT_CODE), failed.stderr
    assert said in failed.stderr


def test_a_new_checkpoint_starts_the_requeue_counts_again(tmp_path):
    from cluster.jobs import REQUEUE_RECORD, record_requeue, requeues_since

    assert requeues_since(tmp_path, "step_00000010", "stall") == 0
    record_requeue(tmp_path, "step_00000010", "stall", 2, {"kind": "stall"})
    record_requeue(tmp_path, "step_00000010", "crash", 1, {"kind": "crash"})
    assert requeues_since(tmp_path, "step_00000010", "stall") == 2
    assert requeues_since(tmp_path, "step_00000010", "crash") == 1
    assert requeues_since(tmp_path, "step_00000020", "stall") == 0
    record_requeue(tmp_path, "step_00000020", "crash", 1, {"kind": "crash"})
    assert requeues_since(tmp_path, "step_00000020", "stall") == 0, "the new checkpoint starts afresh"
    assert len(json.loads((tmp_path / REQUEUE_RECORD).read_text())["history"]) == 3, "the history stays"
    (tmp_path / REQUEUE_RECORD).write_text("{not json")
    assert requeues_since(tmp_path, "step_00000020", "crash") == 0, "an unreadable record counts afresh"
