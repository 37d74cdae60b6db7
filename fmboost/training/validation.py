"""Periodic validation: upsample a fixed held-out batch with the EMA model and compare with ground truth.

Logs the loss on that batch (fixed noise; for a student that learns stored teacher pairs, only when the
validation shards are pairs too), PSNR/SSIM of the decoded CFM output against the ground truth
(the stored images when the shards have them, else the decoded high-res latents), the same for the
honest baselines (``bicubic``: the decoded low-res image enlarged; ``context``: the decoded upsampled
context), and a grid with rows of (low-res | bicubic | CFM | ground truth).
The steps are :mod:`fmboost.inference.upsampling_eval`'s, shared with ``evaluation/run_benchmarks.py``.
"""

from pathlib import Path

import torch

from fmboost.config import EvalConfig
from fmboost.first_stage.base import FirstStage
from fmboost.image_processing import save_grid
from fmboost.inference.upsampling_eval import baseline, ground_truth, low_res_preview, score, upsample
from fmboost.models import FMBoostModel

VALIDATION_BASELINES = ("bicubic", "context")


class Validator:
    """Holds the first ``settings.num_images`` validation samples and scores a model on them."""

    def __init__(
        self, loader, first_stage: FirstStage, settings: EvalConfig, device: torch.device, seed: int = 0
    ) -> None:
        batches, count = [], 0
        for batch in loader:
            batches.append(batch)
            count += len(batch["keys"])
            if count >= settings.num_images:
                break
        if not batches:
            raise ValueError("the validation shards hold no samples")
        names = ("x1", "z_up", "z_low", *[name for name in ("images", "x0") if name in batches[0]])
        self.batch = {name: torch.cat([b[name] for b in batches])[: settings.num_images] for name in names}
        self.first_stage, self.settings, self.device, self.seed = first_stage, settings, device, seed
        self.truth = ground_truth(self.batch, first_stage)

    @torch.no_grad()
    def run(self, model: FMBoostModel, step: int, out_dir: Path) -> tuple[dict[str, float], Path]:
        """Metrics and the path of the grid image for ``model`` (the EMA weights)."""
        model.eval()
        dtype = next(model.parameters()).dtype
        x1, z_up = (self.batch[name].to(self.device, dtype) for name in ("x1", "z_up"))
        x0 = self.batch["x0"].to(self.device, dtype) if "x0" in self.batch else None
        metrics = {}
        if x0 is not None or not model.objective.uses_start_points:
            metrics["val/loss"] = model(x1, z_up, torch.Generator().manual_seed(self.seed), x0).item()
        result = upsample(
            model, self.batch, self.first_stage, self.settings.solver, self.settings.nfe, self.seed
        )
        metrics |= {
            f"val/{name}": values.mean().item() for name, values in score(result.images, self.truth).items()
        }
        baselines = {
            name: baseline(name, self.batch, self.first_stage).images for name in VALIDATION_BASELINES
        }
        for name, images in baselines.items():
            metrics |= {
                f"val/{metric}_{name}": v.mean().item() for metric, v in score(images, self.truth).items()
            }
        columns = {
            "low-res": low_res_preview(self.batch, self.first_stage, tuple(self.truth.shape[-2:])),
            "bicubic": baselines["bicubic"],
            "CFM": result.images,
            "ground truth": self.truth,
        }
        return metrics, save_grid(columns, out_dir / f"val_grid_{step:08d}.png")
