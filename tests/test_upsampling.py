import pytest
import torch
import torch.nn.functional as F

from fmboost.errors import ConfigError
from fmboost.first_stage.identity import IdentityFirstStage
from fmboost.flow.upsampling import UPSAMPLERS, upsample_latents
from fmboost.image_processing import resize_images
from tests.conftest import photo


def test_downsampling_is_antialiased_so_no_detail_falls_between_samples():
    impulse = torch.zeros(1, 1, 16, 16)
    impulse[..., 7, 7] = 1.0  # between the sample points of a plain 4x bilinear shrink, away from borders
    aliased = F.interpolate(impulse, size=(4, 4), mode="bilinear", align_corners=False)
    assert aliased.sum() == 0
    small = resize_images(impulse, (4, 4))
    assert small.sum().item() * 16 == pytest.approx(1.0, rel=1e-5)


def test_all_modes_reach_the_high_res_grid():
    assert UPSAMPLERS.names() == ["bilinear", "nearest", "psu_pixel", "psu_roundtrip"]
    z_low = torch.randn(2, 3, 8, 8)
    for mode in UPSAMPLERS.names():
        assert upsample_latents(z_low, mode, IdentityFirstStage(), 2).shape == (2, 3, 16, 16)


def test_nearest_repeats_each_latent_pixel():
    z_low = torch.arange(4.0).reshape(1, 1, 2, 2)
    up = upsample_latents(z_low, "nearest", IdentityFirstStage(), 2)
    torch.testing.assert_close(
        up[0, 0], torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
    )


class ScaledTwiceFirstStage(IdentityFirstStage):
    """A 'first stage' whose decoder doubles values: makes the decode step of PSU visible."""

    def _decode(self, latents):
        return latents * 2


def test_psu_roundtrip_decodes_upsamples_in_pixels_and_encodes():
    z_low = torch.rand(1, 3, 4, 4) * 0.4
    up = upsample_latents(z_low, "psu_roundtrip", ScaledTwiceFirstStage(), 2)
    torch.testing.assert_close(up, resize_images(z_low * 2, (8, 8)))


def test_psu_pixel_uses_the_low_res_image_when_it_exists():
    z_low, image_low = torch.zeros(1, 3, 4, 4), torch.rand(1, 3, 4, 4) * 2 - 1
    up = upsample_latents(z_low, "psu_pixel", IdentityFirstStage(), 2, image_low=image_low)
    torch.testing.assert_close(up, resize_images(image_low, (8, 8)).clamp(-1, 1))
    without_image = upsample_latents(z_low, "psu_pixel", ScaledTwiceFirstStage(), 2)
    torch.testing.assert_close(without_image, torch.zeros(1, 3, 8, 8))


def test_in_pixel_space_psu_is_bilinear_upsampling():
    low = resize_images(photo("coffee", 64), (32, 32))
    psu = upsample_latents(low, "psu_roundtrip", IdentityFirstStage(), 2)
    torch.testing.assert_close(psu, upsample_latents(low, "bilinear", IdentityFirstStage(), 2).clamp(-1, 1))


def test_unknown_mode_names_the_key_and_the_choices():
    with pytest.raises(
        ConfigError, match="flow.upsampling: unknown upsampling mode 'bicubic'; choose one of"
    ):
        upsample_latents(torch.zeros(1, 3, 2, 2), "bicubic", IdentityFirstStage(), 2)
