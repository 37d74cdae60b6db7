"""The consistency step in the pipeline and its front-ends: a boosted photo keeps its input."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fmboost.config import FirstStageConfig
from fmboost.consistency import downsample
from fmboost.errors import FMBoostError
from fmboost.folder_boost import BoostFolderConfig, boost_folder
from fmboost.generate import main
from fmboost.image_processing import from_pil
from fmboost.inference.pipeline import FMBoostPipeline
from fmboost.metrics import psnr
from fmboost.tiling import tile_starts
from tests.conftest import SHARED, photo
from tests.pipeline.tiny_models import save_tiny_stage


@pytest.fixture(scope="module")
def taef2_stage(tmp_path_factory):
    return save_tiny_stage(
        tmp_path_factory.mktemp("stage"),
        latent_channels=32,
        first_stage={"name": "taesd", "source": str(SHARED / "weights")},  # TAEF2
    )


@pytest.fixture(scope="module")
def boost(taef2_stage):
    return FMBoostPipeline.from_pretrained([taef2_stage])


def low_res_photo(name: str, size: int, factor: int = 2) -> torch.Tensor:
    """A low-res input made as the data pipeline makes one: a photo downsampled by ``factor``."""
    return downsample(photo(name, size * factor), (size, size))


def lr_psnr(image: Image.Image, low: torch.Tensor) -> float:
    """The saved result's consistency with its input: downsampled as the data pipeline does, in dB."""
    return psnr(downsample(from_pil(image), tuple(low.shape[-2:])), low).item()


def test_a_clean_stage_holds_its_result_to_the_input_by_default(boost):
    image = low_res_photo("chelsea", 64)
    held = boost(images=image, seed=0)
    raw = boost(images=image, seed=0, consistency="none")
    assert held.consistency == "projection" and raw.consistency == "none"
    assert "consistency" in held.timings and "consistency" not in raw.timings
    assert lr_psnr(held.images[0], image) > 45 > lr_psnr(raw.images[0], image) + 10  # a random stage drifts
    for mode in ("adain", "wavelet"):  # the colour fixes bring back the colours, not every pixel
        fixed = from_pil(boost(images=image, seed=0, consistency=mode).images[0])
        assert (fixed.mean((-2, -1)) - image.mean((-2, -1))).abs().max() < 0.02
    with pytest.raises(FMBoostError, match="unknown consistency step 'sharpen'"):
        boost(images=image, seed=0, consistency="sharpen")


def test_the_last_stage_chooses_the_default_step_for_the_kind_of_input_it_was_trained_on(tmp_path):
    identity = {"name": "identity", "source": "none"}
    clean = save_tiny_stage(tmp_path / "clean", latent_channels=3, first_stage=identity)
    colour_only = save_tiny_stage(
        tmp_path / "colour_only", latent_channels=3, first_stage=identity, consistency="wavelet"
    )
    image = low_res_photo("coffee", 16)
    assert (
        FMBoostPipeline.from_pretrained([colour_only, clean])(images=image, seed=0).consistency
        == "projection"
    )
    cascade = FMBoostPipeline.from_pretrained([clean, colour_only])
    assert cascade(images=image, seed=0).consistency == "wavelet"
    assert cascade(images=image, seed=0, consistency="none").consistency == "none"


def test_a_cascade_holds_its_last_result_to_the_original_input(taef2_stage, caplog):
    cascade = FMBoostPipeline.from_pretrained([taef2_stage, taef2_stage])
    image = low_res_photo("coffee", 32, factor=4)
    caplog.set_level("INFO", "fmboost.pipeline")
    output = cascade(images=image, seed=0)
    assert output.images[0].size == (128, 128)
    assert lr_psnr(output.images[0], image) > 45  # the whole 4× in one projection
    assert "consistency: projection of the 128×128 result against the 32×32 input" in caplog.text


def test_a_result_decoded_in_tiles_shows_no_seam_after_the_projection(taef2_stage, taef2_dir):
    boost = FMBoostPipeline.from_pretrained(
        [taef2_stage], first_stage=FirstStageConfig(name="taesd", path=str(taef2_dir), tile_size=None)
    )
    image = low_res_photo("astronaut", 128)
    whole = np.asarray(boost(images=image, seed=0).images[0], dtype=np.float64)
    factor = boost.first_stage.downsampling_factor
    tile, overlap = 128 // factor, 32 // factor  # the 256-px result's latents in three tiles a side
    boost.first_stage.tile_size, boost.first_stage.tile_overlap = tile, overlap
    tiled_output = boost(images=image, seed=0)
    tiled = np.asarray(tiled_output.images[0], dtype=np.float64)
    assert lr_psnr(tiled_output.images[0], image) > 45
    assert 10 * np.log10(255**2 / np.mean((whole - tiled) ** 2)) > 30

    # where a tile's blend begins or ends, the image changes from column to column as the untiled one does
    latent_side = 256 // factor
    borders = sorted(
        edge * factor - 1
        for start in tile_starts(latent_side, tile, overlap)[1:]
        for edge in (start, start + overlap)
    )
    steps = [np.abs(np.diff(result, axis=1)).mean(axis=(0, 2))[borders] for result in (tiled, whole)]
    print("mean change across tile borders, tiled and untiled:", [round(s.mean(), 2) for s in steps])
    assert steps[0].mean() < 1.1 * steps[1].mean()


def test_the_command_line_and_folder_boosting_record_the_step(tmp_path, taef2_stage):
    source = tmp_path / "photos" / "cat.png"
    source.parent.mkdir()
    Image.fromarray(((photo("chelsea", 64)[0].permute(1, 2, 0) + 1) * 127.5).byte().numpy()).save(source)
    common = ["--stage", str(taef2_stage), "--input-image", str(source)]
    assert main([*common, "--out", str(tmp_path / "out"), "--consistency", "wavelet"]) == 0
    assert json.loads((tmp_path / "out" / "00000.json").read_text())["consistency"] == "wavelet"

    settings = {"input_dir": str(source.parent), "stages": [str(taef2_stage)], "device": "cpu"}
    boost_folder(BoostFolderConfig(output=str(tmp_path / "boosted"), consistency="adain", **settings))
    sidecar = json.loads((tmp_path / "boosted" / "cat.json").read_text())
    assert sidecar["consistency"] == "adain" and sidecar["settings"]["consistency"] == "adain"
    with pytest.raises(FMBoostError, match="other settings \\(another consistency"):
        boost_folder(
            BoostFolderConfig(output=str(tmp_path / "boosted"), consistency="projection", **settings)
        )
