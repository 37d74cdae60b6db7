"""scripts/first_picture.py: the README's first picture, made from an experiment's folder."""

import json
import runpy
import sys

import pytest
from PIL import Image

from tests.conftest import REPO_ROOT
from tests.pipeline.tiny_models import save_tiny_stage
from tests.training.helpers import build_latents


def test_the_first_picture_shows_every_column_with_its_metrics_on_the_first_window_of_each_photo(
    tmp_path, monkeypatch
):
    results = tmp_path / "experiment"
    (results / "latents").mkdir(parents=True)
    (results / "latents" / "eval").symlink_to(build_latents(tmp_path / "data"))
    for arm in ("cfm", "reflow"):
        save_tiny_stage(results / "runs" / arm, latent_channels=3, first_stage={"name": "identity"})
    out = tmp_path / "picture.png"
    arguments = [str(results), "--rows", "3", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", ["first_picture.py", *arguments])

    with pytest.raises(SystemExit) as exit_code:
        runpy.run_path(str(REPO_ROOT / "scripts" / "first_picture.py"), run_name="__main__")

    assert exit_code.value.code == 0
    assert Image.open(out).size[0] > Image.open(out).size[1] > 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert len(record["keys"]) == 3 and len({key.rsplit("_c", 1)[0] for key in record["keys"]}) == 3
    assert list(record["metrics_mean"]) == ["bicubic", "CFM, 2 NFE", "reflow student, 1 NFE"]
    for name, metrics in record["metrics_per_tile"].items():
        assert len(metrics["psnr"]) == 3 and all(value > 0 for value in metrics["spectral_distance"]), name
    assert record["consistency"] == "projection"  # the stage's default, as boosting applies it
    boosted = ("CFM, 2 NFE", "reflow student, 1 NFE")
    assert all(min(record["metrics_per_tile"][name]["lr_psnr"]) > 45 for name in boosted)
    assert all(len(values["low_frequency_rmse"]) == 3 for values in record["metrics_per_tile"].values())

    monkeypatch.setattr(sys, "argv", ["first_picture.py", *arguments, "--consistency", "none"])
    with pytest.raises(SystemExit):
        runpy.run_path(str(REPO_ROOT / "scripts" / "first_picture.py"), run_name="__main__")
    raw = json.loads(out.with_suffix(".json").read_text())
    assert raw["consistency"] == "none" and max(raw["metrics_per_tile"]["CFM, 2 NFE"]["lr_psnr"]) < 45
