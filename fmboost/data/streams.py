"""Training and validation streams over latent shards.

**Training** (:class:`TrainStream`): infinite and resampled, so every rank sees the same number of
batches. Each (rank, worker) stream is a sequence of *segments*; segment ``s`` is one shard drawn
with replacement by a hash of (seed, rank, stream, s), shuffled through a buffer that is flushed at
the segment's end. Segments are independent and their lengths are known from the shard stats, so
:attr:`TrainStream.start_batch` resumes at an exact position: whole segments are skipped without
being read, and at most one shard is replayed. A job on another number of ranks starts a new stream
at its first step (``origin``): its segments are keyed by that step as well, so it draws fresh segments
instead of replaying the start of the run.

**Unusable samples** (latents with NaN or infinite values) are skipped where they are read: the batch
is filled with the next samples, so nothing else is lost, and the batch names what it skipped
(``batch["skipped"]``: shard, key, why) for the trainer to warn, count and record. Positions count usable
samples only; a resumed stream is told the unusable samples found so far (``unusable``, by shard), which
is every one in the part of the stream it skips, so the resume stays exact.

**Validation** (:class:`ValidationStream`): finite and deterministic; shards are split over ranks,
then over workers, and read in order.
"""

import logging
import random
import tarfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from fmboost.data.dataset import LatentDataset, SampleTransform, collate, decode_sample, unusable_reason
from fmboost.errors import FMBoostError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnusableSample:
    """A sample that was read and skipped: its shard (file name), key and why."""

    shard: str
    key: str
    reason: str


def worker_identity() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)


def raw_samples(url: str) -> Iterator[dict[str, Any]]:
    """Undecoded members of one shard, grouped by key (webdataset's tar reader); a truncated or corrupt
    tar is an error naming the shard and the last sample read whole."""
    last_key = None
    try:
        for sample in wds.tarfile_samples([{"url": url}]):
            last_key = sample["__key__"]
            yield sample
    except (tarfile.TarError, OSError, EOFError) as error:
        after = f"after sample {last_key}" if last_key is not None else "before its first sample"
        raise FMBoostError(f"{url}: truncated or corrupt shard, {after} ({error}); re-encode it") from None


def counted(samples: Iterator[dict[str, Any]], url: str, expected: int) -> Iterator[dict[str, Any]]:
    """The samples of one shard, checked against the count its ``.stats.json`` records (a shard that
    holds fewer would otherwise make an infinite stream spin without yielding)."""
    found = 0
    for sample in samples:
        found += 1
        yield sample
    if found != expected:
        raise FMBoostError(f"{url} holds {found} samples but its .stats.json says {expected}; re-encode it")


def unwrap_worker_errors(loader: DataLoader) -> Iterator[Any]:
    """Iterate ``loader``; an :class:`FMBoostError` raised in a worker process comes out as its own
    one-line message instead of the DataLoader's copy of the worker's traceback.

    The loader's workers are shut down before the error leaves (as Lightning does at teardown, through
    the iterator's ``_shutdown_workers``): the error's traceback keeps the iterator alive, and torch's
    shutdown from the garbage collection that finally frees it waits 5 s for each worker.
    """
    batches = iter(loader)
    try:
        yield from batches
    except FMBoostError as error:
        if hasattr(batches, "_shutdown_workers"):
            batches._shutdown_workers()
        lines = str(error).strip().splitlines()
        if len(lines) > 1 and lines[0].startswith("Caught FMBoostError"):
            raise FMBoostError(lines[-1].split("FMBoostError: ", 1)[-1]) from None
        raise


def shuffled(samples: Iterator[dict], buffer_size: int, rng: random.Random) -> Iterator[dict]:
    """Reservoir-style shuffle with a bounded buffer, fully flushed at the end."""
    buffer: list[dict] = []
    for sample in samples:
        buffer.append(sample)
        if len(buffer) >= buffer_size:
            index = rng.randrange(len(buffer))
            buffer[index], buffer[-1] = buffer[-1], buffer[index]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


