"""The functions submitit runs on each task: training (checkpointable), encoding and evaluation (arrays).

Each task turns submitit's ``JobEnvironment`` into the standard distributed variables and runs the
same code a user runs by hand (:func:`fmboost.training.trainer.train`,
:func:`data_pipeline.encode_shards.run`, :func:`data_pipeline.teacher_pairs.run`). On the
pre-emption/time-limit signal every training rank saves a checkpoint, then rank 0 hands over to
submitit, which requeues the job; the requeued job resumes from that checkpoint by itself
(``train.resume=auto``). A job in which a rank stalled or died (:mod:`fmboost.training.faults`) requeues
itself the same way, unless it stalled ``max_stall_requeues`` times, or lost a rank
``max_failure_requeues`` times, without writing a new checkpoint in between. A rank's error that the
user must fix is never requeued. ``RUN/requeues.json`` records every requeue.
"""

import functools
import json
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import submitit

from fmboost.atomic_files import write_json_atomically
from fmboost.cli import freeze_heap_for_exit
from fmboost.distributed import DistributedEnv, leave_process_group
from fmboost.errors import FMBoostError
from fmboost.run_folder import latest_checkpoint
from fmboost.training.faults import FaultMonitor, Verdict
from fmboost.training.watchdog import exit_after_fault

REQUEUE_RECORD = "requeues.json"
REQUEUE_SECONDS = 60  # scontrol's own bound; the other ranks wait for its outcome a little longer
WHAT_FAILED = {"stall": "stalled", "crash": "lost a rank"}

logger = logging.getLogger(__name__)
ERROR_SUFFIX = "_fmboost_error.json"


def error_record_path(folder: Path, job_id: str) -> Path:
    """Where a job leaves the one-line error a user can fix, for ``submit.py --wait`` to print."""
    return Path(folder) / f"{job_id}{ERROR_SUFFIX}"


def read_error_record(folder: Path, job_id: str) -> FMBoostError | None:
    path = error_record_path(folder, job_id)
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return FMBoostError(record["message"], record.get("parameter"))


def records_user_errors(call: Callable[..., Any]) -> Callable[..., Any]:
    """Run a job; an :class:`FMBoostError` is written next to submitit's logs and raised again, so the
    scheduler still sees a failed job while the launcher can show the user one line instead of a trace.
    The job's process ends when it returns, so its heap is frozen then (:func:`freeze_heap_for_exit`)."""

    @functools.wraps(call)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except FMBoostError as error:
            job = submitit.JobEnvironment()
            record = {"message": error.message, "parameter": error.parameter}
            write_json_atomically(error_record_path(job.paths.folder, str(job.job_id)), record)
            raise
        finally:
            freeze_heap_for_exit()

    return wrapper


def master_port(job_id: str) -> int:
    """A port derived from the job id, so concurrent jobs on one node do not collide.

    It stays below Linux's ephemeral range (32768 and up), where any outgoing connection may already
    hold it: rank 0 would fail to listen and the other ranks would wait for it forever.
    """
    digits = re.sub(r"\D", "", job_id) or "0"
    return 20000 + int(digits) % 12000


