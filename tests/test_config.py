from pathlib import Path

import pytest

from fmboost.config import FMBoostConfig, to_flat_dict, to_yaml
from fmboost.config_loading import load_config
from fmboost.errors import ConfigError
from fmboost.models import FMBoostModel

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["cfm_1k.yaml", "cascade_2k.yaml", "demo/tiny_cpu.yaml"])
def test_shipped_configs_load_and_validate(name):
    assert isinstance(load_config(CONFIGS / name), FMBoostConfig)


def test_paper_recipe_has_the_paper_hyper_parameters():
    config = load_config(CONFIGS / "cfm_1k.yaml")
    assert (config.model.model_channels, config.model.channel_mult) == (128, [1, 2, 4, 8])
    assert config.model.in_channels is None, "derived from the objective: 2 × 4 latent channels"
    assert FMBoostModel.from_config(config).unet_config.in_channels == 8
    assert (config.model.num_res_blocks, config.model.attention_resolutions) == (3, [8])
    assert (config.model.num_heads, config.model.head_channels, config.model.time_scale) == (4, 64, 1.0)
    assert config.train.grad_clip == 0.0, "the released trainer does not clip gradients"
    assert (config.flow.objective, config.flow.noise_aug_step, config.flow.nfe) == ("cfm", 400, 40)
    assert (config.train.lr, config.train.ema_beta, config.train.precision) == (3e-5, 0.999, "bf16")
    assert config.first_stage.scale == 0.18215


def test_heads_of_head_channels_must_split_every_attention_layer():
    with pytest.raises(ConfigError, match="model.head_channels: 1024 channels do not split into heads of 48"):
        load_config(CONFIGS / "cfm_1k.yaml", ["model.num_heads=null", "model.head_channels=48"])


def test_command_line_overrides_win_over_the_file_and_keep_their_types():
    config = load_config(
        CONFIGS / "cfm_1k.yaml",
        ["train.lr=1e-4", "model.channel_mult=[1,2]", "model.attention_resolutions=[2]", "flow.solver=rk4"],
    )
    assert config.train.lr == 1e-4
    assert config.model.channel_mult == [1, 2]
    assert config.flow.solver == "rk4"


def test_deepspeed_section_passes_any_deepspeed_key_through():
    config = load_config(None, ["deepspeed.zero_optimization.stage=2", "deepspeed.steps_per_print=7"])
    assert config.deepspeed == {"zero_optimization": {"stage": 2}, "steps_per_print": 7}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=1", r"command line: train.lrr: Key 'lrr' not in 'TrainConfig'"),
        ("train.lr=fast", r"command line: train.lr: Value 'fast' .* could not be converted to Float"),
        ("flow.objective=cfmm", r"flow.objective: unknown objective 'cfmm'; choose one of cfm, dm, fm, l1"),
        ("flow.upsampling=bicubic", r"flow.upsampling: unknown upsampling mode 'bicubic'"),
        ("first_stage.name=sdxl", r"first_stage.name: unknown first stage 'sdxl'"),
        ("flow.nfe=10", None),
        ("model.in_channels=4", r"model.in_channels: the cfm objective feeds 8 channels"),
        ("train.precision=fp8", r"train.precision: choose one of"),
        ("flow.noise_aug_step=1000", r"flow.noise_aug_step: must lie in \[0, 999\]"),
        ("lr", r"overrides must look like section.key=value, got lr"),
        (
            "model.attention_resolutions=[8,16]",
            r"model.attention_resolutions: factor\(s\) \[16\] never occur",
        ),
        ("model.num_heads=0", r"model.num_heads: must be positive"),
        ("model.time_scale=0", r"model.time_scale: must be positive"),
        ("train.grad_clip=-1", r"train.grad_clip: must not be negative"),
    ],
)
def test_bad_overrides_fail_with_the_key_named(override, message):
    if message is None:
        assert load_config(CONFIGS / "cfm_1k.yaml", [override]).flow.nfe == 10
        return
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS / "cfm_1k.yaml", [override])


def test_solver_and_nfe_must_fit_together():
    with pytest.raises(ConfigError, match="flow.nfe: 10 evaluations do not fit the rk4 solver"):
        load_config(None, ["flow.solver=rk4", "flow.nfe=10"])


