"""Drive ``fmboost-app`` in headless Chromium: what its browser tests and its documentation screenshot share.

    with serve(["runs/cfm_1k"], out_dir) as url, chromium_browser() as browser:
        page = open_page(browser, url)
        upload(page, Path("photo.png"))
        choose_result(page, "B", stage_index=0, nfe=1)
        boost(page)

Playwright drives the system's Chromium (Debian's ``chromium`` package) through ``executable_path``;
nothing is downloaded at run time.
"""

import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fmboost.errors import FMBoostError


def free_local_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve(stages: Sequence[str], out_dir: Path, timeout: float = 120) -> Iterator[str]:
    """``fmboost-app`` with ``stages`` on a free local port, until the block ends; yields its URL."""
    port = free_local_port()
    command = [sys.executable, "-m", "fmboost.app", "--port", str(port), "--out", str(out_dir)]
    for stage in stages:
        command += ["--stage", str(stage)]
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "app.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=log)
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    urllib.request.urlopen(url, timeout=2)
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise FMBoostError(f"the app did not start:\n{log_path.read_text()}") from None
                    time.sleep(0.3)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=30)


@contextmanager
def chromium_browser() -> Iterator[Any]:
    """Headless Chromium from the system's ``chromium``, driven by Playwright."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium")
    if executable is None:
        raise FMBoostError("no chromium on PATH; install Debian's package: apt install chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser: Any, url: str, width: int = 1400, height: int = 1500) -> Any:
    page = browser.new_page(viewport={"width": width, "height": height}, accept_downloads=True)
    page.goto(url)
    page.wait_for_selector("#boost")
    return page


def upload(page: Any, *paths: Path) -> None:
    page.locator("#uploads input[type=file]").set_input_files([str(path) for path in paths])
    page.wait_for_selector(f"#uploads >> text={paths[-1].stem}")


def choose_result(
    page: Any, slot: str, stage_index: int, nfe: int = 0, consistency: str | None = None
) -> None:
    """Result ``slot`` (A, B or C): the ``stage_index``-th stage offered (B and C offer "—" first), and
    a ``consistency`` step other than the stage's default."""
    page.locator(f"#stage_{slot} input").click()
    page.get_by_role("option").nth(stage_index + (slot != "A")).click()
    page.locator(f"#nfe_{slot} input").fill(str(nfe))
    if consistency is not None:
        page.locator(f"#consistency_{slot} input").click()
        page.get_by_role("option", name=consistency, exact=True).click()


def boost(page: Any, timeout_s: float = 120) -> None:
    page.click("#boost")
    page.wait_for_selector("#compare img", timeout=timeout_s * 1000)
