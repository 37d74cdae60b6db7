"""Bad samples and non-finite losses: a real shard with a NaN latent is skipped, named, counted and
recorded; a loss the data makes non-finite names its samples and is skipped on resume; a transient one
is re-run and training goes on."""

import json
import logging
import re

import pytest

from evaluation.report import training_losses
from fmboost.config_loading import load_config
from fmboost.distributed import DistributedEnv
from fmboost.objectives import CouplingFlowMatching
from fmboost.training.checkpointing import load_trainer_state
from fmboost.training.rerun import NonFiniteLossError
from fmboost.training.skipped_samples import RECORD_FILE
from fmboost.training.trainer import train
from tests.conftest import REPO_ROOT
from tests.data_pipeline.builders import with_a_non_finite_latent
from tests.training.helpers import build_latents, training_overrides

pytestmark = pytest.mark.slow

CONFIG = REPO_ROOT / "configs/demo/tiny_cpu.yaml"
# Samples whose high-res latent gets a NaN: the stream of these tests (seed 0, one rank) draws shard 0 in
# steps 1-4 and 7-8, and shard 3 in steps 9-10 (after the checkpoint of step 6).
BAD, BAD_AFTER_A_CHECKPOINT = "000000005", "000030006"


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return build_latents(tmp_path_factory.mktemp("clean-data"))


@pytest.fixture
def with_nan(tmp_path, clean):
    """The training data with one NaN in sample BAD's high-res latent (its shard otherwise good)."""
    return with_a_non_finite_latent(clean, tmp_path / "latents", BAD)


def config_for(latents, run_dir, **train):
    settings = dict(max_steps=12, checkpoint_every=6, validate_every=100, log_every=1) | train
    return load_config(CONFIG, training_overrides(latents, run_dir, **settings))


def test_a_sample_with_a_nan_latent_is_skipped_named_counted_and_recorded(tmp_path, with_nan, caplog):
    run_dir = tmp_path / "run"
    caplog.set_level(logging.WARNING)
    result = train(config_for(with_nan, run_dir), DistributedEnv())

    assert (result.status, result.step, result.images_seen) == ("finished", 12, 12 * 4), "full batches"
    warnings = [r.getMessage() for r in caplog.records if "skipped sample" in r.getMessage()]
    assert len(warnings) == 1, "once per sample and job, however often its shard is drawn"
    assert f"skipped sample {BAD} of shard 000000.tar" in warnings[0] and "non-finite values" in warnings[0]
    (record,) = [json.loads(line) for line in (run_dir / RECORD_FILE).read_text().splitlines()]
    assert (record["shard"], record["key"], record["rank"]) == ("000000.tar", BAD, 0)
    state = load_trainer_state(run_dir / "checkpoints" / "step_00000012")
    assert state.unusable_samples == {"000000.tar": [BAD]} and state.samples_skipped >= 2
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["train/samples_skipped"] == state.samples_skipped
    assert all(loss == loss for loss in training_losses(run_dir).values()), "no NaN reached the loss"


def test_a_loss_the_data_makes_non_finite_names_its_samples_and_a_resume_can_skip_them(
    tmp_path, clean, monkeypatch, caplog
):
    """With the stream's check switched off, the NaN sample reaches the loss at step 9: the re-run from
    the checkpoint of step 6 meets it again at the same step, and a resume with train.skip_steps goes on."""
    monkeypatch.setattr("fmboost.data.streams.unusable_reason", lambda sample: None)
    latents = with_a_non_finite_latent(clean, tmp_path / "latents", BAD_AFTER_A_CHECKPOINT)
    run_dir = tmp_path / "run"
    caplog.set_level(logging.WARNING)
    with pytest.raises(NonFiniteLossError) as error:
        train(config_for(latents, run_dir), DistributedEnv())
    message = str(error.value)
    assert message.startswith(
        "train.skip_steps: the loss became nan at step 9 again when the job re-ran from"
    )
    assert "step_00000006 with a check after every step: the data explains it" in message
    assert "(rank 0: " in message and BAD_AFTER_A_CHECKPOINT in message
    assert "skip them by resuming with train.skip_steps=[9]" in message
    assert "the loss became nan at step 9; re-running from" in caplog.text
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_00000006"

    config = config_for(latents, run_dir)
    config.train.skip_steps = [9]
    result = train(config, DistributedEnv())
    assert (result.status, result.step) == ("finished", 12)
    assert "step 9: skipped its batches as train.skip_steps says (rank 0: " in caplog.text


def test_a_loss_that_is_non_finite_once_is_re_run_as_a_transient_fault_and_training_goes_on(
    tmp_path, with_nan, monkeypatch, caplog
):
    reference = train(config_for(with_nan, tmp_path / "reference"), DistributedEnv())
    calls, original = [0], CouplingFlowMatching.loss

    def flipped_once(self, *args, **kwargs):  # fault injection: one bit flip in the 9th loss of the job
        calls[0] += 1
        loss = original(self, *args, **kwargs)
        return loss * float("nan") if calls[0] == 9 else loss

    monkeypatch.setattr(CouplingFlowMatching, "loss", flipped_once)
    caplog.set_level(logging.WARNING)
    result = train(config_for(with_nan, tmp_path / "run"), DistributedEnv())

    assert (result.status, result.step) == ("finished", 12)
    faulty = int(re.search(r"the loss became nan at step (\d+); re-running from", caplog.text).group(1))
    assert 6 < faulty <= 12 and "step_00000006 with a check after every step" in caplog.text
    assert "this looks like a transient fault" in caplog.text
    expected, actual = training_losses(reference.run_dir), training_losses(result.run_dir)
    for step in range(faulty, 13):  # from the re-run on, the run is the one without the fault
        assert actual[step] == pytest.approx(expected[step], rel=1e-5), step
