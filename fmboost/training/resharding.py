"""Resume a ZeRO 1-2 checkpoint on another number of ranks: the optimizer state by parameter name.

DeepSpeed's ZeRO 1-2 (and its bf16 optimizer) keep the fp32 master weights and the Adam moments as one
flat partition per rank, and refuse a checkpoint whose partition count differs from the world size.
Each partition's file records, for every parameter, which slice of that partition holds which piece of
it (``param_slice_mappings``), so the whole state of every parameter is the concatenation of its pieces
in rank order. :func:`consolidate` writes that state once, by parameter name, beside the checkpoint
(``step_N-consolidated/``, the checkpoint itself untouched); :func:`load_consolidated` cuts each rank's
new partition out of it. ZeRO-0 needs neither: its optimizer state is saved whole.

**Memory.** The partition files are opened as memory maps and the output is written by safetensors'
serializer straight from them: a parameter that lies whole in one partition (all but at most one per
partition boundary) is never copied into process memory, and one split over two partitions is
concatenated alone. So rank 0's own memory grows by about the largest parameter's state, not by the
optimizer state (``bench/reshard_memory.py`` measures it).

**Bound to its checkpoint.** The consolidated folder has a ``MANIFEST.json`` of its own (the file's size
and CRC-32) that also names its source: the checkpoint, the CRC-32 of that checkpoint's file list and the
run's identity. Before a resize uses it, it is checked against all three; a stale one (the checkpoint
was rewritten, another run in the same folder) or a damaged one is rebuilt. It is written in a hidden
staging folder, fsynced, and renamed into place, so a partial one is never seen.

**Hyper-parameters.** The parameter groups' Adam settings (betas, eps, weight decay, ...) are stored too
and restored after a resize, as DeepSpeed restores them at the same size; only the implementation flags
(``foreach``, ``fused``, ``capturable``, ``differentiable``) follow the new job, which must run them on
its own device.

Why not DeepSpeed's universal checkpoints: ``ds_to_universal`` writes one temporary file per parameter,
state and rank before merging them (twice the checkpoint's size on disk), unpickles whole DeepSpeed
objects, and has no ZeRO-0 form; the Adam step count, the ordering of ≥ 10 shards and the ZeRO-0 path
would each need work-arounds. One safetensors file per checkpoint, read with memory maps, is simpler
(see docs/checkpoints.md).
"""

import json
import logging
import re
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import TensorSpec, safe_open, serialize_file

from fmboost.atomic_files import fsync_directory
from fmboost.distributed import import_deepspeed
from fmboost.errors import FMBoostError
from fmboost.training.checkpoint_files import (
    FILE_LIST,
    crc32_of,
    describe_files,
    problems,
    read_file_list_record,
    sync_folders,
    unreadable,
    write_file_list,
)

logger = logging.getLogger(__name__)

SHARD_NAME = re.compile(r"(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_00_optim_states\.pt")
CONSOLIDATED_SUFFIX = "-consolidated"
CONSOLIDATED_FILE = "optimizer.safetensors"
STATE_KEYS = ("fp32", "exp_avg", "exp_avg_sq")
PARAM_GROUPS = "param_groups"
# How the optimizer runs, not what it computes: these follow the job that loads the state.
IMPLEMENTATION_FLAGS = frozenset({"params", "foreach", "fused", "capturable", "differentiable"})


def optimizer_shard_files(directory: Path) -> list[Path]:
    """The per-rank ZeRO files of a checkpoint in rank order (``rank_10`` after ``rank_9``)."""
    shards = {int(match.group(1)): p for p in directory.iterdir() if (match := SHARD_NAME.fullmatch(p.name))}
    return [shards[rank] for rank in sorted(shards)]


def consolidated_folder(directory: Path) -> Path:
    return directory.with_name(directory.name + CONSOLIDATED_SUFFIX)


def consolidated_path(directory: Path) -> Path:
    return consolidated_folder(directory) / CONSOLIDATED_FILE


def deepspeed_safe_globals() -> list[type]:
    """The DeepSpeed classes a ZeRO optimizer file holds besides tensors, allowed by name and nothing else."""
    import_deepspeed()
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def read_shard(path: Path, mmap: bool = False) -> dict:
    """One rank's optimizer state; with ``mmap`` its tensors stay in the file until they are read."""
    with torch.serialization.safe_globals(deepspeed_safe_globals()):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)["optimizer_state_dict"]


def source_of(directory: Path, run_id: str) -> dict[str, str | None]:
    """What a consolidated state is bound to: its checkpoint, that checkpoint's file list, the run."""
    file_list = directory / FILE_LIST
    return {  # the key keeps the file's name, so consolidated states written before still match
        "checkpoint": directory.name,
        "manifest_crc32": crc32_of(file_list) if file_list.is_file() else None,
        "run_id": run_id,
    }


def consolidated_problems(directory: Path, run_id: str) -> list[str]:
    """Why the consolidated state beside ``directory`` cannot be used (empty if it can)."""
    folder = consolidated_folder(directory)
    if not folder.is_dir():
        return [f"{folder} does not exist"]
    try:
        record = read_file_list_record(folder)
        source = source_of(directory, run_id)
    except ValueError:
        return [f"{folder / FILE_LIST} is unreadable"]
    except OSError as error:
        return [unreadable(folder, error)]
    if record is None:
        return [f"{folder} has no file list (written before consolidated states were bound to checkpoints)"]
    if record.get("source") != source:
        return [f"{folder} was made from another checkpoint or run ({record.get('source')}, not {source})"]
    return problems(folder)


