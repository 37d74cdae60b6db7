"""The README's first picture: held-out windows boosted by a trained stage and its 1-NFE student.

    python scripts/first_picture.py results/fewstep_mini --out docs/first_picture.png

Reads an experiment's folder (``evaluation/run_experiment.py``, e.g. ``fewstep_mini``): its held-out
latent shards (``latents/eval``), its teacher arm and its student arm (``runs/ARM``). The rows are the
first window of each of the first ``--rows`` held-out photos, in the shards' stored order: no selection
(the other windows of a photo, cut from the same photo, would show less). Each tile shows
the central ``1/--zoom`` of a window enlarged ``--zoom``× without smoothing; the metrics are those of the
evaluation, on whole windows, and each column's label gives their mean over the rows shown.

Columns: the low-res input | bicubic enlargement | the teacher at its trained NFE | the student at 1 NFE
| the ground truth (the autoencoder's reconstruction of the high-res window, as in the evaluation).
The teacher and the student go through ``--consistency`` (default: the teacher stage's own step, as
boosting applies it), held to the low-res input as the evaluation holds them.
Writes the PNG and, beside it, a JSON with every tile's metrics (PSNR, spectral distance, LR-PSNR and the
low-frequency error: RMSE in grey levels after a Gaussian blur of σ = 8 px) and where it came from.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from evaluation.detail_metrics import detail_metrics
from fmboost.cli import exit_without_collecting, report_errors
from fmboost.config import CONSISTENCY_MODES
from fmboost.errors import FMBoostError

LOW_FREQUENCY_SIGMA = 8.0  # px: the scale of colour casts and shifted shapes, far below any detail


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python scripts/first_picture.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("results", type=Path, help="an experiment's results_dir, e.g. results/fewstep_mini")
    parser.add_argument("--teacher", default="cfm", help="the teacher arm (default: %(default)s)")
    parser.add_argument("--student", default="reflow", help="the 1-NFE student arm (default: %(default)s)")
    parser.add_argument("--rows", type=int, default=4, help="held-out windows shown (default: %(default)s)")
    parser.add_argument("--zoom", type=int, default=2, help="enlargement of each tile (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="the samplers' noise seed, as in the evaluation")
    parser.add_argument(
        "--consistency",
        choices=CONSISTENCY_MODES,
        help="the step after decoding for the teacher and the student (default: the teacher stage's own)",
    )
    parser.add_argument("--out", type=Path, default=Path("docs/first_picture.png"), help="the PNG to write")
    return parser.parse_args(argv)


def central(images: torch.Tensor, zoom: int) -> np.ndarray:
    """The central 1/zoom of uint8 images [B, 3, H, W], enlarged zoom× (nearest), as [B, H, W, 3]."""
    height, width = images.shape[-2:]
    top, left = (height - height // zoom) // 2, (width - width // zoom) // 2
    crop = images[..., top : top + height // zoom, left : left + width // zoom]
    return crop.repeat_interleave(zoom, -2).repeat_interleave(zoom, -1).permute(0, 2, 3, 1).numpy()


def first_window_per_photo(loader, rows: int) -> dict:
    """The first window (keys end ``_c00``, ``_c01``, ...) of each of the first ``rows`` photos, batched."""
    chosen, photos = [], set()
    for batch in loader:
        for index, key in enumerate(batch["keys"]):
            photo = key.rsplit("_c", 1)[0]
            if photo not in photos and len(photos) < rows:
                photos.add(photo)
                chosen.append({name: value[index : index + 1] for name, value in batch.items()})
    if len(chosen) < rows:
        raise FMBoostError(f"the held-out shards hold {len(chosen)} photos, fewer than --rows {rows}")
    return {
        name: torch.cat([c[name] for c in chosen])
        if torch.is_tensor(chosen[0][name])
        else sum((c[name] for c in chosen), [])
        for name in chosen[0]
    }


def columns(args: argparse.Namespace) -> dict:
    """Every column's uint8 images for the first ``--rows`` held-out windows, with their keys and the
    consistency step the boosted columns went through."""
    from fmboost.first_stage import build_first_stage
    from fmboost.inference.upsampling_eval import (
        baseline,
        consistency_input,
        ground_truth,
        low_res_preview,
        upsample,
        validation_loader,
        with_consistency,
    )
    from fmboost.models import FMBoostModel

    results, seed = args.results, args.seed
    teacher = FMBoostModel.from_pretrained(results / "runs" / args.teacher).eval()
    student = FMBoostModel.from_pretrained(results / "runs" / args.student).eval()
    if teacher.first_stage is None:
        raise FMBoostError(f"the {args.teacher} arm does not record its first stage")
    first_stage = build_first_stage(teacher.first_stage)
    loader, dataset = validation_loader(str(results / "latents" / "eval"), teacher.flow_config.upsampling, 8)
    batch = first_window_per_photo(loader, args.rows)
    truth = ground_truth(batch, first_stage)
    degraded = dataset.manifest.preprocessing.get("degradation") is not None
    low = consistency_input(batch, first_stage, truth, degraded)
    mode = args.consistency or teacher.flow_config.consistency
    trained = teacher.flow_config.nfe
    boosted = {
        f"CFM, {trained} NFE": upsample(
            teacher, batch, first_stage, teacher.flow_config.solver, trained, seed
        ),
        f"{args.student} student, 1 NFE": upsample(student, batch, first_stage, "euler", 1, seed),
    }
    return {
        "keys": list(batch["keys"]),
        "columns": {
            "low-res input": low_res_preview(batch, first_stage, tuple(truth.shape[-2:])),
            "bicubic": baseline("bicubic", batch, first_stage).images,
            **{name: with_consistency(result, low, mode).images for name, result in boosted.items()},
            "ground truth": truth,
        },
        "truth": truth,
        "upscale": teacher.flow_config.scale_factor,
        "consistency": mode,
    }


def low_frequency_rmse(images: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per image, the RMSE in grey levels between the two blurred by a Gaussian of σ = 8 px: the error
    in what a low-res input already fixes (colour casts, shifted shapes), blind to detail."""
    from fmboost.metrics import gaussian_kernel

    radius = int(3 * LOW_FREQUENCY_SIGMA)
    kernel = gaussian_kernel(2 * radius + 1, LOW_FREQUENCY_SIGMA).float()
    blurred = []
    for batch in (images, truth):
        x = torch.nn.functional.pad(batch.float(), (radius,) * 4, mode="reflect").flatten(0, 1)[:, None]
        x = torch.nn.functional.conv2d(x, kernel[None, None, :, None])
        blurred.append(torch.nn.functional.conv2d(x, kernel[None, None, None, :]))
    return (blurred[0] - blurred[1]).pow(2).reshape(len(images), -1).mean(1).sqrt()


