"""The experiment runner end to end at a tiny size: real encoding, real DeepSpeed training through
cluster/submit.py (local), real evaluation and MLflow."""

import json
import logging

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from evaluation.experiment.config import load_experiment_config
from evaluation.run_experiment import main
from fmboost.errors import ConfigError
from tests.conftest import REPO_ROOT, photo

pytestmark = pytest.mark.slow
CONFIG = REPO_ROOT / "configs/experiments/table2_mini.yaml"
TINY_TRAINING = [
    "train.max_steps=2",
    "train.checkpoint_every=2",
    "train.log_every=1",
    "data.batch_size=4",
    "model.out_channels=3",
    "model.model_channels=16",
    "model.channel_mult=[1,2]",
    "model.attention_resolutions=[2]",
    "model.norm_groups=4",
    "model.num_heads=2",
    "model.head_channels=8",
    "cluster.cpus_per_task=1",
]
TINY = [
    "first_stage.name=identity",
    "encode.high_res=32",
    "encode.low_res=16",
    "encode.images_per_shard=4",
    "train_crops_per_image=2",
    "eval_crops_per_image=1",
    "holdout_every=4",
    "train_overrides=[" + ", ".join(f"'{o}'" for o in TINY_TRAINING) + "]",
    "arms=[{name: cfm, overrides: [flow.objective=cfm]}, {name: l2, overrides: [flow.objective=l2]}]",
    "evaluation.nfe=[1,2]",
    "evaluation.num_images=4",
    "evaluation.batch_size=2",
    "evaluation.metrics=[psnr,ssim,hf_ratio,spectral_distance]",
]


