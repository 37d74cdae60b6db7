"""Test helpers: img2dataset-style tars with good and deliberately broken samples."""

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from data_pipeline.config import EncodeConfig
from fmboost.config import FirstStageConfig


def gradient_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=-1)
    noise = rng.integers(0, 30, size=base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).convert(mode)


def image_bytes(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
        for key, files in samples:
            for extension, data in files.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size, info.mtime = len(data), 0
                archive.addfile(info, io.BytesIO(data))
    return path


def good_sample(key: str, seed: int, width: int = 80, height: int = 64) -> tuple[str, dict[str, bytes]]:
    return key, {
        "jpg": image_bytes(gradient_image(width, height, seed)),
        "txt": f"caption {key}".encode(),
        "json": json.dumps({"key": key, "url": f"http://example.com/{key}.jpg"}).encode(),
    }


def good_shards(directory: Path, shards: int = 3, per_shard: int = 5) -> str:
    for shard in range(shards):
        write_tar(
            directory / f"{shard:05d}.tar",
            [good_sample(f"{shard:05d}{i:04d}", shard * 100 + i) for i in range(per_shard)],
        )
    return str(directory / f"{{00000..{shards - 1:05d}}}.tar")


def tiny_encode_config(input_spec: str, output: Path, **overrides) -> EncodeConfig:
    settings = dict(
        input=input_spec,
        output=str(output),
        first_stage=FirstStageConfig(name="identity"),
        high_res=32,
        low_res=16,
        batch_size=4,
        num_workers=0,
    )
    settings.update(overrides)
    return EncodeConfig(**settings)


def with_a_non_finite_latent(source: Path, target: Path, key: str) -> Path:
    """A copy of the latent dataset ``source`` in which sample ``key``'s high-res latent holds a NaN (its
    shard keeps its size in samples, its stats and its manifest: only reading the sample tells)."""
    from fmboost.data import shards as schema

    shutil.copytree(source, target)
    for shard in sorted((target / schema.SHARDS_DIR).glob("*.tar")):
        with tarfile.open(shard) as archive:
            members = [(member, archive.extractfile(member).read()) for member in archive.getmembers()]
        if not any(member.name == f"{key}.{schema.LATENT}" for member, _ in members):
            continue
        with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as archive:
            for member, data in members:
                if member.name == f"{key}.{schema.LATENT}":
                    array = schema.decode_array(data).copy()
                    array[0, 0, 0] = np.nan
                    data = schema.encode_array(array)
                    member.size = len(data)
                archive.addfile(member, io.BytesIO(data))
        return target
    raise LookupError(f"no sample {key} in {source}")
