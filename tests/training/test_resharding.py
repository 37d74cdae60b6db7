"""The optimizer state by parameter is bound to the checkpoint and run it came from, checked, and rebuilt
when it is stale or damaged; a run restarted with train.resume=never never reuses an earlier run's."""

import json
import logging

import pytest
from safetensors.torch import load_file

from fmboost.config_loading import load_config
from fmboost.distributed import DistributedEnv
from fmboost.training.checkpoint_files import FILE_LIST, crc32_of
from fmboost.training.checkpointing import load_trainer_state
from fmboost.training.resharding import (
    consolidated_folder,
    consolidated_path,
    consolidated_problems,
    ensure_consolidated,
)
from fmboost.training.trainer import train
from tests.conftest import REPO_ROOT
from tests.training.helpers import build_latents, training_overrides

pytestmark = pytest.mark.slow

CONFIG = REPO_ROOT / "configs/demo/tiny_cpu.yaml"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A one-rank ZeRO-1 run with a checkpoint at step 2."""
    root = tmp_path_factory.mktemp("resharding")
    run_dir = root / "run"
    overrides = training_overrides(build_latents(root / "data"), run_dir, max_steps=2, checkpoint_every=2)
    train(load_config(CONFIG, overrides), DistributedEnv())
    return run_dir


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_consolidated_state_is_reused_only_while_it_matches_its_checkpoint_run_and_bytes(run_dir, caplog):
    checkpoint = run_dir / "checkpoints" / "step_00000002"
    run_id = load_trainer_state(checkpoint).run_id
    assert len(run_id) == 32, "a fresh run records its identity in every checkpoint"
    caplog.set_level(logging.INFO)

    written = ensure_consolidated(checkpoint, run_id)
    assert written == consolidated_path(checkpoint) and consolidated_problems(checkpoint, run_id) == []
    source = json.loads((consolidated_folder(checkpoint) / FILE_LIST).read_text())["source"]
    assert source == {
        "checkpoint": "step_00000002",
        "manifest_crc32": crc32_of(checkpoint / FILE_LIST),
        "run_id": run_id,
    }
    state = {key: tensor.clone() for key, tensor in load_file(str(written)).items()}
    assert not list(checkpoint.parent.glob(".*partial")), "written in a staging folder, renamed into place"

    caplog.clear()
    ensure_consolidated(checkpoint, run_id)
    assert "using the optimizer state by parameter" in caplog.text and "rebuilding" not in caplog.text

    # another run in the same folder, a damaged file, a rewritten checkpoint: each is rebuilt, and equal
    assert "made from another checkpoint or run" in consolidated_problems(checkpoint, "another-run")[0]
    flip_a_byte(written)
    assert "is corrupt" in consolidated_problems(checkpoint, run_id)[0]
    caplog.clear()
    ensure_consolidated(checkpoint, run_id)
    assert "rebuilding the optimizer state by parameter" in caplog.text
    rebuilt = load_file(str(written))
    assert rebuilt.keys() == state.keys() and all(rebuilt[k].equal(state[k]) for k in state)

    manifest = json.loads((checkpoint / FILE_LIST).read_text())
    (checkpoint / FILE_LIST).write_text(json.dumps(manifest, indent=4))  # the checkpoint was rewritten
    assert "made from another checkpoint or run" in consolidated_problems(checkpoint, run_id)[0]


def test_a_run_restarted_with_resume_never_replaces_a_checkpoint_and_what_was_derived_from_it(
    run_dir, tmp_path, caplog
):
    checkpoint = run_dir / "checkpoints" / "step_00000002"
    ensure_consolidated(checkpoint, load_trainer_state(checkpoint).run_id)
    assert consolidated_folder(checkpoint).is_dir()
    first_identity = load_trainer_state(checkpoint).run_id
    caplog.set_level(logging.WARNING)

    config = load_config(
        CONFIG,
        [
            *training_overrides(
                run_dir.parent / "data" / "latents", run_dir, max_steps=2, checkpoint_every=2
            ),
            "train.resume=never",
        ],
    )
    train(config, DistributedEnv())

    assert f"replacing {checkpoint}, which an earlier run in this folder wrote" in caplog.text
    assert not consolidated_folder(checkpoint).exists(), "derived from the earlier run's checkpoint"
    assert load_trainer_state(checkpoint).run_id not in ("", first_identity)
