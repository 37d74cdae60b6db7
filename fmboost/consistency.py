r"""The consistency step: a boosted image keeps what its low-res input already fixes, and adds only detail.

A latent upsampler re-synthesises every pixel, so it can move colours and shapes that the low-res input
already determines (a coyote turning grey-green). After decoding, one of these corrects the output
``x`` against the input ``y`` (both model images in [-1, 1]):

- ``adain``: each channel's mean and standard deviation taken from the upsampled input (StableSR's
  ``adain`` colour fix). Global: it fixes a colour cast, not a misplaced edge.
- ``wavelet``: the output's high-frequency bands over the upsampled input's low-frequency band
  (StableSR's ``wavelet`` colour fix): five levels of a dilated 3×3 binomial blur, dilations 1 to 16 px.
- ``projection``: the image nearest to ``x`` whose downsampling gives ``y`` back, the Consistency
  Enforcing Module of Bahat & Michaeli (CVPR 2020; iterative back-projection before it):

  .. math::  x \leftarrow x + D^\top (D D^\top)^{-1} (y - D x),

  with :math:`D` the antialiased resize that made the low-res input in the data pipeline
  (:func:`downsample`) and the inverse solved by conjugate gradients (:math:`D D^\top` is
  well conditioned: about 16 at 2×). It alternates with a clamp to [-1, 1] (both sets are convex and
  the ground truth lies in both), so :math:`D x = y` holds to well under one grey level.

Each step works on the whole image in float32, whatever the pipeline's dtype, one channel at a time: it
needs a few single-channel buffers of the result's size, far below a decoder's activations, so an image
the decoder produced in tiles is corrected in one piece, with no tile borders of its own.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F

from fmboost.config import CONSISTENCY_MODES
from fmboost.errors import FMBoostError
from fmboost.image_processing import resize_images

WAVELET_LEVELS = 5
PROJECTION_ROUNDS = 4  # projection, then clamp: rounds of the alternation
CG_ITERATIONS = 40
TOLERANCE = 5e-4  # largest |y − D x| accepted, in model units: 1/16 of a grey level (2/255)


def downsample(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The data pipeline's kernel for making a low-res input: an antialiased (bilinear) resize."""
    return resize_images(images, tuple(size))


def upsampled_input(low: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The low-res input enlarged (bicubic) to the output's size: the reference of the colour fixes."""
    return resize_images(low, tuple(size), "bicubic")


def adain(images: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """Per image and channel, the output's values moved to the upsampled input's mean and std."""
    reference = upsampled_input(low, images.shape[-2:])
    mean, std = images.mean((-2, -1), keepdim=True), images.std((-2, -1), keepdim=True)
    target_mean, target_std = reference.mean((-2, -1), keepdim=True), reference.std((-2, -1), keepdim=True)
    return (images - mean) / std.clamp_min(1e-6) * target_std + target_mean


def wavelet_bands(images: torch.Tensor, levels: int = WAVELET_LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low): the low band after ``levels`` dilated binomial blurs, and the rest (their sum is
    ``images``). Each blur adds up nine shifted views of the padded image, so it needs no more memory
    than two copies of it (a convolution would unfold nine)."""
    weights = torch.tensor([1.0, 2.0, 1.0]) / 4
    low = images
    for level in range(levels):
        dilation = 2**level
        padded = F.pad(low, (dilation,) * 4, mode="replicate")
        height, width = low.shape[-2:]
        blurred = torch.zeros_like(low)
        for row in range(3):
            for column in range(3):
                top, left = row * dilation, column * dilation
                shifted = padded[..., top : top + height, left : left + width]
                blurred.add_(shifted, alpha=float(weights[row] * weights[column]))
        low = blurred
    return images - low, low


def wavelet(images: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """The output's high bands over the upsampled input's low band."""
    high, _ = wavelet_bands(images)
    _, reference_low = wavelet_bands(upsampled_input(low, images.shape[-2:]))
    return high + reference_low


def per_channel_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum((-2, -1), keepdim=True)


def conjugate_gradients(
    operator: Callable[[torch.Tensor], torch.Tensor], rhs: torch.Tensor, iterations: int, tolerance: float
) -> torch.Tensor:
    """Solves ``operator(z) = rhs`` for a symmetric positive definite operator, each image channel
    separately (its own step sizes), until every residual is below ``tolerance``."""
    solution = torch.zeros_like(rhs)
    residual = rhs.clone()
    direction = residual.clone()
    squared = per_channel_dot(residual, residual)
    for _ in range(iterations):
        if residual.abs().max() < tolerance:
            break
        image = operator(direction)
        step = squared / per_channel_dot(direction, image).clamp_min(1e-30)
        solution += step * direction
        residual -= step * image
        new_squared = per_channel_dot(residual, residual)
        direction = residual + new_squared / squared.clamp_min(1e-30) * direction
        squared = new_squared
    return solution


def projection(images: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """The output moved to the nearest image in [-1, 1] whose downsampling is the input (alternating
    the exact projection with a clamp; where no such image exists, as for an input sharpened past what
    any image in range downsamples to, it ends near the closest compromise)."""
    size = tuple(low.shape[-2:])
    _, adjoint = torch.func.vjp(lambda x: downsample(x, size), images)  # D is linear: one adjoint serves
    transposed = lambda v: adjoint(v)[0]  # noqa: E731
    gram = lambda v: downsample(transposed(v), size)  # noqa: E731
    result = images
    for _ in range(PROJECTION_ROUNDS):
        error = low - downsample(result, size)
        if error.abs().max() < TOLERANCE:
            break
        correction = transposed(conjugate_gradients(gram, error, CG_ITERATIONS, TOLERANCE))
        result = (result + correction).clamp(-1, 1)
    return result


STEPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "adain": adain,
    "wavelet": wavelet,
    "projection": projection,
}


def check_consistency_mode(mode: str, key: str = "consistency") -> None:
    if mode not in CONSISTENCY_MODES:
        raise FMBoostError(
            f"unknown consistency step {mode!r}; choose one of {', '.join(CONSISTENCY_MODES)}", key
        )


def enforce_consistency(images: torch.Tensor, low: torch.Tensor, mode: str) -> torch.Tensor:
    """``images`` [B, 3, H, W] corrected against their low-res inputs ``low`` [B, 3, h, w] by ``mode``
    (one of :data:`CONSISTENCY_MODES`); float32 model images in [-1, 1].

    Every step treats each channel of each image on its own, so they run one at a time: the step's
    memory beyond its input is the result and a few single-channel buffers, whatever the batch (at 2048²,
    123-276 MB by step: ``bench/consistency_step.py --memory 2048``).
    """
    check_consistency_mode(mode)
    images = images.float()
    if mode == "none":
        return images
    if low.shape[:2] != images.shape[:2]:
        raise FMBoostError(
            f"low-res inputs of shape {tuple(low.shape)} do not match images {tuple(images.shape)}"
        )
    low = low.to(images.device, torch.float32)
    result = torch.empty_like(images)
    with torch.no_grad():
        for index in range(images.shape[0]):
            for channel in range(images.shape[1]):
                part = (slice(index, index + 1), slice(channel, channel + 1))
                result[part] = STEPS[mode](images[part], low[part]).clamp(-1, 1)
    return result
