import json
from dataclasses import asdict

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

from fmboost.config import FirstStageConfig
from fmboost.errors import ConfigError, WeightsError
from fmboost.first_stage import build_first_stage
from tests.conftest import photo
from tests.first_stage.ldm_format import to_ldm_state_dict

TINY_VAE = {
    "block_out_channels": [16, 32],
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "scaling_factor": 0.5,
    "shift_factor": 0.1,
}


@pytest.fixture(scope="module")
def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(**TINY_VAE).eval()


def test_tiny_vae_saved_with_save_pretrained_loads_through_the_user_code_path(tmp_path, tiny_vae):
    tiny_vae.save_pretrained(tmp_path / "vae")
    first_stage = build_first_stage(FirstStageConfig(name="diffusers", path=str(tmp_path / "vae")))
    assert (first_stage.latent_channels, first_stage.downsampling_factor) == (4, 2)
    assert (first_stage.scale, first_stage.shift) == (0.5, 0.1)
    image = photo("astronaut", 32)
    expected = tiny_vae.encode(image).latent_dist.mode()
    torch.testing.assert_close(first_stage.encode(image), expected, msg="encode returns the posterior mode")
    torch.testing.assert_close(first_stage.decode(expected), tiny_vae.decode(expected).sample)


def test_a_pipeline_directory_uses_its_vae_subfolder(tmp_path, tiny_vae):
    tiny_vae.save_pretrained(tmp_path / "pipeline" / "vae")
    first_stage = build_first_stage(FirstStageConfig(name="diffusers", path=str(tmp_path / "pipeline")))
    assert first_stage.latent_channels == 4


@pytest.mark.parametrize("filename", ["sd_ae.ckpt", "vae.safetensors"])
def test_single_ldm_format_file_loads_with_its_architecture_config(tmp_path, tiny_vae, filename):
    ldm_state = to_ldm_state_dict(tiny_vae.state_dict(), num_blocks=2)
    path = tmp_path / filename
    if filename.endswith(".ckpt"):
        torch.save({"state_dict": ldm_state, "global_step": 7}, path)
    else:
        save_file({k: v.contiguous() for k, v in ldm_state.items()}, str(path))
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", **TINY_VAE}))

    first_stage = build_first_stage(
        FirstStageConfig(name="diffusers", path=str(path), config=str(tmp_path / "config.json"))
    )
    image = photo("coffee", 32)
    torch.testing.assert_close(first_stage.encode(image), tiny_vae.encode(image).latent_dist.mode())


def test_single_file_that_does_not_fit_the_default_sd_architecture_is_refused(tmp_path, tiny_vae):
    path = tmp_path / "sd_ae.ckpt"
    torch.save(to_ldm_state_dict(tiny_vae.state_dict(), num_blocks=2), path)
    with pytest.raises(WeightsError, match="do not fit the VAE architecture"):
        build_first_stage(FirstStageConfig(name="diffusers", path=str(path)))


def test_missing_paths_and_offline_hub_ids_are_one_clear_line(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        build_first_stage(FirstStageConfig(name="diffusers", path=str(tmp_path / "missing")))
    with pytest.raises(WeightsError, match="download it first"):
        build_first_stage(FirstStageConfig(name="diffusers", path="fmboost-tests/no-such-vae"))
    with pytest.raises(ConfigError, match="first_stage.path"):
        build_first_stage(FirstStageConfig(name="diffusers"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="no config.json"):
        build_first_stage(FirstStageConfig(name="diffusers", path=str(tmp_path / "empty")))


def test_pickled_objects_in_a_checkpoint_are_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "callback": print}, path)
    with pytest.raises(WeightsError, match="cannot read weights safely"):
        build_first_stage(FirstStageConfig(name="diffusers", path=str(path)))


def test_the_record_rebuilds_the_same_first_stage_from_a_vae_subfolder_with_a_non_default_scale(
    tmp_path, tiny_vae, monkeypatch
):
    tiny_vae.save_pretrained(tmp_path / "pipeline" / "vae")
    monkeypatch.chdir(tmp_path)  # a relative path, recorded absolute so the record works from anywhere
    settings = dict(subfolder="vae", scale=0.3, shift=0.05, tile_size=8, tile_overlap=2)
    original = build_first_stage(FirstStageConfig(name="diffusers", path="pipeline", **settings))
    record = json.loads(json.dumps(asdict(original.record())))  # as a manifest or model config stores it
    assert record["path"] == str(tmp_path / "pipeline") and record["subfolder"] == "vae"
    monkeypatch.chdir(tmp_path.parent)

    rebuilt = build_first_stage(record)
    assert rebuilt.record() == original.record()
    assert (rebuilt.scale, rebuilt.shift, rebuilt.tile_size, rebuilt.tile_overlap) == (0.3, 0.05, 8, 2)
    image = photo("astronaut", 64)  # 32² latents: encoded in 8² tiles
    torch.testing.assert_close(rebuilt.encode(image), original.encode(image), rtol=0, atol=0)


def test_a_stage_sees_the_first_stage_tiled_as_recorded_with_the_weights_shared(tmp_path, tiny_vae):
    tiny_vae.save_pretrained(tmp_path / "vae")
    first_stage = build_first_stage(FirstStageConfig(name="diffusers", path=str(tmp_path / "vae")))
    record = FirstStageConfig(name="diffusers", scale=0.5, tile_size=128, tile_overlap=8)
    view = first_stage.with_recorded_tiling(record, "stage 1")
    assert (view.tile_size, view.tile_overlap) == (128, 8) and first_stage.tile_size == 64
    assert view.vae is first_stage.vae
    other_scale = FirstStageConfig(name="diffusers", scale=0.18215)
    with pytest.raises(
        WeightsError, match="stage 2 was trained on latents with scale 0.18215, but .* uses 0.5"
    ):
        first_stage.with_recorded_tiling(other_scale, "stage 2")
