"""Evaluate FMBoost models: FID / p-FID / CLIP score, SSIM/PSNR, NFE sweeps and timings, logged to MLflow.

    python evaluation/run_benchmarks.py [--config configs/eval/<name>.yaml | --full-sweep] [key=value ...]

Without a config it runs the quick evaluation of the demo run (``configs/eval/demo.yaml``, the settings
``make demo`` uses: the upsampling benchmark of ``runs/demo`` against its baselines on 24 samples of the
sample validation shard, Euler and midpoint at NFE 1–8); ``--full-sweep`` runs the design's sweep
(Euler at NFE 1–50 on 64 samples) instead. Configs: ``configs/eval/upsampling.yaml``,
``configs/eval/nfe_sweep.yaml``, ``configs/eval/laion5k_zero_shot.yaml``.

Outputs in ``results_dir``: ``results.json``, ``results.md`` (a table like the paper's), ``plots/``
(each metric and seconds per image against NFE), ``samples_grid.png``, and one MLflow run (SQLite in
``results_dir`` unless ``logging.tracking_uri`` names a server). Shard the work with
``task_index=I num_tasks=N`` (or under torchrun): each task writes its part, and the last one merges
features and statistics before any Fréchet distance is taken.
"""

import argparse
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from evaluation.config import FEATURE_METRICS, EvalRunConfig, load_eval_config
from fmboost.cli import exit_without_collecting, report_errors
from fmboost.errors import ConfigError, FMBoostError, WeightsError

if TYPE_CHECKING:
    from fmboost.data import LatentDataset

logger = logging.getLogger("evaluation")
REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_EVAL_CONFIG = REPO_ROOT / "configs" / "eval" / "demo.yaml"


def load_metric_models(config: EvalRunConfig, device, extractor=None, clip=None):
    """Inception and CLIP, before any generation: fail fast if required, else skip with one warning.

    Returns ``(extractor, clip, metrics)``: the metrics that will be computed, without touching ``config``.
    """
    from evaluation.clip_score import ClipScorer
    from evaluation.features import CleanInception

    metrics = list(config.metrics)
    if any(metric in metrics for metric in FEATURE_METRICS) and extractor is None:
        try:
            extractor = CleanInception(config.inception_path, device)
        except WeightsError as error:
            if config.require_feature_metrics:
                raise
            logger.warning("skipping FID, p-FID and CLIP: %s", error)
            metrics = [m for m in metrics if m not in (*FEATURE_METRICS, "clip")]
    if "clip" in metrics and clip is None:
        try:
            clip = ClipScorer(config.clip_model, device)
        except WeightsError as error:
            if config.require_feature_metrics:
                raise
            logger.warning("skipping the CLIP score: %s", error)
            metrics = [m for m in metrics if m != "clip"]
    extractor = extractor if any(m in metrics for m in FEATURE_METRICS) else None
    return extractor, (clip if "clip" in metrics else None), metrics


def check_writable(results_dir: Path) -> None:
    """Fail before any generation, not after it, when the results cannot be written."""
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=results_dir, prefix=".write-check-"):
            pass
    except OSError as error:
        raise FMBoostError(
            f"{results_dir} is not a writable folder ({error.strerror or error})", "results_dir"
        ) from None


def warn_if_fewer_images(num_images: int, dataset: "LatentDataset", data: str) -> None:
    """``num_images`` above what the data holds is evaluated on all of it, and said so."""
    available = sum(dataset.counts)
    if num_images > available:
        logger.warning(
            "num_images=%d, but %s holds %d images: evaluating all %d", num_images, data, available, available
        )


def check_inputs(config: EvalRunConfig, preprocessing: dict) -> None:
    """Say whether the low-res inputs are degraded, and refuse clean ones where degraded ones are required."""
    degradation = preprocessing.get("degradation")
    if degradation is None and config.require_degraded:
        raise ConfigError(
            f"data: {config.data} was encoded without a degradation model, but require_degraded is set; "
            "encode the held-out images with a degradation section (configs/encode/sr4x_degraded_eval.yaml)"
        )
    if degradation is not None:
        seed = preprocessing["seed"]
        logger.info("low-res inputs degraded by the encoder (Real-ESRGAN model, seed %s)", seed)


def upsampling_generators(
    config: EvalRunConfig, model_dirs: list[Path], labels: list[str], device, task, tasks
):
    """The upsampling benchmark's models, their data (this task's share) and their first stage."""
    from evaluation.benchmarks import Generators
    from evaluation.entries import sweep_entries
    from fmboost.first_stage import build_first_stage
    from fmboost.inference.compile import compile_for_inference
    from fmboost.inference.upsampling_eval import validation_loader
    from fmboost.models import FMBoostModel

    models = {
        label: FMBoostModel.from_pretrained(path, device)
        for label, path in zip(labels, model_dirs, strict=True)
    }
    first_model = next(iter(models.values()), None)
    upsampling = first_model.flow_config.upsampling if first_model is not None else None
    loader, dataset = validation_loader(
        config.data, upsampling or "psu_roundtrip", config.batch_size, task=task, num_tasks=tasks
    )
    degraded = dataset.manifest.preprocessing.get("degradation") is not None
    generators = Generators(
        build_first_stage(dataset.manifest.first_stage).to(device), models, None, degraded
    )
    for model in models.values():
        model.check_first_stage(generators.first_stage)
    if config.compile:
        nets = [model.net for model in models.values()]
        compile_for_inference(nets + generators.first_stage.autoencoder_modules(), device)
    return loader, dataset, generators, sweep_entries(config, list(models))


