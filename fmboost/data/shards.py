"""The latent shard format (v1): file layout, per-sample fields, manifest and per-shard stats.

This module is the single definition shared by the writer (``data_pipeline``) and the readers
(training, evaluation)::

    OUT/manifest.json             schema, first stage + scale/shift, sizes, dtype, psu variant, totals
    OUT/shards/000000.tar         one output shard per input shard
    OUT/shards/000000.stats.json  that shard's counts; written last, atomically: marks it complete

Per sample: ``KEY.latent.npy`` (float16 [C, H, W], high-res), ``KEY.latent_lowres.npy``,
``KEY.latent_psu.npy`` (upsampled low-res, shape of ``latent``), ``KEY.txt``, ``KEY.json`` and
optionally ``KEY.jpg`` (the high-res crop).

*Pair shards* (a teacher's results, ``data_pipeline.teacher_pairs``) are latent shards in this format
whose ``latent`` is the teacher's result, with two more arrays: ``KEY.latent_start.npy`` (the scaled
ODE start it was integrated from) and ``KEY.latent_real.npy`` (the source's high-res latent); the
manifest's ``pairs`` names the teacher, its solver and NFE, and the source dataset.

Arrays are stored *unscaled* (but ``latent_start``); readers scale them with the manifest's
values. Only ``.npy`` (without pickle), ``.txt``, ``.json`` and images are ever decoded.
"""

import functools
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fmboost.atomic_files import write_json_atomically
from fmboost.config import FirstStageConfig
from fmboost.errors import FMBoostError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARDS_DIR = "shards"
LATENT, LATENT_LOWRES, LATENT_PSU = "latent.npy", "latent_lowres.npy", "latent_psu.npy"
LATENT_START, LATENT_REAL = "latent_start.npy", "latent_real.npy"
CAPTION, METADATA, IMAGE = "txt", "json", "jpg"
STORAGE_DTYPE = "float16"


def shard_name(index: int) -> str:
    return f"{index:06d}"


def shard_path(root: Path, index: int) -> Path:
    return root / SHARDS_DIR / f"{shard_name(index)}.tar"


def stats_path(root: Path, index: int) -> Path:
    return root / SHARDS_DIR / f"{shard_name(index)}.stats.json"


def encode_array(array: np.ndarray) -> bytes:
    """``.npy`` bytes of ``array`` stored as float16."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float16), allow_pickle=False)
    return buffer.getvalue()


NPY_MAGIC = b"\x93NUMPY"


@functools.lru_cache(maxsize=256)
def parse_npy_header(header: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype of one ``.npy`` header, parsed by numpy's own (safe) reader.

    Headers repeat across a dataset's samples, and numpy parses each with ``ast.literal_eval``
    (a fifth of the training stream's time): parsing each distinct header once takes that away.
    """
    return np.lib.format.read_array_header_1_0(io.BytesIO(header), max_header_size=len(header))


def decode_array(data: bytes) -> np.ndarray:
    """A read-only array from ``.npy`` bytes; object arrays (pickle) are refused, as by numpy."""
    if data[:6] != NPY_MAGIC or data[6] != 1:  # format 2/3 (huge headers) or not .npy: numpy decides
        return np.load(io.BytesIO(data), allow_pickle=False)
    header_length = int.from_bytes(data[8:10], "little")
    shape, fortran_order, dtype = parse_npy_header(data[8 : 10 + header_length])
    if dtype.hasobject:
        raise ValueError("Object arrays cannot be loaded when allow_pickle=False")
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=10 + header_length)
    return array.reshape(shape, order="F" if fortran_order else "C")


@dataclass
class ShardStats:
    """What happened to every sample of one input shard: ``written + sum(rejected) == seen``."""

    source: str
    seen: int = 0
    written: int = 0
    upscaled: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    rejected_keys: dict[str, list[str]] = field(default_factory=dict)
    first_rejection: dict[str, str] = field(default_factory=dict)
    tar_error: str | None = None
    source_fingerprint: dict | None = None  # the input's path, size and hash; None in stats before 2026-11

    def reject(self, key: str, reason: str, detail: str = "") -> None:
        """Count a sample that was seen and not written, keeping its key and the first detail per reason."""
        self.seen += 1
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        self.rejected_keys.setdefault(reason, []).append(key)
        self.first_rejection.setdefault(reason, f"{key}: {detail}" if detail else key)

    @property
    def total_rejected(self) -> int:
        return sum(self.rejected.values())

    def is_balanced(self) -> bool:
        return self.written + self.total_rejected == self.seen


@dataclass
class Manifest:
    """Dataset-level description; ``totals`` sums the stats of the completed shards."""

    first_stage: FirstStageConfig
    high_res: int
    low_res: int
    latent_channels: int
    high_res_latent: int
    low_res_latent: int
    psu_variant: str
    source_shards: list[str]
    completed_shards: list[int]
    totals: dict[str, Any]
    has_images: bool
    preprocessing: dict[str, Any] = field(default_factory=dict)
    pairs: dict[str, Any] | None = None  # pair shards: teacher, solver, nfe, seed, source dataset
    dtype: str = STORAGE_DTYPE
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        self.first_stage = FirstStageConfig.from_record(self.first_stage)

    @property
    def scale(self) -> float:
        return float(self.first_stage.scale)

    @property
    def shift(self) -> float:
        return float(self.first_stage.shift)

    @property
    def scale_factor(self) -> int:
        return self.high_res_latent // self.low_res_latent

    def save(self, root: Path) -> None:
        write_json_atomically(root / MANIFEST_NAME, asdict(self))

    @classmethod
    def load(cls, root: str | Path) -> "Manifest":
        path = Path(root) / MANIFEST_NAME
        if not path.is_file():
            raise FMBoostError(f"{Path(root)} is not a latent dataset: {MANIFEST_NAME} is missing")
        payload = json.loads(path.read_text())
        if payload.get("schema_version") != SCHEMA_VERSION:
            raise FMBoostError(
                f"{path}: shard schema version {payload.get('schema_version')} is not supported "
                f"(this FMBoost reads version {SCHEMA_VERSION})"
            )
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in payload.items() if key in known})
