"""Locating a latent dataset, checking it against a model, and turning raw samples into tensors.

Only ``.npy`` (without pickle), ``.txt``, ``.json`` and ``.jpg`` members are decoded; anything else
in a shard is ignored, so a shard can never make the reader unpickle data.
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from braceexpand import braceexpand

from fmboost.data import shards as schema
from fmboost.data.shards import Manifest
from fmboost.errors import FMBoostError
from fmboost.image_decoding import ImageRejected, decode_image
from fmboost.image_processing import resize_images

if TYPE_CHECKING:
    from fmboost.config import FMBoostConfig


@dataclass
class LatentDataset:
    """A latent dataset's manifest and the shard files selected from it, each with its sample count."""

    root: Path
    manifest: Manifest
    shards: list[Path]
    counts: list[int]


def resolve_dataset(spec: str) -> LatentDataset:
    """``spec`` is a dataset directory (all complete shards) or a brace pattern of its shard tars."""
    path = Path(spec).expanduser()
    if not path.exists() and not spec.endswith(".tar"):
        raise FMBoostError(
            f"{spec} does not exist (give a latent dataset directory or a brace pattern of its shards)"
        )
    if path.is_dir():
        root = path
        manifest = Manifest.load(root)
        shards = [schema.shard_path(root, index) for index in manifest.completed_shards]
    else:
        shards = [Path(p).expanduser() for p in braceexpand(spec)]
        if not shards:
            raise FMBoostError(f"{spec}: no shards selected")
        root = shards[0].parent.parent
        manifest = Manifest.load(root)
    counts = []
    for shard in shards:
        stats = shard.with_name(shard.name.replace(".tar", ".stats.json"))
        if not shard.is_file() or not stats.is_file():
            raise FMBoostError(f"{shard}: not a complete latent shard (missing tar or its .stats.json)")
        counts.append(json.loads(stats.read_text())["written"])
    if not shards or sum(counts) == 0:
        raise FMBoostError(f"{spec}: the dataset holds no samples")
    return LatentDataset(root, manifest, shards, counts)


def check_compatible(
    manifest: Manifest,
    latent_channels: int,
    scale_factor: int,
    first_stage_name: str | None = None,
    upsampling: str | None = None,
) -> None:
    """Refuse shards whose latents cannot train or evaluate this model.

    ``psu_*`` modes train on the stored ``latent_psu``, so its variant must be the one the model names.
    """
    problems = []
    if upsampling is not None and upsampling.startswith("psu") and upsampling != manifest.psu_variant:
        problems.append(
            f"contexts made with {manifest.psu_variant} (manifest psu_variant), but flow.upsampling is "
            f"{upsampling}; encode the data with psu_variant={upsampling} or train with "
            f"flow.upsampling={manifest.psu_variant}"
        )
    if manifest.latent_channels != latent_channels:
        problems.append(f"{manifest.latent_channels}-channel latents, but the model uses {latent_channels}")
    if manifest.scale_factor != scale_factor:
        problems.append(
            f"{manifest.low_res_latent}² → {manifest.high_res_latent}² pairs (×{manifest.scale_factor}), "
            f"but flow.scale_factor is {scale_factor}"
        )
    if first_stage_name is not None and manifest.first_stage.name != first_stage_name:
        problems.append(
            f"first stage {manifest.first_stage.name!r}, but the config names {first_stage_name!r}"
        )
    if problems:
        raise FMBoostError("latent shards do not fit the model: " + "; ".join(problems))


def resolve_for_model(config: "FMBoostConfig", key: str) -> LatentDataset:
    """``data.<key>`` (``train`` or ``validation``) resolved and checked against the model; errors name
    ``data.<key>``, so a wrong path is reported before a job is submitted, not inside it."""
    spec, flow = getattr(config.data, key), config.flow
    try:
        dataset = resolve_dataset(spec)
        first_stage = config.first_stage.name if key == "train" else None
        check_compatible(
            dataset.manifest, config.model.out_channels, flow.scale_factor, first_stage, flow.upsampling
        )
        if key == "train" and flow.objective == "reflow" and dataset.manifest.pairs is None:
            raise FMBoostError(
                f"{spec} holds latent shards, and reflow trains on a teacher's pairs: make pair shards "
                "with `python -m data_pipeline.teacher_pairs` and train on those"
            )
    except FMBoostError as error:
        raise FMBoostError(error.message, f"data.{key}") from None
    return dataset


