"""The benchmark scripts run end to end on a CPU at tiny sizes (``--small``, a few steps): the GPU check
and the step profile are ready when a GPU is, and the CPU benchmarks keep working."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def run_bench(*arguments: str) -> None:
    environment = {**os.environ, "MASTER_PORT": str(23000 + os.getpid() % 1000)}
    finished = subprocess.run(
        [sys.executable, *arguments],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]


def test_the_gpu_check_runs_at_small_size_and_reports_every_figure(tmp_path):
    out = tmp_path / "gpu_check.json"
    run_bench("bench/gpu_check.py", "--small", "--out", str(out))
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["torch"] and result["date"].startswith("20")
    for key in ("a_train_cfm_1k", "b_train_cfm_1k_compile_channels_last", "c_train_cascade_2k_crop"):
        figures = result[key]
        assert (
            figures["samples_per_s"] > 0 and figures["loss_finite"] and figures["model_tflops_per_sample"] > 0
        )
        assert figures["zero_stage"] == 2
    assert result["d_inference_1k"]["image"] == "32²" and result["d_inference_1k"]["batch"] == 2
    assert set(result["d_inference_1k"]["seconds"]) == {"context_1", "stage_1", "decode"}
    assert result["d_inference_1k"]["decode"] == "whole"
    assert result["e_inference_2k_cascade"]["image"] == "64²"
    assert set(result["e_inference_2k_cascade"]["seconds"]) == {
        "context_1",
        "stage_1",
        "context_2",
        "stage_2",
        "decode",
    }
    comparison = result["f_model_level"]["batch_2"]
    assert comparison["ours_ms"] > 0 and comparison["reference_ms"] > 0
    assert not any(key.startswith("g_") for key in result), "one compiled variant with --small: (b)'s"
    layouts = result["h_eager_layouts_1k"]
    for layout in ("nchw", "nhwc"):
        assert layouts[f"unet_bf16_{layout}_ms_per_evaluation"] > 0
        assert layouts[f"decode_bf16_{layout}_s_per_image"] > 0
    assert layouts["decode_fp32_nchw_s_per_image"] > 0
    on_cpu = [  # the compiled bf16-weights, NHWC GroupNorm and ZeRO-2 variants run only on a GPU
        "zero0_compile_channels_last",
        "zero0_compile_channels_last_fused_adamw",
        "zero0_eager",
        "zero0_eager_fused_adamw",
        "zero0_eager_bf16_weights",
        "zero1_eager_bf16_weights_fp32_accumulation",
        "zero0_eager_channels_last",
        "zero0_eager_channels_last_group_norm",
        "zero2_eager_fused_adamw",
    ]
    assert sorted(key for key in result if key.startswith("i_")) == sorted(
        f"i_train_cfm_1k_{v}" for v in on_cpu
    )
    for variant in on_cpu:
        figures = result[f"i_train_cfm_1k_{variant}"]
        assert variant.startswith(f"zero{figures['zero_stage']}_")
        assert figures["samples_per_s"] > 0 and figures["loss_finite"]
        assert figures["compile"] == ("compile" in variant)
        assert figures["bf16_weights"] == ("bf16_weights" in variant)
        assert figures["precision"] == ("bf16" if "bf16_weights" in variant else "fp32")
        assert figures["channels_last"] == ("channels_last" in variant)
        assert figures["channels_last_group_norm"] == variant.endswith("group_norm")
    group_norm = result["j_group_norm"]
    for level in ("32_channels_at_16²", "64_channels_at_8²"):
        assert set(group_norm[level]) == {
            f"{variant}_eager_ms" for variant in ("nchw", "nhwc_native", "nhwc_in_place")
        }
        assert all(ms > 0 for ms in group_norm[level].values())
    assert group_norm["nhwc_in_place_eager_vs_nchw"] > 0


@pytest.mark.parametrize("mode", [[], ["--inference"]], ids=["training step", "sampling step"])
def test_the_step_profile_reports_a_step_time_and_the_costliest_operators(tmp_path, mode):
    overrides = ["deepspeed.zero_optimization.stage=0", "data.batch_size=1", "train.compile=false"]
    run_bench(
        "bench/profile_step.py",
        "configs/cfm_1k.yaml",
        *overrides,
        "--small",
        *mode,
        "--steps",
        "1",
        "--profiled",
        "1",
        "--out",
        str(tmp_path),
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["step_ms_median"] > 0 and summary["batch"] == 1 and summary["zero_stage"] == 0
    assert summary["inference"] == bool(mode)
    assert "Self CPU time total" in (tmp_path / "table.txt").read_text()


def test_the_training_throughput_bench_interleaves_a_bare_step_after_every_trainer_step(tmp_path):
    out = tmp_path / "train_throughput.json"
    run_bench(
        "bench/train_throughput.py", "--steps", "3", "--warmup", "1", "--rounds", "1", "--out", str(out)
    )
    result = json.loads(out.read_text())
    timings = result["in_trainer_ms"]
    assert result["steps"] == 2  # the first timed step has no bare step before it
    assert timings["whole_step"] > 0 and timings["bare_step"] > 0
    assert result["overhead"] == pytest.approx(
        result["bare_loop_samples_per_s"] / result["full_loop_samples_per_s"] - 1, abs=0.01
    )
    assert result["model_level"]["ratio"] > 0


def test_the_compiled_sampling_bench_times_both_and_reports_the_warm_up_apart(tmp_path):
    from tests.pipeline.tiny_models import save_tiny_stage

    stage = save_tiny_stage(tmp_path / "stage", 3, first_stage={"name": "identity"}, compiled=True)
    out = tmp_path / "compiled.json"
    # the graph the compiled generate and evaluation tests compile too: a cold cache pays for it once
    arguments = ["--stage", str(stage), "--nfe", "2", "--batch", "1", "--latent", "16", "--repeats", "2"]
    run_bench("bench/compiled_sampling.py", *arguments, "--out", str(out))
    result = json.loads(out.read_text())
    assert result["compile_warmup_s"] > 0 and len(result["eager_s"]) == len(result["compiled_s"]) == 2
    assert result["ratio_best"] > 0


def test_the_group_norm_bench_checks_every_variant_then_times_it_against_nchw(tmp_path):
    out = tmp_path / "group_norm.json"
    run_bench("bench/group_norm.py", "--small", "--no-compile", "--repeats", "2", "--out", str(out))
    result = json.loads(out.read_text())
    assert result["precision"] == "float32" and result["batch"] == 2
    assert set(result["32_channels_at_16²"]) == {
        "nchw_eager_ms",
        "nhwc_native_eager_ms",
        "nhwc_in_place_eager_ms",
    }
    assert result["nhwc_native_eager_vs_nchw"] > 0 and result["nhwc_in_place_eager_vs_nchw"] > 0


def test_the_checkpoint_checksum_bench_times_the_crc_against_the_write(tmp_path):
    out = tmp_path / "checkpoint_checksum.json"
    run_bench("bench/checkpoint_checksum.py", "--small", "--out", str(out))
    result = json.loads(out.read_text())
    for name in ("optimizer_share", "module"):
        assert result[name]["bytes"] > 0 and result[name]["save_s"] > 0 and result[name]["crc32_s"] > 0


def test_the_reshard_bench_measures_both_consolidations_on_a_real_two_rank_checkpoint(tmp_path):
    out = tmp_path / "reshard_memory.json"
    run_bench("bench/reshard_memory.py", "--small", "--out", str(out))
    result = json.loads(out.read_text())
    assert result["same_tensors"] and result["ranks_written"] == 2
    streamed, baseline = result["streamed"], result["in_memory_baseline"]
    assert streamed["peak_anonymous_bytes"] < baseline["peak_anonymous_bytes"]
