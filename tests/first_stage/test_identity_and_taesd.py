import pytest
import torch

from fmboost.config import FirstStageConfig
from fmboost.errors import WeightsError
from fmboost.first_stage import build_first_stage
from fmboost.first_stage.taesd import TinyAutoencoder
from tests.conftest import photo, psnr


def test_identity_first_stage_is_pixel_space():
    first_stage = build_first_stage(FirstStageConfig(name="identity"))
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    torch.testing.assert_close(first_stage.decode(first_stage.encode(x)), x)
    assert (first_stage.latent_channels, first_stage.downsampling_factor) == (3, 1)
    assert (first_stage.scale, first_stage.shift) == (1.0, 0.0)


def test_scale_and_shift_follow_the_design_formula_and_invert():
    first_stage = build_first_stage(FirstStageConfig(name="identity", scale=0.5, shift=0.2))
    z = torch.tensor([1.2])
    torch.testing.assert_close(first_stage.scale_latents(z), torch.tensor([0.5]))
    torch.testing.assert_close(first_stage.unscale_latents(first_stage.scale_latents(z)), z)


def test_taef2_round_trips_a_real_photo_above_25_db(taef2_dir):
    first_stage = build_first_stage(FirstStageConfig(name="taesd", path=str(taef2_dir)))
    assert (first_stage.latent_channels, first_stage.downsampling_factor) == (32, 8)
    image = photo("astronaut", 256)
    latents = first_stage.encode(image)
    assert latents.shape == (1, 32, 32, 32)
    assert 0.5 < latents.std().item() < 1.2, "TAEF2 latents have std ≈ 0.83 and need no scaling"
    assert psnr(first_stage.decode(latents), image) > 25


def test_taef2_runs_nhwc_and_hands_back_what_nchw_gives_in_the_usual_layout(taef2_dir):
    first_stage = TinyAutoencoder(taef2_dir, tile_size=None)
    image = photo("astronaut", 128)
    latents, decoded = first_stage.encode(image), first_stage.decode(first_stage.encode(image))
    assert latents.is_contiguous() and decoded.is_contiguous()
    first_stage.to(memory_format=torch.contiguous_format)  # the NCHW reference, same weights
    with torch.no_grad():
        reference_latents = first_stage.encoder((image + 1) / 2)
        reference_decoded = first_stage.decoder(reference_latents) * 2 - 1
    torch.testing.assert_close(latents, reference_latents, rtol=0, atol=1e-4)
    torch.testing.assert_close(decoded, reference_decoded, rtol=0, atol=1e-4)


def test_taef2_tiled_decode_matches_untiled_decode_closely(taef2_dir):
    first_stage = TinyAutoencoder(taef2_dir, tile_size=None)
    latents = first_stage.encode(photo("chelsea", 512))  # 64² latents
    whole = first_stage.decode(latents)
    first_stage.tile_size, first_stage.tile_overlap = 48, 16
    tiled = first_stage.decode(latents)
    assert tiled.shape == whole.shape
    assert psnr(tiled, whole) > 30


def test_taef2_tiled_encode_matches_untiled_encode_closely(taef2_dir):
    first_stage = TinyAutoencoder(taef2_dir, tile_size=None)
    image = photo("coffee", 512)
    whole = first_stage.encode(image)
    first_stage.tile_size, first_stage.tile_overlap = 48, 16
    tiled = first_stage.encode(image)
    relative_error = (tiled - whole).norm() / whole.norm()
    assert relative_error < 0.1


def test_missing_or_incomplete_taesd_directory_is_one_clear_line(tmp_path):
    with pytest.raises(WeightsError, match="is not a directory"):
        TinyAutoencoder(tmp_path / "nope")
    (tmp_path / "taef2_encoder.pth").write_bytes(b"")
    with pytest.raises(WeightsError, match=r"exactly one \*decoder.pth"):
        TinyAutoencoder(tmp_path)


def test_weights_of_another_architecture_are_refused(tmp_path):
    torch.save({"14.weight": torch.zeros(4, 64, 3, 3)}, tmp_path / "x_encoder.pth")
    torch.save({}, tmp_path / "x_decoder.pth")
    with pytest.raises(WeightsError, match="not a tiny-autoencoder state dict"):
        TinyAutoencoder(tmp_path)
