import numpy as np
import pytest
import torch
from scipy import linalg

from evaluation.frechet import FeatureStatistics, frechet_distance
from evaluation.pfid import native_crops, paired_crops


def direct_frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(sigma_a @ sigma_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sigma_a + sigma_b - 2 * root))


def test_frechet_distance_matches_a_direct_scipy_computation():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 6)), rng.normal(0.3, 1.5, size=(300, 6))
    assert frechet_distance(FeatureStatistics.of(a), FeatureStatistics.of(b)) == pytest.approx(
        direct_frechet(a, b), rel=1e-6
    )


def test_identical_sets_are_at_distance_zero():
    features = np.random.default_rng(1).normal(size=(200, 5))
    assert frechet_distance(FeatureStatistics.of(features), FeatureStatistics.of(features)) == pytest.approx(
        0, abs=1e-6
    )


def test_shifted_gaussians_give_the_closed_form():
    rng = np.random.default_rng(2)
    base = rng.normal(size=(5000, 4))
    shift = np.array([1.0, -2.0, 0.5, 0.0])
    # same covariance, so d² = |shift|² exactly for the sample statistics
    distance = frechet_distance(FeatureStatistics.of(base), FeatureStatistics.of(base + shift))
    assert distance == pytest.approx(float((shift**2).sum()), rel=1e-6)


def test_merged_shard_statistics_equal_the_statistics_of_the_whole_set(tmp_path):
    features = np.random.default_rng(3).normal(size=(301, 7))
    shards = [FeatureStatistics.of(chunk) for chunk in np.array_split(features, 4)]
    shards[1].save(tmp_path / "s.npz")
    shards[1] = FeatureStatistics.load(tmp_path / "s.npz")
    merged = shards[0].merge(shards[1]).merge(shards[2]).merge(shards[3])
    whole = FeatureStatistics.of(features)
    assert merged.count == whole.count == 301
    np.testing.assert_allclose(merged.mean, features.mean(0), rtol=1e-12)
    np.testing.assert_allclose(merged.covariance, np.cov(features, rowvar=False), rtol=1e-10, atol=1e-12)


def test_pfid_fmboost_crops_are_paired_and_have_the_crop_size():
    real = torch.arange(2 * 3 * 40 * 50, dtype=torch.float32).reshape(2, 3, 40, 50)
    generated = real + 0.5  # same layout, so paired crops differ by exactly 0.5
    real_crops, generated_crops = paired_crops(
        real, generated, size=16, count=4, rng=np.random.default_rng(0)
    )
    assert real_crops.shape == generated_crops.shape == (8, 3, 16, 16)
    torch.testing.assert_close(generated_crops - real_crops, torch.full_like(real_crops, 0.5))
    assert len({tuple(c[0, 0, :2].tolist()) for c in real_crops[:4]}) > 1, "offsets are random"


def test_pfid_anyres_takes_one_native_resolution_crop_per_image():
    images = torch.zeros(3, 3, 320, 400, dtype=torch.uint8)
    assert native_crops(images, 299, np.random.default_rng(0)).shape == (3, 3, 299, 299)
    with pytest.raises(ValueError, match="does not fit"):
        native_crops(images, 512, np.random.default_rng(0))
