import pytest
import torch

from fmboost.config_loading import load_config
from fmboost.errors import ConfigError
from fmboost.training.engine_setup import (
    bf16_accumulation_advice,
    build_optimizer,
    deepspeed_config,
    single_gpu_zero_advice,
    warmup_schedule,
)


def test_deepspeed_config_derives_batch_accumulation_clipping_and_precision():
    config = load_config(
        None,
        [
            "data.batch_size=6",
            "train.grad_accum=3",
            "train.grad_clip=0.5",
            "deepspeed.zero_optimization.stage=2",
        ],
    )
    cpu = deepspeed_config(config, torch.device("cpu"))
    assert cpu["train_micro_batch_size_per_gpu"] == 6 and cpu["gradient_accumulation_steps"] == 3
    assert cpu["gradient_clipping"] == 0.5 and cpu["zero_optimization"] == {"stage": 2}
    assert "torch_autocast" not in cpu, "fp32 on CPU"


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", "bfloat16"), ("fp16", "float16")])
def test_mixed_precision_autocasts_the_forward_and_keeps_fp32_weights_and_gradient_reduction(
    precision, dtype
):
    config = load_config(None, [f"train.precision={precision}"])
    section = deepspeed_config(config, torch.device("cpu"))
    assert section["torch_autocast"] == {"enabled": True, "dtype": dtype, "lower_precision_safe_modules": []}
    assert "bf16" not in section and "fp16" not in section, "DeepSpeed must not cast the module itself"


def test_bf16_weights_add_deepspeed_bf16_under_the_same_autocast():
    config = load_config(None, ["train.precision=bf16", "train.bf16_weights=true"])
    section = deepspeed_config(config, torch.device("cpu"))
    assert section["bf16"] == {"enabled": True}, "bf16 module weights, fp32 masters in the optimizer"
    assert section["torch_autocast"]["dtype"] == "bfloat16"


def test_bf16_weights_need_bf16_precision():
    with pytest.raises(ConfigError, match="train.bf16_weights: needs train.precision bf16"):
        load_config(None, ["train.precision=fp32", "train.bf16_weights=true"])
    on_cpu = load_config(None, ["train.precision=auto", "train.bf16_weights=true"])
    with pytest.raises(ConfigError, match="needs train.precision bf16, but it is fp32 on cpu"):
        deepspeed_config(on_cpu, torch.device("cpu"))
    assert deepspeed_config(on_cpu, torch.device("cuda"))["bf16"] == {"enabled": True}


def test_bf16_weights_warn_when_gradients_accumulate_in_bf16_and_fp32_accumulation_needs_zero():
    base = ["train.precision=bf16", "train.bf16_weights=true", "train.grad_accum=4"]
    in_bf16 = load_config(None, base)
    assert "accumulates the gradients in bf16" in bf16_accumulation_advice(in_bf16)
    in_fp32 = ["deepspeed.data_types.grad_accum_dtype=fp32"]
    assert bf16_accumulation_advice(load_config(None, [*base, *in_fp32])) is None
    assert bf16_accumulation_advice(load_config(None, [*base, "train.grad_accum=1"])) is None
    assert bf16_accumulation_advice(load_config(None, ["train.precision=bf16", "train.grad_accum=4"])) is None
    zero_0 = load_config(None, [*base, *in_fp32, "deepspeed.zero_optimization.stage=0"])
    with pytest.raises(ConfigError, match="needs ZeRO stage 1 or 2"):
        deepspeed_config(zero_0, torch.device("cpu"))
    zero_1 = load_config(None, [*base, *in_fp32, "deepspeed.zero_optimization.stage=1"])
    assert deepspeed_config(zero_1, torch.device("cpu"))["data_types"] == {"grad_accum_dtype": "fp32"}


def test_auto_precision_is_bf16_mixed_on_gpus():
    section = deepspeed_config(load_config(None, ["train.precision=auto"]), torch.device("cuda"))
    assert section["torch_autocast"]["dtype"] == "bfloat16"


def test_zero_stage_three_is_refused_up_front():
    config = load_config(None, ["deepspeed.zero_optimization.stage=3"])
    with pytest.raises(ConfigError, match="ZeRO-3 partitions the weights"):
        deepspeed_config(config, torch.device("cpu"))


def test_zero_partitioning_on_a_single_gpu_gets_a_hint_and_nothing_else_does():
    stage_2, stage_0 = (load_config(None, [f"deepspeed.zero_optimization.stage={s}"]) for s in (2, 0))
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert "deepspeed.zero_optimization.stage=0" in single_gpu_zero_advice(stage_2, gpu, world_size=1)
    assert single_gpu_zero_advice(stage_2, gpu, world_size=8) is None  # partitioning pays across GPUs
    assert single_gpu_zero_advice(stage_0, gpu, world_size=1) is None
    assert single_gpu_zero_advice(stage_2, cpu, world_size=1) is None  # not measured on CPUs


def test_keys_fmboost_owns_cannot_be_set_twice():
    config = load_config(None, ["deepspeed.gradient_clipping=2.0"])
    with pytest.raises(ConfigError, match="deepspeed.gradient_clipping: set by FMBoost from train.grad_clip"):
        deepspeed_config(config, torch.device("cpu"))


def test_learning_rate_warms_up_linearly_then_stays_constant():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    schedule = warmup_schedule(optimizer, warmup_steps=4)
    rates = []
    for _ in range(6):
        rates.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert rates == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_fused_optimizer_takes_the_same_adamw_steps_as_the_default():
    torch.manual_seed(0)
    default_model, fused_model = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    fused_model.load_state_dict(default_model.state_dict())
    initial = default_model.weight.detach().clone()
    settings = ["train.lr=1e-2", "train.weight_decay=0.1"]
    default = build_optimizer(default_model, load_config(None, settings))
    fused = build_optimizer(fused_model, load_config(None, [*settings, "train.fused_optimizer=true"]))
    assert fused.defaults["fused"] and not default.defaults["fused"]
    inputs = torch.randn(16, 8)
    for _ in range(5):
        for model, optimizer in ((default_model, default), (fused_model, fused)):
            optimizer.zero_grad()
            model(inputs).square().mean().backward()
            optimizer.step()
    for left, right in zip(default_model.parameters(), fused_model.parameters(), strict=True):
        torch.testing.assert_close(left, right, rtol=1e-5, atol=1e-6)
    assert not torch.equal(default_model.weight, initial), "the steps changed the weights"
