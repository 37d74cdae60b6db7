"""Where and in which precision work runs: ``auto`` is a GPU in bf16 if one exists, else the CPU in fp32."""

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
