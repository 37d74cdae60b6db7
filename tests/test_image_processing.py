import numpy as np
import pytest
import torch
from PIL import Image

from fmboost.errors import FMBoostError
from fmboost.first_stage.identity import IdentityFirstStage
from fmboost.image_decoding import decode_image
from fmboost.image_processing import from_pil, from_uint8, load_image, save_grid, to_pil, to_uint8


def test_uint8_to_model_images_and_back_is_exact_and_spans_minus_one_to_one():
    images = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(2, 3, 16, 16)
    model_images = from_uint8(images)
    assert model_images.dtype == torch.float32
    assert (model_images.min().item(), model_images.max().item()) == (-1.0, 1.0)
    assert torch.equal(to_uint8(model_images), images)


def test_to_uint8_clamps_and_rounds_to_nearest():
    values = torch.tensor([-3.0, -1.0, 0.0, 0.999, 1.0, 3.0]).view(1, 1, 1, 6).expand(1, 3, 1, 6)
    assert to_uint8(values)[0, 0, 0].tolist() == [0, 0, 128, 255, 255, 255]


def test_to_pil_gives_rgb_images_of_the_batch():
    images = to_pil(torch.zeros(2, 3, 5, 7))
    assert [(image.mode, image.size) for image in images] == [("RGB", (7, 5))] * 2
    assert images[0].getpixel((0, 0)) == (128, 128, 128)


def test_load_image_crops_to_the_size_multiple_and_names_the_parameter_on_errors(tmp_path):
    Image.new("RGB", (21, 18), (255, 0, 0)).save(tmp_path / "red.png")
    image = load_image(tmp_path / "red.png", size_multiple=8)
    assert image.shape == (1, 3, 16, 16)
    torch.testing.assert_close(image[0, :, 0, 0], torch.tensor([1.0, -1.0, -1.0]))
    (tmp_path / "notes.png").write_text("hello")
    with pytest.raises(FMBoostError) as error:
        load_image(tmp_path / "notes.png", 8)
    assert error.value.parameter == "image"


def test_scaled_encode_and_decode_apply_scale_and_shift():
    first_stage = IdentityFirstStage()
    first_stage.scale, first_stage.shift = 2.0, 0.5
    images = torch.rand(1, 3, 4, 4) * 2 - 1
    latents = first_stage.encode_scaled(images)
    torch.testing.assert_close(latents, (images - 0.5) * 2.0)
    torch.testing.assert_close(first_stage.decode_scaled(latents), images)


def test_a_grid_has_one_column_per_entry_at_the_last_columns_size(tmp_path):
    low = torch.zeros(3, 3, 4, 4, dtype=torch.uint8)
    truth = torch.full((3, 3, 8, 8), 255, dtype=torch.uint8)
    path = save_grid({"low-res": low, "ground truth": truth}, tmp_path / "grid.png", rows=2)
    assert Image.open(path).size == (2 * 8 + 3 * 2, 2 * 8 + 3 * 2)  # 2 columns, 2 rows, padding 2
    assert path.with_suffix(".txt").read_text() == "columns: low-res | ground truth\n"


def tricky_image_files(directory) -> dict[str, object]:
    """Files where a plain ``Image.open(...).convert("RGB")`` goes wrong, all 24 wide and 16 high upright."""
    paths = {
        name: directory / f"{name}.{ext}"
        for name, ext in [("grey16", "png"), ("transparent", "png"), ("rotated", "jpg")]
    }
    Image.fromarray(np.full((16, 24), 32768, dtype=np.uint16)).save(paths["grey16"])
    Image.new("RGBA", (24, 16), (0, 0, 0, 0)).save(paths["transparent"])
    stored_sideways = Image.new("RGB", (16, 24), (200, 10, 10))
    exif = stored_sideways.getexif()
    exif[0x0112] = 6  # orientation: rotate for display, so it shows 24 wide and 16 high
    stored_sideways.save(paths["rotated"], exif=exif)
    return paths


@pytest.mark.parametrize("name", ["grey16", "transparent", "rotated"])
def test_generate_decodes_inputs_exactly_as_encoding_does(tmp_path, name):
    path = tricky_image_files(tmp_path)[name]
    loaded = load_image(path, size_multiple=8)
    assert torch.equal(loaded, from_pil(decode_image(path.read_bytes())))
    assert tuple(loaded.shape[-2:]) == (16, 24)
    centre = to_uint8(loaded)[0, :, 8, 8].tolist()
    if name == "grey16":
        assert centre == [128, 128, 128]  # mid grey, not saturated white
    if name == "transparent":
        assert centre == [255, 255, 255]  # composited on white, as in training shards


def test_a_decompression_bomb_is_refused_with_one_line_naming_the_image(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(FMBoostError, match="bomb.png.*image_too_large") as error:
        load_image(tmp_path / "bomb.png", 8)
    assert error.value.parameter == "image"
