"""run_benchmarks.py end to end on tiny models and sample shards, with a small stand-in feature extractor."""

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from evaluation.config import load_eval_config
from evaluation.run_benchmarks import main, run
from fmboost.errors import ConfigError, WeightsError
from tests.pipeline.tiny_models import save_tiny_stable_diffusion, save_tiny_stage
from tests.training.helpers import build_latents

pytestmark = pytest.mark.slow


def pixel_features(images: torch.Tensor) -> np.ndarray:
    """A stand-in feature extractor for tests: 4×4 average-pooled pixels (48-d)."""
    return torch.nn.functional.adaptive_avg_pool2d(images.float() / 255, 4).flatten(1).double().numpy()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    latents = build_latents(root)
    stage = save_tiny_stage(
        root / "model", latent_channels=3, first_stage={"name": "identity", "source": "none"}
    )
    return latents, stage


def overrides(latents, stage, results, *extra):
    return [
        f"models=[{stage}]",
        f"data={latents}/shards/{{000003..000004}}.tar",
        "num_images=16",
        "batch_size=4",
        "pfid_crop=16",
        "pfid_crops_per_image=2",
        "anyres_crop=16",
        f"results_dir={results}",
        *extra,
    ]


def test_an_nfe_sweep_writes_results_plots_grid_and_an_mlflow_run(tmp_path, setup):
    latents, stage = setup
    config = load_eval_config(
        None,
        overrides(
            latents,
            stage,
            tmp_path / "results",
            "nfe=[1,2,4]",
            "solvers=[euler,midpoint,dopri5]",
            "baselines=[bicubic,context,latent_bilinear]",
        ),
    )
    result = run(config, extractor=pixel_features)
    rows = {(row["model"], row["solver"], row["nfe"]): row for row in result["rows"]}
    assert set(rows) == {
        ("bicubic", "-", 0),
        ("latent_bilinear", "-", 0),
        ("context", "-", 0),
        ("model", "euler", 1),
        ("model", "euler", 2),
        ("model", "euler", 4),
        ("model", "midpoint", 2),
        ("model", "midpoint", 4),
        ("model", "dopri5", 0),
    }
    for row in rows.values():
        assert row["images"] == 16
        assert {
            "psnr",
            "ssim",
            "hf_ratio",
            "spectral_distance",
            "fid",
            "pfid_fmboost",
            "seconds_per_image",
        } <= set(row)
        assert row["seconds_per_image"] == pytest.approx(
            row["seconds_per_image_sample"] + row["seconds_per_image_decode"]
        )
    assert rows[("model", "midpoint", 4)]["nfe_used"] == 4 and rows[("model", "dopri5", 0)]["nfe_used"] > 6

    results = tmp_path / "results"
    saved = json.loads((results / "results.json").read_text())
    assert len(saved["results"]) == 9 and saved["settings"]["nfe"] == [1, 2, 4]
    assert (results / "results.md").read_text().startswith("| model | solver | NFE |")
    assert {p.name for p in (results / "plots").iterdir()} >= {
        "psnr_vs_nfe.png",
        "fid_vs_nfe.png",
        "seconds_per_image_vs_nfe.png",
    }
    assert (results / "samples_grid.png").is_file()
    client = MlflowClient(result["tracking_uri"])
    run_data = client.get_run(result["mlflow_run_id"]).data
    assert {
        "model/euler/psnr",
        "model/euler/fid",
        "bicubic/-/psnr",
        "model/dopri5/seconds_per_image",
    } <= set(run_data.metrics)
    assert [m.step for m in client.get_metric_history(result["mlflow_run_id"], "model/euler/psnr")] == [
        1,
        2,
        4,
    ]
    assert run_data.params["benchmark"] == "upsampling"


def test_two_shards_merged_give_the_single_task_numbers(tmp_path, setup):
    latents, stage = setup
    single = run(
        load_eval_config(None, overrides(latents, stage, tmp_path / "single", "nfe=[2]")), pixel_features
    )
    first = run(
        load_eval_config(
            None, overrides(latents, stage, tmp_path / "split", "nfe=[2]", "task_index=0", "num_tasks=2")
        ),
        pixel_features,
    )
    second = run(
        load_eval_config(
            None, overrides(latents, stage, tmp_path / "split", "nfe=[2]", "task_index=1", "num_tasks=2")
        ),
        pixel_features,
    )
    assert first is None, "the first task leaves the merge to the last one"
    for merged_row, single_row in zip(second["rows"], single["rows"], strict=True):
        for metric in ("psnr", "ssim", "fid", "pfid_fmboost", "pfid_anyres"):
            assert merged_row[metric] == pytest.approx(single_row[metric], rel=1e-4, abs=1e-6), metric


