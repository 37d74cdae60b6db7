import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from fmboost.config import FirstStageConfig
from fmboost.errors import FMBoostError, WeightsError
from fmboost.first_stage.diffusers_vae import DiffusersVAE
from fmboost.generate import main
from fmboost.inference.pipeline import FMBoostPipeline
from fmboost.models import FMBoostModel
from tests.conftest import photo
from tests.pipeline.tiny_models import save_tiny_stable_diffusion, save_tiny_stage


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return save_tiny_stable_diffusion(tmp_path_factory.mktemp("sd"))


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    return save_tiny_stage(tmp_path_factory.mktemp("stage"))


@pytest.fixture(scope="module")
def pipeline(tiny_sd, stage):
    return FMBoostPipeline.from_pretrained([stage], base=str(tiny_sd))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


def test_base_then_one_stage_doubles_the_base_resolution(pipeline):
    output = pipeline(prompts=["a red fox", "a blue bird"], seed=0, num_inference_steps=2)
    assert [image.size for image in output.images] == [(32, 32), (32, 32)]  # base: 8² latents, 16 px
    assert output.latents.shape == (2, 4, 16, 16)
    assert set(output.timings) == {"base", "context_1", "stage_1", "decode", "consistency"}
    assert output.nfe == [2] and output.consistency == "projection"  # a clean stage's default


def test_two_cascaded_stages_give_four_times_the_base_resolution(tiny_sd, stage):
    cascade = FMBoostPipeline.from_pretrained([stage, stage], base=str(tiny_sd))
    output = cascade(
        prompts=["a red fox"], seed=0, nfe=[2, 4], solver=["euler", "midpoint"], num_inference_steps=2
    )
    assert output.images[0].size == (64, 64)
    assert output.nfe == [2, 4]
    stages = {"context_1", "stage_1", "context_2", "stage_2"}
    assert set(output.timings) == {"base", *stages, "decode", "consistency"}


