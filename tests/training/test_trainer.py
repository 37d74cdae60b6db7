"""End-to-end training with real DeepSpeed (gloo on CPU) and a real MLflow store."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from evaluation.report import training_losses
from fmboost.config_loading import load_config
from fmboost.distributed import DistributedEnv
from fmboost.errors import FMBoostError
from fmboost.first_stage.identity import IdentityFirstStage
from fmboost.models import EMA, FMBoostModel
from fmboost.objectives import CouplingFlowMatching
from fmboost.training import trainer as trainer_module
from fmboost.training.trainer import NonFiniteLossError, train
from tests.conftest import REPO_ROOT, free_port
from tests.training.helpers import build_latents, run_on_two_ranks, training_overrides

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    return build_latents(tmp_path_factory.mktemp("train-data"))


def run_in_subprocess(args: list[str], **kwargs) -> subprocess.Popen:
    environment = {**os.environ, "MASTER_PORT": str(free_port())}
    return subprocess.Popen(
        [sys.executable, "-m", "fmboost.train", *args],
        cwd=REPO_ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def test_training_writes_checkpoints_an_exported_model_and_an_mlflow_run(tmp_path, latents):
    run_dir = tmp_path / "run"
    process = run_in_subprocess(["configs/demo/tiny_cpu.yaml", *training_overrides(latents, run_dir)])
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output

    assert (run_dir / "checkpoints" / "latest").read_text() == "step_00000006"
    model = FMBoostModel.from_pretrained(run_dir / "checkpoints" / "step_00000006" / "export")
    assert model.upsample(torch.zeros(1, 3, 16, 16), IdentityFirstStage(), nfe=2).x1.shape == (1, 3, 32, 32)

    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    run = client.get_run((run_dir / "mlflow_run_id").read_text())
    assert run.info.status == "FINISHED"
    assert {
        "train/loss",
        "train/grad_norm",
        "train/lr",
        "train/samples_per_s",
        "train/images_seen",
        "val/psnr",
        "val/ssim",
        "val/loss",
        "val/psnr_bicubic",
        "val/psnr_context",
    } <= set(run.data.metrics)
    assert run.data.params["train.lr"] == "0.001" and run.data.params["model.model_channels"] == "16"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "samples", "model"} <= artifacts
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 6
    grad_norms = [m.value for m in client.get_metric_history(run.info.run_id, "train/grad_norm")]
    assert len(grad_norms) == 6 and all(norm > 0 for norm in grad_norms), "measured, not a placeholder"
    assert client.get_metric_history(run.info.run_id, "train/images_seen")[-1].value == 24


def test_bf16_mixed_training_autocasts_only_the_network_and_keeps_fp32_weights_loss_and_ema(
    tmp_path, latents, monkeypatch
):
    run_dir = tmp_path / "run"
    overrides = training_overrides(latents, run_dir, max_steps=2, checkpoint_every=2, precision="bf16")
    zero_0 = ["train.validate_every=100", "deepspeed.zero_optimization.stage=0"]
    config = load_config(REPO_ROOT / "configs/demo/tiny_cpu.yaml", [*overrides, *zero_0])
    seen, original_loss = [], CouplingFlowMatching.loss

    def recording_loss(self, net, x1, z_up, generator=None):
        network_dtypes = []

        def recording_net(x, t):
            prediction = net(x, t)
            network_dtypes.append(prediction.dtype)
            return prediction

        loss = original_loss(self, recording_net, x1, z_up, generator)
        autocast = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        if not x1.is_meta:  # the FLOP count at start runs on the meta device
            seen.append((x1.dtype, autocast, network_dtypes[0], loss.dtype))
        return loss

    monkeypatch.setattr(CouplingFlowMatching, "loss", recording_loss)
    result = train(config, DistributedEnv())  # the EMA refuses a bf16 copy, so reaching the end proves fp32
    assert seen == [(torch.float32, torch.bfloat16, torch.bfloat16, torch.float32)] * 2
    exported = load_file(str(result.export_dir / "model.safetensors"))
    assert {tensor.dtype for tensor in exported.values()} == {torch.float32}
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(entry["train/grad_norm"] > 0 for entry in logged if "train/grad_norm" in entry), "ZeRO-0 too"


BF16_WEIGHT_OPTIMIZERS = {  # DeepSpeed's optimizer wrapper for bf16 weights: by ZeRO stage and accumulation
    "FP16_UnfusedOptimizer": ["deepspeed.zero_optimization.stage=0"],
    "BF16_Optimizer": [
        "deepspeed.zero_optimization.stage=1",
        "deepspeed.data_types.grad_accum_dtype=fp32",
        "train.grad_accum=2",
    ],
}


@pytest.mark.parametrize("wrapper", list(BF16_WEIGHT_OPTIMIZERS))
def test_bf16_weights_train_a_bf16_module_export_the_fp32_masters_and_resume_exactly(
    tmp_path, latents, monkeypatch, wrapper
):
    """With ``train.bf16_weights`` the module holds bf16 weights and DeepSpeed's optimizer the fp32
    masters; the EMA (here still copying: its warm-up lasts past the run) must export the masters, and
    a run stopped at step 2 and resumed (masters and EMA from the checkpoint) ends where 4 steps do.
    (ZeRO-2's DeepSpeedZeroOptimizer: the two-rank test below.)"""
    found, original = {}, trainer_module.master_weight_fragments

    def recording_fragments(engine):
        found["engine"], found["fragments"] = engine, original(engine)
        return found["fragments"]

    def run(run_dir, max_steps):
        overrides = training_overrides(
            latents, run_dir, max_steps=max_steps, checkpoint_every=2, precision="bf16", bf16_weights="true"
        )
        settings = [
            "train.validate_every=100",
            "train.ema_update_after_step=100",
            *BF16_WEIGHT_OPTIMIZERS[wrapper],
        ]
        return train(
            load_config(REPO_ROOT / "configs/demo/tiny_cpu.yaml", [*overrides, *settings]), DistributedEnv()
        )

    monkeypatch.setattr(trainer_module, "master_weight_fragments", recording_fragments)
    reference = run(tmp_path / "reference", 4)
    assert type(found["engine"].optimizer).__name__ == wrapper
    module = dict(found["engine"].module.named_parameters())
    exported = load_file(str(reference.export_dir / "model.safetensors"))
    assert {param.dtype for param in module.values()} == {torch.bfloat16}
    assert set(found["fragments"]) == set(module)
    rounding_lost = 0
    for name, pieces in found["fragments"].items():
        master = torch.cat([piece for _, piece in sorted(pieces, key=lambda item: item[0])])
        assert master.dtype == torch.float32 and master.numel() == module[name].numel(), name
        torch.testing.assert_close(exported[name.removeprefix("net.")].view(-1), master, rtol=0, atol=0)
        torch.testing.assert_close(module[name].detach().view(-1), master.bfloat16(), rtol=0, atol=0)
        rounding_lost += int((master.bfloat16().float() != master).sum())
    assert rounding_lost > 0, "the masters hold what bf16 cannot"

    run(tmp_path / "resumed", 2)
    resumed = run(tmp_path / "resumed", 4)
    assert training_losses(resumed.run_dir) == training_losses(reference.run_dir)
    actual = load_file(str(resumed.export_dir / "model.safetensors"))
    assert actual.keys() == exported.keys()
    for name in exported:
        torch.testing.assert_close(actual[name], exported[name], rtol=0, atol=0)


def test_kill_minus_nine_then_resume_matches_the_uninterrupted_loss_trajectory(tmp_path, latents):
    steps = dict(max_steps=10, checkpoint_every=4, validate_every=100, precision="bf16")
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    uninterrupted = run_in_subprocess(  # beside the run that is killed: the two share nothing
        ["configs/demo/tiny_cpu.yaml", *training_overrides(latents, reference, **steps)]
    )
    process = run_in_subprocess(
        ["configs/demo/tiny_cpu.yaml", *training_overrides(latents, interrupted, **steps)]
    )
    deadline = time.time() + 300
    while (
        time.time() < deadline
        and len(training_losses(interrupted) if (interrupted / "metrics.jsonl").exists() else {}) < 6
    ):
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert (interrupted / "checkpoints" / "latest").read_text() == "step_00000004"
    output, _ = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, output

    resumed = run_in_subprocess(
        ["configs/demo/tiny_cpu.yaml", *training_overrides(latents, interrupted, **steps)]
    )
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert "resumed from" in output
    expected, actual = training_losses(reference), training_losses(interrupted)
    assert sorted(actual) == list(range(1, 11))
    for step in range(1, 11):
        assert actual[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-7), f"step {step}"
    model_a = FMBoostModel.from_pretrained(reference / "checkpoints" / "step_00000010" / "export")
    model_b = FMBoostModel.from_pretrained(interrupted / "checkpoints" / "step_00000010" / "export")
    for a, b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_loss_that_turns_non_finite_every_time_stops_the_run_and_keeps_the_last_good_checkpoint(
    tmp_path, latents, monkeypatch
):
    """Re-run from the last checkpoint, the loss is non-finite again at the same step: one error naming
    that step, its samples and how to skip them."""
    run_dir = tmp_path / "run"
    config = load_config(
        REPO_ROOT / "configs/demo/tiny_cpu.yaml",
        training_overrides(latents, run_dir, max_steps=3, checkpoint_every=3, validate_every=100),
    )
    train(config, DistributedEnv())

    def diverged(self, net, x1, z_up, generator=None):  # fault injection: the loss blows up after the resume
        return net(torch.cat([x1, z_up], dim=1), torch.zeros(len(x1))).sum() * float("nan")

    monkeypatch.setattr(CouplingFlowMatching, "loss", diverged)
    config.train.max_steps = 6
    with pytest.raises(
        NonFiniteLossError,
        match=r"the loss became nan at step 4 again when the job re-ran from .*step_00000003 with a check "
        r"after every step: the data explains it. The samples of that step's batches "
        r"\(rank 0: \w+, \w+, \w+, \w+\); skip them by resuming with train.skip_steps=\[4\]",
    ):
        train(config, DistributedEnv())
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_00000003"
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == ["step_00000003"]


def test_gradient_accumulation_counts_images_and_optimizer_steps(tmp_path, latents):
    run_dir = tmp_path / "run"
    config = load_config(
        REPO_ROOT / "configs/demo/tiny_cpu.yaml",
        training_overrides(latents, run_dir, max_steps=2, grad_accum=3, validate_every=100),
    )
    result = train(config, DistributedEnv())
    assert (result.step, result.images_seen) == (2, 2 * 3 * 4)
    assert (
        json.loads((run_dir / "checkpoints/step_00000002/trainer_state.json").read_text())["batches_served"]
        == 6
    )


def test_the_same_trainer_runs_under_torchrun_with_two_processes(tmp_path, latents):
    run_dir = tmp_path / "run"
    overrides = training_overrides(latents, run_dir, max_steps=2, checkpoint_every=2, validate_every=100)
    result = run_on_two_ranks(["configs/demo/tiny_cpu.yaml", *overrides])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "finished at step 2" in result.stdout
    state = json.loads((run_dir / "checkpoints/step_00000002/trainer_state.json").read_text())
    assert state["images_seen"] == 2 * 2 * 4


def test_two_ranks_with_partitioned_fp32_masters_export_the_ema_of_the_whole_masters(tmp_path, latents):
    """ZeRO-2 leaves each rank the masters of its own partition; each rank averages its part and the
    validation and the checkpoint assemble them, so the export (an EMA still copying) equals the whole
    fp32 masters."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    run_dir = tmp_path / "run"
    overrides = training_overrides(
        latents, run_dir, max_steps=2, checkpoint_every=2, validate_every=2, precision="bf16"
    )
    settings = [
        "train.bf16_weights=true",
        "train.ema_update_after_step=100",
        "deepspeed.zero_optimization.stage=2",
    ]
    result = run_on_two_ranks(["configs/demo/tiny_cpu.yaml", *overrides, *settings])
    assert result.returncode == 0, result.stdout + result.stderr
    masters = get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"), tag="step_00000002")
    exported = load_file(str(run_dir / "checkpoints/step_00000002/export/model.safetensors"))
    assert set(exported) == {name.removeprefix("net.") for name in masters}
    for name, master in masters.items():
        torch.testing.assert_close(exported[name.removeprefix("net.")], master, rtol=0, atol=0)


def test_training_refuses_shards_whose_stored_context_is_another_psu_variant(tmp_path, latents):
    overrides = [*training_overrides(latents, tmp_path / "run"), "flow.upsampling=psu_pixel"]
    config = load_config(REPO_ROOT / "configs/demo/tiny_cpu.yaml", overrides)
    with pytest.raises(FMBoostError, match="made with psu_roundtrip .* but flow.upsampling is psu_pixel"):
        train(config, DistributedEnv())
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_stop_request_is_honoured_within_the_check_time_even_when_log_steps_are_far_apart(
    tmp_path, latents, monkeypatch
):
    """Slow steps (0.2 s each here) and a log step 1000 steps away: waiting for it would take minutes,
    far past a Slurm signal delay; the stop check, timed from the measured step time, saves in time."""
    original_update = EMA.update

    def slow_update(self, model):
        time.sleep(0.2)
        original_update(self, model)

    monkeypatch.setattr(EMA, "update", slow_update)
    run_dir = tmp_path / "run"
    overrides = training_overrides(
        latents, run_dir, max_steps=1000, log_every=1000, checkpoint_every=1000, validate_every=1000
    )
    config = load_config(REPO_ROOT / "configs/demo/tiny_cpu.yaml", [*overrides, "train.stop_check_seconds=1"])
    stop = threading.Event()
    threading.Timer(3.0, stop.set).start()
    started = time.perf_counter()
    result = train(config, DistributedEnv(), stop)
    assert result.status == "preempted" and result.step < 40
    assert time.perf_counter() - started < 60
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step_{result.step:08d}"