def ensure_consolidated(directory: Path, run_id: str) -> Path:
    """The consolidated state of ``directory``: the one beside it if it checks out, else written anew."""
    found = consolidated_problems(directory, run_id)
    if not found:
        logger.info("using the optimizer state by parameter in %s", consolidated_folder(directory))
        return consolidated_path(directory)
    if consolidated_folder(directory).exists():
        logger.warning("rebuilding the optimizer state by parameter: %s", "; ".join(found))
    return consolidate(directory, run_id)


@dataclass(frozen=True)
class Piece:
    """Where one piece of a parameter's state lies: a rank's partition file, a group, a slice."""

    shard: int
    group: int
    start: int
    numel: int


def parameter_pieces(shards: list[dict]) -> dict[str, list[Piece]]:
    """Every parameter's pieces in rank order, parameters in the order of the flat buffers."""
    pieces: dict[str, list[Piece]] = defaultdict(list)
    for index, optimizer in enumerate(shards):
        for group, mapping in enumerate(optimizer["param_slice_mappings"]):
            for name, address in mapping.items():
                pieces[name].append(Piece(index, group, address.start, address.numel))
    return pieces


def flat_state(optimizer: dict, group: int, key: str) -> torch.Tensor:
    if key == "fp32":
        return optimizer["single_partition_of_fp32_groups"][group]
    return optimizer["base_optimizer_state"]["state"][group][key]


def saved_param_groups(optimizer: dict) -> list[dict]:
    """The groups' hyper-parameters as the optimizer saved them (JSON-able, without the parameters)."""
    groups = []
    for group in optimizer["base_optimizer_state"][PARAM_GROUPS]:
        kept = {}
        for key, value in group.items():
            if key in IMPLEMENTATION_FLAGS:
                continue
            value = value.tolist() if isinstance(value, torch.Tensor) else value
            kept[key] = list(value) if isinstance(value, tuple) else value
        groups.append(kept)
    return groups


def consolidate(directory: Path, run_id: str) -> Path:
    """Write every parameter's fp32 master and Adam moments, whole, beside ``directory``."""
    shard_files = optimizer_shard_files(directory)
    shards = [read_shard(path, mmap=True) for path in shard_files]
    specs: dict[str, TensorSpec] = {}
    alive: list[torch.Tensor] = []  # the memory every spec points into, until the file is written

    def add(name: str, tensor: torch.Tensor) -> None:
        tensor = tensor.contiguous()
        alive.append(tensor)
        specs[name] = TensorSpec(
            dtype=str(tensor.dtype).removeprefix("torch."),
            shape=list(tensor.shape),
            data_ptr=tensor.data_ptr(),
            data_len=tensor.numel() * tensor.element_size(),
        )

    for name, pieces in parameter_pieces(shards).items():
        for key in STATE_KEYS:
            views = [flat_state(shards[p.shard], p.group, key).narrow(0, p.start, p.numel) for p in pieces]
            add(f"{name}/{key}", views[0] if len(views) == 1 else torch.cat(views))
    for group, state in shards[0]["base_optimizer_state"]["state"].items():
        add(f"step/{group}", torch.as_tensor(state["step"]).reshape(1).float())
    metadata = {
        "source_ranks": str(len(shards)),
        PARAM_GROUPS: json.dumps(saved_param_groups(shards[0])),
    }
    folder = consolidated_folder(directory)
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    serialize_file(specs, str(staging / CONSOLIDATED_FILE), metadata=metadata)
    alive.clear()  # the memory maps of the partition files can close now
    shards.clear()
    write_file_list(staging, describe_files(staging), source=source_of(directory, run_id))
    sync_folders(staging)
    shutil.rmtree(folder, ignore_errors=True)  # a stale or damaged one
    staging.replace(folder)
    fsync_directory(folder.parent)
    logger.info(
        "wrote the optimizer state of %s by parameter (%d rank files) to %s",
        directory,
        len(shard_files),
        folder,
    )
    return consolidated_path(directory)


def restore_param_groups(base, saved: list[dict]) -> None:
    """The saved hyper-parameters into ``base``'s groups, as a same-size resume would restore them."""
    if len(saved) != len(base.param_groups):
        raise FMBoostError(
            f"the checkpoint's optimizer has {len(saved)} parameter groups and this job's has "
            f"{len(base.param_groups)}; resume at the checkpoint's number of ranks, or train.resume=never",
            "train.resume",
        )
    for group, values in zip(base.param_groups, saved, strict=True):
        for key, value in values.items():
            if key not in group:
                raise FMBoostError(
                    f"the checkpoint's optimizer has the setting {key!r}, which this job's optimizer lacks; "
                    "resume with the optimizer the checkpoint was written with",
                    "train.resume",
                )
            group[key] = tuple(value) if isinstance(group[key], tuple) else value


@torch.no_grad()
def load_consolidated(engine, directory: Path) -> None:
    """Give this rank its partition of the masters and moments consolidated beside ``directory`` (ZeRO 1-2,
    bf16 optimizer), and the saved hyper-parameters.

    Positions no parameter maps to (alignment padding) get zeros, as DeepSpeed pads them.
    """
    base = engine.optimizer.optimizer
    mappings = [
        (name, param._hp_mapping)
        for name, param in engine.module.named_parameters()
        if getattr(param, "_hp_mapping", None) is not None
    ]
    with safe_open(str(consolidated_path(directory)), framework="pt", device="cpu") as stored:
        metadata = stored.metadata() or {}
        if PARAM_GROUPS in metadata:
            restore_param_groups(base, json.loads(metadata[PARAM_GROUPS]))
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
