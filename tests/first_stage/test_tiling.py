import pytest
import torch
import torch.nn.functional as F

from fmboost.first_stage.tiling import apply_tiled
from fmboost.tiling import blend_ramp, tile_starts


def test_tiles_cover_the_whole_axis_and_the_last_one_ends_at_the_border():
    assert tile_starts(100, 32, 8) == [0, 24, 48, 68]
    assert tile_starts(32, 32, 8) == [0]
    assert tile_starts(20, 32, 8) == [0]


def test_blend_weights_ramp_only_towards_neighbouring_tiles():
    weights = blend_ramp(8, 3, ramp_start=False, ramp_end=True, device=torch.device("cpu"))
    torch.testing.assert_close(weights, torch.tensor([1, 1, 1, 1, 1, 0.75, 0.5, 0.25]))


def test_pointwise_function_is_reproduced_exactly_by_tiling():
    x = torch.randn(2, 3, 40, 56)
    tiled = apply_tiled(lambda t: t.pow(2) + 1, x, tile=16, overlap=4, scale=1.0)
    torch.testing.assert_close(tiled, x.pow(2) + 1)


def test_tiled_local_upsampler_matches_untiled_exactly():
    """Nearest ×4 upsampling is local: tiles must line up exactly in the output grid."""
    x = torch.randn(1, 2, 24, 20)
    upsample = lambda t: F.interpolate(t, scale_factor=4, mode="nearest")  # noqa: E731
    torch.testing.assert_close(apply_tiled(upsample, x, tile=8, overlap=2, scale=4.0), upsample(x))


def test_tiled_downsampler_lines_up_in_the_smaller_grid():
    x = torch.randn(1, 3, 64, 48)
    pool = lambda t: F.avg_pool2d(t, 8)  # noqa: E731
    torch.testing.assert_close(apply_tiled(pool, x, tile=32, overlap=16, scale=1 / 8), pool(x))


def test_overlap_must_be_smaller_than_the_tile():
    with pytest.raises(ValueError, match="overlap"):
        apply_tiled(lambda t: t, torch.zeros(1, 1, 8, 8), tile=4, overlap=4, scale=1.0)
