"""``fmboost-app`` in a real browser: Debian's headless Chromium, driven by Playwright, against the app
serving a tiny stage on a free local port.

Without Chromium these tests are skipped, unless FMBOOST_REQUIRE_BROWSER=1 (as in CI), where a missing
browser fails. The compare view's screenshot is kept under test-artifacts/.
"""

import io
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from fmboost.app.boosting import Request, zoom
from fmboost.app.page import default_stages, example_images, parse_args
from fmboost.errors import FMBoostError
from tests.app_browser import boost, choose_result, chromium_browser, open_page, serve, upload
from tests.conftest import REPO_ROOT
from tests.pipeline.test_folder_boost import save_photo
from tests.pipeline.tiny_models import save_tiny_stage

ARTIFACTS = REPO_ROOT / "test-artifacts"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """The app on a free port, serving a pixel-space stage and a stage that does not exist."""
    root = tmp_path_factory.mktemp("app")
    stage = save_tiny_stage(root / "stage", latent_channels=3, first_stage={"name": "identity"})
    with serve([str(stage), str(root / "not_a_stage")], root / "out") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    if shutil.which("chromium") is None:
        message = "no chromium on PATH (bash scripts/install_chromium.sh)"
        if os.environ.get("FMBOOST_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    with chromium_browser() as browser:
        yield browser


@pytest.fixture
def page(browser, app_url):
    page = open_page(browser, app_url)
    yield page
    page.close()


@pytest.fixture(scope="module")
def photo_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("upload") / "astronaut.png"
    save_photo(path, "astronaut", size=64)
    return path


@pytest.mark.slow
def test_a_boost_doubles_the_upload_and_the_compare_view_and_download_show_the_chosen_results(
    page, photo_file
):
    upload(page, photo_file)
    choose_result(page, "B", stage_index=0, nfe=1, consistency="none")
    page.locator("#flow_tile_size input").fill("48")  # the 64² latent runs in overlapping 48² tiles
    boost(page)

    captions = page.locator("#compare").inner_text()
    assert (
        "bicubic" in captions
        and "A: stage · trained NFE" in captions
        and "B: stage · 1 NFE · none" in captions
    )
    assert "64×64" not in page.locator("#timings").inner_text()
    assert page.locator("#timings").inner_text().count("128×128") == 2
    assert page.locator("#slider img").count() == 2 and page.locator("#zoom img").count() == 1

    link = page.locator("#downloads a[download$='.png']").first
    with page.expect_download() as download_info:
        link.click()
    downloaded = Path(download_info.value.path()).read_bytes()
    assert downloaded.startswith(PNG_SIGNATURE)
    assert Image.open(io.BytesIO(downloaded)).size == (128, 128)  # twice the 64-px upload
    sidecar_link = page.locator("#downloads a[download$='.json']").first
    with page.expect_download() as download_info:
        sidecar_link.click()
    sidecar = json.loads(Path(download_info.value.path()).read_text())
    assert sidecar["image"] == "astronaut.png" and sidecar["size"] == [128, 128] and sidecar["nfe"] == [2]
    assert sidecar["consistency"] == "projection"  # result A: the clean stage's default
    assert sidecar["flow_tile_size"] == 48

    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#compare").scroll_into_view_if_needed()
    page.screenshot(path=ARTIFACTS / "app_compare_view.png", full_page=True)


@pytest.mark.slow
def test_a_text_file_named_png_and_a_broken_stage_are_one_line_errors_on_the_page_and_a_later_boost_works(
    page, photo_file, tmp_path
):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("these are notes, not pixels")
    upload(page, not_an_image)
    page.click("#boost")

    error = page.get_by_text("notes.png is not a readable image (undecodable_image")
    error.wait_for(timeout=60_000)
    assert "Traceback" not in page.content()

    page.locator("#uploads button[aria-label='Clear']").first.click()
    upload(page, photo_file)
    choose_result(page, "A", stage_index=1)  # the stage that does not exist
    page.click("#boost")
    page.get_by_text("not_a_stage cannot be loaded").first.wait_for(timeout=60_000)

    choose_result(page, "A", stage_index=0)
    boost(page)
    assert "A: stage · trained NFE" in page.locator("#compare").inner_text()


def test_the_app_binds_to_this_machine_and_shares_nothing_by_default():
    args = parse_args([])
    assert (args.host, args.share) == ("127.0.0.1", False)
    assert args.queue_size > 0 and args.max_images > 0


def test_without_a_stage_the_app_names_the_demo_or_the_flag(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FMBoostError, match="run make demo first, or pass --stage DIR"):
        default_stages(None)
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    assert default_stages(None) == ["runs/demo"]
    assert [Path(path).name for path in example_images(None)] == ["chelsea.png", "coffee.png", "rocket.jpg"]


def test_the_zoom_shows_the_same_full_resolution_region_of_every_column(tmp_path):
    gradient = Image.new("RGB", (128, 128))
    gradient.putdata([(x * 2, y * 2, 0) for y in range(128) for x in range(128)])
    gradient.save(tmp_path / "a.png")
    gradient.resize((64, 64), Image.Resampling.NEAREST).save(tmp_path / "half.png")
    columns = [(tmp_path / "a.png", "bicubic"), (tmp_path / "half.png", "A: stage · 1 NFE")]

    sheet = zoom(columns, center=(1.0, 0.0), size=32)  # the top-right corner, kept inside the image

    tile, caption = 256, 18  # 32 px enlarged 8× without smoothing, under an 18-px caption
    assert sheet.size == (2 * tile + 4, tile + caption)
    assert sheet.getpixel((0, caption)) == (96 * 2, 0, 0)  # the region starts at x = 128 - 32
    assert sheet.getpixel((tile - 1, caption + tile - 1)) == (127 * 2, 31 * 2, 0)
    second = sheet.crop((tile + 4, caption, 2 * tile + 4, caption + tile))
    enlarged = Image.open(tmp_path / "half.png").resize((128, 128), Image.Resampling.NEAREST)
    assert second.getpixel((0, 0)) == enlarged.getpixel((96, 0))  # the smaller result, at the same region


def test_a_result_is_labelled_with_its_stages_nfe_solver_and_consistency_step():
    assert Request("A", "runs/cfm_1k").describe() == "A: cfm_1k · trained NFE"
    cascade = Request("B", "runs/cfm_1k + runs/cfm_2k", nfe=4, solver="midpoint")
    assert cascade.describe() == "B: cfm_1k+cfm_2k · 4 NFE · midpoint"
    assert (
        Request("C", "runs/cfm_1k", consistency="wavelet").describe() == "C: cfm_1k · trained NFE · wavelet"
    )
