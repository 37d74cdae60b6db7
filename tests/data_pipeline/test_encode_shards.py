import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from data_pipeline.config import EncodeConfig
from data_pipeline.encode_shards import main, run
from data_pipeline.preprocess import Reason
from fmboost.config import FirstStageConfig
from fmboost.data import shards as schema
from fmboost.data.shards import Manifest
from fmboost.errors import FMBoostError
from fmboost.task_split import task_share
from tests.conftest import REPO_ROOT, psnr
from tests.data_pipeline.builders import (
    good_sample,
    good_shards,
    gradient_image,
    image_bytes,
    tiny_encode_config,
    write_tar,
)


def read_shard(path: Path) -> list[dict]:
    return list(wds.WebDataset(str(path), shardshuffle=False))


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_round_trip_writes_every_latent_with_the_documented_shape_and_dtype(tmp_path):
    config = tiny_encode_config(good_shards(tmp_path / "in", shards=2, per_shard=3), tmp_path / "out")
    run(config)
    samples = read_shard(tmp_path / "out" / "shards" / "000001.tar")
    assert [s["__key__"] for s in samples] == ["000010000", "000010001", "000010002"]
    sample = samples[0]
    arrays = {
        name: schema.decode_array(sample[name])
        for name in (schema.LATENT, schema.LATENT_LOWRES, schema.LATENT_PSU)
    }
    assert {n: (a.shape, a.dtype.name) for n, a in arrays.items()} == {
        schema.LATENT: ((3, 32, 32), "float16"),
        schema.LATENT_LOWRES: ((3, 16, 16), "float16"),
        schema.LATENT_PSU: ((3, 32, 32), "float16"),
    }
    assert sample["txt"] == b"caption 000010000"
    assert json.loads(sample["json"])["fmboost"]["crop_box"] == [8, 0, 72, 64]
    jpg = np.asarray(wds.autodecode.imagehandler("rgb8")("jpg", sample["jpg"]))
    assert jpg.shape == (32, 32, 3)
    # identity first stage: the high-res latent is the crop itself, in [-1, 1]
    assert abs(arrays[schema.LATENT].astype(np.float32).transpose(1, 2, 0) - (jpg / 127.5 - 1)).mean() < 0.05


def test_manifest_records_the_setup_and_totals_that_add_up(tmp_path):
    run(tiny_encode_config(good_shards(tmp_path / "in", shards=3, per_shard=4), tmp_path / "out"))
    manifest = Manifest.load(tmp_path / "out")
    record = manifest.first_stage
    assert (record.name, record.scale, record.shift, record.tile_size) == ("identity", 1.0, 0.0, None)
    assert (manifest.high_res, manifest.low_res, manifest.high_res_latent, manifest.low_res_latent) == (
        32,
        16,
        32,
        16,
    )
    assert (manifest.dtype, manifest.psu_variant, manifest.schema_version) == ("float16", "psu_roundtrip", 1)
    assert manifest.completed_shards == [0, 1, 2]
    assert manifest.totals == {
        "seen": 12,
        "written": 12,
        "upscaled": 0,
        "rejected": {},
        "shards_with_tar_errors": 0,
    }


