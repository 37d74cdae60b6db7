"""Detail metrics against cases with known answers."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from evaluation.detail_metrics import detail_metrics
from tests.conftest import photo


def uint8(images: torch.Tensor) -> torch.Tensor:
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@pytest.fixture(scope="module")
def truth() -> torch.Tensor:
    return torch.cat([uint8(photo(name, 128)) for name in ("astronaut", "coffee")])


def blurred(images: torch.Tensor, radius: float) -> torch.Tensor:
    out = [
        np.asarray(Image.fromarray(i.permute(1, 2, 0).numpy()).filter(ImageFilter.GaussianBlur(radius)))
        for i in images
    ]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


def test_identical_images_have_a_ratio_of_one_and_no_distance(truth):
    metrics = detail_metrics(truth, truth, upscale=2)
    torch.testing.assert_close(metrics["hf_ratio"], torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(metrics["spectral_distance"], torch.zeros(2, dtype=torch.float64))


def test_a_gaussian_blur_loses_high_frequency_energy(truth):
    metrics = detail_metrics(blurred(truth, 1.5), truth, upscale=2)
    assert (metrics["hf_ratio"] < 0.5).all() and (metrics["spectral_distance"] > 0.2).all()


def test_added_white_noise_adds_high_frequency_energy(truth):
    noise = torch.randn(truth.shape, generator=torch.Generator().manual_seed(0)) * 20
    noisy = (truth.float() + noise).clamp(0, 255).round().to(torch.uint8)
    metrics = detail_metrics(noisy, truth, upscale=2)
    assert (metrics["hf_ratio"] > 1.2).all() and (metrics["spectral_distance"] > 0.05).all()


def test_more_blur_is_further_from_the_truth_and_the_band_follows_the_upscaling_factor(truth):
    light, heavy = (detail_metrics(blurred(truth, r), truth, upscale=4) for r in (0.7, 2.0))
    assert (heavy["hf_ratio"] < light["hf_ratio"]).all()
    assert (heavy["spectral_distance"] > light["spectral_distance"]).all()
