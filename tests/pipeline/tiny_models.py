"""Tiny models built from configs, saved like real ones, for pipeline tests (nothing is downloaded)."""

import dataclasses
import json
from pathlib import Path

import torch

from fmboost.config import FlowConfig
from fmboost.models import FMBoostModel
from tests.conftest import tiny_unet_config


def byte_level_vocabulary() -> list[str]:
    """CLIP's byte-to-unicode alphabet: every byte is a token, with and without the word-end mark."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    characters = [chr(code) for code in codes]
    return characters + [c + "</w>" for c in characters] + ["<|startoftext|>", "<|endoftext|>"]


def save_tiny_stable_diffusion(directory: Path) -> Path:
    """A complete StableDiffusionPipeline (8² latents, 16 px images) written with ``save_pretrained``."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    vocabulary = byte_level_vocabulary()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(
        json.dumps({token: index for index, token in enumerate(vocabulary)})
    )
    (directory / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=77
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocabulary),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=len(vocabulary) - 2,
            eos_token_id=len(vocabulary) - 1,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=8,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        block_out_channels=[16, 32],
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(directory / "pipeline")
    return directory / "pipeline"


def save_tiny_stage(
    directory: Path,
    latent_channels: int = 4,
    first_stage: dict | None = None,
    compiled: bool = False,
    consistency: str = "projection",
) -> Path:
    """A (randomly initialised, non-zero) CFM stage for ``latent_channels``-channel latents, whose
    default consistency step is ``consistency``. For a ``compiled`` test, one resolution level with
    attention in the middle block only: every kind of layer, and about two thirds of the compile time on
    a cold cache."""
    torch.manual_seed(1)
    unet = tiny_unet_config(latent_channels)
    if compiled:
        unet = dataclasses.replace(unet, channel_mult=[1], attention_resolutions=[])
    model = FMBoostModel(unet, FlowConfig(nfe=2, consistency=consistency), first_stage)
    for parameter in model.net.parameters():
        torch.nn.init.normal_(parameter, std=0.02)
    return model.save_pretrained(directory)
