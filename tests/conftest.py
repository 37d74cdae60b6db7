"""Shared fixtures. Nothing here (or in any test) may reach a model hub."""

import gc
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One thread per process, as torchrun gives its workers: the tests' models are tiny, so a second thread
# only adds synchronisation, and the suite's processes (ranks, jobs, compile workers) share 2 cores.
# Measured on 2 cores: the training and experiment tests took 125 s instead of 137.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from fmboost.config import UNetConfig  # noqa: E402
from tests.app_browser import free_local_port as free_port  # noqa: E402, F401 (tests import it here)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FMBOOST_SHARED", REPO_ROOT.parent / "shared"))


@pytest.fixture(autouse=True, scope="module")
def frozen_heap() -> None:
    """What is alive when a test module starts is exempt from the cyclic garbage collector.

    After the compile and pipeline tests the suite's process holds about 2 million objects (imports,
    compiled graphs), and every full collection walks them all: 1.2 s each on the 2-core CI machine.
    DeepSpeed collects explicitly (its BF16_Optimizer four times per engine), so an in-process training
    test took 28 s in the suite and 12 s alone. Garbage is collected first, so only live objects are
    frozen, and a collection then walks only what the module made.
    """
    gc.collect()
    gc.freeze()


@pytest.fixture
def taef2_dir() -> Path:
    """The small real TAEF2 weights that ship in ../shared/weights (MIT)."""
    directory = SHARED / "weights"
    if not (directory / "taef2_encoder.pth").is_file():
        pytest.skip(f"TAEF2 weights not found in {directory}")
    return directory


def tiny_unet_config(latent_channels: int = 3, input_multiplier: int = 2) -> UNetConfig:
    return UNetConfig(
        in_channels=input_multiplier * latent_channels,
        out_channels=latent_channels,
        model_channels=16,
        channel_mult=[1, 2],
        num_res_blocks=1,
        attention_resolutions=[2],
        num_heads=None,
        head_channels=8,
        norm_groups=4,
    )


def photo(name: str = "astronaut", size: int = 256) -> torch.Tensor:
    """A real photo from scikit-image, centre-cropped and resized, as [1, 3, size, size] in [-1, 1]."""
    import skimage.data
    from PIL import Image

    array = getattr(skimage.data, name)()
    h, w = array.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    image = Image.fromarray(array[top : top + side, left : left + side]).resize((size, size), Image.LANCZOS)
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float()
    return pixels[None] / 127.5 - 1


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1]."""
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).pow(2).mean()
    return float(-10 * torch.log10(mse))


def start_mlflow_server(folder: Path, port: int) -> subprocess.Popen:
    """A real `mlflow server` on 127.0.0.1:``port`` with its store and artifacts in ``folder`` (started
    again on the same folder and port, it serves the same runs), once it answers. A new store starts as
    the cached empty one, as the run folders' stores do, instead of running every migration."""
    from fmboost.tracking_store import seed_new_store

    folder.mkdir(parents=True, exist_ok=True)
    seed_new_store(f"sqlite:///{folder / 'server.db'}")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{folder / 'server.db'}",
            "--default-artifact-root",
            str(folder / "server-artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    from mlflow.tracking import MlflowClient

    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            MlflowClient(f"http://127.0.0.1:{port}").search_experiments()
            return process
        except Exception:
            time.sleep(0.5)
    stop_server(process)
    pytest.fail("mlflow server did not start")


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1, stopped (with its workers) after the test."""
    port = free_port()
    process = start_mlflow_server(tmp_path, port)
    yield f"http://127.0.0.1:{port}", process
    stop_server(process)


def stop_server(process: subprocess.Popen) -> None:
    """The server forks workers: end its whole process group."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
