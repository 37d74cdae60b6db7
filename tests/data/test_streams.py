import io
import itertools
import json
import pickle
import tarfile

import numpy as np
import psutil
import pytest
import torch

from data_pipeline.encode_shards import run
from fmboost.data import TrainStream, ValidationStream, check_compatible, make_loader, resolve_dataset
from fmboost.data import shards as schema
from fmboost.data.dataset import SampleTransform, decode_sample
from fmboost.data.shards import Manifest
from fmboost.data.streams import unwrap_worker_errors
from fmboost.errors import FMBoostError
from tests.data_pipeline.builders import good_shards, tiny_encode_config, with_a_non_finite_latent


@pytest.fixture(scope="module")
def latent_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("latents")
    run(tiny_encode_config(good_shards(root / "in", shards=4, per_shard=6), root / "out"))
    return resolve_dataset(str(root / "out"))


def keys_of(loader, batches):
    return [tuple(batch["keys"]) for batch in itertools.islice(loader, batches)]


def train_stream(
    dataset, rank=0, world_size=2, start_batch=0, batch_size=4, crop_size=None, origin=0, unusable=None
):
    transform = SampleTransform(dataset.manifest, "psu_roundtrip", crop_size)
    return TrainStream(
        dataset,
        transform,
        batch_size,
        rank,
        world_size,
        seed=3,
        shuffle_buffer=5,
        start_batch=start_batch,
        origin=origin,
        unusable=unusable,
    )


def test_two_ranks_with_two_workers_each_get_equal_numbers_of_full_distinct_batches(latent_dataset):
    per_rank = [
        keys_of(make_loader(train_stream(latent_dataset, rank), num_workers=2), 15) for rank in (0, 1)
    ]
    assert [len(batches) for batches in per_rank] == [15, 15]
    assert all(len(batch) == 4 for batches in per_rank for batch in batches)
    assert per_rank[0] != per_rank[1]
    all_keys = {key for batches in per_rank for batch in batches for key in batch}
    assert len(all_keys) > 12, "resampling reaches many samples"


def test_resuming_at_a_batch_continues_the_uninterrupted_stream_exactly(latent_dataset):
    uninterrupted = keys_of(make_loader(train_stream(latent_dataset), num_workers=2), 12)
    for start in (1, 4, 7):
        resumed = keys_of(
            make_loader(train_stream(latent_dataset, start_batch=start), num_workers=2), 12 - start
        )
        assert resumed == uninterrupted[start:]


def test_a_stream_started_after_a_change_of_ranks_draws_fresh_segments_instead_of_the_runs_start(
    latent_dataset,
):
    start_of_run = keys_of(make_loader(train_stream(latent_dataset, world_size=1), 0), 6)
    new_stream = train_stream(latent_dataset, world_size=1, origin=40)
    assert keys_of(make_loader(new_stream, 0), 6) != start_of_run
    shards = [new_stream.segment_shard(0, segment) for segment in range(20)]
    assert shards != [train_stream(latent_dataset).segment_shard(0, segment) for segment in range(20)]
    resumed = train_stream(latent_dataset, world_size=1, origin=40, start_batch=2)
    assert keys_of(make_loader(resumed, 0), 4) == keys_of(make_loader(new_stream, 0), 6)[2:]


def test_the_training_stream_is_reproducible_and_depends_on_the_seed(latent_dataset):
    first = keys_of(make_loader(train_stream(latent_dataset), 0), 5)
    assert keys_of(make_loader(train_stream(latent_dataset), 0), 5) == first
    transform = SampleTransform(latent_dataset.manifest, "psu_roundtrip")
    other = TrainStream(latent_dataset, transform, 4, 0, 2, seed=4, shuffle_buffer=5)
    assert keys_of(make_loader(other, 0), 5) != first


def test_validation_is_finite_deterministic_and_covers_every_sample_once_across_ranks(latent_dataset):
    transform = SampleTransform(latent_dataset.manifest, "psu_roundtrip")
    seen = []
    for rank in (0, 1):
        loader = make_loader(ValidationStream(latent_dataset, transform, 4, rank, 2), num_workers=2)
        seen += [key for batch in loader for key in batch["keys"]]
    assert sorted(seen) == sorted(f"{s:05d}{i:04d}" for s in range(4) for i in range(6))
    batch = next(iter(make_loader(ValidationStream(latent_dataset, transform, 4), 0)))
    assert batch["images"].shape == (4, 3, 32, 32) and batch["images"].dtype == torch.uint8


