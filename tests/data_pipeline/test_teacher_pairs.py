"""Teacher pairs: what a pair shard holds, that it resumes after kill -9 to the same bytes, and its errors."""

import filecmp
import json
import os
import signal
import subprocess
import sys
import time
from functools import partial

import pytest
import torch

from data_pipeline.pairs_config import load_pairs_config
from data_pipeline.teacher_pairs import main, run
from fmboost.data import resolve_dataset
from fmboost.data import shards as schema
from fmboost.data.dataset import SampleTransform, decode_sample
from fmboost.data.streams import raw_samples
from fmboost.errors import ConfigError
from fmboost.flow.sampling import solve_ode
from fmboost.models import FMBoostModel
from fmboost.noise_schedule import noise_augment
from fmboost.randomness import keyed_seed
from tests.conftest import REPO_ROOT
from tests.pipeline.tiny_models import save_tiny_stage
from tests.training.helpers import build_latents

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    latents = build_latents(root)
    teacher = save_tiny_stage(root / "teacher", latent_channels=3, first_stage={"name": "identity"})
    return latents, teacher


def pairs_args(latents, teacher, output, *extra) -> list[str]:
    return [f"teacher={teacher}", f"input={latents}", f"output={output}", "nfe=6", "batch_size=3", *extra]


def test_a_pair_is_the_teachers_solution_from_a_seeded_start_that_training_reads_back(tmp_path, setup):
    latents, teacher = setup
    output = tmp_path / "pairs"
    run(load_pairs_config(None, pairs_args(latents, teacher, output)))

    manifest = schema.Manifest.load(output)
    assert manifest.pairs["teacher"] == str(teacher.resolve())
    assert manifest.pairs["teacher_config"]["flow"]["objective"] == "cfm"
    assert (manifest.pairs["solver"], manifest.pairs["nfe"]) == ("euler", 6)
    assert manifest.pairs["source"] == str(latents.resolve())
    assert manifest.totals["written"] == resolve_dataset(str(latents)).manifest.totals["written"] == 40

    source = {raw["__key__"]: raw for raw in raw_samples(str(schema.shard_path(latents, 1)))}
    model = FMBoostModel.from_pretrained(teacher)
    transform = SampleTransform(manifest, "psu_roundtrip")
    for raw in raw_samples(str(schema.shard_path(output, 1))):
        key = raw["__key__"]
        seed = json.loads(raw["json"])["pair"]["start_seed"]
        assert seed == keyed_seed(0, key)
        assert raw[schema.LATENT_REAL] == source[key][schema.LATENT]  # the real target is kept
        assert raw[schema.LATENT_PSU] == source[key][schema.LATENT_PSU]
        sample = transform(decode_sample(raw), None)
        expected_start = noise_augment(sample["z_up"][None], 400, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(sample["x0"][None], expected_start.half().float())
        field = partial(model.objective.velocity, model.net, z_up=sample["z_up"][None])
        teacher_result = solve_ode(field, sample["x0"][None], solver="euler", nfe=6).x1
        torch.testing.assert_close(sample["x1"][None], teacher_result, atol=2e-3, rtol=2e-3)  # float16
        assert not torch.allclose(sample["x1"], sample["x0"], atol=1e-2)  # the teacher moved it


def test_pairs_do_not_depend_on_the_batch_or_the_task_split(tmp_path, setup):
    latents, teacher = setup
    run(load_pairs_config(None, pairs_args(latents, teacher, tmp_path / "one")))
    for task in range(2):
        split = ["batch_size=5", f"task_index={task}", "num_tasks=2"]
        run(load_pairs_config(None, pairs_args(latents, teacher, tmp_path / "two", *split)))
    for index in range(5):
        one, two = (schema.shard_path(tmp_path / name, index) for name in ("one", "two"))
        assert one.read_bytes() == two.read_bytes()


def test_pairs_resume_after_kill_9_to_byte_identical_shards(tmp_path, setup):
    latents, teacher = setup
    reference = tmp_path / "reference"
    run(load_pairs_config(None, pairs_args(latents, teacher, reference, "nfe=12", "batch_size=2")))

    output = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "data_pipeline.teacher_pairs",
        *pairs_args(latents, teacher, output, "nfe=12", "batch_size=2"),
    ]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 120
    while not schema.stats_path(output, 0).is_file() and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    complete = sorted(output.glob("shards/*.stats.json"))
    assert 1 <= len(complete) < 5, "the kill must land between shards for this test to mean anything"

    assert main(pairs_args(latents, teacher, output, "nfe=12", "batch_size=2")) == 0
    names = sorted(p.name for p in (reference / "shards").iterdir())
    assert names == sorted(p.name for p in (output / "shards").iterdir())
    _, mismatched, errors = filecmp.cmpfiles(reference / "shards", output / "shards", names, shallow=False)
    assert mismatched == [] and errors == []


def test_pairs_refuse_a_missing_teacher_a_stepless_solver_and_other_settings_in_one_output(
    tmp_path, setup, capsys
):
    latents, teacher = setup
    assert main(pairs_args(latents, tmp_path / "nowhere", tmp_path / "out")) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="solver: pairs need a fixed-step solver"):
        load_pairs_config(None, pairs_args(latents, teacher, tmp_path / "out", "solver=dopri5"))
    run(
        load_pairs_config(None, pairs_args(latents, teacher, tmp_path / "out", "task_index=0", "num_tasks=5"))
    )
    assert main(pairs_args(latents, teacher, tmp_path / "out", "nfe=8")) == 2
    assert "already holds a dataset with a different pairs" in capsys.readouterr().err
