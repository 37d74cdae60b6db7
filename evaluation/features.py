"""Image feature extractors for FID-style metrics: clean-fid's Inception-V3, or any callable for tests.

The Inception weights come from a local file only (clean-fid's ``inception-2015-12-05.pt``, under any
name): a missing or unreadable file is reported with where to put it and where to get it; nothing is
downloaded and no untrained network ever stands in for it.
"""

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fmboost.errors import WeightsError

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = f"https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/{INCEPTION_FILE}"

FeatureExtractor = Callable[[torch.Tensor], np.ndarray]
"""uint8 images [B, 3, H, W] → features [B, D]."""


def missing_inception_message(path: Path) -> str:
    return (
        f"FID and p-FID need the Inception-V3 weights {INCEPTION_FILE}, not found at {path}. "
        f"Put the file there (or set inception_path); get it from {INCEPTION_URL}"
    )


class CleanInception:
    """clean-fid's ``clean`` mode: PIL bicubic resize to 299², Inception-V3 pool3 (2048-d)."""

    def __init__(self, path: str | Path, device: torch.device) -> None:
        from cleanfid.inception_torchscript import InceptionV3W
        from cleanfid.resize import build_resizer

        path = Path(path).expanduser()
        if not path.is_file():
            raise WeightsError(missing_inception_message(path))
        # clean-fid loads ``<folder>/inception-2015-12-05.pt``; a link under that name in a scratch
        # folder makes it load exactly the file given, whatever it is called.
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / INCEPTION_FILE).symlink_to(path.resolve())
            try:
                self.model = InceptionV3W(folder, download=False).to(device).eval()
            except Exception as error:  # TorchScript raises RuntimeError subclasses for any bad file
                raise WeightsError(
                    f"{path} is not a readable Inception-V3 TorchScript file "
                    f"({type(error).__name__}: {str(error).strip().splitlines()[0][:200]})"
                ) from None
        self.resize = build_resizer("clean")
        self.device = device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        resized = [self.resize(image.permute(1, 2, 0).cpu().numpy()) for image in images]
        batch = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).float().to(self.device)
        return self.model(batch).cpu().numpy().astype(np.float64)
