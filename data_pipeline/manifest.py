"""Writing the dataset manifest from the per-shard stats, safely when several tasks share an output."""

import json
from dataclasses import asdict
from pathlib import Path

from data_pipeline.config import EncodeConfig
from data_pipeline.sources import InputShard
from fmboost.atomic_files import exclusive_lock
from fmboost.data.shards import MANIFEST_NAME, Manifest, ShardStats, stats_path
from fmboost.errors import FMBoostError
from fmboost.first_stage.base import FirstStage

IDENTITY_FIELDS = (
    "first_stage",
    "high_res",
    "low_res",
    "latent_channels",
    "psu_variant",
    "has_images",
    "preprocessing",
    "source_shards",
    "pairs",
)


def read_stats(root: Path, index: int) -> ShardStats | None:
    path = stats_path(root, index)
    return ShardStats(**json.loads(path.read_text())) if path.is_file() else None


def totals_of(all_stats: list[ShardStats]) -> dict:
    rejected: dict[str, int] = {}
    for stats in all_stats:
        for reason, count in stats.rejected.items():
            rejected[reason] = rejected.get(reason, 0) + count
    return {
        "seen": sum(s.seen for s in all_stats),
        "written": sum(s.written for s in all_stats),
        "upscaled": sum(s.upscaled for s in all_stats),
        "rejected": dict(sorted(rejected.items())),
        "shards_with_tar_errors": sum(1 for s in all_stats if s.tar_error),
    }


def describe_dataset(config: EncodeConfig, first_stage: FirstStage, shards: list[InputShard]) -> Manifest:
    """The manifest of ``config``'s output, with no shard completed yet."""
    factor = first_stage.downsampling_factor
    return Manifest(
        first_stage=first_stage.record(),
        high_res=config.high_res,
        low_res=config.low_res,
        latent_channels=first_stage.latent_channels,
        high_res_latent=config.high_res // factor,
        low_res_latent=config.low_res // factor,
        psu_variant=config.psu_variant,
        source_shards=[shard.name for shard in shards],
        completed_shards=[],
        totals=totals_of([]),
        has_images=config.save_images,
        preprocessing={
            "crop": config.crop,
            "crops_per_image": config.crops_per_image,
            "small_images": config.small_images,
            "max_aspect_ratio": config.max_aspect_ratio,
            "seed": config.seed,
            "jpeg_quality": config.jpeg_quality,
            # only when set, so datasets encoded before degradations existed keep their identity
            **({"degradation": asdict(config.degradation)} if config.degradation is not None else {}),
        },
    )


def refuse_mixed_settings(root: Path, wanted: Manifest) -> None:
    """Refuse to add shards to an output written with different settings: the dataset would be mixed."""
    if not (root / MANIFEST_NAME).is_file():
        return
    existing = asdict(Manifest.load(root))
    target = asdict(wanted)
    for name in IDENTITY_FIELDS:
        if existing[name] != target[name]:
            raise FMBoostError(
                f"output {root} already holds a dataset with a different {name} "
                f"({existing[name]!r} there, {target[name]!r} now); choose another output directory"
            )


def update_manifest(root: Path, base: Manifest) -> Manifest:
    """Recompute completed shards and totals from the stats files on disk and rewrite the manifest."""
    with exclusive_lock(root / ".manifest.lock"):  # concurrent tasks never interleave an update
        completed, all_stats = [], []
        for index in range(len(base.source_shards)):
            stats = read_stats(root, index)
            if stats is not None:
                completed.append(index)
                all_stats.append(stats)
        manifest = Manifest(**{**asdict(base), "completed_shards": completed, "totals": totals_of(all_stats)})
        manifest.save(root)
    return manifest