@pytest.mark.parametrize(("dtype", "expected"), [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_the_autoencoder_runs_autocast_to_the_pipeline_dtype_as_encoding_did(
    tiny_sd, stage, monkeypatch, dtype, expected
):
    seen = []
    decode = DiffusersVAE._decode

    def recording_decode(self, latents):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else latents.dtype)
        return decode(self, latents)

    monkeypatch.setattr(DiffusersVAE, "_decode", recording_decode)
    vae = DiffusersVAE(AutoencoderKL.from_pretrained(tiny_sd / "vae"), str(tiny_sd / "vae"))
    pipeline = FMBoostPipeline(vae, [FMBoostModel.from_pretrained(stage)], device="cpu", dtype=dtype)
    output = pipeline(latents=torch.randn(1, 4, 8, 8), seed=0)
    assert output.images[0].size == (32, 32) and output.latents.dtype == torch.float32
    assert seen and set(seen) == {expected}, "every decode (the context's and the image's)"
    assert next(vae.parameters()).dtype == torch.float32, "the weights stay as loaded"


def test_the_same_seed_gives_the_same_image_and_another_seed_another(pipeline):
    first = pipeline(prompts=["a red fox"], seed=3, num_inference_steps=2).images[0]
    again = pipeline(prompts=["a red fox"], seed=3, num_inference_steps=2).images[0]
    other = pipeline(prompts=["a red fox"], seed=4, num_inference_steps=2).images[0]
    np.testing.assert_array_equal(pixels(first), pixels(again))
    assert np.abs(pixels(first) - pixels(other)).mean() > 1.0


def test_boosting_a_real_photo_with_taef2_from_the_command_line(tmp_path, taef2_dir):
    stage = save_tiny_stage(
        tmp_path / "stage", latent_channels=32, first_stage={"name": "taesd", "source": str(taef2_dir)}
    )
    source = tmp_path / "photo.png"
    Image.fromarray(((photo("chelsea", 64)[0].permute(1, 2, 0) + 1) * 127.5).byte().numpy()).save(source)
    assert (
        main(
            [
                "--stage",
                str(stage),
                "--input-image",
                str(source),
                "--out",
                str(tmp_path / "out"),
                "--seed",
                "5",
            ]
        )
        == 0
    )
    result = Image.open(tmp_path / "out" / "00000.png")
    assert result.size == (128, 128)
    sidecar = json.loads((tmp_path / "out" / "00000.json").read_text())
    assert sidecar["image"] == str(source) and sidecar["seed"] == 5 and "stage_1" in sidecar["timings_s"]


def test_prompts_from_the_command_line_write_images_and_sidecars(tmp_path, tiny_sd, stage):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\n\na small boat\na tall tree\n")
    code = main(
        [
            "--base",
            str(tiny_sd),
            "--stage",
            str(stage),
            "--prompts-file",
            str(prompts),
            "--batch-size",
            "2",
            "--steps",
            "2",
            "--seed",
            "7",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    sidecars = [json.loads((tmp_path / "out" / f"{i:05d}.json").read_text()) for i in range(3)]
    assert [s["prompt"] for s in sidecars] == ["a red fox", "a small boat", "a tall tree"]
    assert [s["seed"] for s in sidecars] == [7, 7, 8]
    assert Image.open(tmp_path / "out" / "00002.png").size == (32, 32)


def test_tiled_and_untiled_decoding_agree_in_the_pipeline(tmp_path, taef2_dir):
    stage = save_tiny_stage(
        tmp_path / "stage", latent_channels=32, first_stage={"name": "taesd", "source": str(taef2_dir)}
    )
    boost = FMBoostPipeline.from_pretrained(
        [stage], first_stage=FirstStageConfig(name="taesd", path=str(taef2_dir), tile_size=None)
    )
    image = photo("astronaut", 256)
    whole = boost(images=image, seed=0).images[0]
    boost.first_stage.tile_size, boost.first_stage.tile_overlap = 48, 16
    tiled = boost(images=image, seed=0).images[0]
    mse = np.mean((pixels(whole) / 255 - pixels(tiled) / 255) ** 2)
    assert -10 * np.log10(mse) > 30


def test_bad_inputs_are_clear_errors(tmp_path, tiny_sd, stage, taef2_dir, capsys):
    with pytest.raises(WeightsError, match="missing does not exist"):
        FMBoostPipeline.from_pretrained([tmp_path / "missing"], base=str(tiny_sd))
    with pytest.raises(
        WeightsError, match="stage 1 works on 4-channel latents, but the first stage 'taesd' has 32"
    ):
        FMBoostPipeline.from_pretrained(
            [stage], first_stage=FirstStageConfig(name="taesd", path=str(taef2_dir))
        )
    pixel_stage = save_tiny_stage(tmp_path / "pixel", latent_channels=3)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    assert (
        main(["--stage", str(pixel_stage), "--first-stage", "identity", "--input-image", str(not_an_image)])
        == 2
    )
    assert f"error: --input-image: {not_an_image} is not a readable image" in capsys.readouterr().err
    assert main(["--stage", str(stage), "--prompt", "a fox"]) == 2
    assert "--prompt/--prompts-file need --base" in capsys.readouterr().err
    without_base = FMBoostPipeline.from_pretrained(
        [pixel_stage], first_stage=FirstStageConfig(name="identity")
    )
    with pytest.raises(FMBoostError, match="prompts need a base model"):
        without_base(prompts=["a fox"])
    with pytest.raises(WeightsError, match="not a diffusers pipeline directory"):
        FMBoostPipeline.from_pretrained([stage], base=str(tmp_path))


def test_generate_accepts_a_training_run_and_uses_its_latest_checkpoint(tmp_path):
    checkpoint = tmp_path / "runs/demo/checkpoints/step_00000004"
    save_tiny_stage(checkpoint / "export", latent_channels=3)
    (checkpoint / "COMPLETE").write_text("")
    (tmp_path / "runs/demo/checkpoints/latest").write_text(checkpoint.name)
    source = tmp_path / "photo.png"
    Image.fromarray(((photo("chelsea", 32)[0].permute(1, 2, 0) + 1) * 127.5).byte().numpy()).save(source)
    args = ["--stage", str(tmp_path / "runs/demo"), "--first-stage", "identity", "--input-image", str(source)]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    assert Image.open(tmp_path / "out" / "00000.png").size == (64, 64)


def test_progress_is_reported_before_every_evaluation_of_every_stage(tiny_sd, stage):
    cascade = FMBoostPipeline.from_pretrained([stage, stage], base=str(tiny_sd))
    reports = []
    cascade(
        prompts=["a red fox"],
        seed=0,
        nfe=[2, 4],
        solver=["euler", "midpoint"],
        num_inference_steps=2,
        progress=lambda stage, evaluations: reports.append((stage, evaluations)),
    )
    assert reports == [(1, 1), (1, 2), (2, 1), (2, 2), (2, 3), (2, 4)]
