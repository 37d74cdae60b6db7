"""Where and in which precision work runs: ``auto`` is a GPU in bf16 if one exists, else the CPU in fp32."""

import contextlib

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_device(name: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` is bf16 on GPUs and fp32 on CPUs; other names pass through."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def precision_dtype(precision: str, device: torch.device) -> torch.dtype:
    return DTYPES[resolve_precision(precision, device)]


def autocast_to(dtype: torch.dtype, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device``; nothing for fp32. How the frozen autoencoder runs in a lower
    precision: its weights stay as loaded, so encoding and decoding share one copy of them."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
