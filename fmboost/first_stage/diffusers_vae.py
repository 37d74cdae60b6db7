"""A diffusers ``AutoencoderKL`` as first stage (the SD VAE of the paper).

Three sources, all loaded without network access when they are local:
- a diffusers model directory (``save_pretrained`` output, or a pipeline directory with ``vae/``);
- a hub id such as ``stabilityai/sd-vae-ft-mse`` (downloaded by diffusers unless offline);
- a single ``.ckpt``/``.safetensors`` file in the original LDM format, like the paper's ``sd_ae.ckpt``
  or a full SD checkpoint, converted with diffusers' key mapping. Its architecture comes from
  ``config`` (a diffusers ``config.json`` or its directory), by default the bundled SD 1.x VAE config.
"""

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from torch import nn

from fmboost.errors import WeightsError
from fmboost.first_stage.base import FirstStage
from fmboost.weights_io import load_state_dict

SD_VAE_CONFIG = Path(__file__).with_name("sd_vae_config.json")
SINGLE_FILE_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth", ".bin")


def looks_like_hub_id(path: str) -> bool:
    parts = path.split("/")
    return len(parts) == 2 and all(parts) and not path.startswith((".", "~")) and not Path(path).exists()


def read_architecture(config: str | Path | None) -> dict:
    config_path = Path(config).expanduser() if config else SD_VAE_CONFIG
    if config_path.is_dir():
        config_path = config_path / "config.json"
    if not config_path.is_file():
        raise WeightsError(f"first_stage.config: {config_path} does not exist")
    return json.loads(config_path.read_text())


def load_single_file(path: Path, config: str | Path | None) -> AutoencoderKL:
    """An ``AutoencoderKL`` from one LDM-format (or diffusers-format) weights file."""
    state = load_state_dict(path)
    architecture = read_architecture(config)
    vae = AutoencoderKL.from_config(architecture)
    if not any(key.startswith("encoder.down_blocks.") for key in state):
        state = convert_ldm_vae_checkpoint(state, vae.config)
    architecture_source = config or SD_VAE_CONFIG
    try:
        missing, unexpected = vae.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        lines = str(error).splitlines()
        first_problem = lines[1].strip() if len(lines) > 1 else lines[0]
        raise WeightsError(
            f"{path}: weights do not fit the VAE architecture in {architecture_source}: {first_problem}"
        ) from None
    if missing or unexpected:
        detail = (
            f"missing keys {missing[:2]} ({len(missing)}), unexpected {unexpected[:2]} ({len(unexpected)})"
        )
        raise WeightsError(
            f"{path}: weights do not fit the VAE architecture in {architecture_source}: {detail}"
        )
    return vae


def load_autoencoder_kl(
    path: str, config: str | Path | None = None, subfolder: str | None = None
) -> AutoencoderKL:
    """Load from a directory, a hub id or a single LDM-format file (see module docstring)."""
    local = Path(path).expanduser()
    if local.is_file():
        if local.suffix not in SINGLE_FILE_SUFFIXES:
            raise WeightsError(
                f"first_stage.path: {local} is not a weights file ({', '.join(SINGLE_FILE_SUFFIXES)})"
            )
        return load_single_file(local, config)
    if local.is_dir():
        if subfolder is None and (local / "vae" / "config.json").is_file():
            subfolder = "vae"
        if not (local / (subfolder or "") / "config.json").is_file():
            raise WeightsError(
                f"first_stage.path: {local / (subfolder or '')} has no config.json of a diffusers model"
            )
    elif not looks_like_hub_id(path):
        raise WeightsError(f"first_stage.path: {local} does not exist")
    try:
        return AutoencoderKL.from_pretrained(path if not local.is_dir() else str(local), subfolder=subfolder)
    except OSError as error:
        raise WeightsError(
            f"first_stage.path: cannot load AutoencoderKL from {path!r} ({str(error).splitlines()[0]}); "
            "without network access, download it first and point first_stage.path at the local directory"
        ) from None


class DiffusersVAE(FirstStage):
    """``AutoencoderKL`` adapter: encode returns the posterior mode; scale/shift from its config."""

    name = "diffusers"

    def __init__(
        self,
        vae: AutoencoderKL,
        path: str | None,
        tile_size: int | None = 64,
        tile_overlap: int = 16,
        subfolder: str | None = None,
        config_file: str | None = None,
    ) -> None:
        super().__init__(
            scale=vae.config.scaling_factor,
            shift=vae.config.get("shift_factor") or 0.0,
            tile_size=tile_size,
            tile_overlap=tile_overlap,
            path=path,
            subfolder=subfolder,
            config_file=config_file,
        )
        self.vae = vae.requires_grad_(False).eval()
        self.latent_channels = vae.config.latent_channels
        self.downsampling_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(images).latent_dist.mode()

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents).sample

    def autoencoder_modules(self) -> list[nn.Module]:
        return [self.vae.encoder, self.vae.decoder]
