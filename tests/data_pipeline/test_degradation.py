"""Real-ESRGAN's degradation model at encode time: formulas, determinism, only the low-res image changes."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import webdataset as wds
from kornia.color import rgb_to_grayscale

from data_pipeline.config import load_encode_config
from data_pipeline.degradation import (
    BlurConfig,
    DegradationConfig,
    RoundConfig,
    degrade,
    gaussian_family_kernel,
    sample_seed,
    sinc_kernel,
)
from data_pipeline.encode_shards import run
from fmboost.data import shards as schema
from fmboost.data.shards import Manifest
from fmboost.errors import ConfigError
from fmboost.image_processing import from_uint8, resize_images, to_uint8
from tests.conftest import photo
from tests.data_pipeline.builders import good_shards, tiny_encode_config


def crop(size: int = 64) -> torch.Tensor:
    return to_uint8(photo("astronaut", size))[0]


def gentle() -> DegradationConfig:
    """Every draw switched off: no blur, no resize, no noise, near-lossless JPEG, no sinc."""
    off = RoundConfig(
        blur_prob=0.0,
        resize_probs=[0.0, 0.0, 1.0],
        noise_range=[0.0, 0.0],
        poisson_scale_range=[0.0, 0.0],
        gaussian_noise_prob=1.0,
        jpeg_range=[100.0, 100.0],
    )
    return DegradationConfig(first=off, second=off, final_sinc_prob=0.0, resize_modes=["area"])


def test_an_isotropic_gaussian_kernel_matches_the_hand_computed_one():
    kernel = gaussian_family_kernel(3, 1.0, 1.0, 0.0, 1.0, plateau=False)
    by_hand = np.exp(-0.5 * np.array([[2, 1, 2], [1, 0, 1], [2, 1, 2]], dtype=float))
    np.testing.assert_allclose(kernel, by_hand / by_hand.sum())


def test_a_plateau_kernel_is_one_over_one_plus_q_to_the_beta():
    kernel = gaussian_family_kernel(3, 2.0, 2.0, 0.0, 1.5, plateau=True)
    q = np.array([[2, 1, 2], [1, 0, 1], [2, 1, 2]], dtype=float) / 4.0
    by_hand = 1.0 / (1.0 + q**1.5)
    np.testing.assert_allclose(kernel, by_hand / by_hand.sum())


def test_rotating_an_anisotropic_kernel_by_a_right_angle_swaps_its_axes():
    wide = gaussian_family_kernel(9, 3.0, 0.7, 0.0, 1.0, plateau=False)
    turned = gaussian_family_kernel(9, 3.0, 0.7, math.pi / 2, 1.0, plateau=False)
    np.testing.assert_allclose(turned, wide.T, atol=1e-12)
    assert wide[4, 0] > wide[0, 4]  # wide along x


def test_a_sinc_kernel_is_normalised_symmetric_and_peaks_at_its_centre():
    kernel = sinc_kernel(11, math.pi / 2)
    assert kernel.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(kernel, kernel.T, atol=1e-12)
    np.testing.assert_allclose(kernel, kernel[::-1, ::-1], atol=1e-12)
    assert kernel.argmax() == kernel.size // 2
    assert kernel.min() < 0  # the ringing that mimics over-shoot


def test_the_same_seed_gives_the_same_bytes_and_another_seed_other_ones():
    config = DegradationConfig()
    first, record = degrade(crop(), 4, config, seed=7)
    again, record_again = degrade(crop(), 4, config, seed=7)
    other, _ = degrade(crop(), 4, config, seed=8)
    assert first.dtype == torch.uint8 and first.shape == (3, 16, 16)
    assert torch.equal(first, again) and record == record_again
    assert not torch.equal(first, other)
    assert json.loads(json.dumps(record)) == record  # stored as the sample's JSON
    assert record["seed"] == 7 and {"first", "second", "final"} <= set(record)


def test_with_every_draw_switched_off_it_is_a_plain_downsample_up_to_jpeg_chroma():
    high = crop()
    low, record = degrade(high, 4, gentle(), seed=0)
    area = F.interpolate(high[None].float(), size=(16, 16), mode="area")
    assert record["first"]["blur"] is None and record["final"]["sinc"] is None
    # JPEG at quality 100 still subsamples colour, so compare brightness (in 8-bit levels)
    assert (rgb_to_grayscale(low[None].float()) - rgb_to_grayscale(area)).abs().mean() < 1.0


def test_the_published_ranges_degrade_far_more_than_a_plain_downsample():
    high = crop()
    plain = to_uint8(resize_images(from_uint8(high[None]), (16, 16)))[0].int()
    errors = [
        (degrade(high, 4, DegradationConfig(), seed)[0].int() - plain).abs().float().mean()
        for seed in range(4)
    ]
    assert min(errors) > 3.0


def test_the_per_sample_seed_depends_on_the_recipe_seed_and_the_key():
    assert sample_seed(0, "a") == sample_seed(0, "a")
    assert len({sample_seed(0, "a"), sample_seed(1, "a"), sample_seed(0, "b")}) == 3


def test_encoding_degrades_the_low_res_image_and_keeps_the_target_clean(tmp_path):
    spec = good_shards(tmp_path / "in", shards=1, per_shard=4)
    clean = tiny_encode_config(spec, tmp_path / "clean", high_res=64, low_res=16)
    degraded = tiny_encode_config(spec, tmp_path / "degraded", high_res=64, low_res=16)
    degraded.degradation = DegradationConfig()
    run(clean)
    run(degraded)
    read = [
        list(wds.WebDataset(str(schema.shard_path(root, 0)), shardshuffle=False))
        for root in (tmp_path / "clean", tmp_path / "degraded")
    ]
    for clean_sample, degraded_sample in zip(*read, strict=True):
        assert clean_sample[schema.LATENT] == degraded_sample[schema.LATENT]  # the target is clean
        assert clean_sample[schema.LATENT_LOWRES] != degraded_sample[schema.LATENT_LOWRES]
        assert clean_sample[schema.LATENT_PSU] != degraded_sample[schema.LATENT_PSU]  # context from it
        record = json.loads(degraded_sample[schema.METADATA])["fmboost"]["degradation"]
        assert record["seed"] == sample_seed(0, degraded_sample["__key__"])
    manifest = Manifest.load(tmp_path / "degraded")
    assert manifest.preprocessing["degradation"]["first"]["jpeg_range"] == [30.0, 95.0]
    assert "degradation" not in Manifest.load(tmp_path / "clean").preprocessing


def test_a_rerun_of_a_degraded_encoding_is_byte_identical(tmp_path):
    spec = good_shards(tmp_path / "in", shards=1, per_shard=3)
    outputs = []
    for name in ("a", "b"):
        config = tiny_encode_config(spec, tmp_path / name, high_res=64, low_res=16)
        config.degradation = DegradationConfig()
        run(config)
        outputs.append(schema.shard_path(tmp_path / name, 0).read_bytes())
    assert outputs[0] == outputs[1]


def test_the_defaults_are_real_esrgans_published_ranges(tmp_path):
    path = tmp_path / "encode.yaml"
    path.write_text("degradation: {}\n")
    config = load_encode_config(path).degradation
    assert config.first.resize_probs == [0.2, 0.7, 0.1] and config.first.resize_range == [0.15, 1.5]
    assert config.first.noise_range == [1.0, 30.0] and config.first.poisson_scale_range == [0.05, 3.0]
    assert config.second.blur_prob == 0.8 and config.second.blur.sigma_range == [0.2, 1.5]
    assert config.second.resize_probs == [0.3, 0.4, 0.3] and config.second.noise_range == [1.0, 25.0]
    assert config.first.blur == BlurConfig() and config.final_sinc_prob == 0.8
    assert load_encode_config(None).degradation is None


@pytest.mark.parametrize(
    "override, key",
    [
        ("degradation.first.resize_probs=[0.5,0.5,0.5]", "degradation.first.resize_probs"),
        ("degradation.second.blur.kernel_sizes=[4]", "degradation.second.blur.kernel_sizes"),
        ("degradation.first.jpeg_range=[95,30]", "degradation.first.jpeg_range"),
        ("degradation.final_sinc_prob=2", "degradation.final_sinc_prob"),
        ("degradation.resize_modes=[lanczos]", "degradation.resize_modes"),
    ],
)
def test_a_bad_degradation_setting_is_named(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_encode_config(None, ["degradation={}", override])
