"""Run an experiment: encode the data once, train every arm with the same budget, evaluate them together.

    python evaluation/run_experiment.py configs/experiments/table2_mini.yaml \\
        train_images=[/data/photos/train] eval_images=[/data/photos/val] results_dir=results/table2_mini

1. *Images*: the training folders minus every ``holdout_every``-th image (sorted) are linked under
   ``results_dir/images/train``; the evaluation folders plus those held-out images under ``images/eval``.
   No evaluation image (or crop of one) is ever trained on.
2. *Data*: both are encoded with the config's data recipe (``encode``) into latent shards. With a
   ``degradation`` section the evaluation images' low-res side is degraded (fixed seed), and the
   training images are encoded a second time, degraded, into ``latents/train_degraded``
   (``data.train=@degraded_latents``).
3. *Arms*: each arm trains through ``cluster/submit.py`` (``cluster.backend``: local runs the arms one
   after the other, Slurm in parallel) into ``results_dir/runs/ARM``; a finished arm is skipped, an
   interrupted one resumes. An arm may start from another arm (``train.init_from=@cfm``) or train on
   the teacher pairs of the ``pairs`` section (``data.train=@pairs``), made into ``results_dir/pairs``
   once the teacher arm is trained; it trains after what it names.
4. *Evaluation*: every arm and baseline on the same held-out latents, seeds and NFE list.

Writes ``results.json`` (``{"arms": {ARM: {"nfe": {N: {metric: value}}, "train_loss": {STEP: loss}}},
"baselines": {NAME: {metric: value}}}``), ``results.md`` (a table shaped like the paper's),
``samples_grid.png`` (side by side), ``plots/`` (each metric against NFE, and ``train_loss.png``: every
arm's training loss against step) and one MLflow parent run with a child run per arm. Every step
resumes: rerun the same command after an interruption.
"""

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from evaluation.experiment_config import DEGRADED, ExperimentConfig, load_experiment_config, references
from evaluation.report import METRIC_TITLES, plot_training_losses, training_losses
from fmboost.cli import exit_without_collecting, report_errors
from fmboost.errors import FMBoostError

logger = logging.getLogger("evaluation.run_experiment")
SUBMIT = Path(__file__).resolve().parents[1] / "cluster" / "submit.py"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def link(source: Path, target: Path) -> None:
    """``target`` → ``source`` (with a ``.txt`` caption sidecar when there is one)."""
    for path, destination in ((source, target), (source.with_suffix(".txt"), target.with_suffix(".txt"))):
        if path.is_file() and not destination.is_symlink():
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.symlink_to(path.resolve())


def split_images(config: ExperimentConfig, root: Path) -> dict[str, int]:
    """Link the training and evaluation images into ``root/train`` and ``root/eval``; returns counts."""
    held_out: list[str] = []
    counts = {"train": 0, "eval": 0}
    for split, folders in (("train", config.train_images), ("eval", config.eval_images)):
        for folder in map(Path, folders):
            for index, path in enumerate(image_files(folder.expanduser())):
                relative = Path(folder.name) / path.relative_to(folder.expanduser())
                hold_out = (
                    split == "train"
                    and config.holdout_every
                    and index % config.holdout_every == config.holdout_every - 1
                )
                destination = "eval" if hold_out else split
                link(path, root / destination / relative)
                counts[destination] += 1
                if hold_out:
                    held_out.append(str(relative))
    (root / "held_out.txt").write_text("".join(f"{name}\n" for name in held_out))
    if counts["train"] == 0 or counts["eval"] == 0:
        raise FMBoostError(f"the experiment needs training and evaluation images, found {counts}")
    return counts


def encode(config: ExperimentConfig, root: Path) -> dict[str, Path]:
    """Latent shards of the training and the evaluation images (resumable: complete shards are kept)."""
    from data_pipeline.encode_shards import run as encode_shards

    degraded = config.degradation is not None
    latents = {}
    for split, images, crops, seed, degrade in (
        ("train", "train", config.train_crops_per_image, 0, False),
        ("eval", "eval", config.eval_crops_per_image, 1, degraded),
        *([("train_degraded", "train", config.train_crops_per_image, 0, True)] if degraded else []),
    ):
        output = root / "latents" / split
        encode_config = config.encode_config(
            root / "images" / images, output, crops, seed, split == "eval", degrade
        )
        logger.info("encoding the %s images into %s%s", images, output, " (degraded)" if degrade else "")
        encode_shards(encode_config)
        latents[split] = output
    return latents


def finished(run_dir: Path, max_steps: int) -> bool:
    from fmboost.training.checkpointing import STATE_FILE, latest_checkpoint

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


def make_pairs(config: ExperimentConfig, latents: dict[str, Path], root: Path) -> Path:
    """The teacher arm's (start, result) pairs over the training latents (resumable)."""
    from data_pipeline.pairs_config import PairsConfig, validate_pairs_config
    from data_pipeline.teacher_pairs import run as run_pairs

    settings = config.pairs
    output = root / "pairs"
    pairs = PairsConfig(
        teacher=str(root / "runs" / settings.teacher),
        input=str(latents["train"]),
        output=str(output),
        solver=settings.solver,
        nfe=settings.nfe,
        seed=settings.seed,
        batch_size=settings.batch_size,
    )
    validate_pairs_config(pairs)
    logger.info(
        "pairs: the %s arm's %s %d-NFE results into %s", settings.teacher, pairs.solver, pairs.nfe, output
    )
    run_pairs(pairs)
    return output


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


