"""`make demo` at a tiny size, end to end, so the demo cannot silently rot."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def run_demo(root, **environment) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEMO_ROOT": str(root), "STEPS": "4", "PYTHON": sys.executable, **environment}
    return subprocess.run(
        ["bash", "scripts/demo.sh"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900
    )


def test_the_demo_composes_the_three_commands_and_skips_finished_work_on_a_rerun(tmp_path):
    first = run_demo(tmp_path, EVAL_IMAGES="8")  # the demo's whole sweep of solvers and NFE, on 8 crops
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert (
        "CFM against its baselines on held-out photos" in first.stdout and "| bicubic | - |" in first.stdout
    )
    assert "stage timings (s):" in first.stdout and "mlflow ui --backend-store-uri sqlite:///" in first.stdout
    results = json.loads((tmp_path / "results/demo/results.json").read_text())["results"]
    assert {(r["model"], r["solver"]) for r in results} >= {
        ("bicubic", "-"),
        ("context", "-"),
        ("demo", "euler"),
        ("demo", "midpoint"),
    }
    assert (tmp_path / "runs/demo/checkpoints/latest").read_text() == "step_00000004"
    assert (tmp_path / "results/demo/samples_grid.png").is_file()

    again = run_demo(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already trained for 4 steps" in again.stdout and "is up to date" in again.stdout
    assert "5 already complete" in again.stderr


def test_the_demo_runs_in_the_taef2_latent_space(tmp_path, taef2_dir):
    result = run_demo(  # at a quarter of the demo's resolution: 256-px crops took 50 of the test's 80 s
        tmp_path,
        FIRST_STAGE="taesd",
        WEIGHTS=str(taef2_dir),
        STEPS="2",
        EVAL_IMAGES="4",
        EVAL_NFE="[2]",
        ENCODE_ARGS="high_res=64 low_res=32",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = json.loads((tmp_path / "data/latents/sample_taef2/manifest.json").read_text())
    assert manifest["latent_channels"] == 32 and manifest["first_stage"]["name"] == "taesd"
    assert manifest["high_res"] == 64
    assert (tmp_path / "results/demo_taef2/results.md").is_file()
