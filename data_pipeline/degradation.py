"""Real-ESRGAN's second-order degradation model (Wang et al., ICCV-W 2021), applied at encode time.

The paper's real-world super-resolution (Sec. 4.4) fine-tunes CFM on low-res images degraded as in
Real-ESRGAN. :func:`degrade` turns a clean high-res crop into a degraded low-res image
``factor`` times smaller: two rounds of blur → random resize → Gaussian or Poisson noise → JPEG, then a
resize to the low-res size with a final sinc filter and JPEG, in random order. The high-res target stays
clean. The defaults of :class:`DegradationConfig` are the published ranges of Real-ESRGAN's
``train_realesrnet_x4plus.yml``.

Everything random is drawn from one seed per sample, so a rerun gives the same bytes, and every draw is
returned as a JSON-ready record that encoding stores in the sample's ``.json``.

Primitives come from kornia (filtering with reflect padding, the JPEG codec, greyscale) and torch
(resizing, Poisson sampling, Bessel J1); kornia is pure torch, batched and maintained, and runs the
same on CPU and GPU. It has no Real-ESRGAN kernel families, so the kernels are built here from their
formulas (Real-ESRGAN Sec. 3.1).
"""

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from kornia.color import rgb_to_grayscale
from kornia.enhance import jpeg_codec_differentiable
from kornia.filters import filter2d

from fmboost.errors import ConfigError

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")
RESIZE_DIRECTIONS = ("up", "down", "keep")


def _odd_sizes() -> list[int]:
    return list(range(7, 22, 2))


@dataclass
class BlurConfig:
    """One round's blur kernel: a Gaussian-family kernel of a random type, or (``sinc_prob``) a sinc."""

    kernel_sizes: list[int] = field(default_factory=_odd_sizes)
    kernel_types: list[str] = field(default_factory=lambda: list(KERNEL_TYPES))
    kernel_probs: list[float] = field(default_factory=lambda: [0.45, 0.25, 0.12, 0.03, 0.12, 0.03])
    sinc_prob: float = 0.1
    sigma_range: list[float] = field(default_factory=lambda: [0.2, 3.0])
    generalized_beta_range: list[float] = field(default_factory=lambda: [0.5, 4.0])
    plateau_beta_range: list[float] = field(default_factory=lambda: [1.0, 2.0])


@dataclass
class RoundConfig:
    """One degradation round: blur (with ``blur_prob``), resize, noise, JPEG."""

    blur_prob: float = 1.0
    blur: BlurConfig = field(default_factory=BlurConfig)
    resize_probs: list[float] = field(default_factory=lambda: [0.2, 0.7, 0.1])  # up, down, keep
    resize_range: list[float] = field(default_factory=lambda: [0.15, 1.5])
    gaussian_noise_prob: float = 0.5  # otherwise Poisson noise
    noise_range: list[float] = field(default_factory=lambda: [1.0, 30.0])  # σ in 8-bit levels
    poisson_scale_range: list[float] = field(default_factory=lambda: [0.05, 3.0])
    gray_noise_prob: float = 0.4
    jpeg_range: list[float] = field(default_factory=lambda: [30.0, 95.0])


def _second_round() -> RoundConfig:
    return RoundConfig(
        blur_prob=0.8,
        blur=BlurConfig(sigma_range=[0.2, 1.5]),
        resize_probs=[0.3, 0.4, 0.3],
        resize_range=[0.3, 1.2],
        noise_range=[1.0, 25.0],
        poisson_scale_range=[0.05, 2.5],
    )


@dataclass
class DegradationConfig:
    """The ``degradation:`` section of an encode config (``null``: clean low-res images)."""

    first: RoundConfig = field(default_factory=RoundConfig)
    second: RoundConfig = field(default_factory=_second_round)
    final_sinc_prob: float = 0.8
    final_sinc_sizes: list[int] = field(default_factory=_odd_sizes)
    resize_modes: list[str] = field(default_factory=lambda: list(RESIZE_MODES))