def tile_metrics(images: torch.Tensor, truth: torch.Tensor, upscale: int) -> dict[str, list[float]]:
    from fmboost.inference.upsampling_eval import score

    detail = detail_metrics(images, truth, upscale)
    scores = score(images, truth, upscale)
    return {
        "psnr": scores["psnr"].tolist(),
        "spectral_distance": detail["spectral_distance"].tolist(),
        "lr_psnr": scores["lr_psnr"].tolist(),
        "low_frequency_rmse": low_frequency_rmse(images, truth).tolist(),
    }


def draw(columns_: dict[str, torch.Tensor], metrics: dict, zoom: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(columns_)
    rows = columns_[names[0]].shape[0]
    figure, axes = plt.subplots(rows, len(names), figsize=(2.7 * len(names), 2.7 * rows + 0.5), squeeze=False)
    for column, name in enumerate(names):
        tiles = central(columns_[name], zoom)
        label = name
        if name in metrics:
            mean = {key: float(np.mean(values)) for key, values in metrics[name].items()}
            label += f"\nPSNR {mean['psnr']:.2f} dB · spectral {mean['spectral_distance']:.3f}"
            label += f"\nLR-PSNR {mean['lr_psnr']:.1f} dB"
        axes[0, column].set_title(label, fontsize=10)
        for row in range(rows):
            axes[row, column].imshow(tiles[row], interpolation="nearest")
            axes[row, column].set_axis_off()
    figure.tight_layout(pad=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


@report_errors({})
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    made = columns(args)
    truth = made["truth"]
    metrics = {
        name: tile_metrics(images, truth, made["upscale"])
        for name, images in made["columns"].items()
        if name not in ("low-res input", "ground truth")
    }
    draw(made["columns"], metrics, args.zoom, args.out)
    record = {
        "results": str(args.results),
        "arms": {"teacher": args.teacher, "student": args.student},
        "rows": "the first window of each of the first photos of latents/eval in stored order (no selection)",
        "keys": made["keys"],
        "seed": args.seed,
        "zoom": args.zoom,
        "consistency": made["consistency"],
        "metrics_per_tile": metrics,
        "metrics_mean": {
            name: {key: float(np.mean(values)) for key, values in values_.items()}
            for name, values_ in metrics.items()
        },
    }
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    for name, means in record["metrics_mean"].items():
        print(
            f"  {name}: PSNR {means['psnr']:.2f} dB, spectral distance {means['spectral_distance']:.3f}, "
            f"LR-PSNR {means['lr_psnr']:.1f} dB, low-frequency RMSE {means['low_frequency_rmse']:.2f}"
        )
    return 0


if __name__ == "__main__":
    exit_without_collecting(main())
