"""Against a real local Slurm cluster (2 nodes, accounting): multi-node training, requeue, arrays."""

import json
import signal
import subprocess
import sys
import time

import psutil
import pytest
from mlflow.tracking import MlflowClient

from fmboost.data.shards import Manifest
from fmboost.folder_boost import SUMMARY
from fmboost.training import checkpointing as ckpt
from tests.conftest import REPO_ROOT
from tests.data_pipeline.builders import good_shards
from tests.pipeline.test_folder_boost import boost, outputs, photo_folder
from tests.pipeline.tiny_models import save_tiny_stage
from tests.training.helpers import build_latents, training_overrides

# One worker runs them all, in order, when the suite runs on several (make test): they share the two nodes.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster"), pytest.mark.xdist_group("slurm")]


def submit(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    command = [sys.executable, "cluster/submit.py", "--cluster", "slurm", "--wait", *args]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def test_a_two_node_job_trains_and_writes_a_checkpoint_and_an_mlflow_run(tmp_path):
    latents = build_latents(tmp_path)
    run_dir = tmp_path / "run"
    result = submit(
        "--nodes",
        "2",
        "--gpus-per-node",
        "1",
        "--time",
        "10",
        "configs/demo/tiny_cpu.yaml",
        *training_overrides(latents, run_dir, max_steps=4, checkpoint_every=4, validate_every=4),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "'status': 'finished', 'step': 4" in result.stdout
    latest = ckpt.latest_checkpoint(run_dir)
    assert latest.name == "step_00000004" and (latest / "rng_rank1.safetensors").is_file()
    run = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}").get_run((run_dir / "mlflow_run_id").read_text())
    assert run.info.status == "FINISHED" and "train/loss" in run.data.metrics


def steps_per_second(latents, run_dir) -> float:
    """The training speed of the test's job on this machine: 60 steps in this process, 20-60 timed."""
    from fmboost.config_loading import load_config
    from fmboost.distributed import DistributedEnv
    from fmboost.training.trainer import train
    from tests.conftest import free_port

    overrides = training_overrides(
        latents, run_dir, max_steps=60, log_every=20, checkpoint_every=10_000, validate_every=10_000
    )
    train(load_config("configs/demo/tiny_cpu.yaml", overrides), DistributedEnv(master_port=free_port()))
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    samples_per_s = [entry["train/samples_per_s"] for entry in logged if "train/samples_per_s" in entry]
    return sum(samples_per_s[-2:]) / 2 / 4  # data.batch_size=4 in training_overrides


def test_a_job_past_its_time_limit_is_requeued_and_finishes_from_its_checkpoint(tmp_path):
    latents = build_latents(tmp_path)
    run_dir = tmp_path / "run"
    # Slurm checks time limits every 30 s and signals at the first check less than delay + 30 s before
    # the limit: with a 2-minute limit and a 60 s delay, 30-60 s into the job. About 70 s of work at
    # this machine's speed (a fixed step count took 2.5 minutes on one machine and over 6 on a slower
    # one) keeps the first job from finishing before its signal, with some 15 s to spare. The requeued
    # job usually finishes before its own signal; when it does not, a third one finishes the work.
    max_steps = max(250, round(steps_per_second(latents, tmp_path / "calibration") * 70))
    overrides = training_overrides(
        latents, run_dir, max_steps=max_steps, log_every=100, checkpoint_every=10_000, validate_every=10_000
    )
    result = submit(
        "--nodes",
        "1",
        "--gpus-per-node",
        "1",
        "--time",
        "2",
        "--signal-delay",
        "60",
        "configs/demo/tiny_cpu.yaml",
        *overrides,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"'status': 'finished', 'step': {max_steps}" in result.stdout
    job_id = result.stdout.split("job id: ")[1].split()[0]
    history: list[str] = []
    deadline = time.time() + 60  # accounting lags the job by a few seconds
    while time.time() < deadline and (not history or history[-1] != "COMPLETED"):
        time.sleep(1)
        history = subprocess.run(
            ["sacct", "-j", job_id, "--duplicates", "-X", "-n", "-o", "State"], capture_output=True, text=True
        ).stdout.split()
    assert "REQUEUED" in history and history[-1] == "COMPLETED"
    log = (run_dir / "submitit" / job_id / f"{job_id}_0_log.err").read_text()
    assert "resumed from" in log


def job_task(job_id: str, task: int) -> psutil.Process:
    """The process running ``task`` of Slurm job ``job_id`` on this machine's nodes."""
    for process in psutil.process_iter():
        try:
            environment = process.environ()
            if (
                environment.get("SLURM_JOB_ID") == job_id
                and environment.get("SLURM_PROCID") == str(task)
                and "submitit" in " ".join(process.cmdline())
            ):
                return process
        except psutil.Error:
            continue
    raise LookupError(f"task {task} of job {job_id} is not running here")


def fault_after_the_first_checkpoint(tmp_path, fault: signal.Signals, *settings: str) -> tuple[str, str]:
    """A 2-node training job (40 steps, a checkpoint every 10) whose task 1 gets ``fault`` once the
    checkpoint of step 10 is complete; returns the launcher's output and the job id."""
    latents = build_latents(tmp_path)
    run_dir = tmp_path / "run"
    overrides = training_overrides(
        latents, run_dir, max_steps=40, log_every=10, checkpoint_every=10, validate_every=10_000
    )
    command = [sys.executable, "cluster/submit.py", "--cluster", "slurm", "--wait", "--nodes", "2"]
    command += ["--gpus-per-node", "1", "--time", "10", "configs/demo/tiny_cpu.yaml", *overrides, *settings]
    submitted = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.time() + 300
        while not (run_dir / "checkpoints" / "step_00000010" / "COMPLETE").exists():
            assert time.time() < deadline and submitted.poll() is None, submitted.stdout.read()
            time.sleep(0.1)
        job_id = next((run_dir / "submitit").glob("*/*_submitted.pkl")).parent.name
        job_task(job_id, 1).send_signal(fault)
        output, _ = submitted.communicate(timeout=600)
    finally:
        if submitted.poll() is None:
            submitted.kill()
    assert submitted.returncode == 0, output
    assert "'status': 'finished', 'step': 40" in output
    history = subprocess.run(
        ["sacct", "-j", job_id, "--duplicates", "-X", "-n", "-o", "State"], capture_output=True, text=True
    ).stdout.split()
    assert "REQUEUED" in history, history
    return output, job_id


def test_a_job_with_a_stalled_rank_requeues_itself_and_finishes_from_its_checkpoint(tmp_path):
    # 10 s, not 3: beside the suite's other worker a healthy rank's heartbeat can be seconds late
    stall = ["train.stall_timeout_seconds=10", "train.stall_timeout_checkpoint_seconds=60"]
    _, job_id = fault_after_the_first_checkpoint(tmp_path, signal.SIGSTOP, *stall)
    run_dir = tmp_path / "run"
    log = (run_dir / "submitit" / job_id / f"{job_id}_0_log.err").read_text()
    assert "rank 1 stalled at step" in log and "requeued to resume from" in log and "resumed from" in log
    record = json.loads((run_dir / "requeues.json").read_text())
    assert record["counts"] == {"stall": 1} and record["history"][-1]["outcome"] == "requeued"


def test_a_job_with_a_rank_killed_by_sigkill_requeues_itself_and_finishes_from_its_checkpoint(tmp_path):
    _, job_id = fault_after_the_first_checkpoint(tmp_path, signal.SIGKILL)
    run_dir = tmp_path / "run"
    logs = [(run_dir / "submitit" / job_id / f"{job_id}_{task}_log.err").read_text() for task in (0, 1)]
    died = [line for line in logs[0].splitlines() if "[rank 0] ERROR" in line]
    assert died and "rank 1 (pid " in died[0] and " on n2) died at step " in died[0], logs[0]
    assert "it ended without a word: killed by a signal no process can catch" in died[0]
    assert "requeued to resume from" in died[0] and "crash requeue 1 since checkpoint step_" in died[0]
    assert "Connection closed by peer" not in logs[0], "which rank died, not gloo's error"
    assert "resumed from" in logs[0]
    record = json.loads((run_dir / "requeues.json").read_text())
    assert record["counts"] == {"crash": 1}
    assert [e["outcome"] for e in record["history"]] == ["asked", "requeued"], "counted before it is asked"


def test_an_encode_config_runs_as_an_array_job(tmp_path):
    inputs = good_shards(tmp_path / "images", shards=4, per_shard=3)
    output = tmp_path / "latents"
    result = submit(
        "--array",
        "2",
        "--cpus-per-task",
        "1",
        "configs/encode/sample.yaml",
        f"input={inputs}",
        f"output={output}",
        "high_res=32",
        "low_res=16",
        "num_workers=0",
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    results = [
        json.loads(line.split("result: ")[1].replace("'", '"'))
        for line in result.stdout.splitlines()
        if line.startswith("result: ")
    ]
    assert sorted(r["task_index"] for r in results) == [0, 1] and [r["shards_done"] for r in results] == [
        2,
        2,
    ]
    assert Manifest.load(output).completed_shards == [0, 1, 2, 3]


def test_a_folder_split_over_array_tasks_gives_the_results_of_one_run(tmp_path):
    stage = save_tiny_stage(tmp_path / "stage", latent_channels=3, first_stage={"name": "identity"})
    folder = photo_folder(tmp_path / "in", 5)
    assert boost(stage, folder, tmp_path / "reference") == 0
    out = tmp_path / "boosted"
    overrides = [f"input_dir={folder}", f"output={out}", f"stages=[{stage}]", "device=cpu"]
    result = submit(
        "--array", "2", "--cpus-per-task", "1", "configs/boost/folder.yaml", *overrides, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["tasks_reported"] == [0, 1] and summary["totals"]["boosted"] == 5
    assert outputs(out) == outputs(tmp_path / "reference")
