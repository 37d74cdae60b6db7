"""CLIP score: ``max(100 · cos(image, caption), 0)`` with a transformers CLIP, as torchmetrics defines it.

Captions are truncated to 77 tokens. The model comes from a local directory or a hub id; a missing one
is reported in one line (offline, nothing is downloaded).
"""

from pathlib import Path

import numpy as np
import torch

from fmboost.errors import WeightsError


def embedding(output) -> torch.Tensor:
    """Projected features; transformers 5 wraps them in a model output (``pooler_output``)."""
    return output.pooler_output if hasattr(output, "pooler_output") else output


class ClipScorer:
    def __init__(self, model: str, device: torch.device) -> None:
        from transformers import CLIPModel, CLIPProcessor

        local = Path(model).expanduser()
        try:
            self.model = CLIPModel.from_pretrained(str(local) if local.exists() else model).to(device).eval()
            self.processor = CLIPProcessor.from_pretrained(str(local) if local.exists() else model)
        except Exception as error:  # missing (OSError) or corrupt (JSON, safetensors, shape errors) files
            raise WeightsError(
                f"clip_model: cannot load CLIP from {model!r} ({str(error).splitlines()[0]}); offline, "
                "download it first (openai/clip-vit-large-patch14) and point clip_model at it"
            ) from None
        self.device = device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, captions: list[str]) -> np.ndarray:
        """Per-pair scores for uint8 images [B, 3, H, W] and their captions."""
        pixels = [image.permute(1, 2, 0).cpu().numpy() for image in images]
        inputs = self.processor(
            text=captions, images=pixels, return_tensors="pt", padding=True, truncation=True, max_length=77
        ).to(self.device)
        image_features = embedding(self.model.get_image_features(pixel_values=inputs["pixel_values"]))
        text_features = embedding(
            self.model.get_text_features(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
            )
        )
        cosine = torch.nn.functional.cosine_similarity(image_features, text_features, dim=-1)
        return (100 * cosine).clamp(min=0).cpu().numpy()
