"""A broken newest checkpoint is found before it is loaded, set aside, and an older one resumes the run."""

import json
import logging
import os
import shutil
import subprocess
import sys

import pytest

from fmboost.config_loading import load_config
from fmboost.distributed import DistributedEnv
from fmboost.errors import ConfigError
from fmboost.training.checkpoint_files import FILE_LIST, problems
from fmboost.training.trainer import train
from tests.conftest import REPO_ROOT, free_port
from tests.training.helpers import build_latents, run_on_two_ranks, training_overrides

pytestmark = pytest.mark.slow

CONFIG = REPO_ROOT / "configs/demo/tiny_cpu.yaml"


def overrides(latents, run_dir, max_steps: int) -> list[str]:
    return training_overrides(latents, run_dir, max_steps=max_steps, checkpoint_every=2, validate_every=100)


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    return build_latents(tmp_path_factory.mktemp("fallback-data"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, latents):
    """A one-rank run with checkpoints at steps 2 and 4 (ZeRO-1), copied by each test."""
    run_dir = tmp_path_factory.mktemp("fallback") / "run"
    train(load_config(CONFIG, overrides(latents, run_dir, max_steps=4)), DistributedEnv())
    return run_dir


def checkpoint_files(directory) -> dict[str, int]:
    return {
        p.relative_to(directory).as_posix(): p.stat().st_size for p in directory.rglob("*") if p.is_file()
    }


def test_every_file_of_a_checkpoint_is_in_its_manifest_with_its_size(trained):
    directory = trained / "checkpoints" / "step_00000004"
    manifest = json.loads((directory / FILE_LIST).read_text())["files"]
    on_disk = checkpoint_files(directory)
    on_disk.pop(FILE_LIST), on_disk.pop("COMPLETE")  # the manifest, then the mark, are written after it
    assert {name: entry["bytes"] for name, entry in manifest.items()} == on_disk
    assert {
        "mp_rank_00_model_states.pt",
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "ema.safetensors",
    } <= set(manifest)
    assert all(len(entry["crc32"]) == 8 for entry in manifest.values())
    assert problems(directory) == []


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty(path):
    path.write_bytes(b"")


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def unreadable(path):
    """Replace ``path`` by a file whose every read fails with a real I/O error (EIO): the reading process's
    own memory at address 0. Its manifest entry says 0 bytes, so that only reading it can tell."""
    path.unlink()
    path.symlink_to("/proc/self/mem")
    manifest = path.parent / FILE_LIST
    if path != manifest and manifest.is_file():
        record = json.loads(manifest.read_text())
        record["files"][path.name]["bytes"] = 0
        manifest.write_text(json.dumps(record))


FAULTS = {
    "unreadable manifest": (FILE_LIST, unreadable, "could not be read (Input/output error)"),
    "truncated": ("mp_rank_00_model_states.pt", truncate, "is truncated"),
    "zero-byte": ("ema.safetensors", empty, "is empty"),
    "missing": ("zero_pp_rank_0_mp_rank_00_optim_states.pt", lambda path: path.unlink(), "is missing"),
    "corrupt": ("trainer_state.json", flip_a_byte, "is corrupt"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_broken_newest_checkpoint_is_set_aside_and_the_previous_one_resumes(
    tmp_path, latents, trained, fault, caplog
):
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    name, damage, said = FAULTS[fault]
    damage(run_dir / "checkpoints" / "step_00000004" / name)
    before = checkpoint_files(run_dir / "checkpoints" / "step_00000004")
    caplog.set_level(logging.INFO)

    result = train(load_config(CONFIG, overrides(latents, run_dir, max_steps=6)), DistributedEnv())

    assert f"step_00000004/{name} {said}" in caplog.text
    assert "resumed from" in caplog.text and "step_00000002 at step 2" in caplog.text
    assert result.step == 6
    set_aside = run_dir / "checkpoints" / "broken_step_00000004"
    assert checkpoint_files(set_aside) == before, "set aside as it was, never deleted"
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == [
        "step_00000002",
        "step_00000004",
        "step_00000006",
    ]


def test_when_every_checkpoint_is_broken_the_run_stops_with_one_line_and_moves_nothing(
    tmp_path, latents, trained
):
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    for step in (2, 4):
        truncate(run_dir / "checkpoints" / f"step_0000000{step}" / "mp_rank_00_model_states.pt")
    before = checkpoint_files(run_dir / "checkpoints")
    command = [sys.executable, "-m", "fmboost.train", str(CONFIG), *overrides(latents, run_dir, max_steps=6)]
    environment = {**os.environ, "MASTER_PORT": str(free_port())}  # this process holds the default one
    finished = subprocess.run(
        command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=300
    )
    assert finished.returncode == 2, finished.stderr
    errors = [line for line in finished.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in finished.stderr
    assert (
        "no checkpoint in" in errors[0] and "step_00000004 (" in errors[0] and "step_00000002 (" in errors[0]
    )
    assert checkpoint_files(run_dir / "checkpoints") == before


def test_a_run_whose_checkpoints_were_all_set_aside_does_not_start_over(tmp_path, latents, trained):
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    for step in (2, 4):
        directory = run_dir / "checkpoints" / f"step_0000000{step}"
        directory.rename(directory.with_name("broken_" + directory.name))
    with pytest.raises(Exception, match="set aside as broken .*train.resume=never starts the run over"):
        train(load_config(CONFIG, overrides(latents, run_dir, max_steps=6)), DistributedEnv())


def test_two_ranks_agree_on_faults_only_one_of_them_reads(tmp_path, latents, trained):
    """Each rank checksums every other file; a flipped byte, and a file whose reads fail with an I/O error,
    in rank 1's share must stop rank 0 from loading that checkpoint too, and neither rank waits."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    directory = run_dir / "checkpoints" / "step_00000004"
    names = sorted(json.loads((directory / FILE_LIST).read_text())["files"])
    flip_a_byte(directory / names[1])
    unreadable(directory / names[3])
    resumed = run_on_two_ranks([str(CONFIG), *overrides(latents, run_dir, max_steps=6)])
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output
    assert output.count(f"{names[1]} is corrupt") >= 1
    assert output.count(f"{names[3]} could not be read (Input/output error)") >= 1
    assert "step_00000002 at step 2" in output
    assert (run_dir / "checkpoints" / "broken_step_00000004").is_dir()


def test_keeping_a_single_checkpoint_is_refused():
    with pytest.raises(ConfigError, match="train.keep_checkpoints: 1 leaves nothing to fall back on"):
        load_config(CONFIG, ["train.keep_checkpoints=1"])
