"""The consistency step on hand-made images: what each mode keeps from the input and what from the output."""

import pytest
import torch

from fmboost.consistency import (
    CONSISTENCY_MODES,
    downsample,
    enforce_consistency,
    upsampled_input,
    wavelet_bands,
)
from fmboost.errors import FMBoostError
from fmboost.image_processing import from_uint8, to_uint8
from fmboost.metrics import psnr


def textured(size: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [-1, 1] with detail at every scale, [2, 3, size, size]."""
    noise = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return torch.nn.functional.avg_pool2d(noise, 3, 1, 1, count_include_pad=False)


def test_a_projection_downsamples_to_its_input_within_quantisation():
    truth = textured(128)
    low = downsample(truth, (64, 64))
    output = (truth + 0.3 * textured(128, seed=1) + 0.2).clamp(-1, 1)  # wrong detail and a colour cast
    assert psnr(downsample(output, (64, 64)), low).min() < 25

    projected = enforce_consistency(output, low, "projection")
    stored = from_uint8(to_uint8(projected))  # what a saved file holds
    assert (downsample(stored, (64, 64)) - low).abs().max() < 2 / 255  # under one grey level
    assert psnr(downsample(stored, (64, 64)), low).min() > 55  # NTIRE's bar is 45 dB
    assert projected.min() >= -1 and projected.max() <= 1
    # it moves the output no further than needed: closer to the truth, and a consistent image stays put
    assert (projected - truth).abs().mean() < (output - truth).abs().mean()
    assert torch.allclose(enforce_consistency(truth, low, "projection"), truth, atol=1e-3)


def test_a_projection_holds_every_scale_factor_to_its_input():
    truth = textured(96)
    for factor in (2, 3, 4):
        low = downsample(truth, (96 // factor, 96 // factor))
        projected = enforce_consistency(torch.zeros_like(truth), low, "projection")
        assert psnr(downsample(projected, low.shape[-2:]), low).min() > 60


def test_the_wavelet_fix_takes_the_low_band_from_the_input_and_the_detail_from_the_output():
    checkerboard = (torch.arange(128)[:, None] + torch.arange(128)[None, :]) % 2 * 0.2 - 0.1
    output = torch.tensor([0.5, -0.2, 0.1])[None, :, None, None] + checkerboard  # wrong colour, fine detail
    low = torch.tensor([-0.3, 0.4, 0.0])[None, :, None, None].expand(1, 3, 64, 64)  # the right colour
    fixed = enforce_consistency(output, low, "wavelet")
    expected = torch.tensor([-0.3, 0.4, 0.0])[None, :, None, None] + checkerboard
    inside = (..., slice(32, -32), slice(32, -32))  # 31 px from the edges the blurs see no padding
    assert torch.allclose(fixed[inside], expected[inside], atol=1e-5)

    # on any images: the input's low band, the output's high bands, and the bands sum to the image
    output, low = textured(64), downsample(textured(64, seed=3), (32, 32))
    high, _ = wavelet_bands(output)
    _, input_low = wavelet_bands(upsampled_input(low, (64, 64)))
    assert torch.allclose(enforce_consistency(output, low, "wavelet"), (high + input_low).clamp(-1, 1))
    assert torch.allclose(sum(wavelet_bands(output)), output, atol=1e-6)


def test_adain_gives_each_channel_the_upsampled_inputs_mean_and_spread():
    output = textured(64) * 0.3 + 0.4
    low = downsample(textured(64, seed=5), (32, 32)) * 0.8 - 0.1
    fixed = enforce_consistency(output, low, "adain")
    reference = upsampled_input(low, (64, 64))
    assert torch.allclose(fixed.mean((-2, -1)), reference.mean((-2, -1)), atol=1e-5)
    assert torch.allclose(fixed.std((-2, -1)), reference.std((-2, -1)), atol=1e-5)
    # only the statistics move: the pattern keeps its correlation with the output
    centred = [(x - x.mean((-2, -1), keepdim=True)).flatten(2) for x in (fixed, output)]
    assert torch.nn.functional.cosine_similarity(*centred, dim=-1).min() > 0.9999


def test_none_returns_the_output_and_a_bf16_output_is_corrected_in_float32():
    output, low = textured(32), downsample(textured(32, seed=1), (16, 16))
    assert torch.equal(enforce_consistency(output, low, "none"), output)
    for mode in CONSISTENCY_MODES[1:]:
        fixed = enforce_consistency(output.bfloat16(), low.bfloat16(), mode)
        assert fixed.dtype == torch.float32 and torch.isfinite(fixed).all()
    projected = enforce_consistency(output.bfloat16(), low.bfloat16(), "projection")
    assert psnr(downsample(projected, (16, 16)), low.bfloat16().float()).min() > 60


def test_an_unknown_step_or_mismatched_inputs_are_clear_errors():
    output = textured(32)
    with pytest.raises(FMBoostError, match="unknown consistency step 'sharpen'; choose one of none, adain"):
        enforce_consistency(output, output, "sharpen")
    with pytest.raises(FMBoostError, match="do not match"):
        enforce_consistency(output, output[:1], "projection")
