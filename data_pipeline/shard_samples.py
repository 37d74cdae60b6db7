"""The per-shard dataset that DataLoader workers run: read, decode and crop, so the encoder never waits.

Every worker streams the whole tar (cheap) but decodes only the samples with ``index % workers ==
worker``; the DataLoader returns worker batches in a fixed round-robin order, so the output order
is the same on every run.
"""

from collections.abc import Iterator

from torch.utils.data import IterableDataset, get_worker_info

from data_pipeline.preprocess import Prepared, PreprocessSettings, Reason, Rejected, preprocess
from data_pipeline.sources import InputShard, NotAFile, RawSample, TarBreak, iter_shard

Item = Prepared | Rejected | TarBreak


class ShardSamples(IterableDataset):
    def __init__(self, shard: InputShard, settings: PreprocessSettings) -> None:
        super().__init__()
        self.shard, self.settings = shard, settings

    def __iter__(self) -> Iterator[Item]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        keys_seen: set[str] = set()  # every worker streams every item, so all agree on duplicates
        for index, item in enumerate(iter_shard(self.shard)):
            if isinstance(item, TarBreak):
                if worker == 0:
                    yield item
                return
            duplicate = isinstance(item, RawSample) and item.key in keys_seen
            if isinstance(item, RawSample):
                keys_seen.add(item.key)
            if index % workers != worker:
                continue
            if isinstance(item, NotAFile):
                yield Rejected(item.name, Reason.NOT_A_FILE, f"tar member is a {item.kind}")
            elif duplicate:
                yield Rejected(
                    item.key, Reason.DUPLICATE_KEY, "an earlier sample of this shard has the same key"
                )
            else:
                result = preprocess(item, self.settings, self.shard.name)
                yield from result if isinstance(result, list) else [result]


def as_list(batch: list[Item]) -> list[Item]:
    """Collate function that keeps items as they are (tensors are stacked by the encoder)."""
    return batch


def break_rejection(item: TarBreak) -> Rejected | None:
    """The sample cut by a tar break, as a rejection (``None`` if the break fell between samples)."""
    return Rejected(item.key, Reason.TRUNCATED_TAR, item.error) if item.key is not None else None
