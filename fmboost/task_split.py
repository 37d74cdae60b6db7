"""Jobs split over tasks: which share of the work a process does (encoding, teacher pairs, folder
boosting and evaluation split their inputs this way: task ``i`` of ``N`` takes every ``N``-th item).

The share comes from explicit ``task_index``/``num_tasks`` keys, else from the launcher's environment
(a Slurm array, torchrun, a multi-task Slurm job); :func:`validate_task_split` checks explicit keys.
"""

import os

from fmboost.errors import ConfigError


def validate_task_split(task_index: int | None, num_tasks: int | None) -> None:
    """An explicit share of a sharded job: both keys or neither, and the index inside the count."""
    if (task_index is None) != (num_tasks is None):
        raise ConfigError("task_index and num_tasks: set both or neither")
    if num_tasks is not None and not 0 <= task_index < num_tasks:
        raise ConfigError(f"task_index: {task_index} is outside [0, {num_tasks})")


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
