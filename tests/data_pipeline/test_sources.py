import pytest

from data_pipeline.sources import RawSample, TarBreak, iter_shard, list_input_shards, split_member_name
from fmboost.errors import ConfigError
from tests.data_pipeline.builders import good_sample, good_shards, gradient_image, image_bytes, write_tar


def test_member_names_split_at_the_first_dot_of_the_file_name():
    assert split_member_name("dir.v1/000001.latent.npy") == ("dir.v1/000001", "latent.npy")
    assert split_member_name("000001.JPG") == ("000001", "jpg")


def test_a_tar_yields_its_samples_grouped_by_key(tmp_path):
    path = write_tar(tmp_path / "a.tar", [good_sample("k1", 1), good_sample("k2", 2)])
    items = list(iter_shard(list_input_shards(str(path))[0]))
    assert [item.key for item in items] == ["k1", "k2"]
    assert sorted(items[0].files) == ["jpg", "json", "txt"]


def test_a_tar_cut_inside_a_member_yields_what_came_before_and_reports_the_break(tmp_path):
    path = write_tar(tmp_path / "a.tar", [good_sample(f"k{i}", i) for i in range(4)])
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    items = list(iter_shard(list_input_shards(str(path))[0]))
    samples = [i for i in items if isinstance(i, RawSample)]
    assert isinstance(items[-1], TarBreak) and items[-1].key is not None
    assert [s.key for s in samples] + [items[-1].key] == [f"k{i}" for i in range(len(samples) + 1)]


def test_a_tar_cut_at_a_member_boundary_is_still_noticed(tmp_path):
    path = write_tar(tmp_path / "a.tar", [good_sample("k1", 1)])
    first = path.read_bytes()
    header_and_jpg = 512 + ((len(good_sample("k1", 1)[1]["jpg"]) + 511) // 512) * 512
    path.write_bytes(first[:header_and_jpg])
    items = list(iter_shard(list_input_shards(str(path))[0]))
    assert len(items) == 1 and isinstance(items[0], TarBreak) and items[0].key == "k1"


def test_garbage_instead_of_a_tar_is_a_break_not_a_crash(tmp_path):
    path = tmp_path / "a.tar"
    path.write_bytes(b"definitely not a tar archive" * 100)
    items = list(iter_shard(list_input_shards(str(path))[0]))
    assert len(items) == 1 and isinstance(items[0], TarBreak)


def test_brace_patterns_and_directories_list_shards_in_order(tmp_path):
    pattern = good_shards(tmp_path, shards=3, per_shard=1)
    assert [s.name for s in list_input_shards(pattern)] == ["00000.tar", "00001.tar", "00002.tar"]
    assert [s.index for s in list_input_shards(str(tmp_path))] == [0, 1, 2]


def test_missing_shards_fail_before_any_work(tmp_path):
    good_shards(tmp_path, shards=1, per_shard=1)
    with pytest.raises(ConfigError, match="input: 1 of 2 shards do not exist"):
        list_input_shards(str(tmp_path / "{00000..00001}.tar"))


def test_a_plain_folder_of_images_with_sidecar_captions(tmp_path):
    (tmp_path / "sub").mkdir()
    gradient_image(40, 40).save(tmp_path / "b.png")
    (tmp_path / "b.txt").write_text("bee")
    (tmp_path / "sub" / "a.photo.jpg").write_bytes(image_bytes(gradient_image(40, 40)))
    shards = list_input_shards(str(tmp_path))
    samples = list(iter_shard(shards[0]))
    assert [(s.key, sorted(s.files)) for s in samples] == [("b", ["png", "txt"]), ("sub/a_photo", ["jpg"])]


def test_a_zip_of_images_is_sharded_like_the_same_folder(tmp_path):
    import zipfile

    from tests.data_pipeline.builders import gradient_image, image_bytes

    folder = tmp_path / "photos"
    (folder / "b").mkdir(parents=True)
    for index, name in enumerate(["a1.jpg", "a2.png", "b/c1.webp", "b/c2.jpeg", "z.jpg"]):
        fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[name.rsplit(".", 1)[1]]
        (folder / name).write_bytes(image_bytes(gradient_image(40, 30, index), fmt))
    (folder / "b/c1.txt").write_text("a caption")
    (folder / "notes.md").write_text("not an image")
    with zipfile.ZipFile(tmp_path / "photos.zip", "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, str(path.relative_to(folder)))

    from_folder = list_input_shards(str(folder), images_per_shard=2)
    from_zip = list_input_shards(str(tmp_path / "photos.zip"), images_per_shard=2)
    assert len(from_folder) == len(from_zip) == 3
    folder_samples = [s for shard in from_folder for s in iter_shard(shard)]
    zip_samples = [s for shard in from_zip for s in iter_shard(shard)]
    assert (
        [s.key for s in folder_samples] == [s.key for s in zip_samples] == ["a1", "a2", "b/c1", "b/c2", "z"]
    )
    assert [s.files for s in folder_samples] == [s.files for s in zip_samples]
    assert zip_samples[2].files["txt"] == b"a caption"


def test_a_broken_zip_is_a_clear_error(tmp_path):
    (tmp_path / "broken.zip").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="broken.zip is not a readable zip"):
        list_input_shards(str(tmp_path / "broken.zip"))
