"""Resume a ZeRO 1-2 checkpoint on another number of ranks: the optimizer state by parameter name.

DeepSpeed's ZeRO 1-2 (and its bf16 optimizer) keep the fp32 master weights and the Adam moments as one
flat partition per rank, and refuse a checkpoint whose partition count differs from the world size.
Each partition's file records, for every parameter, which slice of that partition holds which piece of
it (``param_slice_mappings``), so the whole state of every parameter is the concatenation of its pieces
in rank order. :func:`consolidate` writes that state once, by parameter name, beside the checkpoint
(``step_N-consolidated/``, the checkpoint itself untouched); :func:`load_consolidated` cuts each rank's
new partition out of it. ZeRO-0 needs neither: its optimizer state is saved whole.

Why not DeepSpeed's universal checkpoints: ``ds_to_universal`` writes one temporary file per parameter,
state and rank before merging them (twice the checkpoint's size on disk), unpickles whole DeepSpeed
objects, and has no ZeRO-0 form; the Adam step count, the ordering of ≥ 10 shards and the ZeRO-0 path
would each need work-arounds. One safetensors file per checkpoint, read with memory maps, is simpler
(see docs/checkpoints.md).
"""

import logging
import re
import shutil
from collections import defaultdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

logger = logging.getLogger(__name__)

SHARD_NAME = re.compile(r"(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_00_optim_states\.pt")
CONSOLIDATED_SUFFIX = "-consolidated"
CONSOLIDATED_FILE = "optimizer.safetensors"
STATE_KEYS = ("fp32", "exp_avg", "exp_avg_sq")


def optimizer_shard_files(directory: Path) -> list[Path]:
    """The per-rank ZeRO files of a checkpoint in rank order (``rank_10`` after ``rank_9``)."""
    shards = {int(match.group(1)): p for p in directory.iterdir() if (match := SHARD_NAME.fullmatch(p.name))}
    return [shards[rank] for rank in sorted(shards)]


def consolidated_path(directory: Path) -> Path:
    return directory.with_name(directory.name + CONSOLIDATED_SUFFIX) / CONSOLIDATED_FILE


def deepspeed_safe_globals() -> list[type]:
    """The DeepSpeed classes a ZeRO optimizer file holds besides tensors, allowed by name and nothing else."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def read_shard(path: Path) -> dict:
    with torch.serialization.safe_globals(deepspeed_safe_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)["optimizer_state_dict"]


def consolidate(directory: Path) -> Path:
    """Write every parameter's fp32 master and Adam moments, whole, beside ``directory`` (once)."""
    target = consolidated_path(directory)
    if target.is_file():
        return target
    pieces: dict[str, list[torch.Tensor]] = defaultdict(list)
    steps: dict[int, torch.Tensor] = {}
    shards = optimizer_shard_files(directory)
    for path in shards:
        optimizer = read_shard(path)
        for group, mapping in enumerate(optimizer["param_slice_mappings"]):
            state = optimizer["base_optimizer_state"]["state"][group]
            flats = {"fp32": optimizer["single_partition_of_fp32_groups"][group], **state}
            steps[group] = torch.as_tensor(state["step"]).reshape(1).float()
            for name, address in mapping.items():
                for key in STATE_KEYS:
                    pieces[f"{name}/{key}"].append(flats[key].narrow(0, address.start, address.numel))
    tensors = {key: torch.cat(parts) for key, parts in pieces.items()}
    tensors.update({f"step/{group}": step for group, step in steps.items()})
    staging = target.parent.with_name(target.parent.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file(tensors, str(staging / CONSOLIDATED_FILE), metadata={"source_ranks": str(len(shards))})
    staging.replace(target.parent)
    logger.info(
        "wrote the optimizer state of %s by parameter (%d rank files) to %s", directory, len(shards), target
    )
    return target


@torch.no_grad()
def load_consolidated(engine, path: Path) -> None:
    """Give this rank its partition of the masters and moments in ``path`` (ZeRO 1-2, bf16 optimizer).

    Positions no parameter maps to (alignment padding) get zeros, as DeepSpeed pads them.
    """
    base = engine.optimizer.optimizer
    mappings = [
        (name, param._hp_mapping)
        for name, param in engine.module.named_parameters()
        if getattr(param, "_hp_mapping", None) is not None
    ]
    with safe_open(str(path), framework="pt", device="cpu") as stored:
        for index, group in enumerate(base.param_groups):
            flat = group["params"][0]
            moments = {"exp_avg": torch.zeros_like(flat), "exp_avg_sq": torch.zeros_like(flat)}
            targets = {"fp32": flat.data, **moments}
            for name, mapping in mappings:
                if mapping.param_group_index != index:
                    continue
                low, high = mapping.lp_fragment_address, mapping.hp_fragment_address
                for key, target in targets.items():
                    piece = stored.get_slice(f"{name}/{key}")[low.start : low.start + low.numel]
                    target.narrow(0, high.start, high.numel).copy_(piece)
            step = stored.get_tensor(f"step/{index}").reshape(())
            if group.get("fused") or group.get("capturable"):
                step = step.to(flat.device)
            base.state[flat] = {"step": step, **moments}
