"""Writing evaluation results: ``results.json``, a markdown table like the paper's, and plots against NFE."""

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METRIC_TITLES = {
    "psnr": "PSNR ↑",
    "ssim": "SSIM ↑",
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


def markdown_table(rows: list[dict[str, Any]]) -> str:
    present = [(key, title) for key, title in COLUMNS if any(row.get(key) is not None for row in rows)]
    lines = ["| " + " | ".join(title for _, title in present) + " |", "|" + "---|" * len(present)]
    lines += ["| " + " | ".join(format_value(row.get(key)) for key, _ in present) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot_against_nfe(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """One figure per metric: a line per (model, solver) over NFE; baselines as horizontal lines."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for metric in PLOTTED:
        if not any(row.get(metric) is not None for row in rows):
            continue
        figure, axis = plt.subplots(figsize=(6, 4))
        curves: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for row in rows:
            if row.get(metric) is None:
                continue
            if row["solver"] == "-":
                axis.axhline(row[metric], linestyle="--", color="gray", label=row["model"])
            else:
                x = row["nfe_used"] if row["solver"] == "dopri5" else row["nfe"]
                curves.setdefault((row["model"], row["solver"]), []).append((x, row[metric]))
        for (model, solver), points in curves.items():
            points.sort()
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{model} ({solver})")
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


def write_results(rows: list[dict[str, Any]], settings: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps({"settings": settings, "results": rows}, indent=2))
    (out_dir / "results.md").write_text(markdown_table(rows))
    return [out_dir / "results.json", out_dir / "results.md", *plot_against_nfe(rows, out_dir / "plots")]
