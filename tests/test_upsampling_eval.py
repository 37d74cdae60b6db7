"""The core that training validation and evaluation share."""

import numpy as np
import pytest
import torch

from fmboost.config import FlowConfig
from fmboost.consistency import downsample, enforce_consistency
from fmboost.first_stage.identity import IdentityFirstStage
from fmboost.image_processing import from_uint8, to_uint8
from fmboost.inference.upsampling_eval import (
    baseline,
    consistency_input,
    ground_truth,
    low_res_preview,
    score,
    upsample,
    with_consistency,
)
from fmboost.models import FMBoostModel
from tests.conftest import tiny_unet_config


def pixel_batch(with_images: bool = True) -> dict:
    torch.manual_seed(0)
    x1 = torch.rand(2, 3, 16, 16) * 2 - 1
    z_low = torch.nn.functional.avg_pool2d(x1, 2)
    batch = {
        "x1": x1,
        "z_low": z_low,
        "z_up": torch.nn.functional.interpolate(z_low, scale_factor=2.0),
        "keys": ["a", "b"],
    }
    if with_images:
        batch["images"] = to_uint8(x1)
    return batch


def test_baselines_decode_the_context_or_the_latent_resized_low_res():
    batch, first_stage = pixel_batch(), IdentityFirstStage()
    assert torch.equal(baseline("context", batch, first_stage).images, to_uint8(batch["z_up"]))
    bilinear = baseline("latent_bilinear", batch, first_stage)
    assert (
        bilinear.images.shape == (2, 3, 16, 16)
        and bilinear.nfe == 0
        and set(bilinear.timings) == {"sample", "decode"}
    )
    with pytest.raises(ValueError, match="unknown baseline 'bicubicc'"):
        baseline("bicubicc", batch, first_stage)


def test_an_untrained_stage_without_noise_augmentation_returns_its_context():
    """Zero velocity (zero-initialised output) keeps the ODE at x0 = z_up up to 1e-5 noise."""
    model = FMBoostModel(tiny_unet_config(), FlowConfig(noise_aug_step=0), IdentityFirstStage().record())
    batch, first_stage = pixel_batch(), IdentityFirstStage()
    result = upsample(model, batch, first_stage, solver="euler", nfe=4, seed=0)
    assert result.nfe == 4 and set(result.timings) == {"sample", "decode"}
    assert (result.images.int() - baseline("context", batch, first_stage).images.int()).abs().max() <= 1


def test_ground_truth_prefers_stored_images_and_scores_are_per_image():
    batch, first_stage = pixel_batch(), IdentityFirstStage()
    batch["images"] = torch.zeros_like(batch["images"])
    assert torch.equal(ground_truth(batch, first_stage), batch["images"])
    del batch["images"]
    truth = ground_truth(batch, first_stage)
    assert torch.equal(truth, to_uint8(batch["x1"]))
    noisy = (truth.int() + torch.randint(-3, 4, truth.shape)).clamp(0, 255).to(torch.uint8)
    scores = score(noisy, truth)
    assert scores["psnr"].shape == (2,) and (scores["psnr"] > 35).all() and (scores["ssim"] > 0.9).all()
    assert low_res_preview(batch, first_stage, (16, 16)).shape == (2, 3, 16, 16)


def test_the_bicubic_baseline_enlarges_the_decoded_low_res_image_with_pil():
    from PIL import Image

    batch, first_stage = pixel_batch(), IdentityFirstStage()
    result = baseline("bicubic", batch, first_stage)
    low = to_uint8(batch["z_low"])[0].permute(1, 2, 0).numpy()
    expected = np.asarray(Image.fromarray(low).resize((16, 16), Image.Resampling.BICUBIC))
    assert result.images.shape == (2, 3, 16, 16) and result.images.dtype == torch.uint8
    assert np.array_equal(result.images[0].permute(1, 2, 0).numpy(), expected)


def test_the_first_stage_ceiling_decodes_the_ground_truths_own_latent():
    batch, first_stage = pixel_batch(), IdentityFirstStage()
    assert torch.equal(baseline("first_stage_ceiling", batch, first_stage).images, to_uint8(batch["x1"]))


def test_lr_psnr_compares_the_output_and_the_truth_downsampled_as_the_input_was_made():
    truth = pixel_batch()["images"]
    low = downsample(from_uint8(truth), (8, 8))
    # an output with the truth's low band and other detail: far from the truth, consistent with the input
    wrong_detail = from_uint8(truth) + 0.5 * (
        torch.rand(truth.shape, generator=torch.Generator().manual_seed(1)) - 0.5
    )
    held = to_uint8(enforce_consistency(wrong_detail.clamp(-1, 1), low, "projection"))
    scores = score(held, truth, upscale=2)
    assert (scores["lr_psnr"] > 45).all() and (scores["psnr"] < 30).all()
    assert set(score(held, truth)) == {"psnr", "ssim"}  # without the factor: no low-res scores
    assert "lr_ssim" not in scores  # 8-px low-res images are smaller than SSIM's 11-px window
    assert set(score(held.repeat(1, 1, 2, 2), truth.repeat(1, 1, 2, 2), upscale=2)) >= {"lr_psnr", "lr_ssim"}


def test_the_consistency_input_is_the_truth_downsampled_or_for_degraded_inputs_the_decoded_low_res_latent():
    batch, first_stage = pixel_batch(), IdentityFirstStage()
    real = ground_truth(batch, first_stage)
    clean = consistency_input(batch, first_stage, real, degraded=False)
    assert torch.allclose(clean, downsample(from_uint8(real), (8, 8)))
    assert torch.equal(consistency_input(batch, first_stage, real, degraded=True), batch["z_low"])
    raw = upsample(FMBoostModel(tiny_unet_config(), FlowConfig(nfe=1)), batch, first_stage, "euler", 1, 0)
    held = with_consistency(raw, clean, "projection")
    assert held.nfe == raw.nfe and set(held.timings) == {*raw.timings, "consistency"}
    assert with_consistency(raw, clean, "none") is raw