def test_batches_hold_scaled_latents_and_the_stored_context():
    stored = {
        "__key__": "k",
        schema.LATENT: schema.encode_array(np.full((3, 4, 4), 2.0)),
        schema.LATENT_LOWRES: schema.encode_array(np.full((3, 2, 2), 1.0)),
        schema.LATENT_PSU: schema.encode_array(np.full((3, 4, 4), 1.5)),
        "txt": b"cap",
    }
    fake = Manifest(
        {"scale": 0.5, "shift": 1.0, "downsampling_factor": 1},
        4,
        2,
        3,
        4,
        2,
        "psu_roundtrip",
        [],
        [],
        {},
        False,
    )
    out = SampleTransform(fake, "psu_roundtrip")(decode_sample(stored), None)
    torch.testing.assert_close(out["x1"], torch.full((3, 4, 4), 0.5))  # (2 - 1) * 0.5
    torch.testing.assert_close(out["z_up"], torch.full((3, 4, 4), 0.25))
    bilinear = SampleTransform(fake, "bilinear")(decode_sample(stored), None)
    torch.testing.assert_close(
        bilinear["z_up"], torch.zeros(3, 4, 4)
    )  # from the low-res latent: (1 - 1) * 0.5


def test_random_latent_crops_stay_aligned_across_fields(latent_dataset):
    batch = next(iter(make_loader(train_stream(latent_dataset, crop_size=16, batch_size=2), 0)))
    assert batch["x1"].shape == (2, 3, 16, 16) and batch["z_low"].shape == (2, 3, 8, 8)
    # identity first stage: the PSU context is the bilinear upsampling of the low-res crop, so they must agree
    upsampled = torch.nn.functional.interpolate(batch["z_low"], scale_factor=2, mode="bilinear")
    assert (upsampled - batch["z_up"])[..., 2:-2, 2:-2].abs().mean() < 0.05


def test_shards_that_do_not_fit_the_model_are_refused(latent_dataset):
    check_compatible(latent_dataset.manifest, latent_channels=3, scale_factor=2, first_stage_name="identity")
    with pytest.raises(FMBoostError, match="3-channel latents, but the model uses 4"):
        check_compatible(latent_dataset.manifest, latent_channels=4, scale_factor=2)
    with pytest.raises(FMBoostError, match=r"16² → 32² pairs \(×2\), but flow.scale_factor is 4"):
        check_compatible(latent_dataset.manifest, latent_channels=3, scale_factor=4)
    with pytest.raises(FMBoostError, match="first stage 'identity', but the config names 'taesd'"):
        check_compatible(latent_dataset.manifest, latent_channels=3, scale_factor=2, first_stage_name="taesd")


def test_selecting_shards_by_pattern_and_refusing_incomplete_ones(latent_dataset):
    root = latent_dataset.root
    subset = resolve_dataset(str(root / "shards" / "{000000..000001}.tar"))
    assert subset.counts == [6, 6] and subset.manifest.completed_shards == [0, 1, 2, 3]
    with pytest.raises(FMBoostError, match="not a complete latent shard"):
        resolve_dataset(str(root / "shards" / "000009.tar"))
    with pytest.raises(FMBoostError, match="manifest.json is missing"):
        resolve_dataset(str(root / "shards"))


class Exploit:
    def __reduce__(self):
        return (eval, ("__import__('pathlib').Path('PWNED').touch()",))


