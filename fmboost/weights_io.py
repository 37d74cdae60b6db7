"""Safe reading of weight files: safetensors, or ``torch.load(weights_only=True)``, never pickle."""

from pathlib import Path

import torch
from safetensors.torch import load_file

from fmboost.errors import WeightsError

TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors stored in ``path`` (a top-level ``state_dict`` entry is unwrapped, as Lightning saves it)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        if path.suffix in TORCH_SUFFIXES:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise WeightsError(
                f"{path}: unknown weights format; use .safetensors or one of {', '.join(TORCH_SUFFIXES)}"
            )
    except WeightsError:
        raise
    except Exception as error:  # corrupt file, or pickled objects weights_only refuses
        raise WeightsError(f"{path}: cannot read weights safely ({type(error).__name__}: {error})") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise WeightsError(f"{path}: expected a state dict, found {type(loaded).__name__}")
    return loaded
