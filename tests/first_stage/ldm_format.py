"""Test helper: write a diffusers ``AutoencoderKL`` state dict in the original LDM/SD key format.

This is the inverse of diffusers' ``convert_ldm_vae_checkpoint``, so tests can produce an
``sd_ae.ckpt``-style file from a tiny random VAE and load it through the user's code path.
"""

import re

import torch
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

ATTENTION_RENAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def ldm_key(key: str, num_blocks: int) -> str:
    key = key.replace("conv_shortcut", "nin_shortcut")
    key = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", key)
    key = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", key)
    key = re.sub(
        r"decoder\.up_blocks\.(\d+)\.(resnets|upsamplers\.0)\.",
        lambda m: f"decoder.up.{num_blocks - 1 - int(m[1])}.{'block' if m[2] == 'resnets' else 'upsample'}.",
        key,
    )
    key = re.sub(r"mid_block\.resnets\.(\d)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", key)
    if "mid_block.attentions.0." in key:
        key = key.replace("mid_block.attentions.0.", "mid.attn_1.")
        for new, old in ATTENTION_RENAMES.items():
            key = key.replace(f"attn_1.{new}.", f"attn_1.{old}.")
    return key


def to_ldm_state_dict(
    state: dict[str, torch.Tensor], num_blocks: int, prefix: str = "first_stage_model."
) -> dict:
    converted = {}
    for key, tensor in state.items():
        new_key = DIFFUSERS_TO_LDM_MAPPING["vae"].get(key) or ldm_key(key, num_blocks)
        if ".attn_1." in new_key and new_key.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # LDM stores attention projections as 1x1 convolutions
        converted[prefix + new_key] = tensor.clone()
    return converted
