"""Training the experiment's arms through ``cluster/submit.py``: local arms take turns, Slurm arms run at
the same time, and an arm waits for what it refers to (another arm, the pairs, the degraded latents)."""

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from evaluation.experiment.config import DEGRADED, ExperimentConfig, references
from evaluation.experiment.data import make_pairs
from fmboost.errors import FMBoostError

logger = logging.getLogger("evaluation.run_experiment")
SUBMIT = Path(__file__).resolve().parents[2] / "cluster" / "submit.py"


def finished(run_dir: Path, max_steps: int) -> bool:
    from fmboost.run_folder import latest_checkpoint
    from fmboost.training.checkpointing import STATE_FILE

    latest = latest_checkpoint(run_dir)
    return latest is not None and json.loads((latest / STATE_FILE).read_text())["step"] >= max_steps


def arm_overrides(config: ExperimentConfig, arm, latents: dict[str, Path], run_dir: Path) -> list[str]:
    first_stage = config.first_stage
    return [
        *config.train_overrides,
        f"data.train={latents['train']}",
        *arm.overrides,
        f"data.validation={latents['eval']}",
        f"train.run_dir={run_dir}",
        f"first_stage.name={first_stage.name}",
        *([f"first_stage.path={first_stage.path}"] if first_stage.path else []),
        f"logging.experiment={config.logging.experiment}-{config.name}-training",
    ]


def resolve_references(overrides: list[str], root: Path, pairs: Path | None) -> list[str]:
    """``key=@ARM`` → that arm's run folder, ``key=@pairs`` → the pair dataset,
    ``key=@degraded_latents`` → the degraded training latents."""
    resolved = []
    for override in overrides:
        key, _, value = override.partition("=")
        if value == "@pairs":
            value = str(pairs)
        elif value == f"@{DEGRADED}":
            value = str(root / "latents" / "train_degraded")
        elif value.startswith("@"):
            value = str(root / "runs" / value[1:])
        resolved.append(f"{key}={value}")
    return resolved


def train_arms(
    config: ExperimentConfig, latents: dict[str, Path], root: Path, timings: dict[str, float]
) -> dict[str, Path]:
    """Train every unfinished arm through ``cluster/submit.py``; Slurm arms run at the same time, except
    that an arm waits for the arms (and pairs) it refers to. Time spent on pairs goes to ``timings``."""
    from fmboost.config_loading import load_config

    cluster = config.cluster
    flags = [
        "--cluster",
        cluster.backend,
        "--nodes",
        str(cluster.nodes),
        "--gpus-per-node",
        str(cluster.gpus_per_node),
        "--wait",
    ]
    flags += ["--partition", cluster.partition] if cluster.partition else []
    flags += ["--time", str(cluster.time_minutes)] if cluster.time_minutes else []
    run_dirs, running, pairs = {}, [], None
    for arm in config.arms:
        run_dir = root / "runs" / arm.name
        run_dirs[arm.name] = run_dir
        named = [name for name in references(arm.overrides) if name != DEGRADED]  # encoded already
        if named:  # what it names must be finished first
            while running:
                wait_for(running.pop())
        if "pairs" in named and pairs is None:
            started = time.perf_counter()
            pairs = make_pairs(config, latents, root)
            timings["pairs"] = time.perf_counter() - started
        overrides = arm_overrides(config, arm, latents, run_dir)
        overrides = resolve_references(overrides, root, pairs)
        max_steps = load_config(
            config.train_config, overrides
        ).train.max_steps  # also checks the arm's config
        if finished(run_dir, max_steps):
            logger.info("arm %s: already trained for %d steps", arm.name, max_steps)
            continue
        command = [sys.executable, str(SUBMIT), *flags, config.train_config, *overrides]
        logger.info("arm %s: training (%s)", arm.name, " ".join(arm.overrides))
        started = time.perf_counter()
        process = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        running.append((arm.name, process, started))
        if cluster.backend == "local":  # one machine: the arms take turns
            wait_for(running.pop())
    for entry in running:
        wait_for(entry)
    return run_dirs


def wait_for(entry: tuple[str, subprocess.Popen, float]) -> None:
    name, process, started = entry
    if process.wait() != 0:
        raise FMBoostError(f"arm {name}: training failed (exit code {process.returncode}); see its log above")
    logger.info("arm %s: trained in %.0f s", name, time.perf_counter() - started)
