"""A checkpoint written by W ranks resumes on W′ ranks (real DeepSpeed, torchrun with gloo on CPU).

The two-rank side runs under torchrun; the one-rank side runs in this process, so that the engine can be
inspected right after it loaded the checkpoint.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from evaluation.report import training_losses
from fmboost.config_loading import load_config
from fmboost.distributed import DistributedEnv
from fmboost.training.checkpoint_files import problems
from fmboost.training.checkpointing import Checkpointer
from fmboost.training.resharding import consolidated_path, read_shard
from fmboost.training.trainer import train
from tests.conftest import REPO_ROOT
from tests.training.helpers import build_latents, run_on_two_ranks, training_overrides

pytestmark = pytest.mark.slow

CONFIG = REPO_ROOT / "configs/demo/tiny_cpu.yaml"
LR, WARMUP = 1e-3, 8
VARIANTS = {
    "zero0": ["deepspeed.zero_optimization.stage=0"],
    "zero1": ["deepspeed.zero_optimization.stage=1"],
    "zero2": ["deepspeed.zero_optimization.stage=2"],
    "zero2-bf16-weights": [
        "deepspeed.zero_optimization.stage=2",
        "train.precision=bf16",
        "train.bf16_weights=true",
    ],
}


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    return build_latents(tmp_path_factory.mktemp("world-size-data"))


def overrides(latents, run_dir, variant: str, max_steps: int) -> list[str]:
    steps = dict(max_steps=max_steps, checkpoint_every=2, validate_every=100, lr=LR, warmup_steps=WARMUP)
    return [*training_overrides(latents, run_dir, **steps), *VARIANTS[variant]]


def logged(run_dir, key: str) -> dict[int, float]:
    entries = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {entry["step"]: entry[key] for entry in entries if key in entry}


def expected_lr(step: int) -> float:
    """The warm-up after ``step`` optimizer steps, whatever the number of ranks."""
    return LR * min(1.0, (step + 1) / WARMUP)


def largest_step_change(losses: dict[int, float]) -> float:
    """The run's own step-to-step noise: the largest change of the loss between consecutive steps."""
    steps = sorted(losses)
    return max(abs(losses[b] - losses[a]) for a, b in zip(steps, steps[1:], strict=False))


def record_restores(monkeypatch) -> dict:
    """What the engine and the EMA hold right after a checkpoint was loaded."""
    seen, original = {}, Checkpointer.restore

    def restore(self, directory, state):
        original(self, directory, state)
        seen["directory"], seen["zero"] = directory, self.engine.zero_optimization()
        seen["ema"] = {k: v.clone() for k, v in self.ema.shadow.state_dict().items()}
        if seen["zero"]:
            flat = self.engine.optimizer.optimizer.param_groups[0]["params"][0]
            stored = self.engine.optimizer.optimizer.state[flat]
            seen["optimizer"] = {"fp32": flat.detach().clone(), **{k: v.clone() for k, v in stored.items()}}
            seen["used"] = sum(param.numel() for param in self.engine.module.parameters())

    monkeypatch.setattr(Checkpointer, "restore", restore)
    return seen


def assert_continues(run_dir, losses: dict[int, float], changed_after: int) -> None:
    """The schedule continues, and the first loss at the new size moves no more than the run's own noise."""
    assert logged(run_dir, "train/lr") == {step: pytest.approx(expected_lr(step)) for step in losses}
    before = {step: losses[step] for step in range(changed_after - 3, changed_after + 1)}
    tolerance = 2 * largest_step_change(before)
    change = abs(losses[changed_after + 1] - losses[changed_after])
    assert change <= tolerance, (losses, tolerance)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_run_moves_from_two_ranks_to_one_and_back(tmp_path, latents, monkeypatch, variant):
    run_dir = tmp_path / "run"
    first = run_on_two_ranks([str(CONFIG), *overrides(latents, run_dir, variant, max_steps=4)])
    assert first.returncode == 0, first.stdout + first.stderr
    saved = run_dir / "checkpoints" / "step_00000004"
    seen = record_restores(monkeypatch)

    # ------------------------------------------------------------------ 2 → 1 rank, in this process
    result = train(load_config(CONFIG, overrides(latents, run_dir, variant, max_steps=8)), DistributedEnv())
    assert (result.step, seen["directory"]) == (8, saved)
    assert problems(saved) == [], "every file as written: the original is never modified"
    state = json.loads((run_dir / "checkpoints/step_00000008/trainer_state.json").read_text())
    assert (state["world_size"], state["grad_accum"]) == (1, 2), "the global batch of 8 is kept"
    assert result.images_seen == 4 * 8 + 4 * 8
    saved_ema = load_file(str(saved / "ema.safetensors"))
    assert seen["ema"].keys() == saved_ema.keys()
    for name, tensor in saved_ema.items():
        torch.testing.assert_close(seen["ema"][name], tensor, rtol=0, atol=0)
    if seen["zero"]:
        # One rank's flat buffer is the two ranks' partitions end to end (padding only at the end):
        # masters and both Adam moments must come back in exactly that order.
        old = [read_shard(path) for path in sorted(saved.glob("*zero_pp_rank_*_optim_states.pt"))]
        loaded, used = seen["optimizer"], seen["used"]
        joined = {"fp32": torch.cat([shard["single_partition_of_fp32_groups"][0] for shard in old])}
        for key in ("exp_avg", "exp_avg_sq"):
            joined[key] = torch.cat([shard["base_optimizer_state"]["state"][0][key] for shard in old])
        for key, tensor in joined.items():
            torch.testing.assert_close(loaded[key][:used], tensor[:used], rtol=0, atol=0, msg=key)
        assert float(loaded["step"]) == 4 and float(joined["exp_avg_sq"].abs().sum()) > 0
    assert_continues(run_dir, training_losses(run_dir), changed_after=4)

    # ------------------------------------------------------------------ 1 → 2 ranks, under torchrun
    back = run_on_two_ranks([str(CONFIG), *overrides(latents, run_dir, variant, max_steps=12)])
    output = back.stdout + back.stderr
    assert back.returncode == 0, output
    assert "global batch kept at 8 on 2 ranks instead of 1: train.grad_accum 2 → 1" in output
    assert "fresh segments from step 8 (1 → 2 ranks" in output
    state = json.loads((run_dir / "checkpoints/step_00000012/trainer_state.json").read_text())
    assert (state["step"], state["images_seen"], state["world_size"]) == (12, 12 * 8, 2)
    assert state["stream_origin"] == 8
    assert logged(run_dir, "train/world_size") == {0: 2, 4: 1, 8: 2}
    assert_continues(run_dir, training_losses(run_dir), changed_after=8)
    if seen["zero"]:
        # the state by parameter that the two ranks cut their partitions from is the one rank's buffer
        consolidated = load_file(str(consolidated_path(run_dir / "checkpoints" / "step_00000008")))
        (single,) = [read_shard(path) for path in (run_dir / "checkpoints/step_00000008").glob("*zero_pp*")]
        names = list(single["param_slice_mappings"][0])
        flats = {
            "fp32": single["single_partition_of_fp32_groups"][0],
            **single["base_optimizer_state"]["state"][0],
        }
        for key in ("fp32", "exp_avg", "exp_avg_sq"):
            whole = torch.cat([consolidated[f"{name}/{key}"] for name in names])
            torch.testing.assert_close(whole, flats[key][: len(whole)], rtol=0, atol=0, msg=key)