def test_results_go_to_a_real_mlflow_server(tmp_path, setup, mlflow_server):
    latents, stage = setup
    uri, _ = mlflow_server
    config = load_eval_config(
        None,
        overrides(
            latents, stage, tmp_path / "r", "nfe=[1]", "metrics=[psnr,ssim]", f"logging.tracking_uri={uri}"
        ),
    )
    result = run(config)
    metrics = MlflowClient(uri).get_run(result["mlflow_run_id"]).data.metrics
    assert {"model/euler/psnr", "model/euler/ssim", "bicubic/-/psnr"} <= set(metrics)


def test_without_inception_the_default_run_skips_feature_metrics_with_one_warning(tmp_path, setup, caplog):
    latents, stage = setup
    caplog.set_level(logging.WARNING)
    config = load_eval_config(
        None,
        overrides(
            latents,
            stage,
            tmp_path / "r",
            "nfe=[1]",
            f"inception_path={tmp_path}/missing/inception-2015-12-05.pt",
        ),
    )
    metrics_before = list(config.metrics)
    result = run(config)
    assert config.metrics == metrics_before, "the config is never changed at run time"
    warnings = [r.getMessage() for r in caplog.records if "inception-2015-12-05.pt" in r.getMessage()]
    assert len(warnings) == 1 and "skipping FID, p-FID and CLIP" in warnings[0] and "nvlabs" in warnings[0]
    assert all("fid" not in row and "psnr" in row for row in result["rows"])


def test_configs_that_require_feature_metrics_fail_before_any_generation(tmp_path, setup, capsys):
    latents, stage = setup
    args = overrides(
        latents,
        stage,
        tmp_path / "r",
        "require_feature_metrics=true",
        f"inception_path={tmp_path}/inception-2015-12-05.pt",
    )
    assert main(args) == 2
    assert f"not found at {tmp_path}/inception-2015-12-05.pt" in capsys.readouterr().err
    assert not (tmp_path / "r" / "parts").exists()
    with pytest.raises(WeightsError, match="cannot load CLIP"):
        run(
            load_eval_config(
                None,
                overrides(
                    latents,
                    stage,
                    tmp_path / "r",
                    "metrics=[clip]",
                    "require_feature_metrics=true",
                    f"clip_model={tmp_path}/no-clip",
                ),
            )
        )


def test_zero_shot_generates_from_captions_and_needs_a_base(tmp_path, setup):
    latents, _ = setup
    with pytest.raises(ConfigError, match="needs a base LDM"):
        load_eval_config("configs/eval/laion5k_zero_shot.yaml", ["base=null"])
    base = save_tiny_stable_diffusion(tmp_path / "sd")
    stage = save_tiny_stage(tmp_path / "stage")
    config = load_eval_config(
        "configs/eval/laion5k_zero_shot.yaml",
        [
            f"models=[{stage}]",
            f"base={base}",
            f"data={latents}/shards/000004.tar",
            "num_images=4",
            "batch_size=2",
            "base_steps=2",
            "nfe=[2]",
            "metrics=[fid,pfid_fmboost]",
            "pfid_crop=16",
            f"results_dir={tmp_path}/zs",
        ],
    )
    result = run(config, extractor=pixel_features)
    (row,) = result["rows"]
    assert row["model"] == "cascade" and row["images"] == 4 and "fid" in row and "pfid_fmboost" in row
    assert {"seconds_per_image_base", "seconds_per_image_stage_1", "seconds_per_image_decode"} <= set(row)
    missing_base = load_eval_config(
        "configs/eval/laion5k_zero_shot.yaml",
        [f"models=[{stage}]", f"base={tmp_path}/no-sd", f"data={latents}/shards/000004.tar", "metrics=[fid]"],
    )
    with pytest.raises(WeightsError, match="no-sd"):
        run(missing_base, extractor=pixel_features)


