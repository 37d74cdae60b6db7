"""Boosting a whole folder: relative paths kept, every file accounted for, resumable after kill -9.

The split over Slurm array tasks is tested on the real cluster (tests/cluster/test_slurm.py)."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from fmboost.folder_boost import SUMMARY, plan
from fmboost.generate import main as generate
from fmboost.randomness import keyed_seed
from tests.conftest import REPO_ROOT, photo
from tests.pipeline.tiny_models import save_tiny_stage

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


@pytest.fixture(scope="module")
def stage(tmp_path_factory) -> Path:
    """A pixel-space stage (identity first stage): a 64-px image becomes 128 px in a fraction of a second."""
    return save_tiny_stage(
        tmp_path_factory.mktemp("stage"), latent_channels=3, first_stage={"name": "identity"}
    )


def save_photo(path: Path, name: str, size: int = 64) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = ((photo(name, size)[0].permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).byte().numpy()
    Image.fromarray(pixels).save(path)


def photo_folder(root: Path, count: int) -> Path:
    """``count`` photos, half of them in a subfolder, PNG and JPEG."""
    for index in range(count):
        folder = root / ("sub" if index % 2 else ".")
        save_photo(
            folder / f"{index:02d}_{PHOTOS[index % 4]}.{'png' if index % 3 else 'jpg'}", PHOTOS[index % 4]
        )
    return root


def outputs(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*.png"))}


def boost(stage: Path, input_dir: Path, out: Path, *flags: str) -> int:
    return generate(["--stage", str(stage), "--input-dir", str(input_dir), "--out", str(out), *flags])


def test_a_folder_is_boosted_into_the_same_relative_paths_and_every_file_is_accounted_for(tmp_path, stage):
    folder = photo_folder(tmp_path / "in", 2)
    save_photo(folder / "sub" / "01_chelsea.jpg", "coffee")  # its output clashes with sub/01_chelsea.png
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_text("a text file named .png")
    (folder / ".thumbnail.png").write_bytes((folder / "00_astronaut.jpg").read_bytes())
    out = tmp_path / "out"

    assert boost(stage, folder, out) == 0

    assert sorted(outputs(out)) == ["00_astronaut.png", "sub/01_chelsea.png"]
    assert Image.open(out / "sub" / "01_chelsea.png").size == (128, 128)
    sidecar = json.loads((out / "sub" / "01_chelsea.json").read_text())
    assert sidecar["input"] == "sub/01_chelsea.jpg" and sidecar["seed"] == keyed_seed(0, "sub/01_chelsea.jpg")
    assert sidecar["nfe"] == [2] and "stage_1" in sidecar["timings_s"]
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["totals"] == {"boosted": 2, "done_earlier": 0, "skipped": 4}
    files = summary["files"]
    assert files["broken.png"]["reason"].endswith(
        "is not a readable image (undecodable_image: not in any image format PIL can read)"
    )
    assert files["notes.txt"]["reason"] == "not an image file (suffix '.txt')"
    assert files[".thumbnail.png"]["reason"] == "hidden file"
    assert (
        files["sub/01_chelsea.png"]["reason"]
        == "its output sub/01_chelsea.png is already that of sub/01_chelsea.jpg"
    )


def test_a_rerun_skips_finished_images_and_refuses_other_settings(tmp_path, stage, capsys):
    folder = photo_folder(tmp_path / "in", 3)
    out = tmp_path / "out"
    assert boost(stage, folder, out) == 0
    finished = {path: path.stat().st_mtime_ns for path in out.rglob("*.png")}
    (out / "sub" / "01_chelsea.json").unlink()  # an image whose sidecar is missing is not finished

    assert boost(stage, folder, out) == 0

    assert json.loads((out / SUMMARY).read_text())["totals"] == {
        "boosted": 1,
        "done_earlier": 2,
        "skipped": 0,
    }
    rewritten = [path.name for path, mtime in finished.items() if path.stat().st_mtime_ns != mtime]
    assert rewritten == ["01_chelsea.png"]
    capsys.readouterr()
    assert boost(stage, folder, out, "--nfe", "4") == 2
    assert "already holds results made with other settings (another nfe;" in capsys.readouterr().err
    assert boost(stage, folder, out, "--dtype", "bf16") == 2, "fp32 here: one folder, one precision"
    assert "already holds results made with other settings (another dtype;" in capsys.readouterr().err
    assert boost(stage, folder, folder / "boosted") == 2
    assert "is inside the input folder" in capsys.readouterr().err


def test_oversized_results_are_skipped_with_their_reason_and_the_rest_is_boosted(tmp_path, stage):
    folder = photo_folder(tmp_path / "in", 1)
    save_photo(folder / "large.png", "coffee", size=128)
    out = tmp_path / "out"
    assert boost(stage, folder, out, "--max-output-pixels", str(128 * 128)) == 0
    files = json.loads((out / SUMMARY).read_text())["files"]
    assert files["00_astronaut.jpg"]["status"] == "boosted"
    assert files["large.png"]["reason"].startswith("large.png would give a 256×256 result")


@pytest.mark.slow
def test_a_folder_run_killed_mid_way_loses_nothing_and_its_rerun_matches_an_uninterrupted_run(
    tmp_path, stage
):
    folder = photo_folder(tmp_path / "in", 6)
    assert boost(stage, folder, tmp_path / "reference") == 0
    out = tmp_path / "out"
    command = [sys.executable, "-m", "fmboost.generate", "--stage", str(stage), "--input-dir", str(folder)]
    process = subprocess.Popen([*command, "--out", str(out)], cwd=REPO_ROOT, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(out.rglob("*.json"))) < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()

    finished = [p for p in out.rglob("*.json")]
    assert 2 <= len(finished) < 6, "the run was not killed mid-folder"
    assert all(p.with_suffix(".png").is_file() for p in finished)  # a sidecar is written after its image
    assert boost(stage, folder, out) == 0

    summary = json.loads((out / SUMMARY).read_text())
    assert summary["totals"] == {"boosted": 6 - len(finished), "done_earlier": len(finished), "skipped": 0}
    assert outputs(out) == outputs(tmp_path / "reference")
    assert not list(out.rglob(".*.partial"))


def test_the_plan_names_every_file_with_its_output_or_the_reason_it_has_none(tmp_path):
    folder = photo_folder(tmp_path / "in", 2)
    (folder / "readme").write_text("")
    entries = {entry.relative: (entry.output, entry.reason) for entry in plan(folder)}
    assert entries == {
        "00_astronaut.jpg": ("00_astronaut.png", None),
        "readme": (None, "not an image file (suffix 'none')"),
        "sub/01_chelsea.png": ("sub/01_chelsea.png", None),
    }
