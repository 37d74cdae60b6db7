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


def test_zero_shards_are_read_in_rank_order_past_ten_ranks(tmp_path):
    from fmboost.training.resharding import optimizer_shard_files

    for rank in range(12):
        (tmp_path / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"")
    (tmp_path / "mp_rank_00_model_states.pt").write_bytes(b"")
    assert [int(p.name.split("_")[4]) for p in optimizer_shard_files(tmp_path)] == list(range(12))


def test_each_checkpoint_file_is_described_by_the_rank_that_writes_it():
    from fmboost.training.checkpoint_files import owner_of

    assert owner_of("zero_pp_rank_11_mp_rank_00_optim_states.pt") == 11
    assert owner_of("bf16_zero_pp_rank_3_mp_rank_00_optim_states.pt") == 3
    assert owner_of("rng_rank7.safetensors") == 7
    assert owner_of("mp_rank_00_model_states.pt") == owner_of("export/model.safetensors") == 0


@pytest.mark.parametrize(
    ("saved_ranks", "saved_accum", "ranks", "configured", "keep", "accum", "said"),
    [
        (2, 1, 2, 1, True, 1, None),
        (2, 1, 1, 1, True, 2, "global batch kept at 16 on 1 ranks instead of 2: train.grad_accum 1 → 2"),
        (8, 2, 4, 2, True, 4, "global batch kept at 128 on 4 ranks instead of 8: train.grad_accum 2 → 4"),
        (1, 1, 2, 1, True, 1, "global batch changes from 8 to 16: 1 ranks × 1 accumulation steps do not"),
        (2, 1, 1, 1, False, 1, "global batch changes from 16 to 8 (2 → 1 ranks, train.grad_accum 1 → 1)"),
        (2, 1, 2, 3, True, 3, "global batch changes from 16 to 48 (2 → 2 ranks, train.grad_accum 1 → 3)"),
    ],
)
def test_the_global_batch_is_kept_across_world_sizes_where_the_numbers_divide(
    saved_ranks, saved_accum, ranks, configured, keep, accum, said
):
    from fmboost.training.resume import plan_global_batch

    plan = plan_global_batch(8, saved_ranks, saved_accum, ranks, configured, keep)
    assert plan.grad_accum == accum
    assert plan.message == said if said is None else plan.message.startswith(said)


def test_a_rank_without_a_saved_rng_state_is_seeded_from_seed_step_and_rank(tmp_path):
    import torch

    draws = []
    for rank in (1, 1, 2):
        generator = torch.Generator()
        assert not ckpt.load_rng(tmp_path, rank, generator, seed=5, step=40)
        draws.append((torch.rand(3), torch.rand(3, generator=generator)))
    assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1], draws[1][1])
    assert not torch.equal(draws[0][0], draws[2][0]) and not torch.equal(draws[0][1], draws[2][1])


def test_an_unreadable_trainer_state_is_one_line_naming_the_file(tmp_path):
    directory = make_checkpoint(tmp_path, 10)
    (directory / ckpt.STATE_FILE).write_text('{"step": 10, "images_')
    with pytest.raises(FMBoostError, match=r"trainer_state.json is unreadable .*rename step_00000010"):
        ckpt.load_trainer_state(directory)


def test_an_unreadable_manifest_is_a_problem_and_no_manifest_is_none(tmp_path):
    from fmboost.training.checkpoint_files import FILE_LIST, problems

    directory = make_checkpoint(tmp_path, 10)
    assert problems(directory) == [], "written before manifests existed: loaded unchecked"
    (directory / FILE_LIST).write_text('{"files": ')
    assert problems(directory) == [f"{directory / FILE_LIST} is unreadable"]
    (directory / FILE_LIST).write_text("[1, 2]")
    assert problems(directory) == [f"{directory / FILE_LIST} is unreadable"]
