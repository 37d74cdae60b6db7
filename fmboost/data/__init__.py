"""The latent shard format (`shards`) and its reader: datasets, streams for training and validation."""

from fmboost.data.dataset import LatentDataset, check_compatible, resolve_dataset
from fmboost.data.streams import TrainStream, ValidationStream, make_loader

__all__ = [
    "LatentDataset",
    "TrainStream",
    "ValidationStream",
    "check_compatible",
    "make_loader",
    "resolve_dataset",
]
