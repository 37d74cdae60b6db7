import json
from dataclasses import replace

import pytest
import torch

from fmboost.config import FlowConfig
from fmboost.errors import ConfigError, WeightsError
from fmboost.first_stage.identity import IdentityFirstStage
from fmboost.models import FMBoostModel, fmboost_model
from tests.conftest import tiny_unet_config


def tiny_model(**flow) -> FMBoostModel:
    torch.manual_seed(0)
    unet = replace(tiny_unet_config(), in_channels=None)  # derived from the objective
    model = FMBoostModel(unet, FlowConfig(nfe=4, **flow), IdentityFirstStage().record())
    for parameter in model.net.parameters():  # a "trained" model: non-zero output
        torch.nn.init.normal_(parameter, std=0.05)
    return model


def test_forward_is_the_training_loss_and_it_backpropagates():
    model = tiny_model()
    loss = model(torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16), torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.ndim == 0 and loss.item() > 0
    assert all(p.grad is not None for p in model.net.parameters())


def test_upsample_doubles_the_latent_size_and_counts_nfe():
    model = tiny_model()
    result = model.upsample(torch.rand(2, 3, 8, 8) * 2 - 1, IdentityFirstStage(), generator=torch.Generator())
    assert result.x1.shape == (2, 3, 16, 16)
    assert result.nfe == 4
    assert model.upsample(torch.zeros(1, 3, 8, 8), IdentityFirstStage(), nfe=8, solver="midpoint").nfe == 8


def test_upsample_is_reproducible_with_a_seed():
    model, z_low = tiny_model(), torch.rand(1, 3, 8, 8)
    first = model.upsample(z_low, IdentityFirstStage(), generator=torch.Generator().manual_seed(5)).x1
    again = model.upsample(z_low, IdentityFirstStage(), generator=torch.Generator().manual_seed(5)).x1
    other = model.upsample(z_low, IdentityFirstStage(), generator=torch.Generator().manual_seed(6)).x1
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, other)


def test_save_and_from_pretrained_round_trip_without_deepspeed(tmp_path):
    model = tiny_model(objective="cfm", upsampling="bilinear", noise_aug_step=250)
    model.save_pretrained(tmp_path / "export")
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["config.json", "model.safetensors"]
    loaded = FMBoostModel.from_pretrained(tmp_path / "export")
    assert loaded.flow_config == model.flow_config and loaded.unet_config == model.unet_config
    assert loaded.objective.noise_aug_step == 250
    assert loaded.first_stage == IdentityFirstStage().record()
    z_low = torch.rand(1, 3, 8, 8)
    expected = model.upsample(z_low, IdentityFirstStage(), generator=torch.Generator().manual_seed(1)).x1
    actual = loaded.upsample(z_low, IdentityFirstStage(), generator=torch.Generator().manual_seed(1)).x1
    torch.testing.assert_close(actual, expected)


def test_from_pretrained_can_cast_to_bf16():
    model = tiny_model()
    assert next(model.to(torch.bfloat16).parameters()).dtype == torch.bfloat16
    result = model.upsample(torch.rand(1, 3, 8, 8), IdentityFirstStage())
    assert result.x1.dtype == torch.bfloat16 and torch.isfinite(result.x1.float()).all()


def test_latent_channel_mismatch_with_the_first_stage_is_a_clear_error():
    model = FMBoostModel(tiny_unet_config(latent_channels=4), FlowConfig())
    with pytest.raises(
        WeightsError, match="4-channel latents, but the first stage 'identity' has 3 channels"
    ):
        model.upsample(torch.zeros(1, 3, 8, 8), IdentityFirstStage())


def test_broken_model_directories_are_clear_errors(tmp_path):
    with pytest.raises(WeightsError, match="config.json is missing"):
        FMBoostModel.from_pretrained(tmp_path)
    tiny_model().save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["model"]["model_channels"] = 32
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(WeightsError, match="weights do not fit config.json"):
        FMBoostModel.from_pretrained(tmp_path)
    saved["flow"]["objective"] = "diffusion"
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match="flow.objective"):
        FMBoostModel.from_pretrained(tmp_path)


def test_an_export_written_before_configurable_attention_widths_loads_as_the_same_network(tmp_path):
    model = tiny_model()  # one head per 8 channels, as version 1 wrote it
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    unet = saved["model"]
    unet["num_head_channels"] = unet.pop("head_channels")
    del unet["num_heads"]
    unet["attention_resolutions"] = [*unet["attention_resolutions"], 16]  # v1 accepted unreachable factors
    saved["format_version"] = 1
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = FMBoostModel.from_pretrained(tmp_path)
    assert loaded.unet_config == model.unet_config


@pytest.mark.parametrize("objective", ["cfm", "fm", "dm", "l1", "l2"])
def test_every_objective_trains_exports_and_upsamples_through_the_same_model_interface(tmp_path, objective):
    model = tiny_model(objective=objective)
    loss = model(torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16), torch.Generator().manual_seed(0))
    loss.backward()
    model.save_pretrained(tmp_path)
    loaded = FMBoostModel.from_pretrained(tmp_path)
    result = loaded.upsample(torch.rand(1, 3, 8, 8), IdentityFirstStage(), nfe=4)
    assert result.x1.shape == (1, 3, 16, 16) and torch.isfinite(result.x1).all()
    assert result.nfe == (1 if objective in ("l1", "l2") else 4)


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("model_channels", 100000, "model: this network would have"),
        ("model_channels", -32, "model.model_channels"),
        ("head_channels", 0, "model.head_channels"),
    ],
)
def test_an_untrustworthy_model_config_is_refused_before_the_network_is_allocated(
    tmp_path, key, value, named
):
    tiny_model().save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["model"][key] = value
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match=named):
        FMBoostModel.from_pretrained(tmp_path)


def test_weight_shapes_are_checked_from_the_safetensors_header_before_the_network_is_built(
    tmp_path, monkeypatch
):
    tiny_model().save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["model"]["model_channels"] = 32
    (tmp_path / "config.json").write_text(json.dumps(saved))
    read = []
    monkeypatch.setattr(fmboost_model, "load_file", lambda *args: read.append(args))
    with pytest.raises(
        WeightsError,
        match=r"do not fit config.json: time_embed.0.weight is \[64, 16\], config.json says \[128, 32\]",
    ):
        FMBoostModel.from_pretrained(tmp_path)
    assert read == []  # refused from the header: no tensor data was read
    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{trunc")
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        FMBoostModel.from_pretrained(tmp_path)
