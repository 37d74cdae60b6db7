"""The one way FMBoost turns image bytes into RGB pixels: encoding, ``generate`` and evaluation alike.

Inference must see an image exactly as training did, so every entry point decodes through
:func:`decode_image`: fully decoded (truncation is caught here, not later), EXIF orientation applied,
RGB with transparency composited on white, palette, CMYK, greyscale and 16-bit/float modes scaled to
8 bits, and decompression bombs (PIL's pixel limit) refused instead of exhausting memory.
"""

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# The file suffixes taken for images wherever a folder is read (folder boosting, the app's examples,
# an experiment's photos); decode_image reads each of these formats.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})


class DecodeFailure:
    """Reasons an image cannot be decoded, as recorded in encoding stats and manifests."""

    UNDECODABLE_IMAGE = "undecodable_image"
    TRUNCATED_IMAGE = "truncated_image"
    IMAGE_TOO_LARGE = "image_too_large"


class ImageRejected(Exception):
    """An image that cannot be used, with a machine-readable ``reason`` and a human-readable detail."""

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
        raise ImageRejected(DecodeFailure.IMAGE_TOO_LARGE, str(error)) from None
    except UnidentifiedImageError:
        raise ImageRejected(DecodeFailure.UNDECODABLE_IMAGE, "not in any image format PIL can read") from None
    except (OSError, SyntaxError, ValueError) as error:
        truncated = "truncated" in str(error).lower()
        reason = DecodeFailure.TRUNCATED_IMAGE if truncated else DecodeFailure.UNDECODABLE_IMAGE
        raise ImageRejected(reason, str(error)) from None
    try:
        return to_rgb(ImageOps.exif_transpose(image))
    except (OSError, ValueError) as error:
        detail = f"cannot convert mode {image.mode}: {error}"
        raise ImageRejected(DecodeFailure.UNDECODABLE_IMAGE, detail) from None
