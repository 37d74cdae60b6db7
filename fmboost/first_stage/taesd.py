"""The tiny autoencoder family (TAESD, TAESDXL, TAEF1, TAEF2) from two ``.pth`` state dicts.

Our own implementation of the architecture documented with the weights (``../shared/weights/README.md``):
an ``nn.Sequential`` encoder of 15 modules and decoder of 20, built from 64-channel residual blocks,
some with a GroupNorm "pool" branch. The latent width and which blocks carry the pool branch are read
from the state dicts, so every member of the family loads through the same code. These models take
images in [0, 1]; the adapter maps our [-1, 1] convention. Their latents need no scaling.

Both halves run NHWC (``channels_last``): on 2 CPU cores TAEF2 decodes 1.4× and encodes 1.6× faster
than NCHW at 256 px, with the same outputs to 5e-6 (``bench/first_stage_layout.py``). Results are
handed back contiguous, as every caller expects.
"""

from pathlib import Path

import torch
from torch import nn

from fmboost.errors import WeightsError
from fmboost.first_stage.base import FirstStage
from fmboost.weights_io import load_state_dict

WIDTH = 64
ENCODER_BLOCKS = (1, 3, 4, 5, 7, 8, 9, 11, 12, 13)
DECODER_BLOCKS = (3, 4, 5, 8, 9, 10, 13, 14, 15, 18)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias)


class TinyBlock(nn.Module):
    """``relu(conv(x) + x)``, after ``x = x + pool(x)`` when the block has the GroupNorm pool branch."""

    def __init__(self, channels: int, with_pool: bool) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            conv3x3(channels, channels),
            nn.ReLU(),
            conv3x3(channels, channels),
            nn.ReLU(),
            conv3x3(channels, channels),
        )
        self.pool = (
            nn.Sequential(
                nn.Conv2d(channels, 4 * channels, 1, bias=False),
                nn.GroupNorm(4, 4 * channels),
                nn.ReLU(),
                nn.Conv2d(4 * channels, channels, 1, bias=False),
            )
            if with_pool
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return torch.relu(self.conv(x) + x)


class SoftClamp(nn.Module):
    """``3 · tanh(x / 3)``: keeps decoder inputs in a range the network saw in training."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


def build_encoder(latent_channels: int, pooled_blocks: set[int]) -> nn.Sequential:
    layers: list[nn.Module] = [conv3x3(3, WIDTH)]
    for index in range(1, 14):
        if index in ENCODER_BLOCKS:
            layers.append(TinyBlock(WIDTH, index in pooled_blocks))
        else:
            layers.append(conv3x3(WIDTH, WIDTH, stride=2, bias=False))
    layers.append(conv3x3(WIDTH, latent_channels))
    return nn.Sequential(*layers)


def build_decoder(latent_channels: int, pooled_blocks: set[int]) -> nn.Sequential:
    layers: list[nn.Module] = [SoftClamp(), conv3x3(latent_channels, WIDTH), nn.ReLU()]
    for index in range(3, 19):
        if index in DECODER_BLOCKS:
            layers.append(TinyBlock(WIDTH, index in pooled_blocks))
        elif index in (6, 11, 16):
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        else:
            layers.append(conv3x3(WIDTH, WIDTH, bias=False))
    layers.append(conv3x3(WIDTH, 3))
    return nn.Sequential(*layers)


def nhwc(batch: torch.Tensor) -> torch.Tensor:
    return batch.contiguous(memory_format=torch.channels_last)


def pooled_block_indices(state_dict: dict[str, torch.Tensor]) -> set[int]:
    return {int(key.split(".")[0]) for key in state_dict if ".pool." in key}


def load_into(module: nn.Module, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        first_line = str(error).splitlines()[1] if len(str(error).splitlines()) > 1 else str(error)
        raise WeightsError(f"{path}: not a tiny-autoencoder state dict ({first_line.strip()})") from None


def find_weight_files(directory: Path) -> tuple[Path, Path]:
    """The single ``*encoder.pth`` and ``*decoder.pth`` in ``directory``."""
    if not directory.is_dir():
        raise WeightsError(
            f"first_stage.path: {directory} is not a directory holding *encoder.pth and *decoder.pth"
        )
    found = []
    for part in ("encoder", "decoder"):
        matches = sorted(directory.glob(f"*{part}.pth"))
        if len(matches) != 1:
            raise WeightsError(
                f"first_stage.path: expected exactly one *{part}.pth in {directory}, found {len(matches)}"
            )
        found.append(matches[0])
    return found[0], found[1]


class TinyAutoencoder(FirstStage):
    """TAESD-family first stage, downsampling factor 8."""

    name = "taesd"
    downsampling_factor = 8

    def __init__(self, directory: str | Path, tile_size: int | None = 64, tile_overlap: int = 16) -> None:
        super().__init__(
            scale=1.0, shift=0.0, tile_size=tile_size, tile_overlap=tile_overlap, path=str(directory)
        )
        self.directory = Path(directory).expanduser()
        encoder_path, decoder_path = find_weight_files(self.directory)
        encoder_state = load_state_dict(encoder_path)
        decoder_state = load_state_dict(decoder_path)
        last_conv = "14.weight"
        if last_conv not in encoder_state:
            raise WeightsError(f"{encoder_path}: not a tiny-autoencoder encoder (no key {last_conv!r})")
        self.latent_channels = encoder_state[last_conv].shape[0]
        self.encoder = build_encoder(self.latent_channels, pooled_block_indices(encoder_state))
        self.decoder = build_decoder(self.latent_channels, pooled_block_indices(decoder_state))
        load_into(self.encoder, encoder_state, encoder_path)
        load_into(self.decoder, decoder_state, decoder_path)
        self.requires_grad_(False).eval().to(memory_format=torch.channels_last)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(nhwc((images + 1) / 2)).contiguous()

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        return (self.decoder(nhwc(latents)) * 2 - 1).contiguous()

    def autoencoder_modules(self) -> list[nn.Module]:
        return [self.encoder, self.decoder]
