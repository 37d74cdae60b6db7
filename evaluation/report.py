"""Writing evaluation results: ``results.json``, a markdown table like the paper's, plots against NFE,
and the training-loss curves of an experiment's arms."""

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METRIC_TITLES = {
    "psnr": "PSNR ↑",
    "ssim": "SSIM ↑",
    "lr_psnr": "LR-PSNR ↑",
    "lr_ssim": "LR-SSIM ↑",
    "hf_ratio": "HF ratio (1 ideal)",
    "spectral_distance": "spectral dist. ↓",
    "fid": "FID ↓",
    "pfid_fmboost": "p-FID ↓",
    "pfid_anyres": "p-FID (any-res) ↓",
    "clip": "CLIP ↑",
    "teacher_psnr": "PSNR to teacher ↑",
    "diversity": "diversity",
    "seconds_per_image": "s/img",
}
COLUMNS = [
    ("model", "model"),
    ("solver", "solver"),
    ("nfe", "NFE"),
    ("consistency", "consistency"),
    ("nfe_used", "NFE used"),
    *METRIC_TITLES.items(),
]
PLOTTED = tuple(METRIC_TITLES)


def format_value(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]] = COLUMNS) -> str:
    """A markdown table of ``rows`` with the ``columns`` (key, title) that some row has."""
    present = [(key, title) for key, title in columns if any(row.get(key) is not None for row in rows)]
    lines = ["| " + " | ".join(title for _, title in present) + " |", "|" + "---|" * len(present)]
    lines += ["| " + " | ".join(format_value(row.get(key)) for key, _ in present) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot_against_nfe(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """One figure per metric: a line per (model, solver, consistency step) over NFE; baselines as
    horizontal lines."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for metric in PLOTTED:
        if not any(row.get(metric) is not None for row in rows):
            continue
        figure, axis = plt.subplots(figsize=(6, 4))
        curves: dict[str, list[tuple[int, float]]] = {}
        for row in rows:
            if row.get(metric) is None:
                continue
            corrected = "" if row.get("consistency", "none") == "none" else f" + {row['consistency']}"
            if row["solver"] == "-":
                axis.axhline(row[metric], linestyle="--", color="gray", label=row["model"] + corrected)
            else:
                x = row["nfe_used"] if row["solver"] == "dopri5" else row["nfe"]
                curves.setdefault(f"{row['model']} ({row['solver']}){corrected}", []).append((x, row[metric]))
        for label, points in curves.items():
            points.sort()
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        axis.set_xscale("log")
        axis.set_xlabel("NFE")
        axis.set_ylabel(metric)
        axis.set_title(f"{metric} against NFE")
        axis.legend(fontsize=7)
        figure.tight_layout()
        path = out_dir / f"{metric}_vs_nfe.png"
        figure.savefig(path, dpi=120)
        plt.close(figure)
        written.append(path)
    return written


def training_losses(run_dir: Path) -> dict[int, float]:
    """The training loss a run logged, by step; after a resume the later line for a step replaces the
    earlier one, so the curve is the one the final weights came from."""
    losses = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if "train/loss" in entry:
            losses[entry["step"]] = entry["train/loss"]
    return dict(sorted(losses.items()))


def plot_training_losses(losses: dict[str, dict[int, float]], path: Path) -> Path:
    """One curve per arm, so arms trained from the same seed over the same steps compare at a glance."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, curve in losses.items():
        axis.plot(list(curve), list(curve.values()), label=name)
    axis.set_xlabel("step")
    axis.set_ylabel("training loss (mean over the log interval)")
    axis.set_title("training loss")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_results(rows: list[dict[str, Any]], settings: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps({"settings": settings, "results": rows}, indent=2))
    (out_dir / "results.md").write_text(markdown_table(rows))
    return [out_dir / "results.json", out_dir / "results.md", *plot_against_nfe(rows, out_dir / "plots")]