def _probability(value: float, key: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{key}: {value} is not a probability in [0, 1]")


def _distribution(probs: list[float], count: int, key: str) -> None:
    if len(probs) != count or any(p < 0 for p in probs) or not math.isclose(sum(probs), 1.0, abs_tol=1e-6):
        raise ConfigError(f"{key}: needs {count} non-negative probabilities that sum to 1, got {probs}")


def _range(values: list[float], key: str, low: float = 0.0) -> None:
    if len(values) != 2 or not low <= values[0] <= values[1]:
        raise ConfigError(f"{key}: needs [min, max] with {low} <= min <= max, got {values}")


def _kernel_sizes(sizes: list[int], key: str) -> None:
    if not sizes or any(size < 3 or size % 2 == 0 for size in sizes):
        raise ConfigError(f"{key}: kernel sizes must be odd and at least 3, got {sizes}")


def validate_degradation(config: DegradationConfig, key: str = "degradation") -> None:
    for name in ("first", "second"):
        round_config: RoundConfig = getattr(config, name)
        prefix = f"{key}.{name}"
        blur = round_config.blur
        _probability(round_config.blur_prob, f"{prefix}.blur_prob")
        _kernel_sizes(blur.kernel_sizes, f"{prefix}.blur.kernel_sizes")
        unknown = [t for t in blur.kernel_types if t not in KERNEL_TYPES]
        if unknown or not blur.kernel_types:
            raise ConfigError(f"{prefix}.blur.kernel_types: choose from {', '.join(KERNEL_TYPES)}")
        _distribution(blur.kernel_probs, len(blur.kernel_types), f"{prefix}.blur.kernel_probs")
        _probability(blur.sinc_prob, f"{prefix}.blur.sinc_prob")
        _range(blur.sigma_range, f"{prefix}.blur.sigma_range", low=1e-3)
        _range(blur.generalized_beta_range, f"{prefix}.blur.generalized_beta_range", low=1e-3)
        _range(blur.plateau_beta_range, f"{prefix}.blur.plateau_beta_range", low=1e-3)
        _distribution(round_config.resize_probs, 3, f"{prefix}.resize_probs (up, down, keep)")
        _range(round_config.resize_range, f"{prefix}.resize_range", low=1e-3)
        if not round_config.resize_range[0] <= 1.0 <= round_config.resize_range[1]:
            raise ConfigError(f"{prefix}.resize_range: must contain 1 (down below it, up above it)")
        for name_prob in ("gaussian_noise_prob", "gray_noise_prob"):
            _probability(getattr(round_config, name_prob), f"{prefix}.{name_prob}")
        _range(round_config.noise_range, f"{prefix}.noise_range")
        _range(round_config.poisson_scale_range, f"{prefix}.poisson_scale_range")
        _range(round_config.jpeg_range, f"{prefix}.jpeg_range", low=1.0)
        if round_config.jpeg_range[1] > 100:
            raise ConfigError(f"{prefix}.jpeg_range: JPEG quality is at most 100")
    _probability(config.final_sinc_prob, f"{key}.final_sinc_prob")
    _kernel_sizes(config.final_sinc_sizes, f"{key}.final_sinc_sizes")
    if not config.resize_modes or any(m not in RESIZE_MODES for m in config.resize_modes):
        raise ConfigError(f"{key}.resize_modes: choose from {', '.join(RESIZE_MODES)}")


def sample_seed(seed: int, key: str) -> int:
    """The degradation seed of one sample: fixed by the recipe's seed and the sample's key."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}:degradation".encode()).digest()[:8], "big")


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    half = size // 2
    return np.meshgrid(np.arange(-half, half + 1), np.arange(-half, half + 1), indexing="xy")


def gaussian_family_kernel(
    size: int, sigma_x: float, sigma_y: float, angle: float, beta: float, plateau: bool
) -> np.ndarray:
    """A normalised ``size``² kernel over the rotated covariance Σ = R diag(σx², σy²) Rᵀ, with
    q = Cᵀ Σ⁻¹ C: ``exp(-½ q^β)`` (β = 1 is the Gaussian, else the generalised Gaussian) or, for a
    plateau, ``1 / (1 + q^β)``."""
    x, y = _grid(size)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    inverse = np.linalg.inv(rotation @ np.diag([sigma_x**2, sigma_y**2]) @ rotation.T)
    coords = np.stack([x, y], axis=-1).astype(np.float64)
    q = np.einsum("...i,ij,...j->...", coords, inverse, coords)
    kernel = 1.0 / (1.0 + q**beta) if plateau else np.exp(-0.5 * q**beta)
    return kernel / kernel.sum()


def sinc_kernel(size: int, cutoff: float) -> np.ndarray:
    """A normalised circular low-pass (sinc) kernel: ``ωc J1(ωc r) / (2π r)``, ``ωc² / 4π`` at r = 0.

    It mimics the ringing and overshoot of real resampling and JPEG."""
    x, y = _grid(size)
    radius = torch.from_numpy(np.hypot(x, y))
    bessel = torch.special.bessel_j1(cutoff * radius).numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        kernel = cutoff * bessel / (2 * math.pi * radius.numpy())
    kernel[size // 2, size // 2] = cutoff**2 / (4 * math.pi)
    return kernel / kernel.sum()


def _uniform(rng: np.random.Generator, bounds: list[float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _beta(rng: np.random.Generator, bounds: list[float]) -> float:
    """β below 1 (heavier tails) and above 1 (flatter top) equally often, as Real-ESRGAN draws it."""
    if rng.uniform() < 0.5 and bounds[0] < 1:
        return _uniform(rng, [bounds[0], min(1.0, bounds[1])])
    return _uniform(rng, [max(1.0, bounds[0]), bounds[1]])


def draw_sinc(rng: np.random.Generator, sizes: list[int], record: dict[str, Any]) -> np.ndarray:
    size = int(rng.choice(sizes))
    low = math.pi / 3 if size < 13 else math.pi / 5
    cutoff = _uniform(rng, [low, math.pi])
    record.update(kernel="sinc", size=size, cutoff=cutoff)
    return sinc_kernel(size, cutoff)


def draw_blur_kernel(rng: np.random.Generator, blur: BlurConfig, record: dict[str, Any]) -> np.ndarray:
    """A random kernel of ``blur``'s families; what was drawn goes into ``record``."""
    if rng.uniform() < blur.sinc_prob:
        return draw_sinc(rng, blur.kernel_sizes, record)
    size = int(rng.choice(blur.kernel_sizes))
    kind = str(rng.choice(blur.kernel_types, p=blur.kernel_probs))
    sigma_x = _uniform(rng, blur.sigma_range)
    isotropic = kind.endswith("iso") and not kind.endswith("aniso")
    sigma_y = sigma_x if isotropic else _uniform(rng, blur.sigma_range)
    angle = 0.0 if isotropic else _uniform(rng, [-math.pi, math.pi])
    beta = 1.0
    if kind.startswith("generalized"):
        beta = _beta(rng, blur.generalized_beta_range)
    elif kind.startswith("plateau"):
        beta = _beta(rng, blur.plateau_beta_range)
    record.update(kernel=kind, size=size, sigma=[sigma_x, sigma_y], angle=angle, beta=beta)
    return gaussian_family_kernel(size, sigma_x, sigma_y, angle, beta, kind.startswith("plateau"))


def _filter(image: torch.Tensor, kernel: np.ndarray | None) -> torch.Tensor:
    """``image`` filtered with ``kernel`` (``None``: unchanged), reflect-padded as Real-ESRGAN pads;
    an image too small to reflect at the kernel's half width is padded by replication."""
    if kernel is None:
        return image
    border = "reflect" if min(image.shape[-2:]) > kernel.shape[-1] // 2 else "replicate"
    return filter2d(image, torch.from_numpy(kernel).to(image)[None], border_type=border)


def _resize(image: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    size = (max(1, size[0]), max(1, size[1]))
    if mode == "area":
        return F.interpolate(image, size=size, mode="area")
    return F.interpolate(image, size=size, mode=mode, align_corners=False)


def _noise(
    image: torch.Tensor,
    settings: RoundConfig,
    rng: np.random.Generator,
    generator: torch.Generator,
    record: dict[str, Any],
) -> torch.Tensor:
    gray = bool(rng.uniform() < settings.gray_noise_prob)
    if rng.uniform() < settings.gaussian_noise_prob:
        sigma = _uniform(rng, settings.noise_range)
        shape = (1, 1, *image.shape[-2:]) if gray else image.shape
        noise = torch.randn(shape, generator=generator, dtype=image.dtype) * sigma / 255.0
        record["noise"] = {"kind": "gaussian", "sigma": sigma, "gray": gray}
    else:
        scale = _uniform(rng, settings.poisson_scale_range)
        source = rgb_to_grayscale(image) if gray else image
        levels = (source * 255.0).round().clamp(0, 255) / 255.0
        values = 2.0 ** math.ceil(math.log2(max(2, int(torch.unique(levels).numel()))))
        noise = (torch.poisson(levels * values, generator=generator) / values - levels) * scale
        record["noise"] = {"kind": "poisson", "scale": scale, "gray": gray}
    return (image + noise).clamp(0, 1)


def _jpeg(image: torch.Tensor, quality: float) -> torch.Tensor:
    return jpeg_codec_differentiable(image.clamp(0, 1), torch.tensor([quality], dtype=image.dtype))


def _random_resize(
    image: torch.Tensor,
    settings: RoundConfig,
    modes: list[str],
    rng: np.random.Generator,
    reference: tuple[int, int],
    record: dict[str, Any],
) -> torch.Tensor:
    direction = str(rng.choice(RESIZE_DIRECTIONS, p=settings.resize_probs))
    bounds = {"up": [1.0, settings.resize_range[1]], "down": [settings.resize_range[0], 1.0]}
    scale = _uniform(rng, bounds[direction]) if direction in bounds else 1.0
    mode = str(rng.choice(modes))
    record["resize"] = {"direction": direction, "scale": scale, "mode": mode}
    return _resize(image, (int(reference[0] * scale), int(reference[1] * scale)), mode)


def _round(
    image: torch.Tensor,
    settings: RoundConfig,
    config: DegradationConfig,
    rng: np.random.Generator,
    generator: torch.Generator,
    reference: tuple[int, int],
) -> tuple[torch.Tensor, dict[str, Any]]:
    """One round: blur → resize (relative to ``reference``) → noise → JPEG."""
    record: dict[str, Any] = {"blur": None}
    if rng.uniform() < settings.blur_prob:
        record["blur"] = {}
        image = _filter(image, draw_blur_kernel(rng, settings.blur, record["blur"]))
    image = _random_resize(image, settings, config.resize_modes, rng, reference, record)
    image = _noise(image, settings, rng, generator, record)
    record["jpeg"] = _uniform(rng, settings.jpeg_range)
    return _jpeg(image, record["jpeg"]), record


def degrade(
    high: torch.Tensor, factor: int, config: DegradationConfig, seed: int
) -> tuple[torch.Tensor, dict[str, Any]]:
    """A clean uint8 [3, H, W] crop → a degraded uint8 [3, H/factor, W/factor] image and the record of
    every draw (JSON-ready). Same ``seed``, same bytes."""
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed % 2**63)
    image = high[None].float() / 255.0
    height, width = high.shape[-2:]
    low_size = (height // factor, width // factor)
    image, first = _round(image, config.first, config, rng, generator, (height, width))
    image, second = _round(image, config.second, config, rng, generator, low_size)
    final: dict[str, Any] = {"sinc": None}
    sinc = None
    if rng.uniform() < config.final_sinc_prob:
        final["sinc"] = {}
        sinc = draw_sinc(rng, config.final_sinc_sizes, final["sinc"])
    final["mode"] = str(rng.choice(config.resize_modes))
    final["jpeg"] = _uniform(rng, config.second.jpeg_range)
    final["order"] = "resize_sinc_jpeg" if rng.uniform() < 0.5 else "jpeg_resize_sinc"
    if final["order"] == "resize_sinc_jpeg":
        image = _jpeg(_filter(_resize(image, low_size, final["mode"]), sinc), final["jpeg"])
    else:
        image = _filter(_resize(_jpeg(image, final["jpeg"]), low_size, final["mode"]), sinc)
    low = (image[0].clamp(0, 1) * 255.0).round().to(torch.uint8)
    return low, {"seed": seed, "first": first, "second": second, "final": final}
