"""The distributed environment, set up in one place for torchrun, submitit and single processes.

Launchers export the standard variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``); :func:`init_distributed` reads them, picks NCCL on GPUs and gloo on CPU, and
initialises DeepSpeed's communication layer on top of ``torch.distributed``.
"""

import logging
import os
import sys
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


def import_deepspeed():
    """DeepSpeed, imported without the MLflow import of its autotuner (which FMBoost never runs).

    ``import deepspeed`` imports MLflow through ``deepspeed.autotuning``, 1.5 s of every process's start
    on 2 CPU cores, paid by every rank of every job although only rank 0 logs (and imports MLflow when
    it first does). The autotuner guards that import with ``try``, so MLflow is hidden from it while
    DeepSpeed loads and is importable as usual after.
    """
    if "deepspeed" in sys.modules:
        return sys.modules["deepspeed"]
    hide = "mlflow" not in sys.modules
    if hide:
        sys.modules["mlflow"] = None  # an import of it raises ImportError
    try:
        import deepspeed
    finally:
        if hide:
            del sys.modules["mlflow"]
    return deepspeed


def skip_shared_memory_all_reduce() -> None:
    """Keep DeepSpeed from compiling its CPU shared-memory all-reduce, which training never calls.

    On the CPU accelerator every process that joins a group builds that C++ op on first use (about 25 s
    of g++ on a fresh machine, and it needs a compiler); only DeepSpeed's tensor-parallel *inference*
    all-reduce uses it, while training's collectives go through ``torch.distributed`` (gloo).
    """
    import_deepspeed().ops.__compatible_ops__["deepspeed_shm_comm"] = False


def init_distributed(env: DistributedEnv, timeout_seconds: float | None = None) -> str:
    """Join the process group (a single process too, so DeepSpeed runs the same); returns the backend.

    ``timeout_seconds`` bounds every collective (torch's defaults: 30 min for gloo, 10 for NCCL), so a
    collective that waits for a lost peer fails instead of holding the job.
    """
    deepspeed = import_deepspeed()
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


def leave_process_group() -> None:
    """Destroy the process group of a process that is about to exit, after its last collective.

    Left to the interpreter's exit, gloo's worker threads can outlive it and abort the process
    ("terminate called without an active exception", SIGABRT; pytorch/pytorch#190489): rank 1 of a
    finished 2-rank run once exited -6, and torchrun or Slurm then see a crash where the work is done.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
