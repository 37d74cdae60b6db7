"""One job per run folder: an exclusive lock held for the life of the training job.

Two jobs in one ``train.run_dir`` would resume each other's checkpoints, write into the same step
folders and MLflow run and duplicate every metric line. The main rank takes an advisory ``flock`` on
``RUN/run.lock`` and writes who holds it (host, pid, Slurm job, start time) into the file. The kernel
drops the lock when its process dies, so the lock of a killed job is stale by construction: the next
job (a requeued Slurm job included) takes it over and says so. A second live job is refused with one
line naming the holder.
"""

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import IO

from fmboost.errors import FMBoostError

logger = logging.getLogger(__name__)

LOCK_NAME = "run.lock"


class RunFolderBusyError(FMBoostError):
    """Another live job holds the run folder."""


def describe_holder(record: dict) -> str:
    job = f", Slurm job {record['slurm_job_id']}" if record.get("slurm_job_id") else ""
    return (
        f"pid {record.get('pid', '?')} on {record.get('host', '?')}{job}, since {record.get('started', '?')}"
    )


class RunFolderLock:
    """``acquire`` on entry, ``release`` on exit (also usable as a context manager)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.handle: IO[str] | None = None

    def read_holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            return {}

    def busy_error(self) -> "RunFolderBusyError":
        holder = describe_holder(self.read_holder())
        return RunFolderBusyError(
            f"{self.path.parent} is in use by another training job ({holder}); "
            "wait for it, stop it, or choose another train.run_dir",
            "train.run_dir",
        )

    def check_free(self) -> None:
        """Raise :class:`RunFolderBusyError` if a live job holds the folder; creates and changes nothing,
        so a launcher can refuse a second job before submitting it."""
        try:
            with open(self.path) as handle:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released when the file closes
        except FileNotFoundError:
            return
        except BlockingIOError:
            raise self.busy_error() from None

    def acquire(self) -> None:
        """Take the lock or raise :class:`RunFolderBusyError` naming the job that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 -- held open for the job's life: the lock lives on it
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise self.busy_error() from None
        previous = self.read_holder()
        if previous:
            logger.info(
                "taking over %s from a job that is gone (%s)", self.path.parent, describe_holder(previous)
            )
        handle.seek(0)
        handle.truncate()
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        handle.write(json.dumps(record))
        handle.flush()
        self.handle = handle

    def release(self) -> None:
        """Empty the holder record and drop the lock (the file stays: removing it would race a waiter)."""
        if self.handle is None:
            return
        self.handle.seek(0)
        self.handle.truncate()
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()
        self.handle = None

    def __enter__(self) -> "RunFolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
