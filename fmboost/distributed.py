"""The distributed environment, set up in one place for torchrun, submitit and single processes.

Launchers export the standard variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``); :func:`init_distributed` reads them, picks NCCL on GPUs and gloo on CPU, and
initialises DeepSpeed's communication layer on top of ``torch.distributed``.
"""

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> "DistributedEnv":
        environ = os.environ if environ is None else environ
        return cls(
            rank=int(environ.get("RANK", 0)),
            world_size=int(environ.get("WORLD_SIZE", 1)),
            local_rank=int(environ.get("LOCAL_RANK", 0)),
            master_addr=environ.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(environ.get("MASTER_PORT", 29500)),
        )

    def export(self) -> None:
        """Write the standard variables, for libraries (DeepSpeed, torch) that read them."""
        os.environ.update(
            RANK=str(self.rank),
            WORLD_SIZE=str(self.world_size),
            LOCAL_RANK=str(self.local_rank),
            MASTER_ADDR=self.master_addr,
            MASTER_PORT=str(self.master_port),
        )


def task_share(
    task_index: int | None, num_tasks: int | None, environ: dict[str, str] | None = None
) -> tuple[int, int]:
    """``(index, count)`` of this process's share of a job split over tasks.

    Explicit values win; else a Slurm array (times the tasks of each array job); else torchrun's
    ``RANK``/``WORLD_SIZE``; else a multi-task Slurm job; else the whole job (0 of 1).
    """
    if num_tasks is not None:
        return task_index, num_tasks
    environ = os.environ if environ is None else environ
    proc, ntasks = int(environ.get("SLURM_PROCID", 0)), int(environ.get("SLURM_NTASKS", 1))
    if "SLURM_ARRAY_TASK_ID" in environ and "SLURM_ARRAY_TASK_COUNT" in environ:
        array_index = int(environ["SLURM_ARRAY_TASK_ID"]) - int(environ.get("SLURM_ARRAY_TASK_MIN", 0))
        return array_index * ntasks + proc, int(environ["SLURM_ARRAY_TASK_COUNT"]) * ntasks
    if "WORLD_SIZE" in environ:
        return int(environ.get("RANK", 0)), int(environ["WORLD_SIZE"])
    return proc, ntasks


def all_ranks_agree(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank."""
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def device_for(env: DistributedEnv) -> torch.device:
    """One task per GPU: ``cuda:LOCAL_RANK`` when GPUs exist, else the CPU."""
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
        return torch.device("cuda", env.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def skip_shared_memory_all_reduce() -> None:
    """Keep DeepSpeed from compiling its CPU shared-memory all-reduce, which training never calls.

    On the CPU accelerator every process that joins a group builds that C++ op on first use (about 25 s
    of g++ on a fresh machine, and it needs a compiler); only DeepSpeed's tensor-parallel *inference*
    all-reduce uses it, while training's collectives go through ``torch.distributed`` (gloo).
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def init_distributed(env: DistributedEnv, timeout_seconds: float | None = None) -> str:
    """Join the process group (a single process too, so DeepSpeed runs the same); returns the backend.

    ``timeout_seconds`` bounds every collective (torch's defaults: 30 min for gloo, 10 for NCCL), so a
    collective that waits for a lost peer fails instead of holding the job.
    """
    import deepspeed

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    env.export()
    skip_shared_memory_all_reduce()
    if not torch.distributed.is_initialized():
        timeout = {} if timeout_seconds is None else {"timeout": timedelta(seconds=timeout_seconds)}
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, **timeout)
    logger.info(
        "rank %d/%d (local %d) joined via %s at %s:%d",
        env.rank,
        env.world_size,
        env.local_rank,
        backend,
        env.master_addr,
        env.master_port,
    )
    return backend