def zero_shot_generators(config: EvalRunConfig, model_dirs: list[Path], task: int, tasks: int):
    """The zero-shot benchmark's cascade (a base LDM and the stages) and its prompts (this task's share)."""
    from evaluation.benchmarks import Generators
    from evaluation.entries import Entry, sweep_entries
    from fmboost.inference.pipeline import FMBoostPipeline
    from fmboost.inference.upsampling_eval import validation_loader

    pipeline = FMBoostPipeline.from_pretrained(
        model_dirs, base=config.base, device=config.device, compile=config.compile
    )
    upsampling = pipeline.stages[0].flow_config.upsampling
    loader, dataset = validation_loader(
        config.data, upsampling, config.batch_size, task=task, num_tasks=tasks
    )
    entries = [Entry("cascade", e.solver, e.nfe, e.consistency) for e in sweep_entries(config, ["cascade"])]
    return loader, dataset, Generators(pipeline.first_stage, pipeline=pipeline), entries


def log_to_mlflow(config: EvalRunConfig, rows: list[dict], written: list[Path], results_dir: Path):
    """The merged results as one MLflow run: the config, every metric by NFE, the tables and plots."""
    from fmboost.config import to_flat_dict
    from fmboost.tracking import Tracker

    tracker = Tracker(
        results_dir, config.logging.tracking_uri, config.logging.experiment, config.logging.run_name
    )
    tracker.log_params(to_flat_dict(config))
    for row in rows:
        corrected = "" if row["consistency"] == "none" else f"{row['consistency']}/"
        metrics = {
            f"{row['model']}/{row['solver']}/{corrected}{key}": value
            for key, value in row.items()
            if isinstance(value, float) and key not in ("nfe", "nfe_used")
        }
        tracker.log_metrics(metrics, step=row["nfe"])
    for path in written:
        tracker.log_artifact(path, "plots" if path.suffix == ".png" else None)
    if (results_dir / "samples_grid.png").is_file():
        tracker.log_artifact(results_dir / "samples_grid.png", "samples")
    tracker.finish()
    return tracker


def run(config: EvalRunConfig, extractor=None, clip=None) -> dict | None:
    """Evaluate this task's share; returns the merged results once every task is done (else ``None``)."""
    from evaluation.benchmarks import BENCHMARKS
    from evaluation.entries import model_labels
    from evaluation.parts import merge_parts, result_rows, settings_digest
    from evaluation.recorder import Recorder
    from evaluation.report import write_results
    from fmboost.config import to_flat_dict
    from fmboost.devices import resolve_device
    from fmboost.image_processing import save_grid
    from fmboost.models import find_export
    from fmboost.task_split import task_share

    results_dir = Path(config.results_dir)
    check_writable(results_dir)
    task, num_tasks = task_share(config.task_index, config.num_tasks)
    device = resolve_device(config.device)
    model_dirs = [find_export(path) for path in config.models]
    extractor, clip, metrics = load_metric_models(config, device, extractor, clip)
    if config.benchmark == "upsampling":
        labels = model_labels(config.models)
        loader, dataset, generators, entries = upsampling_generators(
            config, model_dirs, labels, device, task, num_tasks
        )
    else:
        loader, dataset, generators, entries = zero_shot_generators(config, model_dirs, task, num_tasks)
    warn_if_fewer_images(config.num_images, dataset, config.data)
    check_inputs(config, dataset.manifest.preprocessing)
    recorder = Recorder(config, metrics, extractor, clip, first_key=entries[0].key, num_tasks=num_tasks)
    grid = BENCHMARKS[config.benchmark](recorder, entries, generators, loader)
    for skipped in sorted(recorder.skipped_crops):
        logger.warning("skipping %s: the images are smaller than the crop", skipped)

    parts = results_dir / "parts" / settings_digest(config)
    recorder.part.save(parts, task)
    if task == 0:
        save_grid(grid, results_dir / "samples_grid.png", rows=4)
    merged = merge_parts(parts, num_tasks)
    if merged is None:
        logger.info("task %d/%d done; the last task merges the results", task, num_tasks)
        return None
    rows = result_rows(merged, entries)
    tracker = log_to_mlflow(config, rows, write_results(rows, to_flat_dict(config), results_dir), results_dir)
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
        "--config",
        help=f"evaluation config YAML (default: {DEMO_EVAL_CONFIG.relative_to(REPO_ROOT)}, the quick "
        "evaluation of the demo run)",
    )
    parser.add_argument(
        "--full-sweep",
        action="store_true",
        help="without --config: the design's full sweep (Euler at NFE 1, 2, 4, 10, 20, 40, 50 on 64 samples) "
        "instead of the demo's quick settings",
    )
    parser.add_argument(
        "overrides", nargs="*", help="config overrides as key=value, e.g. nfe=[1,4,40] num_images=500"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    quick = args.config is None and not args.full_sweep
    result = run(load_eval_config(DEMO_EVAL_CONFIG if quick else args.config, args.overrides))
    if quick:
        print(
            f"quick evaluation with the demo's settings ({DEMO_EVAL_CONFIG.relative_to(REPO_ROOT)}); "
            "--full-sweep runs the design's NFE sweep on 64 samples"
        )
    if result is not None:
        from evaluation.report import markdown_table

        print(markdown_table(result["rows"]))
        print(f"results: {result['results_dir']}/results.json, results.md, plots/, samples_grid.png")
        print(
            f"MLflow: mlflow ui --backend-store-uri {result['tracking_uri']}  (run {result['mlflow_run_id']})"
        )
    return 0


if __name__ == "__main__":
    exit_without_collecting(main())
