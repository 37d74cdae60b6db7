"""One verdict for the whole job, whichever rank found a fault, and the requeuer's word to the others,
through a real rendezvous store (a TCPStore on this machine; the faults themselves: test_crash,
test_stall and test_slurm)."""

from datetime import timedelta

import torch

from fmboost.distributed import DistributedEnv
from fmboost.training.faults import FaultMonitor, Verdict, link_verdict
from fmboost.training.peer_links import LinkEnd, Peer
from fmboost.training.watchdog import Allowances, Progress, store_client
from tests.conftest import free_port


def monitors(ranks: int) -> tuple[list[FaultMonitor], list[list[Verdict]], object]:
    """A monitor per rank on one real store (its host kept alive by the caller), each recording what it
    acts on instead of ending the process."""
    port = free_port()
    host = torch.distributed.TCPStore(
        "127.0.0.1", port, is_master=True, timeout=timedelta(seconds=10), wait_for_workers=False
    )
    acted: list[list[Verdict]] = [[] for _ in range(ranks)]
    found = []
    for rank in range(ranks):
        env = DistributedEnv(rank=rank, world_size=ranks, master_port=port)
        monitor = FaultMonitor(env, Allowances(3, 9, 9), Progress(), lambda v, m, r=rank: acted[r].append(v))
        monitor.store = store_client("127.0.0.1", port, 5.0)
        found.append(monitor)
    return found, acted, host


def test_ranks_that_find_different_faults_all_act_on_the_one_claimed_first():
    (zero, one, two), acted, _store = monitors(3)
    first = Verdict("stall", 2, 7, "rank 2 stalled at step 7 (step): ...")
    zero.found(first)
    one.found(Verdict("stall", 0, 7, "rank 0 stalled at step 7 (step): ..."))  # seen otherwise, later
    assert two.verdict_in_store(), "the watchdog's beat reads the verdict another rank claimed"
    assert acted == [[first], [first], [first]]
    assert first.requeuer == 0, "the lowest rank other than the one at fault requeues"
    zero.found(Verdict("crash", 1, 8, "a second fault"))
    assert acted[0] == [first], "a verdict is acted on once"


def test_the_requeuers_outcome_reaches_the_other_ranks_before_they_exit():
    (zero, one), _acted, _store = monitors(2)
    assert one.await_outcome(0.5) is None, "no word yet: waits its bound"
    zero.publish_outcome("requeued to resume from step_00000010")
    assert one.await_outcome(5) == "requeued to resume from step_00000010"


def test_what_the_end_of_a_link_says_of_the_rank_behind_it():
    peer = Peer(1, "n2", 4711)
    assert link_verdict(LinkEnd(peer, {"goodbye": "finished"}, ""), 9) is None
    killed = link_verdict(LinkEnd(peer, None, ""), 9)
    assert (killed.kind, killed.rank) == ("crash", 1)
    assert killed.text.startswith("rank 1 (pid 4711 on n2) died at step 9: it ended without a word")
    crashed = link_verdict(LinkEnd(peer, None, "Fatal Python error: Aborted\n\nThread ..."), 9)
    assert crashed.text.endswith("died at step 9: it crashed (Aborted)")
    failed = link_verdict(LinkEnd(peer, {"goodbye": "error", "error": "RuntimeError: CUDA error"}, ""), 9)
    assert (failed.kind, failed.text) == (
        "crash",
        "rank 1 (pid 4711 on n2) failed at step 9: RuntimeError: CUDA error",
    )
    mistake = {"goodbye": "error", "error": "data.train: a shard is damaged", "user_error": True}
    error = link_verdict(LinkEnd(peer, mistake, ""), 9)
    assert (error.kind, error.text) == (
        "error",
        "rank 1 (pid 4711 on n2) stopped at step 9: data.train: a shard is damaged",
    )
