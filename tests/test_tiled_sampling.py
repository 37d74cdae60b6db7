"""Patch-wise evaluation of the flow network: exact where it must be, bounded by the tile everywhere."""

import pytest
import torch
from PIL import Image

from fmboost.config import FlowConfig, MemoryBound
from fmboost.errors import FMBoostError
from fmboost.first_stage.identity import IdentityFirstStage
from fmboost.flow.tiled_sampling import TiledNet, validate_tiling
from fmboost.generate import main
from fmboost.inference.pipeline import FMBoostPipeline
from fmboost.models import FMBoostModel
from fmboost.tiling import blend_ramp, tile_starts
from tests.conftest import photo, tiny_unet_config


def test_tiles_cover_the_length_with_the_overlap_and_end_flush():
    assert tile_starts(10, 4, 1) == [0, 3, 6]
    assert tile_starts(11, 4, 1) == [0, 3, 6, 7]
    assert tile_starts(4, 4, 1) == [0] and tile_starts(3, 4, 1) == [0]


def test_blend_weights_ramp_linearly_over_the_overlap_and_never_vanish():
    torch.testing.assert_close(blend_ramp(6, 2), torch.tensor([1 / 3, 2 / 3, 1, 1, 2 / 3, 1 / 3]))
    assert torch.equal(blend_ramp(5, 0), torch.ones(5))


def test_a_pointwise_network_gives_the_same_result_tiled_and_whole():
    conv = torch.nn.Conv2d(6, 3, 1)
    net = lambda x, t: conv(x) * t[:, None, None, None]  # noqa: E731 -- a one-line stand-in network
    x, t = torch.randn(2, 6, 20, 28), torch.tensor([0.3, 0.7])
    with torch.no_grad():
        torch.testing.assert_close(TiledNet(net, 8, 3)(x, t), net(x, t))


def tiny_model() -> FMBoostModel:
    torch.manual_seed(0)
    model = FMBoostModel(tiny_unet_config(3), FlowConfig(nfe=2, upsampling="bilinear"), {"name": "identity"})
    for parameter in model.net.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    return model.eval()


def record_input_sizes(model: FMBoostModel) -> list[tuple[int, int]]:
    sizes: list[tuple[int, int]] = []
    model.net.register_forward_pre_hook(lambda module, args: sizes.append(tuple(args[0].shape[-2:])))
    return sizes


def test_the_unet_never_sees_more_than_a_tile_and_a_tile_as_large_as_the_latent_changes_nothing():
    model, z_low = tiny_model(), photo("chelsea", 32)
    sizes = record_input_sizes(model)
    tiled = model.upsample(
        z_low, IdentityFirstStage(), generator=torch.Generator().manual_seed(1), tile_size=16, tile_overlap=4
    )
    assert sizes and max(max(size) for size in sizes) == 16
    whole = model.upsample(z_low, IdentityFirstStage(), generator=torch.Generator().manual_seed(1))
    same = model.upsample(
        z_low, IdentityFirstStage(), generator=torch.Generator().manual_seed(1), tile_size=64
    )
    assert torch.equal(same.x1, whole.x1)
    assert tiled.x1.shape == whole.x1.shape and (tiled.x1 - whole.x1).abs().mean() < 0.5


def test_tile_settings_the_unet_cannot_take_are_refused_naming_the_setting():
    with pytest.raises(FMBoostError) as error:
        validate_tiling(12, 2, size_multiple=8)
    assert error.value.parameter == "flow_tile_size"
    with pytest.raises(FMBoostError) as error:
        validate_tiling(16, 16, size_multiple=8)
    assert error.value.parameter == "flow_tile_overlap"


def test_a_result_above_the_memory_bound_is_refused_before_the_network_runs():
    model = tiny_model()
    sizes = record_input_sizes(model)
    pipeline = FMBoostPipeline(
        IdentityFirstStage(), [model], device="cpu", memory=MemoryBound(max_output_pixels=63 * 64)
    )
    with pytest.raises(FMBoostError, match=r"64×64 result .* memory bound") as error:
        pipeline(images=photo("chelsea", 32))
    assert error.value.parameter == "max_output_pixels" and sizes == []


def test_generate_refuses_an_oversized_input_in_one_line_and_leaves_no_output_folder(tmp_path, capsys):
    stage = tiny_model().save_pretrained(tmp_path / "stage")
    Image.new("RGB", (64, 48), (10, 200, 30)).save(tmp_path / "wide.png")
    arguments = [
        "--stage",
        str(stage),
        "--input-image",
        str(tmp_path / "wide.png"),
        "--out",
        str(tmp_path / "out"),
    ]
    assert main([*arguments, "--max-output-pixels", "10000"]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: --max-output-pixels:") and "128×96" in message and "\n" not in message
    assert not (tmp_path / "out").exists()
    assert main([*arguments, "--flow-tile-size", "16", "--flow-tile-overlap", "4"]) == 0
    assert Image.open(tmp_path / "out" / "00000.png").size == (128, 96)