def test_the_reader_never_unpickles_shard_data(tmp_path, latent_dataset, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = latent_dataset.shards[0].read_bytes()
    shard = tmp_path / "shards" / "000000.tar"
    shard.parent.mkdir()
    with tarfile.open(fileobj=io.BytesIO(source)) as original, tarfile.open(shard, "w") as target:
        payload = pickle.dumps(Exploit())
        for index, member in enumerate(original.getmembers()):
            target.addfile(member, original.extractfile(member))
            if index == 0:  # a pickle member inside the first sample
                info = tarfile.TarInfo(member.name.split(".")[0] + ".pyd")
                info.size = len(payload)
                target.addfile(info, io.BytesIO(payload))
    (tmp_path / "shards" / "000000.stats.json").write_text(json.dumps({"written": 6}))
    (tmp_path / "manifest.json").write_text((latent_dataset.root / "manifest.json").read_text())
    dataset = resolve_dataset(str(shard))
    transform = SampleTransform(dataset.manifest, "psu_roundtrip")
    batches = list(make_loader(ValidationStream(dataset, transform, 8), 0))
    assert sum(len(b["keys"]) for b in batches) == 6
    assert not (tmp_path / "PWNED").exists()

    object_array = io.BytesIO()
    np.save(object_array, np.array([Exploit()], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        schema.decode_array(object_array.getvalue())
    assert not (tmp_path / "PWNED").exists()


def test_a_psu_mode_other_than_the_one_the_shards_were_encoded_with_is_refused_naming_both(latent_dataset):
    assert latent_dataset.manifest.psu_variant == "psu_roundtrip"
    for fits in ("psu_roundtrip", "bilinear", "nearest"):  # latent resizes are made from latent_lowres
        check_compatible(latent_dataset.manifest, 3, 2, upsampling=fits)
    with pytest.raises(
        FMBoostError,
        match=r"contexts made with psu_roundtrip \(manifest psu_variant\), but flow.upsampling is psu_pixel",
    ):
        check_compatible(latent_dataset.manifest, 3, 2, upsampling="psu_pixel")


def copy_with_shard(tmp_path, latent_dataset, shard_bytes: bytes, claimed: int = 6):
    """A one-shard dataset whose shard holds ``shard_bytes`` and whose stats claim ``claimed`` samples."""
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "000000.tar").write_bytes(shard_bytes)
    (tmp_path / "shards" / "000000.stats.json").write_text(json.dumps({"written": claimed}))
    (tmp_path / "manifest.json").write_text((latent_dataset.root / "manifest.json").read_text())
    return resolve_dataset(str(tmp_path / "shards" / "000000.tar"))


def first_error_line(loader) -> str:
    with pytest.raises(FMBoostError) as error:
        next(unwrap_worker_errors(loader))
    assert "\n" not in str(error.value)
    return str(error.value)


def test_a_stream_over_shards_that_hold_no_samples_fails_naming_the_shard_instead_of_spinning(
    tmp_path, latent_dataset
):
    empty = io.BytesIO()
    tarfile.open(fileobj=empty, mode="w").close()
    dataset = copy_with_shard(tmp_path, latent_dataset, empty.getvalue())
    children = set(psutil.Process().children())
    message = first_error_line(make_loader(train_stream(dataset, world_size=1), num_workers=2))
    assert "000000.tar holds 0 samples but its .stats.json says 6" in message
    assert set(psutil.Process().children()) == children, "the loader's workers are gone with the error"


def test_a_truncated_shard_names_the_shard_and_the_last_whole_sample(tmp_path, latent_dataset):
    source = latent_dataset.shards[0].read_bytes()
    dataset = copy_with_shard(tmp_path, latent_dataset, source[: len(source) // 2 + 100])
    message = first_error_line(make_loader(train_stream(dataset, world_size=1), num_workers=0))
    assert "000000.tar: truncated or corrupt shard, after sample" in message


def test_a_corrupt_npy_member_names_the_shard_the_sample_and_the_member(tmp_path, latent_dataset):
    object_array = io.BytesIO()
    np.save(object_array, np.array([Exploit()], dtype=object), allow_pickle=True)
    shard = io.BytesIO()
    source = io.BytesIO(latent_dataset.shards[0].read_bytes())
    with tarfile.open(fileobj=source) as original, tarfile.open(fileobj=shard, mode="w") as target:
        for index, member in enumerate(original.getmembers()):
            data = original.extractfile(member).read()
            if index < 8 and member.name.endswith(f".{schema.LATENT}"):  # in the first sample
                data, member.size = object_array.getvalue(), len(object_array.getvalue())
            target.addfile(member, io.BytesIO(data))
    dataset = copy_with_shard(tmp_path, latent_dataset, shard.getvalue())
    message = first_error_line(
        make_loader(ValidationStream(dataset, SampleTransform(dataset.manifest, "psu_roundtrip"), 8), 0)
    )
    assert "000000.tar: sample " in message and f"{schema.LATENT} is not a plain .npy array" in message


def test_a_missing_dataset_path_says_it_does_not_exist(tmp_path):
    with pytest.raises(FMBoostError, match="missing does not exist"):
        resolve_dataset(str(tmp_path / "missing"))


def test_a_sample_with_non_finite_latents_is_skipped_named_and_a_resume_told_of_it_stays_exact(
    tmp_path, latent_dataset
):
    bad = "000010002"  # in shard 1
    dataset = resolve_dataset(str(with_a_non_finite_latent(latent_dataset.root, tmp_path / "nan", bad)))
    batches = list(itertools.islice(make_loader(train_stream(dataset, world_size=1), num_workers=2), 20))
    assert all(len(batch["keys"]) == 4 for batch in batches), "the batch is filled with the next samples"
    assert not any(bad in batch["keys"] for batch in batches)
    first_skip = next(index for index, batch in enumerate(batches) if batch["skipped"])
    assert batches[first_skip]["skipped"] == [
        {"shard": "000001.tar", "key": bad, "reason": "non-finite values in latent.npy"}
    ]
    uninterrupted = [tuple(batch["keys"]) for batch in batches]
    after = first_skip + 2  # the next batch of the worker stream that skipped it
    for start in (first_skip, first_skip + 1, after):
        told = train_stream(dataset, world_size=1, start_batch=start, unusable={"000001.tar": [bad]})
        assert keys_of(make_loader(told, num_workers=2), 20 - start) == uninterrupted[start:]
    untold = train_stream(dataset, world_size=1, start_batch=after)
    assert keys_of(make_loader(untold, num_workers=2), 2) != uninterrupted[after : after + 2]