def master_address(hostname: str) -> str:
    """An address for the first node: DNS, else the node's ``NodeAddr`` from Slurm (test clusters)."""
    try:
        return socket.gethostbyname(hostname)
    except OSError:
        pass
    try:
        described = subprocess.run(
            ["scontrol", "show", "node", hostname, "-o"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return hostname
    match = re.search(r"NodeAddr=(\S+)", described)
    return match.group(1) if match else hostname


def distributed_env_from_submitit() -> DistributedEnv:
    job = submitit.JobEnvironment()
    return DistributedEnv(
        rank=job.global_rank,
        world_size=job.num_tasks,
        local_rank=job.local_rank,
        master_addr=master_address(job.hostnames[0]),
        master_port=master_port(str(job.job_id)),
    )


def read_requeues(run_dir: Path) -> dict[str, Any]:
    """``RUN/requeues.json``: the requeues since ``checkpoint`` by kind, and every requeue asked for."""
    try:
        record = json.loads((Path(run_dir) / REQUEUE_RECORD).read_text())
        record["counts"].items()
        return record
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # none yet, or unreadable: afresh
        return {"checkpoint": None, "counts": {}, "history": []}


def requeues_since(run_dir: Path, last_checkpoint: str | None, kind: str) -> int:
    """How often the job requeued itself for ``kind`` (``stall`` or ``crash``) since ``last_checkpoint``
    was written (a new checkpoint starts the count again)."""
    record = read_requeues(run_dir)
    return record["counts"].get(kind, 0) if record["checkpoint"] == last_checkpoint else 0


def record_requeue(run_dir: Path, last_checkpoint: str | None, kind: str, count: int, event: dict) -> None:
    """Count a requeue of ``kind`` (before it is asked for, so that a job killed meanwhile still counts
    it) and add ``event`` to the history."""
    record = read_requeues(run_dir)
    if record["checkpoint"] != last_checkpoint:
        record["checkpoint"], record["counts"] = last_checkpoint, {}
    record["counts"][kind] = count
    record["history"].append({"time": time.time(), **event})
    write_json_atomically(Path(run_dir) / REQUEUE_RECORD, record)


def requeue_after_fault(
    run_dir: Path, env: DistributedEnv, job_id: str, budgets: dict[str, int]
) -> Callable[[Verdict, FaultMonitor], None]:
    """What a Slurm job does when a rank stalls or dies: the lowest rank other than the one at fault
    requeues it (``scontrol requeue``) to resume from its last checkpoint, unless the job failed that way
    ``budgets[kind]`` times without a new checkpoint in between; the other ranks wait for its outcome,
    then every live rank exits with the stall code, each having logged the same line. A user error on
    one rank ends the job without a requeue."""

    def on_fault(verdict: Verdict, monitor: FaultMonitor) -> None:
        message = f"{verdict.text}; ending job {job_id}"
        if verdict.kind == "error":
            exit_after_fault(f"{message}; not requeued: an error to fix, then resubmit", code=2)
        if env.rank != verdict.requeuer:
            outcome = monitor.await_outcome(REQUEUE_SECONDS + 30)
            exit_after_fault(f"{message}; rank {verdict.requeuer}: {outcome or 'no word on the requeue'}")
        outcome = requeue_or_say_why_not(run_dir, job_id, verdict, budgets[verdict.kind])
        monitor.publish_outcome(outcome)
        exit_after_fault(f"{message}; {outcome}")

    return on_fault


def requeue_or_say_why_not(run_dir: Path, job_id: str, verdict: Verdict, budget: int) -> str:
    """Requeue the job within the budget (counted first, confirmed after); returns what happened."""
    try:
        last = latest_checkpoint(run_dir)
    except FMBoostError:
        last = None
    checkpoint = last.name if last else None
    count = requeues_since(run_dir, checkpoint, verdict.kind)
    since = f"since checkpoint {checkpoint}" if last else "before any checkpoint"
    flag = "--max-stall-requeues" if verdict.kind == "stall" else "--max-failure-requeues"
    if count >= budget:
        return (
            f"not requeued: it {WHAT_FAILED[verdict.kind]} {count + 1} times {since} without writing a new "
            f"one ({flag} {budget}). Find the cause, then resubmit to resume"
        )
    event = {"job": job_id, "kind": verdict.kind, "verdict": verdict.text}
    record_requeue(run_dir, checkpoint, verdict.kind, count + 1, event | {"outcome": "asked"})
    try:
        requeued = subprocess.run(
            ["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=REQUEUE_SECONDS
        )
        failure = requeued.stderr.strip() if requeued.returncode != 0 else None
    except (OSError, subprocess.TimeoutExpired) as error:
        failure = str(error)
    if failure is not None:
        record_requeue(run_dir, checkpoint, verdict.kind, count, event | {"outcome": f"failed: {failure}"})
        return f"scontrol requeue failed ({failure}); resubmit to resume"
    record_requeue(run_dir, checkpoint, verdict.kind, count + 1, event | {"outcome": "requeued"})
    return (
        f"requeued to resume from {last or 'the start'} ({verdict.kind} requeue {count + 1} {since}, "
        f"{budget} allowed)"
    )


class TrainingJob(submitit.helpers.Checkpointable):
    """``TrainingJob(config_path, overrides)()`` trains on one task of a (multi-node) job."""

    def __init__(
        self,
        config_path: str,
        overrides: list[str],
        max_stall_requeues: int = 3,
        max_failure_requeues: int = 3,
    ) -> None:
        self.config_path, self.overrides = config_path, list(overrides)
        self.budgets = {"stall": max_stall_requeues, "crash": max_failure_requeues}

    @records_user_errors
    def __call__(self) -> dict[str, Any]:
        from fmboost.config_loading import load_config
        from fmboost.train import configure_logging
        from fmboost.training.trainer import train

        env = distributed_env_from_submitit()
        configure_logging(env)
        stop = threading.Event()
        submitit_handler = signal.getsignal(signal.SIGUSR2)
        signal.signal(signal.SIGUSR2, lambda signum, frame: stop.set())
        config = load_config(self.config_path, self.overrides)
        on_fault = None
        if "SLURM_JOB_ID" in os.environ:
            run_dir = Path(config.train.run_dir).expanduser()
            on_fault = requeue_after_fault(run_dir, env, os.environ["SLURM_JOB_ID"], self.budgets)
        result = train(config, env, stop, on_fault)
        leave_process_group()
        if result.status == "preempted" and env.is_main and callable(submitit_handler):
            logger.info("checkpoint saved; handing over to submitit to requeue the job")
            submitit_handler(signal.SIGUSR2, None)  # calls self.checkpoint(), requeues and exits
        return {
            "status": result.status,
            "step": result.step,
            "images_seen": result.images_seen,
            "run_dir": str(result.run_dir),
            "export_dir": str(result.export_dir) if result.export_dir else None,
            "mlflow_run_id": result.mlflow_run_id,
        }


class EncodeJob:
    """One array task of the encoding job: ``EncodeJob(config_path, overrides)(task_index, num_tasks)``."""

    def __init__(self, config_path: str, overrides: list[str]) -> None:
        self.config_path, self.overrides = config_path, list(overrides)

    @records_user_errors
    def __call__(self, task_index: int, num_tasks: int) -> dict[str, Any]:
        logging.basicConfig(
            level=logging.INFO, format=f"%(asctime)s [task {task_index}] %(levelname)s %(message)s"
        )
        split = [f"task_index={task_index}", f"num_tasks={num_tasks}"]
        return {"task_index": task_index, **self.run_share([*self.overrides, *split])}

    def run_share(self, overrides: list[str]) -> dict[str, Any]:
        from data_pipeline.config import load_encode_config
        from data_pipeline.encode_shards import run

        summary = run(load_encode_config(self.config_path, overrides))
        return {"shards_done": summary.shards_done, "written": summary.written, "rejected": summary.rejected}


class PairsJob(EncodeJob):
    """One array task of the teacher-pair job (:mod:`data_pipeline.teacher_pairs`), split like encoding."""

    def run_share(self, overrides: list[str]) -> dict[str, Any]:
        from data_pipeline.pairs_config import load_pairs_config
        from data_pipeline.teacher_pairs import run

        return run(load_pairs_config(self.config_path, overrides))


class BoostJob(EncodeJob):
    """One array task of folder boosting (:mod:`fmboost.folder_boost`), split like encoding."""

    def run_share(self, overrides: list[str]) -> dict[str, Any]:
        from fmboost.folder_boost import boost_folder, load_boost_config

        return {"totals": boost_folder(load_boost_config(self.config_path, overrides))["totals"]}


class EvaluationJob:
    """One task of a sharded evaluation; the last task to finish merges the parts and reports."""

    def __init__(self, config_path: str | None, overrides: list[str]) -> None:
        self.config_path, self.overrides = config_path, list(overrides)

    @records_user_errors
    def __call__(self, task_index: int, num_tasks: int) -> dict[str, Any]:
        from evaluation.config import load_eval_config
        from evaluation.run_benchmarks import run

        logging.basicConfig(
            level=logging.INFO, format=f"%(asctime)s [task {task_index}] %(levelname)s %(message)s"
        )
        split = [f"task_index={task_index}", f"num_tasks={num_tasks}"]
        result = run(load_eval_config(self.config_path, [*self.overrides, *split]))
        return {
            "task_index": task_index,
            "merged": result is not None,
            "results_dir": str(result["results_dir"]) if result else None,
        }
