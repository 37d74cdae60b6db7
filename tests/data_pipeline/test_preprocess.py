import io

import numpy as np
import pytest
from PIL import Image

from data_pipeline.preprocess import (
    Prepared,
    PreprocessSettings,
    Reason,
    Rejected,
    crop_offset,
    decode_image,
    preprocess,
)
from data_pipeline.sources import RawSample
from tests.data_pipeline.builders import gradient_image, image_bytes

SETTINGS = PreprocessSettings(high_res=32)


def run(files: dict[str, bytes], settings: PreprocessSettings = SETTINGS) -> Prepared | Rejected:
    """The one crop of a single-crop setting, or the rejection."""
    result = preprocess(RawSample("k", files), settings, "00000.tar")
    return result[0] if isinstance(result, list) else result


def test_a_good_jpeg_becomes_a_square_uint8_crop_with_caption_and_provenance():
    result = run({"jpg": image_bytes(gradient_image(80, 64)), "txt": b" a caption ", "json": b'{"url": "u"}'})
    assert isinstance(result, Prepared)
    assert result.pixels.shape == (3, 32, 32) and result.pixels.dtype.is_floating_point is False
    assert result.caption == "a caption"
    assert result.metadata["url"] == "u"
    assert result.metadata["fmboost"] == {
        "source_shard": "00000.tar",
        "source_key": "k",
        "source_size": [80, 64],
        "crop_box": [8, 0, 72, 64],
        "crop_index": 0,
        "upscaled": False,
    }


def test_caption_falls_back_to_the_json_caption():
    result = run({"png": image_bytes(gradient_image(40, 40), "PNG"), "json": b'{"caption": "from json"}'})
    assert result.caption == "from json"


def test_exif_orientation_is_applied_before_cropping():
    image = gradient_image(80, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    result = run({"jpg": image_bytes(image, exif=exif)})
    assert result.metadata["fmboost"]["source_size"] == [40, 80]


@pytest.mark.parametrize(
    ("mode", "fmt", "options"),
    [
        ("RGBA", "PNG", {}),
        ("LA", "PNG", {}),
        ("P", "PNG", {"transparency": 0}),
        ("CMYK", "JPEG", {}),
        ("L", "PNG", {}),
        ("I;16", "PNG", {}),
        ("RGB", "WEBP", {}),
    ],
)
def test_every_colour_mode_becomes_rgb(mode, fmt, options):
    if mode == "I;16":
        array = (np.linspace(0, 65535, 48 * 48).reshape(48, 48)).astype(np.uint16)
        image = Image.fromarray(array)
    else:
        image = gradient_image(48, 48).convert(mode)
    data = image_bytes(image, fmt, **options)
    assert decode_image(data).mode == "RGB"
    assert isinstance(run({fmt.lower(): data}), Prepared)


def test_transparency_is_composited_on_white():
    transparent = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    rgb = decode_image(image_bytes(transparent, "PNG"))
    assert rgb.getpixel((5, 5)) == (255, 255, 255)


def test_sixteen_bit_images_keep_their_full_range():
    array = np.full((40, 40), 65535, dtype=np.uint16)
    assert decode_image(image_bytes(Image.fromarray(array), "PNG")).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ({"txt": b"caption only"}, Reason.MISSING_IMAGE),
        ({"jpg": b"this is not an image"}, Reason.UNDECODABLE_IMAGE),
        ({"jpg": image_bytes(gradient_image(80, 80))[:400]}, Reason.TRUNCATED_IMAGE),
        ({"jpg": image_bytes(gradient_image(20, 40))}, Reason.TOO_SMALL),
    ],
)
def test_bad_samples_are_rejected_with_their_reason(files, reason):
    result = run(files)
    assert isinstance(result, Rejected) and result.reason == reason and result.key == "k"


def test_extreme_aspect_ratios_are_rejected_only_when_configured():
    data = {"jpg": image_bytes(gradient_image(200, 40))}
    assert isinstance(run(data), Prepared)
    limited = PreprocessSettings(high_res=32, max_aspect_ratio=3.0)
    assert run(data, limited).reason == Reason.EXTREME_ASPECT_RATIO


def test_small_images_can_be_upscaled_instead_and_this_is_recorded():
    upscale = PreprocessSettings(high_res=32, small_images="upscale")
    result = run({"jpg": image_bytes(gradient_image(20, 24))}, upscale)
    assert isinstance(result, Prepared) and result.upscaled
    assert result.pixels.shape == (3, 32, 32) and result.metadata["fmboost"]["upscaled"] is True


def test_random_crops_are_fixed_per_key_and_seed():
    settings = PreprocessSettings(high_res=32, crop="random", seed=1)
    offsets = {crop_offset(f"key{i}", 100, settings) for i in range(20)}
    assert len(offsets) > 5 and all(0 <= o <= 100 for o in offsets)
    assert crop_offset("key3", 100, settings) == crop_offset("key3", 100, settings)
    assert crop_offset("key3", 100, PreprocessSettings(high_res=32, crop="center")) == 50


def test_decompression_bombs_are_rejected(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    result = run({"png": image_bytes(gradient_image(40, 40), "PNG")})
    assert result.reason == Reason.IMAGE_TOO_LARGE


def test_preprocessing_never_raises_on_garbage_of_any_kind():
    for garbage in (b"", b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, io.BytesIO(b"GIF89a").getvalue()):
        assert isinstance(run({"png": garbage}), Rejected)


def test_several_random_windows_per_image_are_native_resolution_seeded_and_recorded():
    image = gradient_image(120, 90)
    settings = PreprocessSettings(high_res=32, crop="random_window", crops_per_image=3, seed=7)
    crops = preprocess(RawSample("k", {"png": image_bytes(image, "PNG")}), settings, "folder[0:1]")
    assert [c.key for c in crops] == ["k_c00", "k_c01", "k_c02"]
    boxes = [c.metadata["fmboost"]["crop_box"] for c in crops]
    assert len({tuple(b) for b in boxes}) == 3 and all(b[2] - b[0] == b[3] - b[1] == 32 for b in boxes)
    for crop, box in zip(crops, boxes, strict=True):  # a window of the source pixels, not resized
        window = np.asarray(image.crop(tuple(box)))
        assert np.array_equal(crop.pixels.permute(1, 2, 0).numpy(), window)
        assert crop.metadata["fmboost"]["source_key"] == "k"
    again = preprocess(RawSample("k", {"png": image_bytes(image, "PNG")}), settings, "folder[0:1]")
    assert [c.metadata["fmboost"]["crop_box"] for c in again] == boxes
