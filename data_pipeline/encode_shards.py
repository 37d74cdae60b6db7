"""Encode img2dataset image shards into paired low/high-res latent shards.

    python -m data_pipeline.encode_shards [CONFIG] [key=value ...]

One output shard per input shard; a shard is complete once its ``.stats.json`` exists, so a rerun
(after a crash, ``kill -9`` or a pre-emption) skips finished shards and redoes the rest, producing
byte-identical output. Work is split over tasks by shard index (``task_index``/``num_tasks``, or a
Slurm array / multi-task job). Every sample is written or rejected with a reason.
"""

import argparse
import io
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm
from webdataset import TarWriter

from data_pipeline.config import EncodeConfig, load_encode_config
from data_pipeline.job_cli import add_config_arguments, run_from_command_line
from data_pipeline.latent_encoder import LatentEncoder, unstorable
from data_pipeline.manifest import describe_dataset, read_stats, refuse_mixed_settings, update_manifest
from data_pipeline.preprocess import Prepared, PreprocessSettings, Rejected
from data_pipeline.shard_samples import ShardSamples, as_list, break_rejection
from data_pipeline.sources import InputShard, TarBreak, fingerprint, list_input_shards
from fmboost.atomic_files import atomic_path, write_json_atomically
from fmboost.cli import exit_without_collecting, report_errors
from fmboost.data import shards as schema
from fmboost.devices import resolve_device
from fmboost.errors import ConfigError, FMBoostError
from fmboost.first_stage import build_first_stage
from fmboost.task_split import task_share

logger = logging.getLogger("data_pipeline.encode_shards")


def sample_record(item: Prepared, arrays: dict, config: EncodeConfig) -> dict[str, bytes | str]:
    record: dict[str, bytes | str] = {
        "__key__": item.key,
        schema.LATENT: schema.encode_array(arrays["latent"]),
        schema.LATENT_LOWRES: schema.encode_array(arrays["latent_lowres"]),
        schema.LATENT_PSU: schema.encode_array(arrays["latent_psu"]),
        schema.CAPTION: item.caption.encode("utf-8"),
        schema.METADATA: json.dumps(item.metadata, sort_keys=True).encode("utf-8"),
    }
    if config.save_images:
        buffer = io.BytesIO()
        Image.fromarray(item.pixels.permute(1, 2, 0).numpy()).save(
            buffer, format="JPEG", quality=config.jpeg_quality
        )
        record[schema.IMAGE] = buffer.getvalue()
    return record


def encode_shard(
    shard: InputShard, config: EncodeConfig, encoder: LatentEncoder, root: Path, progress: tqdm
) -> schema.ShardStats:
    """Encode one input shard into ``shards/NNNNNN.tar``; its stats file is written last."""
    final = schema.shard_path(root, shard.index)
    final.unlink(missing_ok=True)  # a tar without its stats file was never declared complete
    stats = schema.ShardStats(source=shard.name, source_fingerprint=fingerprint(shard))
    settings = PreprocessSettings(
        config.high_res,
        config.crop,
        config.small_images,
        config.max_aspect_ratio,
        config.seed,
        config.crops_per_image,
        config.low_res,
        config.degradation,
    )
    loader = DataLoader(
        ShardSamples(shard, settings),
        batch_size=config.batch_size,
        num_workers=config.num_workers,
        collate_fn=as_list,
        pin_memory=encoder.device.type == "cuda",
    )
    with atomic_path(final) as partial, open(partial, "wb") as handle:
        # An integer mtime: a float one makes tarfile add a PAX header to every member (twice the parsing).
        writer = TarWriter(handle, encoder=False, mtime=0, user="fmboost", group="fmboost", mode=0o444)
        for batch in loader:
            prepared = []
            for item in batch:
                if isinstance(item, TarBreak):
                    stats.tar_error = item.error
                    logger.warning("%s: %s; keeping the samples before the break", shard.name, item.error)
                    item = break_rejection(item)
                if isinstance(item, Rejected):
                    stats.reject(item.key, item.reason, item.detail)
                    logger.debug("%s: rejected %s (%s: %s)", shard.name, item.key, item.reason, item.detail)
                elif isinstance(item, Prepared):
                    prepared.append(item)
            if prepared:
                degraded = prepared[0].low_pixels is not None
                arrays = encoder.encode(
                    torch.stack([item.pixels for item in prepared]),
                    torch.stack([item.low_pixels for item in prepared]) if degraded else None,
                )
                for index, item in enumerate(prepared):
                    latents = {name: array[index] for name, array in arrays.items()}
                    if (refused := unstorable(latents)) is not None:
                        stats.reject(item.key, *refused)
                        continue
                    writer.write(sample_record(item, latents, config))
                    stats.seen += 1
                    stats.written += 1
                    stats.upscaled += int(item.upscaled)
            progress.update(len(batch))
        writer.close()
    if not stats.is_balanced():
        raise RuntimeError(
            f"{shard.name}: bookkeeping error, {stats.written} written + rejected != {stats.seen}"
        )
    write_json_atomically(schema.stats_path(root, shard.index), asdict(stats))
    return stats