def tables(rows: list[dict[str, Any]], arms: list[str]) -> dict[str, Any]:
    """The results.json layout: per arm and NFE (the NFE used, for adaptive solvers), and per baseline."""
    results: dict[str, Any] = {"arms": {arm: {"nfe": {}} for arm in arms}, "baselines": {}}
    for row in rows:
        metrics = {k: v for k, v in row.items() if k not in ("model", "solver", "nfe", "images")}
        if row["solver"] == "-":
            results["baselines"][row["model"]] = metrics
        else:
            nfe = row["nfe"] or round(row["nfe_used"])
            results["arms"][row["model"]]["nfe"][str(nfe)] = {"solver": row["solver"], **metrics}
    return results


def markdown(results: dict[str, Any]) -> str:
    """One row per baseline and per arm × NFE, the paper's metrics as columns."""
    entries = [(name, "–", values) for name, values in results["baselines"].items()]
    for arm, per_arm in results["arms"].items():
        entries += [
            (arm, nfe, values) for nfe, values in sorted(per_arm["nfe"].items(), key=lambda i: int(i[0]))
        ]
    present = [
        (k, title) for k, title in METRIC_TITLES.items() if any(k in values for _, _, values in entries)
    ]
    lines = [
        "| method | NFE | " + " | ".join(title for _, title in present) + " |",
        "|---|---|" + "---|" * len(present),
    ]
    for name, nfe, values in entries:
        cells = [f"{values[key]:.4g}" if key in values else "–" for key, _ in present]
        lines.append(f"| {name} | {nfe} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report(
    config: ExperimentConfig, root: Path, results: dict[str, Any], eval_dir: Path, settings: dict
) -> None:
    """results.json, results.md, the grid and plots next to them, and MLflow: a parent and a child per arm."""
    from fmboost.tracking import Tracker

    (root / "results.json").write_text(json.dumps(results, indent=2))
    (root / "results.md").write_text(markdown(results))
    shutil.copyfile(eval_dir / "samples_grid.png", root / "samples_grid.png")
    shutil.copyfile(eval_dir / "samples_grid.txt", root / "samples_grid.txt")
    shutil.copytree(eval_dir / "plots", root / "plots", dirs_exist_ok=True)
    plot_training_losses(
        {name: arm["train_loss"] for name, arm in results["arms"].items()}, root / "plots" / "train_loss.png"
    )

    tracking_uri = config.logging.tracking_uri or f"sqlite:///{(root / 'mlflow.db').resolve()}"
    parent = Tracker(
        root / "mlflow_runs" / "experiment", tracking_uri, config.logging.experiment, config.name
    )
    parent.log_params({"experiment": config.name, **{f"settings.{k}": v for k, v in settings.items()}})
    for name, values in results["baselines"].items():
        parent.log_metrics({f"{name}/{k}": v for k, v in values.items() if isinstance(v, float)}, step=0)
    for path in (root / "results.json", root / "results.md", root / "samples_grid.png", root / "plots"):
        parent.log_artifact(path, "plots" if path.name == "plots" else None)
    for arm in config.arms:
        child = Tracker(
            root / "mlflow_runs" / arm.name,
            tracking_uri,
            config.logging.experiment,
            arm.name,
            parent_run_id=parent.run_id,
        )
        child.log_params({"arm": arm.name, "overrides": " ".join(arm.overrides)})
        for nfe, values in results["arms"][arm.name]["nfe"].items():
            child.log_metrics({k: v for k, v in values.items() if isinstance(v, float)}, step=int(nfe))
        child.finish()
    parent.finish()
    logger.info("MLflow: mlflow ui --backend-store-uri %s (run %s)", parent.tracking_uri, parent.run_id)


def run(config: ExperimentConfig) -> dict[str, Any]:
    """The whole experiment; returns the results.json content."""
    from evaluation.run_benchmarks import run as evaluate

    root = Path(config.results_dir).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    timings = {}
    started = time.perf_counter()
    counts = split_images(config, root / "images")
    logger.info("images: %d for training, %d held out for evaluation", counts["train"], counts["eval"])
    latents = encode(config, root)
    timings["encode"] = time.perf_counter() - started
    run_dirs = train_arms(config, latents, root, timings)
    timings["train"] = time.perf_counter() - started - timings["encode"] - timings.get("pairs", 0.0)
    eval_config = config.eval_run_config(
        [str(run_dirs[arm.name]) for arm in config.arms], latents["eval"], root / "eval"
    )
    evaluated = evaluate(eval_config)
    timings["evaluate"] = time.perf_counter() - started - sum(timings.values())
    results = tables(evaluated["rows"], [arm.name for arm in config.arms])
    for arm in config.arms:
        results["arms"][arm.name]["train_loss"] = training_losses(run_dirs[arm.name])
    results["settings"] = {"images": counts, "seconds": {k: round(v, 1) for k, v in timings.items()}}
    report(config, root, results, root / "eval", {"arms": [asdict(arm) for arm in config.arms], **counts})
    return results


@report_errors()
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python evaluation/run_experiment.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="experiment config YAML, e.g. configs/experiments/table2_mini.yaml")
    parser.add_argument(
        "overrides", nargs="*", help="overrides as key=value, e.g. train_images=[DIR] results_dir=DIR"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = load_experiment_config(args.config, args.overrides)
    results = run(config)
    root = Path(config.results_dir)
    print((root / "results.md").read_text())
    print(
        f"results: {root}/results.json, results.md, samples_grid.png, plots/",
        f"seconds: {results['settings']['seconds']}",
    )
    return 0


if __name__ == "__main__":
    exit_without_collecting(main())
