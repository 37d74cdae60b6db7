"""A checkpoint written by W ranks resumes on W′ ranks (real DeepSpeed, torchrun with gloo on CPU).

The two-rank side runs under torchrun; the one-rank side runs in this process, so that the engine can be
inspected right after it loaded the checkpoint. What several ranks hold right after a load is written by
``partition_probe.py`` under torchrun.
"""

import json
import subprocess
import sys

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
from tests.conftest import REPO_ROOT, free_port
from tests.training.helpers import build_latents, run_on_two_ranks, training_overrides

pytestmark = pytest.mark.slow

CONFIG = REPO_ROOT / "configs/demo/tiny_cpu.yaml"
LR, WARMUP = 1e-3, 8
# ZeRO-2 in fp32 saves what ZeRO-1 saves (the optimizer's partitions); its partitioned gradients are
# never written. It runs here with bf16 weights, ZeRO-1 in fp32.
VARIANTS = {
    "zero0": ["deepspeed.zero_optimization.stage=0"],
    "zero1": ["deepspeed.zero_optimization.stage=1"],
    "zero2-bf16-weights": [
        "deepspeed.zero_optimization.stage=2",
        "train.precision=bf16",
        "train.bf16_weights=true",
    ],
}

PROBED = {"zero1": ("step_00000008", 2), "zero2-bf16-weights": ("step_00000012", 3)}  # checkpoint, ranks


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


def load_file_metadata(path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as stored:
        return stored.metadata()["param_groups"]


def probe_partitions(checkpoint, ranks: int, out, settings: list[str]) -> list[dict[str, torch.Tensor]]:
    """What each of ``ranks`` ranks holds right after loading ``checkpoint`` (partition_probe.py)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks)]
    command += [f"--master_port={free_port()}", str(REPO_ROOT / "tests/training/partition_probe.py")]
    probed = subprocess.run(
        [*command, str(CONFIG), str(checkpoint), str(out), *settings],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert probed.returncode == 0, probed.stdout + probed.stderr
    return [load_file(str(out / f"rank{rank}.safetensors")) for rank in range(ranks)]


def saved_state_end_to_end(checkpoint) -> tuple[dict[str, torch.Tensor], float]:
    """The checkpoint's partitions end to end without their padding (the whole flat state in parameter
    order) and its Adam step."""
    shards = [read_shard(path) for path in sorted(checkpoint.glob("*zero_pp_rank_*_optim_states.pt"))]
    used = sum(address.numel for shard in shards for address in shard["param_slice_mappings"][0].values())
    whole = {"fp32": torch.cat([shard["single_partition_of_fp32_groups"][0] for shard in shards])[:used]}
    for key in ("exp_avg", "exp_avg_sq"):
        whole[key] = torch.cat([shard["base_optimizer_state"]["state"][0][key] for shard in shards])[:used]
    return whole, float(shards[0]["base_optimizer_state"]["state"][0]["step"])


def assert_partitions_cut_from(checkpoint, partitions: list[dict[str, torch.Tensor]]) -> None:
    """Rank r of W holds slice r of the checkpoint's state end to end, padded with zeros to W equal parts,
    bit for bit: the order and the cut DeepSpeed uses at W ranks."""
    whole, step = saved_state_end_to_end(checkpoint)
    size = len(partitions[0]["fp32"])
    for key, tensor in whole.items():
        padded = torch.cat([tensor, tensor.new_zeros(size * len(partitions) - len(tensor))])
        for rank, held in enumerate(partitions):
            expected = padded[rank * size : (rank + 1) * size]
            torch.testing.assert_close(held[key], expected, rtol=0, atol=0, msg=f"{key} of rank {rank}")
    assert all(float(held["step"]) == step for held in partitions)
    assert float(whole["exp_avg_sq"].abs().sum()) > 0


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

    if variant in PROBED:
        # What every rank holds right after a load on a new number of ranks (1 → 2 with DeepSpeed's ZeRO
        # optimizer, 2 → 3 with its bf16 weights), with Adam settings in the config that differ from the
        # checkpoint's: the checkpoint's are restored, as at the same number of ranks.
        checkpoint, ranks = PROBED[variant]
        other_settings = [*overrides(latents, run_dir, variant, max_steps=12), "train.weight_decay=0.5"]
        partitions = probe_partitions(
            run_dir / "checkpoints" / checkpoint, ranks, tmp_path / "probe", other_settings
        )
        assert_partitions_cut_from(run_dir / "checkpoints" / checkpoint, partitions)
        restored = json.loads(load_file_metadata(tmp_path / "probe" / "rank1.safetensors"))
        assert restored[0]["weight_decay"] == 0.0 and restored[0]["betas"] == [0.9, 0.999]
