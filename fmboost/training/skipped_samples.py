"""The unusable training samples the data stream skipped: named in a warning, counted, and recorded.

The stream (:class:`fmboost.data.TrainStream`) skips a sample whose latents are not finite and names it
in the batch it would have been part of. Here each rank warns once per sample and job, naming the shard
and the key; at the loop's sync points the ranks share the samples none of them had seen before (only
when the all-reduce says there are any), and every rank keeps them, by shard, in the trainer state that
checkpoints save (a resumed stream needs them to find its exact position), while rank 0 appends them to
``RUN/skipped_samples.jsonl`` for the user.
"""

import json
import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

RECORD_FILE = "skipped_samples.jsonl"


class SkippedSamples:
    """This rank's skipped samples since the last sync point, against those the run already knows."""

    def __init__(self, run_dir: Path, rank: int, known: dict[str, list[str]]) -> None:
        self.record, self.rank = Path(run_dir) / RECORD_FILE, rank
        self.known = {(shard, key) for shard, keys in known.items() for key in keys}
        self.new: list[dict[str, str]] = []

    def add(self, skipped: list[dict[str, str]], step: int) -> tuple[int, int]:
        """Take the samples a batch names as skipped; returns (how many, how many new to this job)."""
        new = 0
        for sample in skipped:
            if (sample["shard"], sample["key"]) in self.known:
                continue
            self.known.add((sample["shard"], sample["key"]))
            self.new.append(sample | {"step": step, "rank": self.rank})
            new += 1
            logger.warning(
                "rank %d skipped sample %s of shard %s before step %d: %s; the batch is filled with the next "
                "samples (recorded in %s)",
                self.rank,
                sample["key"],
                sample["shard"],
                step,
                sample["reason"],
                self.record,
            )
        return len(skipped), new

    def share(self, unusable: dict[str, list[str]]) -> None:
        """Every rank's new samples into ``unusable`` (by shard, on every rank) and into the record (rank 0).

        Call on every rank, and only when some rank has new samples (the window's sums say so)."""
        gathered: list[list[dict] | None] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, self.new)
        self.new = []
        found = [sample for samples in gathered for sample in samples or []]
        for sample in found:
            keys = unusable.setdefault(sample["shard"], [])
            if sample["key"] not in keys:
                keys.append(sample["key"])
            self.known.add((sample["shard"], sample["key"]))
        if self.rank == 0:
            try:
                with open(self.record, "a") as handle:
                    handle.writelines(json.dumps(sample, sort_keys=True) + "\n" for sample in found)
            except OSError as error:  # a full disk: the checkpoint keeps them, the warnings named them
                logger.warning("cannot append to %s (%s)", self.record, error)
