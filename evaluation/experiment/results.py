"""The experiment's results: ``results.json`` by arm, NFE and baseline, ``results.md`` shaped like the
paper's table, the grid and plots beside them, and one MLflow parent run with a child run per arm."""

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from evaluation.experiment.config import ExperimentConfig
from evaluation.report import METRIC_TITLES, markdown_table, plot_training_losses

logger = logging.getLogger("evaluation.run_experiment")


def method_name(name: str, consistency: str) -> str:
    return name if consistency == "none" else f"{name} + {consistency}"


def tables(rows: list[dict[str, Any]], arms: list[str]) -> dict[str, Any]:
    """The results.json layout: per arm and NFE (the NFE used, for adaptive solvers), and per baseline.
    An arm's outputs corrected by a consistency step go under its ``consistency`` by step and NFE; a
    corrected baseline is a baseline of its own (``bicubic + projection``)."""
    results: dict[str, Any] = {"arms": {arm: {"nfe": {}} for arm in arms}, "baselines": {}}
    for row in rows:
        mode = row.get("consistency", "none")
        metrics = {
            k: v for k, v in row.items() if k not in ("model", "solver", "nfe", "images", "consistency")
        }
        if row["solver"] == "-":
            results["baselines"][method_name(row["model"], mode)] = metrics
            continue
        arm = results["arms"][row["model"]]
        table = arm if mode == "none" else arm.setdefault("consistency", {}).setdefault(mode, {"nfe": {}})
        nfe = row["nfe"] or round(row["nfe_used"])
        table["nfe"][str(nfe)] = {"solver": row["solver"], **metrics}
    return results


def arm_tables(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every arm's table by method name: the raw outputs, then each consistency step's."""
    named = {}
    for arm, per_arm in results["arms"].items():
        named[arm] = per_arm
        for mode, corrected in per_arm.get("consistency", {}).items():
            named[method_name(arm, mode)] = corrected
    return named


def markdown(results: dict[str, Any]) -> str:
    """One row per baseline and per arm × NFE (and consistency step), the paper's metrics as columns."""
    rows = [{"method": name, "nfe": "–", **values} for name, values in results["baselines"].items()]
    for method, table in arm_tables(results).items():
        for nfe, values in sorted(table["nfe"].items(), key=lambda item: int(item[0])):
            rows.append({"method": method, **values, "nfe": nfe})
    return markdown_table(rows, [("method", "method"), ("nfe", "NFE"), *METRIC_TITLES.items()])


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
        for mode, corrected in results["arms"][arm.name].get("consistency", {}).items():
            for nfe, values in corrected["nfe"].items():
                floats = {f"{mode}/{k}": v for k, v in values.items() if isinstance(v, float)}
                child.log_metrics(floats, step=int(nfe))
        child.finish()
    parent.finish()
    logger.info("MLflow: mlflow ui --backend-store-uri %s (run %s)", parent.tracking_uri, parent.run_id)
