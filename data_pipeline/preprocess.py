"""From raw sample bytes to a square high-res crop, or a rejection with a reason.

Runs in DataLoader worker processes. Steps: decode (:func:`fmboost.image_decoding.decode_image`, the
one decoder every entry point shares), filter by size and aspect ratio,
resize the short side to ``high_res`` (PIL's antialiased bicubic) and crop a square, centred or at a
position derived from the key (so reruns crop identically), and, with a degradation model, make the
degraded low-res image (seeded by the key, so reruns degrade identically).
"""

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from data_pipeline.degradation import DegradationConfig, degrade, sample_seed
from data_pipeline.sources import IMAGE_EXTENSIONS, RawSample
from fmboost.image_decoding import DecodeFailure, ImageRejected, decode_image


class Reason:
    """Rejection reasons, as recorded in stats and manifests."""

    UNSAFE_KEY = "unsafe_key"
    DUPLICATE_KEY = "duplicate_key"
    NOT_A_FILE = "not_a_file"
    MISSING_IMAGE = "missing_image"
    UNDECODABLE_IMAGE = DecodeFailure.UNDECODABLE_IMAGE
    TRUNCATED_IMAGE = DecodeFailure.TRUNCATED_IMAGE
    IMAGE_TOO_LARGE = DecodeFailure.IMAGE_TOO_LARGE
    TOO_SMALL = "too_small"
    EXTREME_ASPECT_RATIO = "extreme_aspect_ratio"
    TRUNCATED_TAR = "truncated_tar"
    NON_FINITE_LATENT = "non_finite_latent"  # the first stage (or teacher) gave NaN or infinite values
    LATENT_OVERFLOW = "latent_overflow"  # finite, but beyond what float16 storage holds


@dataclass
class Rejected:
    key: str
    reason: str
    detail: str = ""


@dataclass
class Prepared:
    """A high-res crop as uint8 [3, S, S], with the caption and the metadata to store; ``low_pixels`` is
    its degraded low-res image (``None``: the encoder downsamples the crop cleanly)."""

    key: str
    pixels: torch.Tensor
    caption: str
    metadata: dict[str, Any]
    upscaled: bool
    low_pixels: torch.Tensor | None = None


@dataclass(frozen=True)
class PreprocessSettings:
    high_res: int
    crop: str = "center"
    small_images: str = "reject"
    max_aspect_ratio: float | None = None
    seed: int = 0
    crops_per_image: int = 1
    low_res: int | None = None
    degradation: DegradationConfig | None = None


