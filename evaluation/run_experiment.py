"""Run an experiment: encode the data once, train every arm with the same budget, evaluate them together.

    python evaluation/run_experiment.py configs/experiments/table2_mini.yaml \\
        train_images=[/data/photos/train] eval_images=[/data/photos/val] results_dir=results/table2_mini

1. *Images*: the training folders minus every ``holdout_every``-th image (sorted) are linked under
   ``results_dir/images/train``; the evaluation folders plus those held-out images under ``images/eval``.
   No evaluation image (or crop of one) is ever trained on. With ``validation_every``, every N-th
   remaining training image goes to ``images/validation``: trained on by no arm, evaluated apart.
2. *Data*: both are encoded with the config's data recipe (``encode``) into latent shards. With a
   ``degradation`` section the evaluation images' low-res side is degraded (fixed seed), and the
   training images are encoded a second time, degraded, into ``latents/train_degraded``
   (``data.train=@degraded_latents``).
3. *Arms*: each arm trains through ``cluster/submit.py`` (``cluster.backend``: local runs the arms one
   after the other, Slurm in parallel) into ``results_dir/runs/ARM``; a finished arm is skipped, an
   interrupted one resumes. An arm may start from another arm (``train.init_from=@cfm``) or train on
   the teacher pairs of the ``pairs`` section (``data.train=@pairs``), made into ``results_dir/pairs``
   once the teacher arm is trained; it trains after what it names.
4. *Evaluation*: every arm and baseline on the same held-out latents, seeds and NFE list; the same
   on the validation split into ``validation.json`` and ``validation.md``, where choices are made.

Writes ``results.json`` (``{"arms": {ARM: {"nfe": {N: {metric: value}}, "train_loss": {STEP: loss}}},
"baselines": {NAME: {metric: value}}}``), ``results.md`` (a table shaped like the paper's),
``samples_grid.png`` (side by side), ``plots/`` (each metric against NFE, and ``train_loss.png``: every
arm's training loss against step) and one MLflow parent run with a child run per arm. Every step
resumes: rerun the same command after an interruption.
"""

import argparse
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from evaluation.experiment.arms import train_arms
from evaluation.experiment.config import ExperimentConfig, load_experiment_config
from evaluation.experiment.data import encode
from evaluation.experiment.images import split_images
from evaluation.experiment.results import markdown, report, tables
from evaluation.report import training_losses
from fmboost.cli import exit_without_collecting, report_errors

logger = logging.getLogger("evaluation.run_experiment")


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
    if "validation" in latents:
        validate(config, run_dirs, latents["validation"], root)
        timings["validate"] = time.perf_counter() - started - sum(timings.values())
    results = tables(evaluated["rows"], [arm.name for arm in config.arms])
    for arm in config.arms:
        results["arms"][arm.name]["train_loss"] = training_losses(run_dirs[arm.name])
    results["settings"] = {"images": counts, "seconds": {k: round(v, 1) for k, v in timings.items()}}
    report(config, root, results, root / "eval", {"arms": [asdict(arm) for arm in config.arms], **counts})
    return results


def validate(config: ExperimentConfig, run_dirs: dict[str, Path], latents: Path, root: Path) -> None:
    """Every arm evaluated on the validation split as on the held-out one: ``validation.json`` and
    ``validation.md``, where choices are made (e.g. a stage kind's default consistency step)."""
    from evaluation.run_benchmarks import run as evaluate

    arms = [arm.name for arm in config.arms]
    validation_config = config.eval_run_config(
        [str(run_dirs[arm]) for arm in arms], latents, root / "validation"
    )
    validation = tables(evaluate(validation_config)["rows"], arms)
    (root / "validation.json").write_text(json.dumps(validation, indent=2))
    (root / "validation.md").write_text(markdown(validation))
    logger.info("validation split: %s", root / "validation.md")


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
