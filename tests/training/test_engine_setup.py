import pytest
import torch

from fmboost.config import load_config
from fmboost.errors import ConfigError
from fmboost.training.engine_setup import deepspeed_config, warmup_schedule


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
    assert "bf16" not in cpu, "fp32 on CPU"
    assert deepspeed_config(config, torch.device("cuda"))["bf16"] == {"enabled": True}


def test_zero_stage_three_is_refused_up_front():
    config = load_config(None, ["deepspeed.zero_optimization.stage=3"])
    with pytest.raises(ConfigError, match="ZeRO-3 partitions the weights"):
        deepspeed_config(config, torch.device("cpu"))


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
