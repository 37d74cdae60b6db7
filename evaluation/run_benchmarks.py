"""Evaluate FMBoost models: FID / p-FID / CLIP score, SSIM/PSNR, NFE sweeps and timings, logged to MLflow.

    python evaluation/run_benchmarks.py [--config configs/eval/<name>.yaml] [key=value ...]

Without a config it runs the embedded default: the upsampling benchmark (paper Tab. 2) of the demo
model (``runs/demo``) against the bilinear baseline on the sample validation shard. Configs:
``configs/eval/upsampling.yaml``, ``configs/eval/nfe_sweep.yaml``, ``configs/eval/laion5k_zero_shot.yaml``.

Outputs in ``results_dir``: ``results.json``, ``results.md`` (a table like the paper's), ``plots/``
(each metric and seconds per image against NFE), ``samples_grid.png``, and one MLflow run (SQLite in
``results_dir`` unless ``logging.tracking_uri`` names a server). Shard the work with
``task_index=I num_tasks=N`` (or under torchrun): each task writes its part, and the last one merges
features and statistics before any Fréchet distance is taken.
"""

import argparse
import logging
import sys
from pathlib import Path

from evaluation.config import FEATURE_METRICS, EvalRunConfig, load_eval_config
from fmboost.cli import report_errors
from fmboost.errors import WeightsError

logger = logging.getLogger("evaluation")


def load_metric_models(config: EvalRunConfig, device, extractor=None, clip=None):
    """Inception and CLIP, before any generation: fail fast if required, else skip with one warning."""
    from evaluation.clip_score import ClipScorer
    from evaluation.features import CleanInception

    wants_features = any(metric in config.metrics for metric in FEATURE_METRICS)
    if wants_features and extractor is None:
        try:
            extractor = CleanInception(config.inception_path, device)
        except WeightsError as error:
            if config.require_feature_metrics:
                raise
            logger.warning("skipping FID, p-FID and CLIP: %s", error)
            config.metrics = [m for m in config.metrics if m not in (*FEATURE_METRICS, "clip")]
    if "clip" in config.metrics and clip is None:
        try:
            clip = ClipScorer(config.clip_model, device)
        except WeightsError as error:
            if config.require_feature_metrics:
                raise
            logger.warning("skipping the CLIP score: %s", error)
            config.metrics = [m for m in config.metrics if m != "clip"]
    return (extractor if any(m in config.metrics for m in FEATURE_METRICS) else None), (
        clip if "clip" in config.metrics else None
    )


def run(config: EvalRunConfig, extractor=None, clip=None) -> dict | None:
    """Evaluate this task's share; returns the merged results once every task is done (else ``None``)."""
    from evaluation import runner
    from evaluation.report import write_results
    from fmboost.config import to_flat_dict
    from fmboost.devices import resolve_device
    from fmboost.distributed import task_share
    from fmboost.first_stage import build_first_stage
    from fmboost.image_processing import save_grid
    from fmboost.models import FMBoostModel, find_export
    from fmboost.pipeline import FMBoostPipeline
    from fmboost.tracking import Tracker

    task, num_tasks = task_share(config.task_index, config.num_tasks)
    device = resolve_device(config.device)
    model_dirs = [find_export(path) for path in config.models]
    extractor, clip = load_metric_models(config, device, extractor, clip)
    labels = runner.model_labels(config.models)
    results_dir = Path(config.results_dir)

    if config.benchmark == "upsampling":
        models = {
            label: FMBoostModel.from_pretrained(path, device)
            for label, path in zip(labels, model_dirs, strict=True)
        }
        loader, dataset = runner.validation_loader(config, next(iter(models.values()), None), task, num_tasks)
        first_stage = build_first_stage(dataset.manifest.first_stage)
        for model in models.values():
            model.check_first_stage(first_stage)
        entries = runner.sweep_entries(config, list(models))
        evaluator = runner.Evaluator(config, first_stage.to(device), extractor, clip, device)
        grid = evaluator.run_upsampling(entries, models, loader)
    else:
        pipeline = FMBoostPipeline.from_pretrained(model_dirs, base=config.base, device=config.device)
        loader, _ = runner.validation_loader(config, pipeline.stages[0], task, num_tasks)
        entries = [
            runner.Entry("cascade", e.solver, e.nfe) for e in runner.sweep_entries(config, ["cascade"])
        ]
        evaluator = runner.Evaluator(config, pipeline.first_stage, extractor, clip, device)
        grid = runner.run_zero_shot(evaluator, entries, pipeline, loader)
    for skipped in sorted(evaluator.skipped_crops):
        logger.warning("skipping %s: the images are smaller than the crop", skipped)

    parts = results_dir / "parts" / runner.settings_digest(config)
    evaluator.part.save(parts, task)
    if task == 0:
        save_grid(grid, results_dir / "samples_grid.png", rows=4)
    merged = runner.merge_parts(parts, num_tasks)
    if merged is None:
        logger.info("task %d/%d done; the last task merges the results", task, num_tasks)
        return None
    rows = runner.result_rows(merged, entries, config)
    written = write_results(rows, to_flat_dict(config), results_dir)

    tracker = Tracker(
        results_dir, config.logging.tracking_uri, config.logging.experiment, config.logging.run_name
    )
    tracker.log_params(to_flat_dict(config))
    for row in rows:
        metrics = {
            f"{row['model']}/{row['solver']}/{key}": value
            for key, value in row.items()
            if isinstance(value, float) and key not in ("nfe", "nfe_used")
        }
        tracker.log_metrics(metrics, step=row["nfe"])
    for path in written:
        tracker.log_artifact(path, "plots" if path.suffix == ".png" else None)
    if (results_dir / "samples_grid.png").is_file():
        tracker.log_artifact(results_dir / "samples_grid.png", "samples")
    tracker.finish()
    return {
        "rows": rows,
        "results_dir": results_dir,
        "mlflow_run_id": tracker.run_id,
        "tracking_uri": tracker.tracking_uri,
    }


@report_errors()
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python evaluation/run_benchmarks.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", help="evaluation config YAML (default: the embedded demo upsampling benchmark)"
    )
    parser.add_argument(
        "overrides", nargs="*", help="config overrides as key=value, e.g. nfe=[1,4,40] num_images=500"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    result = run(load_eval_config(args.config, args.overrides))
    if result is not None:
        from evaluation.report import markdown_table

        print(markdown_table(result["rows"]))
        print(f"results: {result['results_dir']}/results.json, results.md, plots/, samples_grid.png")
        print(
            f"MLflow: mlflow ui --backend-store-uri {result['tracking_uri']}  (run {result['mlflow_run_id']})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
