"""Inference rebuilds exactly the context training saw: images encoded with the laion_1k settings.

Encoding records the first stage (weights, scale, shift, tiling) in the manifest; the trained model
carries that record; the model and the pipeline rebuild the PSU context from it. With real TAEF2 weights
the rebuilt context must equal the stored one up to the fp16 rounding of the shards.
"""

import json

import pytest
import torch
from PIL import Image

from data_pipeline.config import load_encode_config
from data_pipeline.encode_shards import run
from fmboost.config import FlowConfig
from fmboost.data import ValidationStream, make_loader, resolve_dataset
from fmboost.data.dataset import SampleTransform
from fmboost.first_stage import build_first_stage
from fmboost.inference.pipeline import FMBoostPipeline
from fmboost.models import FMBoostModel
from tests.conftest import REPO_ROOT, SHARED, photo, tiny_unet_config
from tests.data_pipeline.builders import image_bytes, write_tar

pytestmark = pytest.mark.slow

FP16_ROUNDING = (
    0.02  # stored latents are float16 (spacing 0.002–0.004 at |z| of 4–8), rebuilt from float16 z_low
)


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """One photo encoded as configs/encode/laion_1k.yaml says, in TAEF2's latent space, at 768 px rather
    than 1024 (half the autoencoder's time): its 96² latents still go through the VAE whole under the
    recorded tiling (128) and are still cut into tiles by the tiling inference used before (64)."""
    weights = SHARED / "weights"
    if not (weights / "taef2_encoder.pth").is_file():
        pytest.skip(f"TAEF2 weights not found in {weights}")
    root = tmp_path_factory.mktemp("laion_1k")
    pixels = ((photo("astronaut", 768)[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
    sample = {"jpg": image_bytes(Image.fromarray(pixels)), "txt": b"an astronaut", "json": b"{}"}
    write_tar(root / "images" / "00000.tar", [("000000000", sample)])
    overrides = [
        f"input={root}/images/00000.tar",
        f"output={root}/latents",
        "first_stage.name=taesd",
        f"first_stage.path={weights}",
        "first_stage.subfolder=null",
        "first_stage.scale=null",
        "batch_size=1",
        "num_workers=0",
        "precision=fp32",
        "high_res=768",
        "low_res=384",
    ]
    run(load_encode_config(REPO_ROOT / "configs/encode/laion_1k.yaml", overrides))
    dataset = resolve_dataset(str(root / "latents"))
    stream = ValidationStream(dataset, SampleTransform(dataset.manifest, "psu_roundtrip"), batch_size=1)
    return dataset, next(iter(make_loader(stream, 0)))


def largest_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def test_the_manifest_records_the_tiling_the_contexts_were_made_with(encoded):
    dataset, batch = encoded
    record = dataset.manifest.first_stage
    assert (record.tile_size, record.tile_overlap, record.scale, record.shift) == (
        128,
        16,
        1.0,
        0.0,
    )
    assert batch["x1"].shape == batch["z_up"].shape == (1, 32, 96, 96)


def test_the_model_rebuilds_the_stored_context_from_its_recorded_first_stage(encoded):
    dataset, batch = encoded
    model = FMBoostModel(tiny_unet_config(32), FlowConfig(), dataset.manifest.first_stage)
    first_stage = build_first_stage(model.first_stage)
    rebuilt = model.prepare_context(batch["z_low"], first_stage)
    assert largest_difference(rebuilt, batch["z_up"]) < FP16_ROUNDING

    first_stage.tile_size = 64  # what inference used before the tiling was recorded
    assert (
        largest_difference(model.prepare_context(batch["z_low"], first_stage), batch["z_up"]) > FP16_ROUNDING
    )


def test_the_pipeline_boosts_latents_from_the_stored_context(encoded, tmp_path):
    """An untrained stage predicts zero velocity; without noise augmentation its output is its context."""
    dataset, batch = encoded
    stage = FMBoostModel(
        tiny_unet_config(32), FlowConfig(noise_aug_step=0, nfe=1), dataset.manifest.first_stage
    )
    stage.save_pretrained(tmp_path / "stage")
    assert json.loads((tmp_path / "stage" / "config.json").read_text())["first_stage"]["tile_size"] == 128

    pipeline = FMBoostPipeline.from_pretrained([tmp_path / "stage"], device="cpu", dtype="fp32")
    output = pipeline(latents=batch["z_low"], seed=0, consistency="none")  # the latents are what counts
    assert largest_difference(output.latents, batch["z_up"]) < FP16_ROUNDING
