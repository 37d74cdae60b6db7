"""What a job does when one of its ranks stalls or dies: one verdict for the whole job, acted on once.

Two detectors feed it on every rank of a multi-rank job: the stall watchdog (:mod:`.watchdog`: no rank
made progress for an allowance) and the peer links (:mod:`.peer_links`: a rank's process ended, or said
it stopped with an error). Whichever finds a fault first claims its verdict in the job's rendezvous store
with a compare-and-set, so every rank acts on the same verdict, and one of them requeues: a rank that
cannot reach the store (its host, rank 0, is the fault) concludes the same by itself. Rank 0 also sends
its verdicts down the links, so the other ranks learn of a death at once.

On each rank the verdict is acted on once, in the detector's thread: ``on_fault(verdict, monitor)`` logs
one line and ends the process (``os._exit``: the main thread may wait in a collective that never
returns). The monitor tells the handler which rank requeues (the lowest rank other than the one at
fault) and carries the outcome of the requeue to the others, who wait for it before they exit.

The main thread reports its own end: :meth:`FaultMonitor.finished` once the run's work is done (the
watchdog then never names this rank, and no later fault requeues a finished run), and
:meth:`FaultMonitor.ending` when it raises. A rank whose collective failed because a peer died learns it
from the verdict, which arrives within :data:`VERDICT_GRACE_SECONDS`, and is not taken for the culprit.
"""

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import timedelta

from fmboost.distributed import DistributedEnv
from fmboost.errors import FMBoostError
from fmboost.training.peer_links import CONNECT_SECONDS, LinkEnd, PeerLinks, wait_for_peers
from fmboost.training.watchdog import Allowances, Progress, StallReport, Watchdog, store_client

logger = logging.getLogger(__name__)

VERDICT_KEY = "fmboost/fault/verdict"
OUTCOME_KEY = "fmboost/fault/outcome"
VERDICT_GRACE_SECONDS = 5.0
KILLED = (
    "it ended without a word: killed by a signal no process can catch (SIGKILL: the out-of-memory killer, "
    "kill -9), or its node went down"
)


@dataclass(frozen=True)
class Verdict:
    """What went wrong, in one line: ``kind`` is ``stall`` or ``crash`` (worth a requeue) or ``error`` (a
    user error on one rank: never requeued)."""

    kind: str
    rank: int
    step: int
    text: str

    @property
    def requeuer(self) -> int:
        """The rank that requeues: the lowest one other than the rank at fault."""
        return 1 if self.rank == 0 else 0

    @classmethod
    def from_stall(cls, report: StallReport) -> "Verdict":
        return cls("stall", report.rank, report.step, report.describe())


def link_verdict(end: LinkEnd, step: int) -> Verdict | None:
    """What the end of a rank's link means (``None``: it finished and said so)."""
    peer, goodbye = end.peer, end.goodbye or {}
    who = f"rank {peer.rank} (pid {peer.pid} on {peer.node})" if peer.pid else f"rank {peer.rank}"
    if goodbye.get("goodbye") == "finished":
        return None
    if goodbye.get("user_error"):
        return Verdict("error", peer.rank, step, f"{who} stopped at step {step}: {goodbye['error']}")
    if goodbye.get("error"):
        return Verdict("crash", peer.rank, step, f"{who} failed at step {step}: {goodbye['error']}")
    fatal = next((line for line in end.output.splitlines() if line.startswith("Fatal Python error")), None)
    how = f"it crashed ({fatal.removeprefix('Fatal Python error: ')})" if fatal else KILLED
    return Verdict("crash", peer.rank, step, f"{who} died at step {step}: {how}")


