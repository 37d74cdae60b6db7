r"""Offline detail metrics: how much fine detail an upsampler adds, measured against the ground truth.

FID needs Inception weights that cannot always be had; these need none. For each image and its ground
truth, on luminance (Rec. 601) with a 2-D Hann window, the power spectrum is averaged over rings of
equal spatial frequency. Only the band the low-res input cannot contain counts: frequencies above its
Nyquist limit, :math:`f > 0.5 / s` cycles per pixel for an upscaling factor :math:`s`, up to 0.5.

- ``hf_ratio`` = generated ÷ ground-truth energy in that band: 1 is right, below 1 is blurry (bicubic,
  regression), above 1 is noisier than the truth.
- ``spectral_distance`` = mean over the band's rings of :math:`|\log_{10} P_{gen} - \log_{10} P_{gt}|`:
  0 is a perfect spectral match; lower is better.
"""

import numpy as np
import torch

EPSILON = 1e-12


def luminance(images: torch.Tensor) -> np.ndarray:
    """uint8 RGB [B, 3, H, W] → float64 luminance in [0, 1], [B, H, W]."""
    rgb = images.double().numpy() / 255.0
    return 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]


def radial_power_spectrum(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ring frequencies (cycles/pixel, ring centres) and mean power per ring, [B, R], of windowed images."""
    _, height, width = images.shape
    window = np.outer(np.hanning(height), np.hanning(width))
    centred = (images - images.mean(axis=(1, 2), keepdims=True)) * window
    power = np.abs(np.fft.fft2(centred)) ** 2
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(height), np.fft.fftfreq(width), indexing="ij"))
    ring_width = 1.0 / max(height, width)
    rings = np.minimum((radius / ring_width).astype(int), int(0.5 / ring_width))
    counts = np.bincount(rings.ravel())
    sums = np.stack([np.bincount(rings.ravel(), weights=p.ravel(), minlength=len(counts)) for p in power])
    return (np.arange(len(counts)) + 0.5) * ring_width, sums / np.maximum(counts, 1)


def detail_metrics(generated: torch.Tensor, real: torch.Tensor, upscale: int) -> dict[str, torch.Tensor]:
    """Per-image ``hf_ratio`` and ``spectral_distance`` of uint8 images against the ground truth."""
    frequencies, generated_power = radial_power_spectrum(luminance(generated))
    _, real_power = radial_power_spectrum(luminance(real))
    band = (frequencies > 0.5 / upscale) & (frequencies <= 0.5)
    if not band.any():
        raise ValueError(
            f"images of {real.shape[-1]} px have no frequencies above the ×{upscale} Nyquist limit"
        )
    ratio = generated_power[:, band].sum(axis=1) / np.maximum(real_power[:, band].sum(axis=1), EPSILON)
    distance = np.abs(np.log10(generated_power[:, band] + EPSILON) - np.log10(real_power[:, band] + EPSILON))
    return {"hf_ratio": torch.from_numpy(ratio), "spectral_distance": torch.from_numpy(distance.mean(axis=1))}