def seeded_offset(key: str, slack: int, seed: int, salt: str = "") -> int:
    """A pseudo-random offset in ``[0, slack]``, fixed per key, seed and salt (so reruns are identical)."""
    digest = hashlib.sha256(f"{seed}:{key}{salt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (slack + 1)


def crop_offset(key: str, slack: int, settings: PreprocessSettings) -> int:
    """Offset of the square along the long side: centred, or pseudo-random but fixed per key and seed."""
    if settings.crop == "center" or slack == 0:
        return slack // 2
    return seeded_offset(key, slack, settings.seed)


def window_crop(
    image: Image.Image, key: str, settings: PreprocessSettings
) -> tuple[Image.Image, list[int], bool]:
    """A ``high_res``² window at the image's own resolution, at a seeded position."""
    side, (width, height) = settings.high_res, image.size
    left, top = (
        seeded_offset(key, width - side, settings.seed, ":x"),
        seeded_offset(key, height - side, settings.seed, ":y"),
    )
    box = [left, top, left + side, top + side]
    return image.crop(tuple(box)), box, False


def square_crop(
    image: Image.Image, key: str, settings: PreprocessSettings
) -> tuple[Image.Image, list[int], bool]:
    """Resize the short side to ``high_res`` and crop a square (or, for ``random_window``, cut a window
    at native resolution); returns the crop, its box in source pixels and whether it was upscaled."""
    width, height = image.size
    short, long = min(width, height), max(width, height)
    if settings.max_aspect_ratio is not None and long / short > settings.max_aspect_ratio:
        raise ImageRejected(
            Reason.EXTREME_ASPECT_RATIO, f"aspect ratio {long / short:.2f} > {settings.max_aspect_ratio}"
        )
    upscaled = short < settings.high_res
    if upscaled and settings.small_images == "reject":
        raise ImageRejected(Reason.TOO_SMALL, f"short side {short} px < {settings.high_res} px")
    if settings.crop == "random_window" and not upscaled:
        return window_crop(image, key, settings)
    offset = crop_offset(key, long - short, settings)
    left, top = (offset, 0) if width >= height else (0, offset)
    box = [left, top, left + short, top + short]
    side = settings.high_res
    crop = image.resize((side, side), resample=Image.Resampling.BICUBIC, box=tuple(box), reducing_gap=None)
    return crop, box, upscaled


def read_caption(sample: RawSample, metadata: dict[str, Any]) -> str:
    if "txt" in sample.files:
        return sample.files["txt"].decode("utf-8", errors="replace").strip()
    caption = metadata.get("caption")
    return caption.strip() if isinstance(caption, str) else ""


def read_metadata(sample: RawSample) -> dict[str, Any]:
    if "json" not in sample.files:
        return {}
    try:
        loaded = json.loads(sample.files["json"].decode("utf-8", errors="replace"))
    except json.JSONDecodeError as error:
        return {"fmboost_metadata_error": f"source .json is not valid JSON: {error}"}
    return loaded if isinstance(loaded, dict) else {"source_json": loaded}


def crop_keys(key: str, crops_per_image: int) -> list[str]:
    """One key per crop: the sample's own key for one crop, ``KEY_cNN`` for several."""
    return [key] if crops_per_image == 1 else [f"{key}_c{index:02d}" for index in range(crops_per_image)]


def unsafe_key(key: str) -> str | None:
    """Why ``key`` must not become a member name of an output shard, or ``None`` if it is safe.

    An absolute key or one with ``..`` would make a tar extractor write outside its target folder.
    """
    if key.startswith("/") or "\\" in key:
        return "an absolute path or a backslash"
    if any(part in ("", ".", "..") for part in key.split("/")):
        return "an empty, '.' or '..' path component"
    if any(ord(character) < 32 for character in key):
        return "a control character"
    return None


def preprocess(sample: RawSample, settings: PreprocessSettings, shard_name: str) -> list[Prepared] | Rejected:
    """Turn one raw sample into ``crops_per_image`` :class:`Prepared` crops or one :class:`Rejected`
    record; never raises for bad data."""
    if (problem := unsafe_key(sample.key)) is not None:
        return Rejected(sample.key, Reason.UNSAFE_KEY, f"key {sample.key!r} holds {problem}")
    image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in sample.files), None)
    if image_ext is None:
        found = ", ".join(sorted(sample.files)) or "nothing"
        return Rejected(sample.key, Reason.MISSING_IMAGE, f"no image file, found {found}")
    try:
        image = decode_image(sample.files[image_ext])
        crops = [
            (key, *square_crop(image, key, settings))
            for key in crop_keys(sample.key, settings.crops_per_image)
        ]
    except ImageRejected as rejection:
        return Rejected(sample.key, rejection.reason, str(rejection))
    source_metadata = read_metadata(sample)
    caption = read_caption(sample, source_metadata)
    prepared = []
    for index, (key, crop, box, upscaled) in enumerate(crops):
        metadata = copy.deepcopy(source_metadata)
        metadata["fmboost"] = {
            "source_shard": shard_name,
            "source_key": sample.key,
            "source_size": list(image.size),
            "crop_box": box,
            "crop_index": index,
            "upscaled": upscaled,
        }
        pixels = torch.from_numpy(np.asarray(crop, dtype=np.uint8).copy()).permute(2, 0, 1)
        low_pixels = None
        if settings.degradation is not None:
            factor = settings.high_res // settings.low_res
            seed = sample_seed(settings.seed, key)
            low_pixels, record = degrade(pixels, factor, settings.degradation, seed)
            metadata["fmboost"]["degradation"] = record
        prepared.append(Prepared(key, pixels, caption, metadata, upscaled, low_pixels))
    return prepared
