"""Pixel conventions in one place, as diffusers' ``VaeImageProcessor`` keeps them.

Two representations of a batch of images, and nothing else converts between them:

- *model images*: float [B, 3, H, W] in [-1, 1], what first stages encode and decode;
- *uint8 images*: uint8 [B, 3, H, W] in [0, 255] on the CPU, what files, grids and metrics on stored
  pixels use (``PIL`` images are their per-image form).

Example:
    >>> pixels = from_uint8(batch["images"])            # stored ground truth → model images
    >>> to_pil(first_stage.decode_scaled(latents))[0].save("sample.png")
"""

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fmboost.errors import FMBoostError
from fmboost.image_decoding import ImageRejected, decode_image


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255] → float32 model images in [-1, 1] (on the same device)."""
    return images.float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Model images (clamped to [-1, 1]) → uint8 [B, 3, H, W] on the CPU, rounded to nearest."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Model images → one RGB ``PIL`` image each."""
    return [Image.fromarray(array) for array in to_uint8(images).permute(0, 2, 3, 1).numpy()]


def from_pil(image: Image.Image) -> torch.Tensor:
    """One ``PIL`` image → a model image batch [1, 3, H, W] (converted to RGB)."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    return from_uint8(torch.from_numpy(array).permute(2, 0, 1)[None])


def resize_images(images: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize [B, C, H, W] (images or latents) to ``size``; antialiased whenever an axis shrinks."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    shrinking = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    if mode == "nearest":
        return F.interpolate(images, size=size, mode="nearest-exact")
    return F.interpolate(images, size=size, mode=mode, align_corners=False, antialias=shrinking)


def load_image(path: str | Path, size_multiple: int, name: str | None = None) -> torch.Tensor:
    """An image file as a model image batch [1, 3, H, W], centre-cropped to a multiple of ``size_multiple``.

    Decoded exactly as encoding decodes training images (:func:`decode_image`); errors name the
    ``image`` parameter, and the file as ``name`` (default: its path; an upload's temporary path
    means nothing to its user).
    """
    name = name or str(path)
    try:
        image = decode_image(Path(path).read_bytes())
    except OSError as error:
        raise FMBoostError(f"{name} cannot be read ({error.strerror or error})", "image") from None
    except ImageRejected as rejection:
        message = f"{name} is not a readable image ({rejection.reason}: {rejection})"
        raise FMBoostError(message, "image") from None
    width, height = (side - side % size_multiple for side in image.size)
    if width == 0 or height == 0:
        raise FMBoostError(f"{name} is smaller than {size_multiple} px", "image")
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return from_pil(image.crop((left, top, left + width, top + height)))


def save_grid(columns: Mapping[str, torch.Tensor], path: Path, rows: int | None = None) -> Path:
    """A grid of uint8 images, one column per entry of ``columns`` and one row per sample.

    Every image is resized (nearest) to the size of the last column (the ground truth, by convention);
    ``path.txt`` names the columns in order.
    """
    images: Sequence[torch.Tensor] = list(columns.values())
    count = min(len(column) for column in images) if rows is None else min(rows, *(len(c) for c in images))
    size = tuple(images[-1].shape[-2:])
    tiles = [
        F.interpolate(column[i : i + 1].float(), size=size, mode="nearest")[0] / 255
        for i in range(count)
        for column in images
    ]
    from torchvision.utils import save_image  # torchvision imports torch._dynamo: 1-2 s for every process

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.stack(tiles), path, nrow=len(images), padding=2)
    path.with_suffix(".txt").write_text("columns: " + " | ".join(columns) + "\n")
    return path
