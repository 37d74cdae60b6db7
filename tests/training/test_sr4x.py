"""4× boosting end to end (paper Sec. 4.4): degraded 4× pairs are encoded, a stage trains on them with
real DeepSpeed, is fine-tuned from its export with ``train.init_from``, and boosts an image to 4× its size."""

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from data_pipeline.degradation import DegradationConfig
from data_pipeline.encode_shards import run as encode
from fmboost.config_loading import load_config
from fmboost.distributed import DistributedEnv
from fmboost.generate import main as generate
from fmboost.training.trainer import train
from tests.conftest import free_port, photo
from tests.data_pipeline.builders import good_shards, tiny_encode_config
from tests.training.helpers import training_overrides

pytestmark = pytest.mark.slow


def test_a_4x_stage_trains_on_degraded_pairs_fine_tunes_and_boosts_an_image_to_4x(tmp_path):
    config = tiny_encode_config(
        good_shards(tmp_path / "images", shards=5, per_shard=8), tmp_path / "latents", high_res=64, low_res=16
    )
    config.degradation = DegradationConfig()
    encode(config)
    manifest = json.loads((tmp_path / "latents" / "manifest.json").read_text())
    assert (manifest["low_res_latent"], manifest["high_res_latent"]) == (16, 64)

    four_x = ["flow.scale_factor=4", "flow.nfe=2", "model.attention_resolutions=[]"]
    clean_run = tmp_path / "runs" / "stage"
    overrides = [*training_overrides(tmp_path / "latents", clean_run, max_steps=2, validate_every=2), *four_x]
    clean = train(
        load_config("configs/demo/tiny_cpu.yaml", overrides), DistributedEnv(master_port=free_port())
    )
    fine_run = tmp_path / "runs" / "finetuned"
    overrides = [
        *training_overrides(tmp_path / "latents", fine_run, max_steps=2, validate_every=2),
        *four_x,
        f"train.init_from={clean_run}",
    ]
    result = train(
        load_config("configs/demo/tiny_cpu.yaml", overrides), DistributedEnv(master_port=free_port())
    )
    assert result.status == "finished"
    started, tuned = (load_file(str(r.export_dir / "model.safetensors")) for r in (clean, result))
    assert any(not torch.equal(tuned[name], started[name]) for name in started)
    assert f"init_from: {clean_run}" in (fine_run / "config.yaml").read_text()  # where it started

    source = tmp_path / "photo.png"
    Image.fromarray(((photo("chelsea", 24)[0].permute(1, 2, 0) + 1) * 127.5).byte().numpy()).save(source)
    args = ["--stage", str(fine_run), "--input-image", str(source), "--out", str(tmp_path / "out")]
    assert generate(args) == 0
    assert Image.open(tmp_path / "out" / "00000.png").size == (96, 96)
