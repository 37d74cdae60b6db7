"""A stalled rank ends the job in bounded time instead of holding every GPU until a collective times out.

The training loop marks its progress (:meth:`Progress.mark`: a step, a validation, a checkpoint) in
memory. A thread on every rank publishes that mark with a heartbeat counter to the job's rendezvous
store (a TCPStore client of its own, with a short timeout) and reads every other rank's. The job is
stalled when no rank has made progress for longer than an allowance:

- a rank whose heartbeat stopped (SIGSTOP, a dead node) after the step allowance, whatever phase it was
  in: a slow validation or checkpoint still beats;
- a store that stops answering for as long means its host (rank 0's node) stalled;
- else, after the allowance of the slowest phase any rank is in, the rank that went quiet first (stuck
  in I/O while the others wait for it in a collective).

A rank whose work is done publishes that it finished and is never named: its peers may still be
exporting and uploading. The report goes to ``on_stall`` (:class:`fmboost.training.faults.FaultMonitor`,
which makes one verdict of it for the whole job); a verdict another rank reached first is read from the
store at every beat. A rank that finds its own thread slept past the allowance was stopped itself: the
others have acted on it, so it only exits (``os._exit``: the main thread may be blocked in a collective
that never returns).
"""

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch

logger = logging.getLogger(__name__)

STALL_EXIT_CODE = 75  # EX_TEMPFAIL: the job may succeed if run again (a stall, a dead rank)
KEY_PREFIX = "fmboost/watchdog/"
FINISHED = "finished"


@dataclass(frozen=True)
class Allowances:
    """Seconds without progress each phase may take; setup (loading, compiling) gets the longest."""

    step: float
    validation: float
    checkpoint: float

    def of(self, phase: str) -> float:
        if phase == "step":
            return self.step
        if phase == "validation":
            return self.validation
        if phase == "checkpoint":
            return self.checkpoint
        return self.longest  # setup: loading a checkpoint, compiling

    @property
    def longest(self) -> float:
        return max(self.step, self.validation, self.checkpoint)


class Progress:
    """What the training loop last finished; written by the loop, read by the watchdog thread."""

    def __init__(self) -> None:
        self.step, self.phase, self.count = 0, "setup", 0

    def mark(self, step: int, phase: str = "step") -> None:
        self.step, self.phase, self.count = step, phase, self.count + 1


@dataclass(frozen=True)
class StallReport:
    rank: int  # the rank that stalled
    step: int  # the last step it finished
    phase: str
    quiet_seconds: float  # how long no rank made progress
    allowance: float  # the train.stall_timeout_*seconds it exceeded
    reason: str  # why that rank is named

    def describe(self) -> str:
        return (
            f"rank {self.rank} stalled at step {self.step} ({self.phase}): no rank made progress for "
            f"{self.quiet_seconds:.0f} s, {self.allowance:g} s allowed ({self.reason})"
        )


class StallDetector:
    """Decides, from the records every rank published, whether and where the job stalled."""

    def __init__(self, world_size: int, allowances: Allowances, now: float) -> None:
        self.allowances = allowances
        self.records: dict[int, dict] = {}
        self.last_progress = dict.fromkeys(range(world_size), now)
        self.last_beat = dict.fromkeys(range(world_size), now)
        self.store_answered = now

    def observe(self, rank: int, record: dict, now: float) -> None:
        previous = self.records.get(rank)
        if previous is None or record["count"] != previous["count"]:
            self.last_progress[rank] = now
        if previous is None or record["beat"] != previous["beat"]:
            self.last_beat[rank] = now
        self.records[rank] = record
        if record["phase"] == FINISHED:  # its work is done: it is never named, nor waited for
            self.last_progress.pop(rank, None)
            self.last_beat.pop(rank, None)

    def stalled(self, now: float) -> StallReport | None:
        """The stall, if any. A slow phase keeps its heartbeat, so a rank whose heartbeat stopped (or the
        store's host, when the store stops answering) gets only the step allowance, whatever phase it was
        in; a job whose heartbeats go on gets the allowance of the slowest phase any rank is in."""
        if not self.last_progress:  # every rank finished
            return None
        quiet = now - max(self.last_progress.values())
        step_allowance = self.allowances.step
        if now - self.store_answered > step_allowance:  # then no heartbeat can be seen at all
            return self.report(0, quiet, step_allowance, "the rendezvous store it hosts stopped answering")
        frozen = [rank for rank, beat in self.last_beat.items() if now - beat > step_allowance]
        if frozen and quiet > step_allowance:
            return self.report(frozen[0], quiet, step_allowance, "its heartbeat stopped too")
        phases = {self.records[rank]["phase"] for rank in self.last_progress if rank in self.records}
        allowance = max(self.allowances.of(phase) for phase in phases or {"setup"})
        if quiet <= allowance:
            return None
        return self.report(
            min(self.last_progress, key=self.last_progress.get), quiet, allowance, "it went quiet first"
        )

    def report(self, rank: int, quiet: float, allowance: float, reason: str) -> StallReport:
        record = self.records.get(rank, {"step": 0, "phase": "setup"})
        return StallReport(rank, record["step"], record["phase"], quiet, allowance, reason)


