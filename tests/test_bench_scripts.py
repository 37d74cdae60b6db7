"""``bench/gpu_check.py --small`` runs end to end on a CPU, so the GPU check is ready when a GPU is."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def test_the_gpu_check_runs_at_small_size_and_reports_every_figure(tmp_path):
    out = tmp_path / "gpu_check.json"
    environment = {**os.environ, "MASTER_PORT": str(23000 + os.getpid() % 1000)}
    finished = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--small", "--out", str(out)],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in ("a_train_cfm_1k", "b_train_cfm_1k_compile_channels_last", "c_train_cascade_2k_crop"):
        figures = result[key]
        assert (
            figures["samples_per_s"] > 0 and figures["loss_finite"] and figures["model_tflops_per_sample"] > 0
        )
        assert figures["zero_stage"] == 2
    assert result["d_inference_1k"]["image"] == "32²" and result["d_inference_1k"]["batch"] == 2
    assert set(result["d_inference_1k"]["seconds"]) == {"stage_1", "decode"}
    assert result["e_inference_2k_cascade"]["image"] == "64²"
    assert set(result["e_inference_2k_cascade"]["seconds"]) == {"stage_1", "stage_2", "decode"}
