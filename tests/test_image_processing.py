import pytest
import torch
from PIL import Image

from fmboost.errors import FMBoostError
from fmboost.first_stage.identity import IdentityFirstStage
from fmboost.image_processing import from_uint8, load_image, save_grid, to_pil, to_uint8


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
