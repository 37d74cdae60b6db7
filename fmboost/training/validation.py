"""Periodic validation: upsample a fixed validation batch with the EMA model and compare with ground truth.

Logs the loss on that batch (fixed noise), PSNR/SSIM of the decoded CFM output against the ground
truth (the stored ``.jpg`` when the shards have it, else the decoded high-res latent), the same for
the upsampled context as the honest baseline, and a grid with rows of (low-res | CFM | ground truth).
"""

from pathlib import Path

import torch
import torch.nn.functional as F

from fmboost.config import EvalConfig
from fmboost.first_stage.base import FirstStage
from fmboost.image_processing import from_uint8, save_grid, to_uint8
from fmboost.metrics import psnr, ssim
from fmboost.models import FMBoostModel


class Validator:
    def __init__(
        self, loader, first_stage: FirstStage, settings: EvalConfig, device: torch.device, seed: int = 0
    ) -> None:
        samples = settings.num_images
        batches, count = [], 0
        for batch in loader:
            batches.append(batch)
            count += len(batch["keys"])
            if count >= samples:
                break
        if not batches:
            raise ValueError("the validation shards hold no samples")
        self.batch = {
            name: torch.cat([b[name] for b in batches])[:samples]
            for name in ("x1", "z_up", "z_low", *(["images"] if "images" in batches[0] else []))
        }
        self.first_stage, self.settings, self.device, self.seed = first_stage, settings, device, seed

    def to_pixels(self, scaled_latents: torch.Tensor) -> torch.Tensor:
        return self.first_stage.decode_scaled(scaled_latents.to(self.device)).clamp(-1, 1).cpu()

    def ground_truth(self) -> torch.Tensor:
        if "images" in self.batch:
            return from_uint8(self.batch["images"])
        return self.to_pixels(self.batch["x1"])

    @torch.no_grad()
    def run(self, model: FMBoostModel, step: int, out_dir: Path) -> tuple[dict[str, float], Path]:
        """Metrics and the path of the grid image for ``model`` (the EMA weights)."""
        model.eval()
        dtype = next(model.parameters()).dtype
        x1 = self.batch["x1"].to(self.device, dtype)
        z_up = self.batch["z_up"].to(self.device, dtype)
        loss = model(x1, z_up, torch.Generator().manual_seed(self.seed)).item()
        generator = torch.Generator().manual_seed(self.seed)
        sample = model.sample(z_up, generator, self.settings.solver, self.settings.nfe).x1
        predicted, truth = self.to_pixels(sample), self.ground_truth()
        context = self.to_pixels(self.batch["z_up"])
        low = self.to_pixels(self.batch["z_low"])
        low = F.interpolate(low, size=truth.shape[-2:], mode="nearest")
        metrics = {
            "val/loss": loss,
            "val/psnr": psnr(predicted, truth).mean().item(),
            "val/ssim": ssim(predicted, truth).mean().item(),
            "val/psnr_context": psnr(context, truth).mean().item(),
            "val/ssim_context": ssim(context, truth).mean().item(),
        }
        columns = {"low-res": low, "CFM": predicted, "ground truth": truth}
        grid = save_grid(
            {name: to_uint8(images) for name, images in columns.items()}, out_dir / f"val_grid_{step:08d}.png"
        )
        return metrics, grid
