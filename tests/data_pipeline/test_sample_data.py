import json
import tarfile

from data_pipeline.sample_data import NUM_SHARDS, SAMPLES_PER_SHARD, build_sample_dataset


def source_photos(shard) -> set[str]:
    with tarfile.open(shard) as archive:
        return {
            json.load(archive.extractfile(member))["url"]
            for member in archive.getmembers()
            if member.name.endswith(".json")
        }


def test_the_held_out_shard_shows_photos_that_no_training_shard_crops(tmp_path):
    """Validation crops of training photos would measure memorisation, not upsampling."""
    shards = build_sample_dataset(tmp_path)
    assert len(shards) == NUM_SHARDS
    training = set().union(*(source_photos(shard) for shard in shards[:-1]))
    held_out = source_photos(shards[-1])
    assert held_out and training and not held_out & training
    with tarfile.open(shards[-1]) as archive:
        assert sum(m.name.endswith(".txt") for m in archive.getmembers()) == SAMPLES_PER_SHARD
