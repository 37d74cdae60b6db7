"""From raw sample bytes to a square high-res crop, or a rejection with a reason.

Runs in DataLoader worker processes. Steps: decode, apply EXIF orientation, convert to RGB (alpha
composited on white; palette, CMYK, greyscale and 16-bit handled), filter by size and aspect ratio,
resize the short side to ``high_res`` (PIL's antialiased bicubic) and crop a square, centred or at a
position derived from the key (so reruns crop identically).
"""

import copy
import hashlib
import io
import json
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from data_pipeline.sources import IMAGE_EXTENSIONS, RawSample


class Reason:
    """Rejection reasons, as recorded in stats and manifests."""

    MISSING_IMAGE = "missing_image"
    UNDECODABLE_IMAGE = "undecodable_image"
    TRUNCATED_IMAGE = "truncated_image"
    IMAGE_TOO_LARGE = "image_too_large"
    TOO_SMALL = "too_small"
    EXTREME_ASPECT_RATIO = "extreme_aspect_ratio"
    TRUNCATED_TAR = "truncated_tar"
    NON_FINITE_LATENT = "non_finite_latent"


@dataclass
class Rejected:
    key: str
    reason: str
    detail: str = ""


@dataclass
class Prepared:
    """A high-res crop as uint8 [3, S, S], with the caption and the metadata to store."""

    key: str
    pixels: torch.Tensor
    caption: str
    metadata: dict[str, Any]
    upscaled: bool


@dataclass(frozen=True)
class PreprocessSettings:
    high_res: int
    crop: str = "center"
    small_images: str = "reject"
    max_aspect_ratio: float | None = None
    seed: int = 0
    crops_per_image: int = 1


class ImageRejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB with transparency composited on white; 16-bit and float modes scaled to 8 bits."""
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def decode_image(data: bytes) -> Image.Image:
    """Fully decoded RGB image with EXIF orientation applied, or :class:`ImageRejected`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageRejected(Reason.IMAGE_TOO_LARGE, str(error)) from None
    except UnidentifiedImageError as error:
        raise ImageRejected(Reason.UNDECODABLE_IMAGE, str(error)) from None
    except (OSError, SyntaxError, ValueError) as error:
        reason = Reason.TRUNCATED_IMAGE if "truncated" in str(error).lower() else Reason.UNDECODABLE_IMAGE
        raise ImageRejected(reason, str(error)) from None
    try:
        return to_rgb(ImageOps.exif_transpose(image))
    except (OSError, ValueError) as error:
        raise ImageRejected(Reason.UNDECODABLE_IMAGE, f"cannot convert mode {image.mode}: {error}") from None


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


def preprocess(sample: RawSample, settings: PreprocessSettings, shard_name: str) -> list[Prepared] | Rejected:
    """Turn one raw sample into ``crops_per_image`` :class:`Prepared` crops or one :class:`Rejected`
    record; never raises for bad data."""
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
        prepared.append(Prepared(key, pixels, caption, metadata, upscaled))
    return prepared