def test_every_kind_of_bad_input_is_counted_and_the_job_goes_on(tmp_path):
    inputs = tmp_path / "in"
    write_tar(
        inputs / "00000.tar",
        [
            good_sample("good1", 1),
            ("noimage", {"txt": b"caption without image"}),
            ("garbage", {"jpg": b"not an image at all"}),
            ("cut", {"jpg": image_bytes(gradient_image(80, 80))[:300]}),
            ("small", {"jpg": image_bytes(gradient_image(20, 20))}),
            ("wide", {"jpg": image_bytes(gradient_image(200, 40))}),
            good_sample("good2", 2),
        ],
    )
    broken = write_tar(inputs / "00001.tar", [good_sample(f"t{i}", i) for i in range(4)])
    broken.write_bytes(broken.read_bytes()[: int(broken.stat().st_size * 0.6)])
    write_tar(inputs / "00002.tar", [good_sample("after", 9)])

    run(tiny_encode_config(str(inputs / "{00000..00002}.tar"), tmp_path / "out", max_aspect_ratio=3.0))

    first = json.loads((tmp_path / "out/shards/000000.stats.json").read_text())
    assert first["rejected"] == {
        Reason.MISSING_IMAGE: 1,
        Reason.UNDECODABLE_IMAGE: 1,
        Reason.TRUNCATED_IMAGE: 1,
        Reason.TOO_SMALL: 1,
        Reason.EXTREME_ASPECT_RATIO: 1,
    }
    assert first["rejected_keys"][Reason.TOO_SMALL] == ["small"]
    assert (first["seen"], first["written"]) == (7, 2)

    second = json.loads((tmp_path / "out/shards/000001.stats.json").read_text())
    assert second["tar_error"] and second["rejected"] == {Reason.TRUNCATED_TAR: 1}
    assert second["written"] >= 1 and second["written"] + 1 == second["seen"]
    assert [s["__key__"] for s in read_shard(tmp_path / "out/shards/000002.tar")] == ["after"]

    totals = Manifest.load(tmp_path / "out").totals
    assert totals["written"] + sum(totals["rejected"].values()) == totals["seen"]
    assert totals["shards_with_tar_errors"] == 1


def test_completed_shards_are_skipped_and_half_written_ones_are_redone(tmp_path):
    config = tiny_encode_config(good_shards(tmp_path / "in", shards=3, per_shard=3), tmp_path / "out")
    run(config)
    reference = all_files(tmp_path / "out")
    shards = tmp_path / "out" / "shards"
    (shards / "000001.stats.json").unlink()  # as if killed after the rename but before the stats file
    (shards / "000002.tar").write_bytes(b"half a tar")
    (shards / "000002.stats.json").unlink()
    (shards / ".000000.tar.partial").write_bytes(b"leftover")  # irrelevant temp file from a crash
    summary = run(config)
    assert (summary.shards_done, summary.shards_skipped) == (2, 1)
    (shards / ".000000.tar.partial").unlink()
    assert all_files(tmp_path / "out") == reference


def test_kill_minus_nine_then_rerun_gives_byte_identical_output(tmp_path):
    inputs = good_shards(tmp_path / "in", shards=6, per_shard=12)
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    run(tiny_encode_config(inputs, reference_dir, batch_size=2))

    command = [
        sys.executable,
        "-m",
        "data_pipeline.encode_shards",
        f"input={inputs}",
        f"output={killed_dir}",
        "high_res=32",
        "low_res=16",
        "batch_size=2",
        "num_workers=0",
    ]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not list((killed_dir / "shards").glob("000002.stats.json")):
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed_dir / "shards" / "000005.stats.json").exists(), "the job finished before the kill"

    assert subprocess.run(command, cwd=REPO_ROOT, capture_output=True).returncode == 0
    produced = {k: v for k, v in all_files(killed_dir).items() if ".partial" not in k}
    assert produced == all_files(reference_dir)


def test_two_tasks_cover_disjoint_shards_and_together_the_whole_input(tmp_path):
    inputs = good_shards(tmp_path / "in", shards=5, per_shard=2)
    first = run(tiny_encode_config(inputs, tmp_path / "out", task_index=0, num_tasks=2))
    manifest_after_first = Manifest.load(tmp_path / "out")
    second = run(tiny_encode_config(inputs, tmp_path / "out", task_index=1, num_tasks=2))
    assert (first.shards_done, second.shards_done) == (3, 2)
    assert manifest_after_first.completed_shards == [0, 2, 4]
    assert Manifest.load(tmp_path / "out").completed_shards == [0, 1, 2, 3, 4]
    run(tiny_encode_config(inputs, tmp_path / "single"))
    assert all_files(tmp_path / "out") == all_files(tmp_path / "single")