@dataclass
class RunSummary:
    shards_done: int = 0
    shards_skipped: int = 0
    written: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, stats: schema.ShardStats) -> None:
        self.shards_done += 1
        self.written += stats.written
        for reason, count in stats.rejected.items():
            self.rejected[reason] = self.rejected.get(reason, 0) + count

    def describe(self) -> str:
        rate = self.written / self.seconds if self.seconds else 0.0
        rejected = ", ".join(f"{reason} {count}" for reason, count in sorted(self.rejected.items())) or "none"
        return (
            f"encoded {self.shards_done} shards ({self.shards_skipped} already complete): "
            f"{self.written} written, rejected: {rejected}; {rate:.1f} images/s"
        )


def already_encoded(root: Path, shard: InputShard) -> bool:
    """Whether ``shard`` is complete in ``root``; a complete shard made from other input is refused."""
    stats = read_stats(root, shard.index)
    if stats is None:
        return False
    now = fingerprint(shard)
    if stats.source_fingerprint is not None and stats.source_fingerprint != now:
        described = [
            f"{f['path']}, {f['size']} bytes, sha256 {f['sha256'][:12]}"
            for f in (stats.source_fingerprint, now)
        ]
        raise FMBoostError(
            f"{schema.shard_path(root, shard.index)} was encoded from other input ({described[0]}) than this "
            f"input's {shard.name} ({described[1]}); choose another output directory, or delete that shard "
            "and its .stats.json to encode it again",
            "output",
        )
    return True


def run(config: EncodeConfig) -> RunSummary:
    """Encode this task's share of the input shards; returns what was done."""
    started = time.perf_counter()
    shards = list_input_shards(config.input, config.images_per_shard)
    root = Path(config.output).expanduser()
    try:
        (root / schema.SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise FMBoostError(f"{root} (or a folder above it) is a file, not a folder", "output") from None
    first_stage = build_first_stage(config.first_stage)
    factor = first_stage.downsampling_factor
    if config.low_res % factor:
        raise ConfigError(
            f"low_res ({config.low_res}) must be divisible by the first stage's factor {factor}"
        )
    base = describe_dataset(config, first_stage, shards)
    refuse_mixed_settings(root, base)
    update_manifest(root, base)

    task_index, num_tasks = task_share(config.task_index, config.num_tasks)
    mine = [shard for shard in shards if shard.index % num_tasks == task_index]
    todo = [shard for shard in mine if not already_encoded(root, shard)]
    summary = RunSummary(shards_skipped=len(mine) - len(todo))
    device = resolve_device(config.device)
    logger.info(
        "task %d/%d: %d of %d input shards are mine, %d already complete; encoding on %s with %s",
        task_index,
        num_tasks,
        len(mine),
        len(shards),
        summary.shards_skipped,
        device,
        first_stage.name,
    )
    encoder = LatentEncoder(
        first_stage, config.low_res // factor * factor, config.psu_variant, device, config.precision
    )
    with tqdm(total=None, unit="img", desc=f"task {task_index}", dynamic_ncols=True) as progress:
        for shard in todo:
            progress.set_postfix_str(shard.name)
            stats = encode_shard(shard, config, encoder, root, progress)
            summary.add(stats)
            if stats.total_rejected:
                logger.info("%s: %d written, rejected %s", shard.name, stats.written, stats.rejected)
    manifest = update_manifest(root, base)
    summary.seconds = time.perf_counter() - started
    logger.info(summary.describe())
    logger.info(
        "manifest %s: %d/%d shards complete, %d samples written",
        root / schema.MANIFEST_NAME,
        len(manifest.completed_shards),
        len(shards),
        manifest.totals["written"],
    )
    return summary


EPILOG = """config keys (override any with key=value):
  input             brace pattern of img2dataset tars ('/data/{00000..00127}.tar'), a directory of
                    tars, or a folder of images with optional .txt captions
  output            output directory (manifest.json + shards/)
  first_stage.*     name=identity|diffusers|taesd, path, config, subfolder, scale, shift, tile_size
  high_res          high-res crop size in pixels (latent = high_res / factor)
  low_res           low-res size in pixels, an antialiased downsample of the high-res crop
  psu_variant       psu_roundtrip (E(UP(D(E(x_low)))), default) or psu_pixel (E(UP(x_low)))
  degradation       null (clean low-res images, default) or Real-ESRGAN's degradation model for the
                    low-res image only: degradation={} takes its published ranges, keys such as
                    degradation.first.jpeg_range=[60,95] change them (see data_pipeline/degradation.py)
  crop              center | random (random is fixed per key and seed)
  small_images      reject | upscale images whose short side is below high_res
  max_aspect_ratio  reject images with long/short side above this (default: keep all)
  save_images       also store the high-res crop as KEY.jpg (for validation pixel metrics)
  jpeg_quality      quality of those JPEGs
  batch_size        images per encoder batch
  num_workers       DataLoader processes that decode and crop images
  device            auto | cpu | cuda | cuda:N
  precision         auto (bf16 on GPU, fp32 on CPU) | bf16 | fp16 | fp32
  seed              seed of random crops and of the degradations (per sample, with its key)
  task_index, num_tasks
                    split of the input shards over tasks (default: from Slurm, else 0 of 1)
"""


@report_errors()
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_pipeline.encode_shards",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, "encode config YAML (default: the built-in sample settings)")
    parser.add_argument("--verbose", action="store_true", help="log every rejected sample")
    return run_from_command_line(parser, argv, load_encode_config, run)


if __name__ == "__main__":
    exit_without_collecting(main())