def write_photos(folder, names, size=48):
    folder.mkdir(parents=True)
    for index, name in enumerate(names):
        pixels = ((photo(name, size)[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
        Image.fromarray(pixels).save(folder / f"img_{index:02d}.png")


def test_an_experiment_encodes_trains_every_arm_evaluates_them_together_and_resumes(tmp_path, caplog):
    names = [
        "astronaut",
        "chelsea",
        "coffee",
        "rocket",
        "cat",
        "hubble_deep_field",
        "retina",
        "immunohistochemistry",
    ]
    write_photos(tmp_path / "train", names)
    write_photos(tmp_path / "val", ["colorwheel"])
    args = [str(CONFIG), *TINY, f"train_images=[{tmp_path / 'train'}]", f"eval_images=[{tmp_path / 'val'}]"]
    args.append(f"results_dir={tmp_path / 'results'}")
    assert main(args) == 0
    root = tmp_path / "results"

    held_out = (root / "images" / "held_out.txt").read_text().split()
    assert held_out == ["train/img_03.png", "train/img_07.png"]  # every 4th training photo
    assert not any((root / "images" / "train" / name).exists() for name in held_out)
    results = json.loads((root / "results.json").read_text())
    references = {"bicubic", "context", "first_stage_ceiling"}  # each raw and held to its input
    assert set(results["baselines"]) == references | {f"{name} + projection" for name in references}
    assert set(results["arms"]) == {"cfm", "l2"}
    raw, held = (
        results["arms"]["cfm"]["nfe"]["2"],
        results["arms"]["cfm"]["consistency"]["projection"]["nfe"]["2"],
    )
    assert held["lr_psnr"] > 45 > raw["lr_psnr"] and {"lr_ssim", "psnr"} <= set(held)
    assert "| cfm + projection | 2 |" in (root / "results.md").read_text()
    assert set(results["arms"]["cfm"]["nfe"]) == {"1", "2"}
    assert {"psnr", "ssim", "hf_ratio", "spectral_distance"} <= set(results["arms"]["cfm"]["nfe"]["2"])
    assert results["settings"]["images"] == {"train": 6, "eval": 3}
    assert (root / "results.md").read_text().startswith("| method | NFE | PSNR ↑ | SSIM ↑ | LR-PSNR ↑")
    assert (root / "samples_grid.png").is_file() and (root / "plots" / "psnr_vs_nfe.png").is_file()
    for arm in ("cfm", "l2"):  # the loss each arm logged at steps 1 and 2, as plotted
        logged = [
            json.loads(line) for line in (root / "runs" / arm / "metrics.jsonl").read_text().splitlines()
        ]
        expected = {str(entry["step"]): entry["train/loss"] for entry in logged if "train/loss" in entry}
        assert results["arms"][arm]["train_loss"] == expected and set(expected) == {"1", "2"}
    assert (root / "plots" / "train_loss.png").is_file()

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    parent = client.get_run((root / "mlflow_runs" / "experiment" / "mlflow_run_id").read_text())
    children = [
        client.get_run((root / "mlflow_runs" / arm / "mlflow_run_id").read_text()) for arm in ("cfm", "l2")
    ]
    assert all(child.data.tags["mlflow.parentRunId"] == parent.info.run_id for child in children)
    assert "psnr" in children[0].data.metrics and "bicubic/psnr" in parent.data.metrics

    caplog.clear()
    caplog.set_level(logging.INFO)
    assert main(args) == 0  # a rerun reuses the data and the trained arms
    again = json.loads((root / "results.json").read_text())["arms"]["cfm"]["nfe"]
    quality = ("psnr", "ssim", "hf_ratio", "spectral_distance")
    assert {n: [v[k] for k in quality] for n, v in again.items()} == {
        n: [v[k] for k in quality] for n, v in results["arms"]["cfm"]["nfe"].items()
    }
    assert "arm cfm: already trained for 2 steps" in caplog.text


def test_an_experiment_without_image_folders_or_with_duplicate_arms_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="train_images: name at least one image folder"):
        load_experiment_config(CONFIG)
    (tmp_path / "a").mkdir()
    folders = [f"train_images=[{tmp_path / 'a'}]", f"eval_images=[{tmp_path / 'a'}]"]
    with pytest.raises(ConfigError, match="arms: give each arm a distinct"):
        load_experiment_config(CONFIG, [*folders, "arms=[{name: a}, {name: a}]"])


@pytest.mark.parametrize(
    ("name", "arms"),
    [
        ("table2_mini", ["cfm", "fm", "dm", "l1", "l2"]),
        ("noise_aug_mini", ["k0", "k200", "k400", "k600", "k800"]),
        ("upsampling_mini", ["nearest", "bilinear", "psu"]),
        ("bf16_weights_mini", ["bf16_mixed", "bf16_weights"]),
    ],
)
def test_the_shipped_experiments_load_with_their_arms_and_valid_training_configs(tmp_path, name, arms):
    from fmboost.config_loading import load_config

    folders = [f"train_images=[{tmp_path}]", f"eval_images=[{tmp_path}]"]
    config = load_experiment_config(REPO_ROOT / f"configs/experiments/{name}.yaml", folders)
    assert [arm.name for arm in config.arms] == arms and config.name == name
    for arm in config.arms:  # every arm's training config validates (with a first stage path given)
        load_config(
            config.train_config, [*config.train_overrides, *arm.overrides, "first_stage.path=/weights"]
        )


STUDENT_ARMS = (
    "arms=[{name: cfm, overrides: [flow.objective=cfm]},"
    " {name: reflow, overrides: [flow.objective=reflow, 'flow.trained_nfe=[1,2]', flow.nfe=1,"
    " train.init_from=@cfm, data.train=@pairs]},"
    " {name: shortcut, overrides: [flow.objective=shortcut, 'flow.trained_nfe=[1,2]', flow.nfe=1,"
    " train.init_from=@cfm]}]"
)


def test_a_fewstep_experiment_trains_students_from_the_teacher_arm_and_its_pairs(tmp_path):
    write_photos(tmp_path / "train", ["astronaut", "chelsea", "coffee", "rocket"])
    write_photos(tmp_path / "val", ["colorwheel"])
    tiny = [o for o in TINY if not o.startswith(("arms=", "evaluation.nfe"))]
    args = [
        str(REPO_ROOT / "configs/experiments/fewstep_mini.yaml"),
        *tiny,
        STUDENT_ARMS,
        "pairs.nfe=4",
        "evaluation.nfe=[1]",
        "evaluation.extra_nfe={cfm: [4]}",
        "evaluation.teacher_nfe=4",
        f"train_images={tmp_path / 'train'}",  # one folder, not a list
        f"eval_images=[{tmp_path / 'val'}]",
        f"results_dir={tmp_path / 'results'}",
    ]
    assert main(args) == 0
    root = tmp_path / "results"
    pairs = json.loads((root / "pairs" / "manifest.json").read_text())["pairs"]
    assert pairs["teacher"].startswith(str(root / "runs" / "cfm")) and pairs["nfe"] == 4
    results = json.loads((root / "results.json").read_text())
    assert {arm: set(values["nfe"]) for arm, values in results["arms"].items()} == {
        "cfm": {"1", "4"},
        "reflow": {"1"},
        "shortcut": {"1"},
    }
    for arm in ("reflow", "shortcut"):
        assert {"teacher_psnr", "diversity", "psnr"} <= set(results["arms"][arm]["nfe"]["1"])
    assert "teacher_psnr" not in results["arms"]["cfm"]["nfe"]["4"]
    assert results["settings"]["seconds"]["pairs"] > 0


def test_an_arm_may_only_name_arms_before_it_and_pairs_of_an_earlier_teacher(tmp_path):
    folders = [f"train_images=[{tmp_path}]", f"eval_images=[{tmp_path}]"]
    fewstep = REPO_ROOT / "configs/experiments/fewstep_mini.yaml"
    config = load_experiment_config(fewstep, folders)
    assert [arm.name for arm in config.arms] == [
        "cfm",
        "reflow",
        "shortcut",
    ] and config.pairs.teacher == "cfm"
    backwards = "arms=[{name: s, overrides: [train.init_from=@t]}, {name: t}]"
    with pytest.raises(ConfigError, match="s refers to @t, which is not an arm listed before it"):
        load_experiment_config(CONFIG, [*folders, backwards])
    no_teacher = "arms=[{name: s, overrides: [data.train=@pairs]}]"
    with pytest.raises(ConfigError, match="s trains on @pairs, which needs a pairs section"):
        load_experiment_config(CONFIG, [*folders, no_teacher])


DEGRADED_ARMS = (
    "arms=[{name: clean, overrides: [flow.objective=cfm]},"
    " {name: finetuned, overrides: [flow.objective=cfm, train.init_from=@clean,"
    " data.train=@degraded_latents]}]"
)


def test_a_degraded_4x_experiment_fine_tunes_on_degraded_pairs_and_evaluates_on_degraded_inputs(tmp_path):
    write_photos(tmp_path / "train", ["astronaut", "chelsea", "coffee", "rocket"])
    write_photos(tmp_path / "val", ["colorwheel"])
    tiny = [o for o in TINY if not o.startswith(("arms=", "evaluation.nfe", "encode.low_res", "train_ov"))]
    training = [*TINY_TRAINING, "flow.scale_factor=4"]
    args = [
        str(REPO_ROOT / "configs/experiments/sr4x_degraded_mini.yaml"),
        *tiny,
        "encode.low_res=8",
        "train_overrides=[" + ", ".join(f"'{o}'" for o in training) + "]",
        DEGRADED_ARMS,
        "evaluation.nfe=[1]",
        "validation_every=3",
        f"train_images=[{tmp_path / 'train'}]",
        f"eval_images=[{tmp_path / 'val'}]",
        f"results_dir={tmp_path / 'results'}",
    ]
    assert main(args) == 0
    root = tmp_path / "results"
    splits = {
        split: sorted(p.name for p in (root / "images" / split).rglob("*.png"))
        for split in ("train", "validation")
    }
    assert splits == {"train": ["img_00.png", "img_01.png"], "validation": ["img_02.png"]}  # img_03: held out
    validation = json.loads((root / "validation.json").read_text())  # where a stage kind's default is chosen
    assert set(validation["arms"]["finetuned"]["consistency"]) == {"adain", "wavelet", "projection"}
    assert "| finetuned + wavelet | 1 |" in (root / "validation.md").read_text()
    manifests = {
        split: json.loads((root / "latents" / split / "manifest.json").read_text())
        for split in ("train", "train_degraded", "eval")
    }
    assert "degradation" not in manifests["train"]["preprocessing"]
    assert manifests["train_degraded"]["preprocessing"]["degradation"]["final_sinc_prob"] == 0.8
    assert "degradation" in manifests["eval"]["preprocessing"]  # every arm sees the same degraded inputs
    assert manifests["eval"]["low_res"] * 4 == manifests["eval"]["high_res"]
    finetuned = (root / "runs" / "finetuned" / "config.yaml").read_text()
    assert f"init_from: {root / 'runs' / 'clean'}" in finetuned
    assert str(root / "latents" / "train_degraded") in finetuned
    results = json.loads((root / "results.json").read_text())
    assert set(results["arms"]) == {"clean", "finetuned"}
    assert {"bicubic", "context", "first_stage_ceiling", "bicubic + wavelet"} <= set(results["baselines"])
    assert set(results["arms"]["finetuned"]["consistency"]) == {"adain", "wavelet", "projection"}


def test_the_shipped_sr4x_experiment_has_the_issues_arms_and_degraded_latents_need_a_degradation(tmp_path):
    folders = [f"train_images=[{tmp_path}]", f"eval_images=[{tmp_path}]"]
    config = load_experiment_config(REPO_ROOT / "configs/experiments/sr4x_degraded_mini.yaml", folders)
    assert [arm.name for arm in config.arms] == ["clean", "finetuned", "degraded", "l2"]
    assert config.degradation is not None and config.encode["high_res"] == 4 * config.encode["low_res"]
    plain = "arms=[{name: a, overrides: [data.train=@degraded_latents]}]"
    with pytest.raises(ConfigError, match="a trains on @degraded_latents, which needs a degradation section"):
        load_experiment_config(CONFIG, [*folders, plain])
    with pytest.raises(ConfigError, match="other than pairs and degraded_latents"):
        load_experiment_config(CONFIG, [*folders, "arms=[{name: degraded_latents}]"])
