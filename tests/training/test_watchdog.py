"""The stall decision, on hand-made timelines (the SIGSTOP tests run it on real ranks)."""

from fmboost.training.watchdog import Allowances, StallDetector

ALLOWANCES = Allowances(step=10, validation=100, checkpoint=50)


def record(step: int, count: int, beat: int, phase: str = "step") -> dict:
    return {"step": step, "phase": phase, "count": count, "beat": beat}


def detector_after(timeline: list[tuple[float, int, dict]]) -> StallDetector:
    detector = StallDetector(2, ALLOWANCES, now=0.0)
    for now, rank, seen in timeline:
        detector.observe(rank, seen, now)
        detector.store_answered = now
    return detector


def test_a_rank_whose_heartbeat_stopped_is_named_once_no_rank_made_progress_for_the_allowance():
    # rank 1 is last seen at t=2 (step 4); rank 0 keeps beating but cannot progress after t=3
    timeline = [
        (1, 0, record(3, 3, 1)),
        (1, 1, record(3, 3, 1)),
        (2, 1, record(4, 4, 2)),
        (3, 0, record(4, 4, 2)),
    ]
    timeline += [(now, 0, record(4, 4, beat)) for beat, now in enumerate(range(4, 15), start=3)]
    detector = detector_after(timeline)
    assert detector.stalled(12.9) is None, "3 + 10 s: still within the allowance"
    report = detector.stalled(14)
    assert (report.rank, report.step, report.phase, report.quiet_seconds) == (1, 4, "step", 11)
    assert report.reason == "its heartbeat stopped too"
    assert report.describe() == (
        "rank 1 stalled at step 4 (step): no rank made progress for 11 s, 10 s allowed "
        "(its heartbeat stopped too)"
    )


def test_when_every_heartbeat_goes_on_the_rank_that_went_quiet_first_is_named():
    timeline = [(1, 0, record(5, 9, 1)), (1, 1, record(5, 8, 1)), (2, 0, record(6, 10, 2))]
    timeline += [(now, rank, record(6 - rank, 10 - 2 * rank, now)) for now in range(3, 14) for rank in (0, 1)]
    report = detector_after(timeline).stalled(13)
    assert (report.rank, report.step, report.reason) == (1, 5, "it went quiet first")


def test_a_rank_in_a_validation_gives_the_job_the_validation_allowance():
    timeline = [(1, 0, record(5, 9, 1, "validation")), (1, 1, record(5, 9, 1))]
    phases = {0: "validation", 1: "step"}
    timeline += [(now, rank, record(5, 9, now, phases[rank])) for now in range(2, 91) for rank in (0, 1)]
    detector = detector_after(timeline)
    assert detector.stalled(90) is None, "89 s of a validation is within its 100 s"
    assert detector.stalled(102).quiet_seconds == 101


def test_a_rank_frozen_in_a_checkpoint_gets_the_step_allowance_not_the_checkpoints():
    timeline = [(1, rank, record(10, 20, 1, "checkpoint")) for rank in (0, 1)]
    timeline += [(now, 0, record(10, 20, now, "checkpoint")) for now in range(2, 13)]
    detector = detector_after(timeline)
    assert detector.stalled(10.5) is None
    report = detector.stalled(12)
    assert (report.rank, report.phase, report.allowance, report.reason) == (
        1,
        "checkpoint",
        10,
        "its heartbeat stopped too",
    )


def test_a_store_that_stops_answering_names_rank_zero_which_hosts_it():
    detector = detector_after([(1, 0, record(2, 2, 1)), (1, 1, record(2, 2, 1))])
    report = detector.stalled(12)
    assert (report.rank, report.reason) == (0, "the rendezvous store it hosts stopped answering")


def test_setup_and_checkpoints_have_their_own_allowances():
    assert ALLOWANCES.of("checkpoint") == 50 and ALLOWANCES.of("setup") == ALLOWANCES.longest == 100


def test_a_rank_that_finished_is_never_named_while_another_uploads_past_the_allowance():
    # rank 1 finished at t=2 and stopped beating; rank 0 makes no progress while it uploads (t=2..40)
    detector = detector_after(
        [
            (1, 0, record(9, 9, 1)),
            (1, 1, record(9, 9, 1)),
            (2, 1, record(10, 10, 2, phase="finished")),
            *[(now, 0, record(10, 10, beat, phase="finished")) for beat, now in enumerate(range(3, 41), 2)],
        ]
    )
    assert detector.stalled(40) is None, "a finished run is never taken for a stalled one"
    still_working = detector_after([(1, 0, record(9, 9, 1)), (2, 1, record(10, 10, 2, phase="finished"))])
    report = still_working.stalled(40)
    assert report is not None and report.rank == 0, "a rank that has not finished is still watched"
