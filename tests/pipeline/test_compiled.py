"""Compiled sampling (torch.compile of the flow network and the autoencoder) gives eager's images on CPU and
reports its compilation apart from the timings of a call."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fmboost.generate import main
from fmboost.inference.pipeline import FMBoostPipeline
from tests.conftest import photo
from tests.pipeline.tiny_models import save_tiny_stage

pytestmark = pytest.mark.slow


def taef2_stage(folder, taef2_dir):
    first_stage = {"name": "taesd", "path": str(taef2_dir)}
    return save_tiny_stage(folder, latent_channels=32, first_stage=first_stage, compiled=True)


@pytest.mark.parametrize(
    ("first_stage", "dtype", "tolerance"),
    [("taef2", "fp32", 1e-4), ("identity", "bf16", 3e-2)],
    ids=["fp32 with TAEF2", "bf16"],
)
def test_compiled_sampling_and_decoding_equal_eager_and_the_warm_up_is_timed_apart(
    tmp_path, taef2_dir, first_stage, dtype, tolerance
):
    """In fp32 the U-Net and TAEF2's decoder and encoder are compiled; in bf16 the U-Net alone, at the
    shape the other compiled tests use (a cold compile cache pays for each new graph: 10-20 s on a CPU)."""
    seeded = torch.Generator().manual_seed(0)
    if first_stage == "taef2":
        stage = taef2_stage(tmp_path / "stage", taef2_dir)
        latents = torch.randn(2, 32, 4, 4, generator=seeded)
    else:
        stage = save_tiny_stage(tmp_path / "stage", 3, first_stage={"name": "identity"}, compiled=True)
        latents = torch.randn(1, 3, 16, 16, generator=seeded)
    eager = FMBoostPipeline.from_pretrained([stage], device="cpu", dtype=dtype)
    compiled = FMBoostPipeline.from_pretrained([stage], device="cpu", dtype=dtype, compile=True)
    assert compiled.stages[0].net._compiled_call_impl is not None  # the U-Net
    if first_stage == "taef2":
        assert compiled.first_stage.decoder._compiled_call_impl is not None  # and TAEF2's decoder
        assert compiled.first_stage.encoder._compiled_call_impl is not None  # and encoder (for contexts)

    reference = eager(latents=latents, seed=3, nfe=4)
    first = compiled(latents=latents, seed=3, nfe=4)
    again = compiled(latents=latents, seed=3, nfe=4)
    assert "warmup" in first.timings and first.timings["warmup"] > 0
    assert "warmup" not in again.timings and "warmup" not in reference.timings
    torch.testing.assert_close(first.latents, reference.latents, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(again.latents, first.latents)
    decoded, expected = (np.asarray(output.images[0], dtype=np.float32) for output in (first, reference))
    assert np.abs(decoded - expected).mean() < (0.5 if dtype == "fp32" else 3.0)  # in 8-bit levels

    other_nfe = compiled(latents=latents, seed=3, nfe=2)
    assert "warmup" in other_nfe.timings  # a new call shape warms up once more, apart again


def test_generate_compile_writes_the_warm_up_beside_the_timings(tmp_path):
    stage = save_tiny_stage(tmp_path / "stage", 3, first_stage={"name": "identity"}, compiled=True)
    source = tmp_path / "photo.png"
    Image.fromarray(((photo("chelsea", 16)[0].permute(1, 2, 0) + 1) * 127.5).byte().numpy()).save(source)
    args = ["--stage", str(stage), "--input-image", str(source), "--input-image", str(source)]
    assert main([*args, "--compile", "--out", str(tmp_path / "out"), "--nfe", "2"]) == 0
    sidecars = [json.loads((tmp_path / "out" / f"0000{i}.json").read_text()) for i in (0, 1)]
    assert "warmup" in sidecars[0]["timings_s"] and "warmup" not in sidecars[1]["timings_s"]
