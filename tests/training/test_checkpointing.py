import pytest

from fmboost.errors import FMBoostError
from fmboost.training import checkpointing as ckpt


def make_checkpoint(run_dir, step, complete=True):
    directory = ckpt.checkpoint_root(run_dir) / ckpt.tag_for(step)
    directory.mkdir(parents=True)
    if complete:
        ckpt.mark_complete(run_dir, directory, keep=2)
    return directory


def test_latest_points_only_at_complete_checkpoints_and_old_ones_are_pruned(tmp_path):
    assert ckpt.latest_checkpoint(tmp_path) is None
    for step in (10, 20, 30):
        make_checkpoint(tmp_path, step)
    make_checkpoint(tmp_path, 40, complete=False)  # killed while saving
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000030"
    remaining = sorted(p.name for p in ckpt.checkpoint_root(tmp_path).glob("step_*"))
    assert remaining == ["step_00000020", "step_00000030", "step_00000040"]


def test_a_pointer_to_an_incomplete_checkpoint_is_an_error(tmp_path):
    make_checkpoint(tmp_path, 10)
    (ckpt.checkpoint_root(tmp_path) / "step_00000010" / ckpt.COMPLETE).unlink()
    with pytest.raises(FMBoostError, match="not a complete checkpoint"):
        ckpt.latest_checkpoint(tmp_path)
