"""The documentation's screenshot of ``fmboost-app``: a teacher and its student on one photo.

    python scripts/app_screenshot.py --teacher results/fewstep_mini/runs/cfm \
        --student results/fewstep_mini/runs/reflow --image photo.png --out docs/app_screenshot.png

Starts the app on a free local port and drives Debian's headless Chromium: uploads the image, asks for
the teacher at its trained NFE (result A) and at 1 NFE (B) and the student at 1 NFE (C), boosts, and
saves the whole page.
"""

import argparse
import sys
import tempfile
from pathlib import Path

# The browser is driven by the tests' own helper (tests/app_browser.py), which is test tooling and not
# installed with the library: this script, run from anywhere, finds it in its checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fmboost.cli import exit_without_collecting, report_errors  # noqa: E402
from tests.app_browser import boost, choose_result, chromium_browser, open_page, serve, upload  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python scripts/app_screenshot.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--teacher", required=True, help="the teacher stage (model directory or run)")
    parser.add_argument("--student", required=True, help="its 1-NFE student (model directory or run)")
    parser.add_argument("--image", type=Path, required=True, help="the photo to boost")
    parser.add_argument("--out", type=Path, default=Path("docs/app_screenshot.png"), help="the PNG to write")
    return parser.parse_args(argv)


@report_errors({})
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with (
        tempfile.TemporaryDirectory() as scratch,
        serve([args.teacher, args.student], Path(scratch)) as url,
        chromium_browser() as browser,
    ):
        page = open_page(browser, url)
        upload(page, args.image)
        choose_result(page, "B", stage_index=0, nfe=1)
        choose_result(page, "C", stage_index=1, nfe=1)
        boost(page, timeout_s=600)
        page.wait_for_timeout(1000)  # the slider and zoom images finish loading
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out), full_page=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    exit_without_collecting(main())