class FaultMonitor:
    """One per rank of a multi-rank job: the store client, the watchdog, the peer links, and the verdict."""

    def __init__(
        self,
        env: DistributedEnv,
        allowances: Allowances,
        progress: Progress,
        on_fault: Callable[[Verdict, "FaultMonitor"], None],
    ) -> None:
        self.env, self.allowances, self.progress, self.on_fault = env, allowances, progress, on_fault
        self.verdict: Verdict | None = None
        self.acted = threading.Event()
        self.lock = threading.Lock()
        self.done = False  # this rank finished, or is raising: no later verdict is acted on here
        self.watchdog: Watchdog | None = None
        self.links: PeerLinks | None = None
        self.store = None  # the job's rendezvous store, once started

    def start(self) -> None:
        env = self.env
        self.store = store_client(env.master_addr, env.master_port, max(5.0, self.allowances.step / 2 or 5.0))
        links_store = store_client(env.master_addr, env.master_port, CONNECT_SECONDS)
        self.links = PeerLinks(
            links_store, env.rank, env.world_size, env.master_addr, self.link_ended, self.told
        )
        self.links.start()
        wait_for_peers(self.links)
        if self.allowances.step > 0:
            self.watchdog = Watchdog(
                self.store,
                env.rank,
                env.world_size,
                self.allowances,
                self.progress,
                lambda report: self.found(Verdict.from_stall(report)),
                self.verdict_in_store,
            )
            self.watchdog.start()

    # ------------------------------------------------------------------ the detectors
    def link_ended(self, end: LinkEnd) -> None:
        """A peer's link ended: rank 0 judges its workers; a worker whose link to rank 0 ends names it."""
        verdict = link_verdict(end, self.progress.step)
        if verdict is not None:
            self.found(verdict)

    def told(self, verdict: dict) -> None:
        """Rank 0 sent the job's verdict down the link."""
        self.act(Verdict(**verdict))

    def verdict_in_store(self) -> bool:
        """The watchdog's check at every beat: another rank reached a verdict first."""
        if not self.store.check([VERDICT_KEY]):
            return False
        self.act(Verdict(**json.loads(self.store.get(VERDICT_KEY))))
        return True

    def found(self, verdict: Verdict) -> None:
        """A fault this rank found: claim it as the job's verdict (or take the one claimed first), tell
        the other ranks (rank 0), and act on it."""
        with contextlib.suppress(RuntimeError, OSError):  # no store: its host, rank 0, is the fault
            claimed = self.store.compare_set(VERDICT_KEY, "", json.dumps(asdict(verdict)))
            verdict = Verdict(**json.loads(claimed))
        if self.env.rank == 0 and self.links is not None:
            self.links.send_verdict(asdict(verdict))
        self.act(verdict)

    def act(self, verdict: Verdict) -> None:
        with self.lock:
            if self.acted.is_set() or self.done:
                return
            self.verdict = verdict
            self.acted.set()
        self.on_fault(verdict, self)

    # ------------------------------------------------------------------ for the handler
    def publish_outcome(self, outcome: str) -> None:
        """The requeuer's word to the other ranks: what became of the job."""
        if self.store is not None:
            with contextlib.suppress(
                RuntimeError, OSError
            ):  # gone with rank 0: the others wait out their bound
                self.store.set(OUTCOME_KEY, outcome)

    def await_outcome(self, seconds: float) -> str | None:
        """What the requeuer did, once it says so (``None`` after ``seconds``, or without a store)."""
        deadline = time.monotonic() + seconds
        while self.store is not None and time.monotonic() < deadline:
            try:
                self.store.wait(
                    [OUTCOME_KEY], timedelta(seconds=min(5.0, max(deadline - time.monotonic(), 0.1)))
                )
                return self.store.get(OUTCOME_KEY).decode()
            except (RuntimeError, OSError):
                time.sleep(0.5)
        return None

    # ------------------------------------------------------------------ for the main thread
    def finished(self) -> None:
        """The run's work is done on this rank (its final checkpoint is complete)."""
        with self.lock:
            self.done = True
        if self.watchdog is not None:
            self.watchdog.finish()

    def ending(self, error: BaseException | None) -> bool:
        """The main thread is leaving ``train``; with ``error`` when it raises. Returns whether the error
        comes from a fault another rank had (a verdict arrives within the grace): the verdict's handler
        then ends this process, and the caller should wait for it rather than raise."""
        from_a_peer = error is not None and not isinstance(error, FMBoostError)
        if from_a_peer and self.acted.wait(VERDICT_GRACE_SECONDS) and self.verdict.rank != self.env.rank:
            return True
        with self.lock:
            self.done = True
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.links is not None:
            if error is None:
                self.links.say_goodbye("finished")
            else:
                detail = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
                text = str(error) if isinstance(error, FMBoostError) else f"{type(error).__name__}: {detail}"
                self.links.say_goodbye("error", text, isinstance(error, FMBoostError))
        return False
