"""torch.compile for sampling: the flow network and the first stage's encoder and decoder, for static shapes.

On CUDA the modules compile in ``reduce-overhead`` mode, so the fixed-NFE solver loop replays CUDA
graphs instead of launching every kernel from Python; elsewhere in the default mode. Shapes are static
(``dynamic=False``): a new batch shape compiles once more, which is why callers time a warm-up call
apart from the calls they measure.
"""

import logging

import torch
from torch import nn

logger = logging.getLogger("fmboost.inference.compile")


def compile_mode(device: torch.device) -> str:
    return "reduce-overhead" if device.type == "cuda" else "default"


def compile_for_inference(modules: list[nn.Module], device: torch.device) -> None:
    """Compile ``modules`` in place (``nn.Module.compile``); compilation itself happens at the first call."""
    mode = compile_mode(device)
    for module in modules:
        module.compile(mode=mode, dynamic=False)
    logger.info("compiled %d modules for inference (torch.compile, mode %s)", len(modules), mode)