def test_typo_in_a_yaml_file_names_the_file_and_the_key(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(
        ConfigError, match=rf"{path}: train.learning_rate: Key 'learning_rate' not in 'TrainConfig'"
    ):
        load_config(path)


def test_missing_or_malformed_files_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(scalar)


def test_no_target_string_can_import_code(tmp_path):
    path = tmp_path / "target.yaml"
    path.write_text("model:\n  target: os.system\n")
    with pytest.raises(ConfigError, match="model.target"):
        load_config(path)


def test_flat_dict_and_yaml_cover_every_section():
    config = load_config(None)
    flat = to_flat_dict(config)
    assert flat["train.lr"] == 3e-5 and flat["deepspeed.zero_optimization.stage"] == 1
    assert {key.split(".")[0] for key in flat} == {
        "model",
        "flow",
        "first_stage",
        "data",
        "train",
        "deepspeed",
        "cluster",
        "logging",
        "eval",
    }
    assert "objective: cfm" in to_yaml(config)


def test_override_values_that_are_not_yaml_are_kept_verbatim():
    from data_pipeline.config import load_encode_config

    config = load_encode_config(None, ["input=/data/laion/{00000..00127}.tar", "first_stage.name=identity"])
    assert config.input == "/data/laion/{00000..00127}.tar"


def test_periodic_validation_settings_are_checked_like_the_sampler():
    config = load_config(CONFIGS / "demo/tiny_cpu.yaml")
    assert (config.eval.solver, config.eval.nfe, config.eval.num_images) == ("euler", 8, 8)
    with pytest.raises(ConfigError, match="eval.nfe: 6 evaluations do not fit the rk4 solver"):
        load_config(None, ["eval.solver=rk4", "eval.nfe=6"])


def test_the_two_paper_stages_share_one_recipe_and_differ_only_in_their_data():
    stage_1, stage_2 = load_config(CONFIGS / "cfm_1k.yaml"), load_config(CONFIGS / "cascade_2k.yaml")
    for file in ("cfm_1k.yaml", "cascade_2k.yaml"):
        assert (CONFIGS / file).read_text().count("model:") == 0, "the network is defined once, in the base"
    assert stage_1.model == stage_2.model and stage_1.flow == stage_2.flow
    assert stage_1.train.lr == stage_2.train.lr and stage_1.train.run_dir != stage_2.train.run_dir
    assert (stage_1.data.crop_size, stage_2.data.crop_size) == (None, 128)


def test_extends_is_relative_to_the_file_and_later_layers_win(tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "base.yaml").write_text("train:\n  lr: 0.5\n  max_steps: 7\n")
    (tmp_path / "run.yaml").write_text("extends: recipes/base.yaml\ntrain:\n  max_steps: 9\n")
    config = load_config(tmp_path / "run.yaml", ["train.lr=0.25"])
    assert (config.train.lr, config.train.max_steps) == (0.25, 9)


def test_a_missing_or_cyclic_base_is_a_clear_error(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"a.yaml: extends: .*missing.yaml does not exist"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("extends: c.yaml\n")
    (tmp_path / "c.yaml").write_text("extends: b.yaml\n")
    with pytest.raises(ConfigError, match="extends itself through a cycle"):
        load_config(tmp_path / "b.yaml")


def test_the_distillation_configs_are_students_of_the_paper_stage(tmp_path):
    from data_pipeline.pairs_config import load_pairs_config

    pairs = load_pairs_config(CONFIGS / "distill/pairs_1k.yaml")
    assert (pairs.teacher, pairs.solver, pairs.nfe) == ("runs/cfm_1k", "euler", 40)
    teacher = f"train.init_from={tmp_path}"  # the shipped path exists once the teacher is trained
    reflow = load_config(CONFIGS / "distill/reflow_1k.yaml", [teacher])
    shortcut = load_config(CONFIGS / "distill/shortcut_1k.yaml", [teacher])
    assert reflow.data.train == pairs.output and reflow.model == load_config(CONFIGS / "cfm_1k.yaml").model
    assert (reflow.flow.objective, reflow.flow.nfe, shortcut.flow.trained_nfe) == ("reflow", 1, [1, 2, 4])
    with pytest.raises(ConfigError, match="train.init_from: runs/cfm_1k does not exist"):
        load_config(CONFIGS / "distill/reflow_1k.yaml")


def test_the_4x_configs_fine_tune_the_paper_stage_on_degraded_16_to_64_latents(tmp_path):
    from data_pipeline.config import load_encode_config

    encode = load_encode_config(CONFIGS / "encode/laion_sr4x_512.yaml")
    assert (encode.high_res, encode.low_res) == (512, 128) and encode.degradation is not None
    stage = load_config(CONFIGS / "sr4x_512.yaml", [f"train.init_from={tmp_path}"])
    assert stage.flow.scale_factor == 4 and stage.model == load_config(CONFIGS / "cfm_1k.yaml").model
    assert load_config(CONFIGS / "sr4x_512.yaml", ["train.init_from=null"]).train.init_from is None
    with pytest.raises(ConfigError, match="train.init_from: runs/cfm_1k does not exist"):
        load_config(CONFIGS / "sr4x_512.yaml")