def batches_served(start_batch: int, worker: int, workers: int) -> int:
    """Batches a worker had produced when the DataLoader had returned ``start_batch`` in round-robin order."""
    return max(0, (start_batch - worker + workers - 1) // workers)


class TrainStream(IterableDataset):
    """Infinite resampled batches (dicts of ``x1``, ``z_up``, ``z_low``, ``keys``, ``captions``) for one rank.

    Args:
        start_batch: batches this rank's DataLoader already returned since ``origin`` (for exact
            resume; the number of ranks and DataLoader workers must be the same as before).
        origin: the step this stream started at (0: the run's start).
        unusable: keys of the unusable samples found so far, by shard file name.
    """

    def __init__(
        self,
        dataset: LatentDataset,
        transform: SampleTransform,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        start_batch: int = 0,
        origin: int = 0,
        unusable: dict[str, list[str]] | None = None,
    ) -> None:
        super().__init__()
        self.dataset, self.transform, self.batch_size = dataset, transform, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.shuffle_buffer, self.start_batch = shuffle_buffer, start_batch
        self.key = str(seed) if origin == 0 else f"{seed}@{origin}"
        self.unusable = {shard: set(keys) for shard, keys in (unusable or {}).items()}
        self.usable = [
            count - len(self.unusable.get(path.name, ()))
            for path, count in zip(dataset.shards, dataset.counts, strict=True)
        ]
        if sum(self.usable) == 0:
            raise self.nothing_usable()

    def nothing_usable(self) -> FMBoostError:
        return FMBoostError(f"no sample of {self.dataset.root} is usable: all have non-finite latents")

    def segment_shard(self, stream: int, segment: int) -> int:
        return random.Random(f"{self.key}:shard:{self.rank}:{stream}:{segment}").randrange(
            len(self.dataset.shards)
        )

    def segment_samples(
        self, stream: int, segment: int, skip: int
    ) -> Iterator[dict[str, Any] | UnusableSample]:
        """The segment's samples after the first ``skip`` usable ones, and the unusable ones as such."""
        shard = self.segment_shard(stream, segment)
        rng = random.Random(f"{self.key}:shuffle:{self.rank}:{stream}:{segment}")
        path = self.dataset.shards[shard]
        known_unusable = self.unusable.get(path.name, set())
        samples = counted(raw_samples(str(path)), str(path), self.dataset.counts[shard])
        for index, raw in enumerate(shuffled(samples, self.shuffle_buffer, rng)):
            if skip > 0:
                skip -= raw["__key__"] not in known_unusable
                continue
            sample = decode_sample(raw, images=False)
            if (reason := unusable_reason(sample)) is not None:
                yield UnusableSample(path.name, raw["__key__"], reason)
                continue
            crop_rng = random.Random(f"{self.key}:crop:{self.rank}:{stream}:{segment}:{index}")
            yield self.transform(sample, crop_rng)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, workers = worker_identity()
        # After a resume the DataLoader starts its round robin at worker 0; rotate so that each worker
        # continues the stream that would have served the next batch.
        stream = (worker + self.start_batch) % workers
        skip = batches_served(self.start_batch, stream, workers) * self.batch_size
        segment = 0
        while skip >= (length := self.usable[self.segment_shard(stream, segment)]):
            skip -= length
            segment += 1
        pending: list[dict[str, Any]] = []
        skipped: list[UnusableSample] = []
        while True:
            for item in self.segment_samples(stream, segment, skip):
                if isinstance(item, UnusableSample):
                    skipped.append(item)
                    if len(skipped) > sum(self.dataset.counts):  # a whole dataset's worth in a row
                        raise self.nothing_usable()
                    continue
                pending.append(item)
                if len(pending) == self.batch_size:
                    yield collate(pending) | {"skipped": [asdict(unusable) for unusable in skipped]}
                    pending, skipped = [], []
            segment, skip = segment + 1, 0


class ValidationStream(IterableDataset):
    """This rank's shards (``shards[rank::world]``) split over workers in order; last batch may be short."""

    def __init__(
        self,
        dataset: LatentDataset,
        transform: SampleTransform,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        self.dataset, self.transform, self.batch_size = dataset, transform, batch_size
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, workers = worker_identity()
        mine = self.dataset.shards[self.rank :: self.world_size][worker::workers]
        pending: list[dict[str, Any]] = []
        for shard in mine:
            for raw in raw_samples(str(shard)):
                sample = decode_sample(raw)
                if (reason := unusable_reason(sample)) is not None:
                    logger.warning("validation skips sample %s of %s: %s", raw["__key__"], shard, reason)
                    continue
                pending.append(self.transform(sample, random.Random(raw["__key__"])))
                if len(pending) == self.batch_size:
                    yield collate(pending)
                    pending = []
        if pending:
            yield collate(pending)


def make_loader(
    stream: IterableDataset, num_workers: int, pin_memory: bool = False, prefetch_factor: int = 2
) -> DataLoader:
    """A DataLoader over a stream that batches by itself (page-locked and prefetched if asked)."""
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=False,
        pin_memory=pin_memory,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
    )
