"""A non-finite loss is re-run once from the same state, to tell a data fault from a transient one.

The loop reads the loss only at its sync points, so it learns that the loss became NaN somewhere in a
window of steps (``first`` to ``last``), after the optimizer has already taken those steps. The state
before them is the last checkpoint this job loaded or wrote (or the run's start, which a seed
reproduces): resuming from it at the same number of ranks replays the same batches with the same
noise, bit for bit. So the job resumes from there with a check after every micro-step up to ``last``
(as Megatron-LM's rerun state machine re-runs a step whose loss was not finite):

- the loss is non-finite again: the data explains it. Every rank stops with one line naming the step
  and the keys of the batches whose loss was not finite, and how to skip them (``train.skip_steps``);
  a user error, never requeued;
- the loss stays finite: a transient fault (a bit flip, a GPU error). Training goes on from there,
  at most :data:`TRANSIENT_RERUNS` times per job; one more stops the job.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from fmboost.errors import FMBoostError

TRANSIENT_RERUNS = 3


class NonFiniteLossError(FMBoostError):
    """The loss became NaN or infinite; training stopped without saving. ``window`` is (first step, last
    step, the sum read) when it was read at a sync point, ``None`` when a re-run explained it."""

    window: tuple[int, int, float] | None = None


def non_finite_text(value: float, first: int, last: int) -> str:
    where = f"at step {first}" if first == last else f"between steps {first} and {last}"
    return f"the loss became {value} {where}"


@dataclass(frozen=True)
class Rerun:
    """Where a re-run starts (``None``: the run's start) and the window of steps it checks."""

    checkpoint: Path | None
    first: int
    last: int
    value: float  # the non-finite sum that was read
    number: int  # the re-runs of this job so far, this one included

    def describe(self) -> str:
        where = (
            f"at step {self.first}"
            if self.first == self.last
            else f"between steps {self.first} and {self.last}"
        )
        return f"the loss became {self.value} {where}"

    def source(self) -> str:
        return str(self.checkpoint) if self.checkpoint is not None else "the run's start"


def batches_at_fault(finite: bool, keys: list[str], rank: int) -> list[tuple[int, list[str]]]:
    """Every rank's keys whose loss was not finite, as (rank, keys), gathered on every rank."""
    gathered: list[tuple[int, list[str]] | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, None if finite else (rank, keys))
    return [entry for entry in gathered if entry is not None]


def data_fault(
    rerun: Rerun, step: int, value: float, batches: list[tuple[int, list[str]]], skipped_before: list[int]
) -> NonFiniteLossError:
    """The error that names the batches which make the loss non-finite every time they are trained on."""
    named = "; ".join(f"rank {rank}: {', '.join(keys)}" for rank, keys in batches)
    skip = ", ".join(str(s) for s in sorted({*skipped_before, step}))
    return NonFiniteLossError(
        f"the loss became {value} at step {step} again when the job re-ran from {rerun.source()} with a "
        f"check after every step: the data explains it. The samples of that step's batches ({named}); skip "
        f"them by resuming with train.skip_steps=[{skip}], or take them out of the data",
        "train.skip_steps",
    )