def test_the_default_evaluates_the_demo_run_and_asks_for_make_demo_when_there_is_none(
    tmp_path, setup, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    assert main([]) == 2
    assert (
        "the demo run runs/demo, which does not exist yet; run `make demo` first" in capsys.readouterr().err
    )

    latents, stage = setup  # lay out a training run as `make demo` leaves it
    checkpoint = tmp_path / "runs/demo/checkpoints/step_00000004"
    shutil.copytree(stage, checkpoint / "export")
    (checkpoint / "COMPLETE").write_text("")
    (tmp_path / "runs/demo/checkpoints/latest").write_text(checkpoint.name)
    defaults = [
        arg for arg in overrides(latents, stage, tmp_path / "r", "nfe=[1]") if not arg.startswith("models=")
    ]
    assert main([*defaults, "metrics=[psnr,ssim]"]) == 0
    rows = json.loads((tmp_path / "r" / "results.json").read_text())["results"]
    baselines = {"bicubic", "context", "latent_bilinear", "first_stage_ceiling"}
    assert {row["model"] for row in rows} == {*baselines, "demo"}


def test_each_task_evaluates_its_share_of_the_images_however_the_split_was_resolved():
    from evaluation.recorder import Recorder

    config = load_eval_config(
        None, ["models=[m]", "num_images=9"]
    )  # no task_index: torchrun or Slurm split it
    assert Recorder(config, [], None, None, "k", num_tasks=2).images_for_this_task() == 5
    assert Recorder(config, [], None, None, "k").images_for_this_task() == 9


class StandInInception(torch.nn.Module):
    """A TorchScript module shaped like clean-fid's: ``layers`` maps 299² images to 2048 features."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 2048)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def test_inception_path_loads_the_named_file_and_a_corrupt_one_is_a_clear_error(tmp_path):
    from evaluation.features import CleanInception

    named = tmp_path / "my-inception.pt"
    torch.jit.script(StandInInception()).save(str(named))
    features = CleanInception(named, torch.device("cpu"))(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    assert features.shape == (2, 2048)
    (tmp_path / "broken.pt").write_bytes(b"not torchscript")
    with pytest.raises(WeightsError, match="broken.pt is not a readable Inception-V3 TorchScript file"):
        CleanInception(tmp_path / "broken.pt", torch.device("cpu"))


def test_corrupt_metric_weights_are_skipped_with_a_warning_or_stop_when_required(tmp_path, setup, caplog):
    from evaluation.run_benchmarks import load_metric_models

    latents, stage = setup
    (tmp_path / "broken.pt").write_bytes(b"not torchscript")
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "config.json").write_text("{ not json")
    common = [f"inception_path={tmp_path}/broken.pt", f"clip_model={tmp_path}/clip"]
    caplog.set_level(logging.WARNING)
    config = load_eval_config(None, overrides(latents, stage, tmp_path / "r", *common))
    extractor, clip, metrics = load_metric_models(config, torch.device("cpu"))
    assert extractor is None and clip is None and "fid" not in metrics and "psnr" in metrics
    assert len([r for r in caplog.records if "skipping FID" in r.getMessage()]) == 1
    only_clip = load_eval_config(
        None, overrides(latents, stage, tmp_path / "r", *common, "metrics=[psnr,clip]")
    )
    assert load_metric_models(only_clip, torch.device("cpu"))[2] == ["psnr"]
    required = load_eval_config(
        None,
        overrides(latents, stage, tmp_path / "r", *common, "metrics=[clip]", "require_feature_metrics=true"),
    )
    with pytest.raises(WeightsError, match="cannot load CLIP"):
        load_metric_models(required, torch.device("cpu"))


def test_an_unwritable_results_dir_fails_before_any_generation(tmp_path, setup, capsys):
    latents, stage = setup
    (tmp_path / "a-file").write_text("not a folder")
    assert main(overrides(latents, stage, tmp_path / "a-file" / "results", "nfe=[1]")) == 2
    assert "error: results_dir: " in capsys.readouterr().err


def test_more_images_asked_for_than_the_data_holds_is_a_warning(tmp_path, setup, caplog):
    latents, stage = setup
    caplog.set_level(logging.WARNING)
    config = load_eval_config(
        None, [*overrides(latents, stage, tmp_path / "r", "nfe=[1]", "metrics=[psnr]"), "num_images=1000"]
    )
    result = run(config, extractor=pixel_features)
    assert any("num_images=1000, but" in r.getMessage() for r in caplog.records)
    assert all(row["images"] == 16 for row in result["rows"])


def test_student_metrics_compare_every_entry_with_the_teachers_full_nfe_output_from_the_same_noise(
    tmp_path, setup
):
    latents, stage = setup
    extra = ["nfe=[1]", "extra_nfe={model: [4]}", "teacher=model", "teacher_nfe=4", "diversity_seeds=1"]
    extra.append("baselines=[bicubic,context]")
    config = load_eval_config(
        None, overrides(latents, stage, tmp_path / "results", *extra, "metrics=[psnr]", "num_images=8")
    )
    config.models = [str(stage), str(stage)]  # the same weights twice: labels model and model_1
    rows = {(row["model"], row["nfe"]): row for row in run(config)["rows"]}
    assert set(rows) == {("bicubic", 0), ("context", 0), ("model", 1), ("model", 4), ("model_1", 1)}
    assert "teacher_psnr" not in rows[("model", 4)]  # the reference itself
    assert rows[("model", 1)]["teacher_psnr"] == rows[("model_1", 1)]["teacher_psnr"]  # same noise
    # the student is far closer to its teacher than bicubic is, yet not the very same images
    assert rows[("bicubic", 0)]["teacher_psnr"] + 10 < rows[("model", 1)]["teacher_psnr"] < float("inf")
    assert rows[("model", 1)]["diversity"] > 0 and rows[("model", 4)]["diversity"] > 0
    assert "teacher_psnr" in rows[("bicubic", 0)] and "diversity" not in rows[("bicubic", 0)]


def test_an_unknown_teacher_is_named(tmp_path, setup, capsys):
    latents, stage = setup
    assert main(overrides(latents, stage, tmp_path / "results", "nfe=[1]", "teacher=cfm")) == 2
    assert "teacher: cfm is not one of the evaluated models (model)" in capsys.readouterr().err


def test_without_a_config_the_demo_run_gets_the_demos_quick_evaluation(tmp_path, monkeypatch, capsys):
    latents = build_latents(tmp_path / "build")
    (tmp_path / "data" / "latents").mkdir(parents=True)
    latents.rename(tmp_path / "data" / "latents" / "sample")  # where `make demo` writes them
    save_tiny_stage(tmp_path / "runs" / "demo", latent_channels=3, first_stage={"name": "identity"})
    monkeypatch.chdir(tmp_path)
    assert main(["metrics=[psnr]", "results_dir=quick"]) == 0
    assert "quick evaluation with the demo's settings (configs/eval/demo.yaml)" in capsys.readouterr().out
    settings = json.loads((tmp_path / "quick" / "results.json").read_text())["settings"]
    assert (settings["nfe"], settings["solvers"], settings["num_images"]) == (
        [1, 2, 4, 8],
        ["euler", "midpoint"],
        24,
    )
    assert main(["--full-sweep", "metrics=[psnr]", "nfe=[1]", "results_dir=full"]) == 0
    settings = json.loads((tmp_path / "full" / "results.json").read_text())["settings"]
    assert (settings["solvers"], settings["num_images"]) == (["euler"], 64)


def test_the_degraded_benchmark_refuses_clean_inputs_and_runs_on_degraded_ones(
    tmp_path, setup, capsys, caplog
):
    from data_pipeline.degradation import DegradationConfig
    from data_pipeline.encode_shards import run as encode
    from tests.data_pipeline.builders import good_shards, tiny_encode_config

    latents, stage = setup
    shipped = load_eval_config("configs/eval/sr4x_degraded.yaml", ["models=[]"])
    assert shipped.require_degraded and shipped.baselines == ["bicubic", "context", "first_stage_ceiling"]
    assert {"psnr", "ssim", "hf_ratio", "spectral_distance", "fid", "pfid_fmboost"} == set(shipped.metrics)
    degraded_only = ["require_degraded=true", "nfe=[1]", "metrics=[psnr,ssim]"]
    assert main(overrides(latents, stage, tmp_path / "clean", *degraded_only)) == 2
    assert "was encoded without a degradation model, but require_degraded is set" in capsys.readouterr().err

    encoding = tiny_encode_config(
        good_shards(tmp_path / "images", shards=1, per_shard=4), tmp_path / "degraded"
    )
    encoding.degradation = DegradationConfig()
    encode(encoding)
    caplog.set_level(logging.INFO)
    args = overrides(latents, stage, tmp_path / "results", *degraded_only, "num_images=4")
    args = [arg for arg in args if not arg.startswith("data=")] + [f"data={tmp_path / 'degraded'}"]
    result = run(load_eval_config(None, args), extractor=pixel_features)
    baselines = {"bicubic", "context", "latent_bilinear", "first_stage_ceiling"}
    assert {row["model"] for row in result["rows"]} == {"model", *baselines}
    assert "low-res inputs degraded by the encoder" in caplog.text


def test_a_compiled_evaluation_scores_as_the_eager_one(tmp_path, setup, caplog):
    latents, _ = setup
    stage = save_tiny_stage(tmp_path / "model", 3, first_stage={"name": "identity"}, compiled=True)
    caplog.set_level(logging.INFO)
    # one image a batch: the graph the compiled generate and sampling-bench tests compile too
    settings = ["nfe=[2]", "metrics=[psnr,ssim]", "baselines=[]", "num_images=8", "batch_size=1"]
    rows = {}
    for name, flag in (("eager", "compile=false"), ("compiled", "compile=true")):
        config = load_eval_config(None, overrides(latents, stage, tmp_path / name, *settings, flag))
        rows[name] = run(config)["rows"][0]
    assert rows["compiled"]["psnr"] == pytest.approx(rows["eager"]["psnr"], abs=1e-3)
    assert rows["compiled"]["ssim"] == pytest.approx(rows["eager"]["ssim"], abs=1e-4)
    assert "warm-up of model (torch.compile)" in caplog.text