class Watchdog(threading.Thread):
    """Publishes this rank's progress and calls ``on_stall`` when :class:`StallDetector` says the job
    stalled; ``shared_verdict()`` is asked at every beat whether another rank reached a verdict first."""

    def __init__(
        self,
        store,
        rank: int,
        world_size: int,
        allowances: Allowances,
        progress: Progress,
        on_stall: Callable[[StallReport], None],
        shared_verdict: Callable[[], bool] = lambda: False,
    ) -> None:
        super().__init__(name="fmboost-watchdog", daemon=True)
        self.store, self.rank, self.world_size = store, rank, world_size
        self.progress, self.on_stall, self.shared_verdict = progress, on_stall, shared_verdict
        self.interval = min(10.0, allowances.step / 5)
        self.detector = StallDetector(world_size, allowances, time.monotonic())
        self.stopped = threading.Event()
        self.beat = 0

    def run(self) -> None:
        while True:
            asleep = time.monotonic()
            if self.stopped.wait(self.interval):
                return
            slept = time.monotonic() - asleep  # only the wait: a slow store call is not this rank's fault
            if slept > self.detector.allowances.step:  # this rank itself was stopped (SIGSTOP, then SIGCONT)
                exit_after_fault(
                    f"rank {self.rank} was itself stopped for {slept:.0f} s, past the stall allowance; the "
                    "other ranks have ended the job (Slurm resumes a stopped task before it kills it)"
                )
            self.publish(self.progress.phase)
            try:
                keys = [f"{KEY_PREFIX}{rank}" for rank in range(self.world_size)]
                if self.store.check(keys):  # every rank has published once
                    values = self.store.multi_get(keys)
                    now = time.monotonic()
                    for rank, value in enumerate(values):
                        self.detector.observe(rank, json.loads(value), now)
                if self.shared_verdict():
                    return
            except (RuntimeError, OSError, ValueError):  # a store that does not answer in time
                pass
            report = self.detector.stalled(time.monotonic())
            if report is not None and not self.stopped.is_set():
                try:
                    self.on_stall(report)
                except Exception:  # the job must end even if what it does on a stall fails
                    logger.exception("the stall handler failed")
                    exit_after_fault(f"{report.describe()}; ending the job")
                return

    def publish(self, phase: str) -> None:
        """This rank's progress and a heartbeat, in the store (a store that does not answer is noted)."""
        self.beat += 1
        progress = self.progress
        record = {"step": progress.step, "phase": phase, "count": progress.count, "beat": self.beat}
        try:
            self.store.set(f"{KEY_PREFIX}{self.rank}", json.dumps(record))
            self.detector.store_answered = time.monotonic()
        except (RuntimeError, OSError):
            pass

    def finish(self) -> None:
        """This rank's work is done: say so (its heartbeat stops now, and that is no stall) and stop."""
        self.stopped.set()
        self.publish(FINISHED)

    def stop(self) -> None:
        self.stopped.set()


def store_client(master_addr: str, master_port: int, timeout_seconds: float):
    """A client of the job's rendezvous store (torchrun's agent, or rank 0 under ``env://``) whose
    calls give up after ``timeout_seconds`` instead of the process group's much longer timeout."""
    return torch.distributed.TCPStore(
        master_addr,
        master_port,
        is_master=False,
        timeout=timedelta(seconds=timeout_seconds),
        wait_for_workers=False,
    )


def exit_after_fault(message: str, code: int = STALL_EXIT_CODE) -> None:
    """Log ``message`` on this rank, flush every handler, and leave with ``code`` at once (the main
    thread may be blocked in a collective that never returns)."""
    logger.error(message)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
