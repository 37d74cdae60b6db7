"""Build a small img2dataset-format dataset from the photos that ship inside scikit-image.

No download: the demo and the tests get real photos (an astronaut, motorcycles, a retina, ...) cut
into varied crops, some saved as PNG with transparency, some as WebP, some in greyscale, with
captions (``.txt``) and img2dataset-style metadata (``.json``)::

    python -m data_pipeline.sample_data data/sample     # writes data/sample/shards/0000{0..4}.tar

Shards 0–3 are for training; the last shard is held out: its crops come from other photos (a cat,
coffee, a rocket) than the training shards, so validation measures images the model never saw.
"""

import argparse
import hashlib
import io
import json
import logging
import random
import tarfile
from pathlib import Path

from PIL import Image

from fmboost.atomic_files import atomic_path
from fmboost.sample_photos import HELD_OUT_PHOTOS, PHOTOS, TRAINING_PHOTOS, photo_directory

logger = logging.getLogger(__name__)

NUM_SHARDS = 5
SAMPLES_PER_SHARD = 24
MIN_CROP = 256


def crop_sample(photo: Image.Image, rng: random.Random) -> Image.Image:
    """A random crop of at least ``MIN_CROP`` px with aspect ratio up to 1.5, resized to at most 512 px."""
    width, height = photo.size
    short = rng.randint(MIN_CROP, min(width, height))
    long = min(int(short * rng.uniform(1.0, 1.5)), max(width, height))
    crop_w, crop_h = (long, short) if rng.random() < 0.5 and width >= long else (short, min(long, height))
    left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
    crop = photo.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.3:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    scale = min(1.0, 512 / max(crop.size))
    return crop.resize((round(crop.width * scale), round(crop.height * scale)), Image.Resampling.LANCZOS)


def encode(image: Image.Image, rng: random.Random) -> tuple[str, bytes]:
    """Save as the format a web crawl would have: PNG keeps transparency, otherwise mostly JPEG."""
    buffer = io.BytesIO()
    if image.mode in ("RGBA", "LA"):
        image.save(buffer, format="PNG")
        return "png", buffer.getvalue()
    if rng.random() < 0.15:
        image.save(buffer, format="WEBP", quality=90)
        return "webp", buffer.getvalue()
    image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode).save(
        buffer, format="JPEG", quality=92
    )
    return "jpg", buffer.getvalue()


def add_file(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    archive.addfile(info, io.BytesIO(data))


def build_sample_dataset(output: Path, seed: int = 0) -> list[Path]:
    """Write ``NUM_SHARDS`` tars of ``SAMPLES_PER_SHARD`` samples (the last held out); their paths."""
    shard_dir = output / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    photos = {name: Image.open(photo_directory() / name) for name in PHOTOS}
    for image in photos.values():
        image.load()
    rng = random.Random(seed)
    paths = []
    for shard in range(NUM_SHARDS):
        names = sorted(HELD_OUT_PHOTOS if shard == NUM_SHARDS - 1 else TRAINING_PHOTOS)
        path = shard_dir / f"{shard:05d}.tar"
        with atomic_path(path) as partial, tarfile.open(partial, "w", format=tarfile.USTAR_FORMAT) as archive:
            for index in range(SAMPLES_PER_SHARD):
                key = f"{shard:05d}{index:04d}"
                name = names[(shard * SAMPLES_PER_SHARD + index) % len(names)]
                image = crop_sample(photos[name], rng)
                extension, data = encode(image, rng)
                caption = PHOTOS[name]
                metadata = {
                    "url": f"skimage://data/{name}",
                    "key": key,
                    "status": "success",
                    "caption": caption,
                    "width": image.width,
                    "height": image.height,
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
                add_file(archive, f"{key}.{extension}", data)
                add_file(archive, f"{key}.txt", caption.encode())
                add_file(archive, f"{key}.json", json.dumps(metadata).encode())
        paths.append(path)
    logger.info("wrote %d shards of %d samples to %s", NUM_SHARDS, SAMPLES_PER_SHARD, shard_dir)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("output", type=Path, nargs="?", default=Path("data/sample"), help="dataset directory")
    parser.add_argument("--seed", type=int, default=0, help="seed of the crops (default 0)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the shards exist")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    existing = [args.output / "shards" / f"{shard:05d}.tar" for shard in range(NUM_SHARDS)]
    if not args.force and all(path.is_file() for path in existing):
        logger.info("sample dataset already in %s (use --force to rebuild)", args.output)
        return
    build_sample_dataset(args.output, args.seed)


if __name__ == "__main__":
    main()