def test_task_split_comes_from_slurm_arrays_torchrun_and_multi_task_jobs():
    config = EncodeConfig()

    def resolve_task(config, environ):
        return task_share(config.task_index, config.num_tasks, environ)

    assert resolve_task(config, {}) == (0, 1)
    assert resolve_task(config, {"RANK": "2", "WORLD_SIZE": "4"}) == (2, 4)
    assert resolve_task(config, {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}) == (3, 4)
    assert resolve_task(config, {"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}) == (1, 2)
    both = {
        "SLURM_ARRAY_TASK_ID": "2",
        "SLURM_ARRAY_TASK_COUNT": "3",
        "SLURM_PROCID": "1",
        "SLURM_NTASKS": "2",
    }
    assert resolve_task(config, both) == (5, 6)
    assert resolve_task(EncodeConfig(task_index=1, num_tasks=7), both) == (1, 7)


def test_an_output_written_with_other_settings_is_not_mixed_into(tmp_path):
    inputs = good_shards(tmp_path / "in", shards=1, per_shard=1)
    run(tiny_encode_config(inputs, tmp_path / "out"))
    with pytest.raises(FMBoostError, match="different high_res"):
        run(tiny_encode_config(inputs, tmp_path / "out", high_res=64, low_res=32))


def test_taef2_is_a_real_first_stage_end_to_end(tmp_path, taef2_dir):
    inputs = good_shards(tmp_path / "in", shards=1, per_shard=3)
    first_stage = FirstStageConfig(name="taesd", path=str(taef2_dir))
    run(tiny_encode_config(inputs, tmp_path / "out", first_stage=first_stage, high_res=64, low_res=32))
    manifest = Manifest.load(tmp_path / "out")
    assert (manifest.latent_channels, manifest.high_res_latent, manifest.low_res_latent) == (32, 8, 4)
    sample = read_shard(tmp_path / "out/shards/000000.tar")[0]
    assert schema.decode_array(sample[schema.LATENT_PSU]).shape == (32, 8, 8)

    import torch

    from fmboost.first_stage import build_first_stage

    decoder = build_first_stage(first_stage)
    latent = torch.from_numpy(schema.decode_array(sample[schema.LATENT]).astype(np.float32))[None]
    image = torch.from_numpy(np.asarray(wds.autodecode.imagehandler("rgb8")("jpg", sample["jpg"])).copy())
    assert psnr(decoder.decode(latent), image.permute(2, 0, 1)[None].float() / 127.5 - 1) > 20


def test_cli_help_documents_the_options_and_bad_keys_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    for key in (
        "input",
        "output",
        "high_res",
        "psu_variant",
        "small_images",
        "max_aspect_ratio",
        "num_workers",
        "task_index",
    ):
        assert key in help_text
    assert main(["hihg_res=3"]) == 2
    assert "error: command line: hihg_res: Key 'hihg_res' not in 'EncodeConfig'" in capsys.readouterr().err
    assert main([f"input={tmp_path}/missing.tar"]) == 2
    assert "shards do not exist" in capsys.readouterr().err


def test_the_sample_dataset_encodes_with_the_shipped_config(tmp_path):
    from data_pipeline.config import load_encode_config
    from data_pipeline.sample_data import build_sample_dataset

    build_sample_dataset(tmp_path / "sample")
    config = load_encode_config(
        REPO_ROOT / "configs/encode/sample.yaml",
        [
            f"input={tmp_path}/sample/shards/{{00000..00004}}.tar",
            f"output={tmp_path}/latents",
            "num_workers=2",
        ],
    )
    run(config)
    totals = Manifest.load(tmp_path / "latents").totals
    assert totals["seen"] == 120 and totals["written"] == 120


def test_dangerous_names_duplicates_and_directories_are_counted_and_never_written(tmp_path):
    shard = write_tar(
        tmp_path / "in" / "00000.tar",
        [
            good_sample("../../evil", 1),
            good_sample("/abs/evil", 2),
            good_sample("photos/ok", 3),
            good_sample("twice", 4),
            good_sample("other", 5),
            good_sample("twice", 6),
        ],
    )
    with tarfile.open(shard, "a") as archive:
        directory = tarfile.TarInfo("photos")
        directory.type = tarfile.DIRTYPE
        archive.addfile(directory)

    run(tiny_encode_config(str(shard), tmp_path / "out"))

    stats = json.loads((tmp_path / "out/shards/000000.stats.json").read_text())
    assert stats["rejected"] == {Reason.UNSAFE_KEY: 2, Reason.DUPLICATE_KEY: 1, Reason.NOT_A_FILE: 1}
    assert (stats["seen"], stats["written"]) == (7, 3)
    with tarfile.open(tmp_path / "out/shards/000000.tar") as written:
        names = written.getnames()
    assert all(not name.startswith("/") and ".." not in name for name in names)
    assert sorted({name.split(".")[0] for name in names}) == ["other", "photos/ok", "twice"]
    extracted = tmp_path / "extracted"
    with tarfile.open(tmp_path / "out/shards/000000.tar") as written:
        written.extractall(extracted, filter="data")  # would raise on an escaping member
    assert not (tmp_path / "evil.latent.npy").exists()


def test_other_input_with_the_same_shard_names_is_refused_not_mistaken_for_complete(tmp_path):
    run(tiny_encode_config(good_shards(tmp_path / "first", shards=2, per_shard=2), tmp_path / "out"))
    other = write_tar(tmp_path / "second" / "00000.tar", [good_sample(f"new{i}", 10 + i) for i in range(3)])
    write_tar(tmp_path / "second" / "00001.tar", [good_sample("new9", 19)])
    with pytest.raises(FMBoostError, match="000000.tar was encoded from other input") as error:
        run(tiny_encode_config(str(tmp_path / "second" / "{00000..00001}.tar"), tmp_path / "out"))
    assert str(tmp_path / "first") in str(error.value) and str(other) in str(error.value)


def test_an_output_path_that_is_a_file_is_one_line(tmp_path, capsys):
    inputs = good_shards(tmp_path / "in", shards=1, per_shard=1)
    (tmp_path / "out").write_text("a file")
    assert main([f"input={inputs}", f"output={tmp_path / 'out'}", "first_stage.name=identity"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"error: output: {tmp_path / 'out'} (or a folder above it) is a file, not a folder"
    )


def broken_vae(directory: Path, fault: str) -> FirstStageConfig:
    """A tiny diffusers VAE whose encoder gives NaN latents (a NaN weight) or finite ones beyond float16
    (an output layer scaled by 10^6), saved where the user's code path loads it from."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[16],
        down_block_types=["DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D"],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
    )
    with torch.no_grad():
        if fault == "nan":
            vae.encoder.conv_out.weight[0, 0, 0, 0] = float("nan")
        else:
            vae.encoder.conv_out.weight.mul_(1e6)
    vae.save_pretrained(directory)
    return FirstStageConfig(name="diffusers", path=str(directory), tile_size=None)


@pytest.mark.parametrize(
    ("fault", "reason", "detail"),
    [
        ("nan", Reason.NON_FINITE_LATENT, r"000000000: latent has \d+ NaN and 0 infinite values"),
        ("overflow", Reason.LATENT_OVERFLOW, r"000000000: latent reaches [\d.e+]+, beyond float16's 65504"),
    ],
)
def test_latents_a_broken_first_stage_makes_unstorable_are_refused_with_their_reason(
    tmp_path, fault, reason, detail
):
    first_stage = broken_vae(tmp_path / "vae", fault)
    config = tiny_encode_config(good_shards(tmp_path / "in", shards=1, per_shard=3), tmp_path / "out")
    config.first_stage, config.high_res, config.low_res = first_stage, 16, 8
    run(config)
    stats = json.loads((tmp_path / "out/shards/000000.stats.json").read_text())
    assert (stats["seen"], stats["written"], stats["rejected"]) == (3, 0, {reason: 3})
    assert re.fullmatch(detail, stats["first_rejection"][reason])
    with tarfile.open(tmp_path / "out/shards/000000.tar") as shard:
        assert shard.getnames() == []
