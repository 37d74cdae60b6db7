"""The training step makes no host sync: device values are read at log, checkpoint and final steps only."""

import gc
import sys
from collections import Counter

import pytest
import torch

from fmboost.config_loading import load_config
from fmboost.distributed import DistributedEnv
from fmboost.models import EMA
from fmboost.training.trainer import train
from tests.conftest import REPO_ROOT
from tests.training.helpers import build_latents, training_overrides

pytestmark = pytest.mark.slow

HOST_READS = ("item", "tolist", "__float__", "__bool__")


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    return build_latents(tmp_path_factory.mktemp("hot-loop-data"))


def syncs_of_a_run(monkeypatch, latents, run_dir, max_steps: int) -> Counter:
    """Host reads of tensors and all-reduces made by FMBoost code (not DeepSpeed's) during one run."""
    counts: Counter = Counter()

    def spy(name, original):
        def counted(*args, **kwargs):
            if "/fmboost/" in sys._getframe(1).f_code.co_filename:
                counts[name] += 1
            return original(*args, **kwargs)

        return counted

    with monkeypatch.context() as patch:
        for name in HOST_READS:
            patch.setattr(torch.Tensor, name, spy(name, getattr(torch.Tensor, name)))
        patch.setattr(torch.distributed, "all_reduce", spy("all_reduce", torch.distributed.all_reduce))
        overrides = training_overrides(
            latents, run_dir, max_steps=max_steps, log_every=4, checkpoint_every=100, validate_every=100
        )
        result = train(load_config(REPO_ROOT / "configs/demo/tiny_cpu.yaml", overrides), DistributedEnv())
    assert result.step == max_steps
    return counts


def test_eight_more_steps_add_only_the_two_log_points_syncs(tmp_path, latents, monkeypatch):
    short = syncs_of_a_run(monkeypatch, latents, tmp_path / "short", max_steps=4)
    long = syncs_of_a_run(monkeypatch, latents, tmp_path / "long", max_steps=12)
    extra = long - short  # steps 5-12: two more log points (8 and 12), nothing per step
    assert extra["all_reduce"] == 2, extra
    # per log point: the window's read, and the grad norm DeepSpeed returns as a tensor (bool, float)
    assert sum(extra[name] for name in HOST_READS) <= 2 * 3, extra


def test_the_heap_built_during_setup_is_frozen_out_of_garbage_collection_only_while_training(
    tmp_path, latents, monkeypatch
):
    frozen_during_steps = []
    original_update = EMA.update

    def update(self, model):
        frozen_during_steps.append(gc.get_freeze_count())
        original_update(self, model)

    monkeypatch.setattr(EMA, "update", update)
    gc.unfreeze()  # a process that froze nothing (the suite freezes each module's heap: tests/conftest.py)
    overrides = training_overrides(latents, tmp_path / "run", max_steps=2, validate_every=100)
    train(load_config(REPO_ROOT / "configs/demo/tiny_cpu.yaml", overrides), DistributedEnv())
    # DeepSpeed, MLflow and the model's modules: far more objects than the loop itself creates
    assert len(frozen_during_steps) == 2 and min(frozen_during_steps) > 100_000
    assert gc.get_freeze_count() == 0  # the process gets its collector back

    gc.freeze()  # a caller that froze its own heap keeps it frozen after training
    overrides = training_overrides(latents, tmp_path / "again", max_steps=1, validate_every=100)
    train(load_config(REPO_ROOT / "configs/demo/tiny_cpu.yaml", overrides), DistributedEnv())
    assert gc.get_freeze_count() > 0