def decode_sample(raw: dict[str, Any], images: bool = True) -> dict[str, Any]:
    """Raw tar members → arrays, strings and (if ``images``) images; every other member is dropped
    undecoded (training never looks at the stored image, so its stream does not decode it)."""
    sample: dict[str, Any] = {"key": raw["__key__"]}
    where = f"{raw.get('__url__', '?')}: sample {raw['__key__']}"
    for name in (schema.LATENT, schema.LATENT_LOWRES, schema.LATENT_PSU):
        if name not in raw:
            raise FMBoostError(f"{where} has no {name}")
        try:
            sample[name] = schema.decode_array(raw[name])
        except (ValueError, OSError, EOFError) as error:
            raise FMBoostError(f"{where}: {name} is not a plain .npy array ({error})") from None
    if schema.LATENT_START in raw:  # pair shards: the ODE start the teacher integrated from
        try:
            sample[schema.LATENT_START] = schema.decode_array(raw[schema.LATENT_START])
        except (ValueError, OSError, EOFError) as error:
            raise FMBoostError(
                f"{where}: {schema.LATENT_START} is not a plain .npy array ({error})"
            ) from None
    sample["caption"] = raw.get(schema.CAPTION, b"").decode("utf-8", errors="replace")
    sample["metadata"] = json.loads(raw[schema.METADATA]) if schema.METADATA in raw else {}
    if images and schema.IMAGE in raw:
        try:
            image = decode_image(raw[schema.IMAGE])
        except ImageRejected as rejection:
            raise FMBoostError(f"{where}: stored image is unusable ({rejection})") from None
        sample["image"] = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    return sample


def unusable_reason(sample: dict[str, Any]) -> str | None:
    """Why a decoded sample cannot be trained on (latents with NaN or infinite values), or ``None``.

    The encoder refuses such latents; a shard written by another tool, or damaged in a way its size and
    tar structure do not show, can still hold them, and one of them turns the loss into NaN."""
    arrays = (schema.LATENT, schema.LATENT_LOWRES, schema.LATENT_PSU, schema.LATENT_START)
    bad = [name for name in arrays if name in sample and not np.isfinite(sample[name]).all()]
    return f"non-finite values in {', '.join(bad)}" if bad else None


class SampleTransform:
    """Scales latents with the manifest's values, picks the context and optionally crops.

    The context is the stored PSU latent for ``psu_*`` modes; ``bilinear``/``nearest`` resize the
    stored low-res latent instead (cheap, and what those ablations define).
    """

    def __init__(self, manifest: Manifest, upsampling: str, crop_size: int | None = None) -> None:
        self.manifest, self.upsampling, self.crop_size = manifest, upsampling, crop_size
        if crop_size is not None and (
            crop_size > manifest.high_res_latent or crop_size % manifest.scale_factor
        ):
            raise FMBoostError(
                f"data.crop_size: {crop_size} must be at most {manifest.high_res_latent} and a multiple of "
                f"{manifest.scale_factor}"
            )

    def scaled(self, array: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(array.astype(np.float32)) - self.manifest.shift) * self.manifest.scale

    def context(self, sample: dict[str, Any]) -> torch.Tensor:
        if self.upsampling.startswith("psu"):
            return self.scaled(sample[schema.LATENT_PSU])
        low = self.scaled(sample[schema.LATENT_LOWRES])[None]
        size = (self.manifest.high_res_latent, self.manifest.high_res_latent)
        return resize_images(low, size, self.upsampling)[0]

    def __call__(self, sample: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        out = {
            "x1": self.scaled(sample[schema.LATENT]),
            "z_up": self.context(sample),
            "z_low": self.scaled(sample[schema.LATENT_LOWRES]),
            "key": sample["key"],
            "caption": sample["caption"],
        }
        if "image" in sample:
            out["image"] = sample["image"]
        if schema.LATENT_START in sample:  # stored scaled: the start point is what the model integrates
            out["x0"] = torch.from_numpy(sample[schema.LATENT_START].astype(np.float32))
        if self.crop_size is not None and self.crop_size < self.manifest.high_res_latent:
            out = self.crop(out, rng)
        return out

    def crop(self, out: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        """The same window of x1, z_up, the low-res latent and the image, aligned on the low-res grid."""
        factor, size = self.manifest.scale_factor, self.crop_size
        limit = (self.manifest.high_res_latent - size) // factor
        top, left = rng.randint(0, limit) * factor, rng.randint(0, limit) * factor
        for name in ("x1", "z_up", "x0"):
            if name in out:
                out[name] = out[name][:, top : top + size, left : left + size]
        low_top, low_left, low_size = top // factor, left // factor, size // factor
        out["z_low"] = out["z_low"][:, low_top : low_top + low_size, low_left : low_left + low_size]
        if "image" in out:
            pixels = self.manifest.high_res // self.manifest.high_res_latent
            out["image"] = out["image"][
                :, top * pixels : (top + size) * pixels, left * pixels : (left + size) * pixels
            ]
        return out


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    batch: dict[str, Any] = {
        name: torch.stack([s[name] for s in samples]) for name in ("x1", "z_up", "z_low")
    }
    batch["keys"] = [s["key"] for s in samples]
    batch["captions"] = [s["caption"] for s in samples]
    if all("image" in s for s in samples):
        batch["images"] = torch.stack([s["image"] for s in samples])
    if all("x0" in s for s in samples):
        batch["x0"] = torch.stack([s["x0"] for s in samples])
    return batch
