"""``FMBoostModel``: one CFM stage = U-Net + objective + context upsampling + noise augmentation.

It is a plain ``nn.Module`` (DeepSpeed wraps it for training; ``forward`` returns the loss) and saves
and loads like a diffusers model, without DeepSpeed::

    model = FMBoostModel.from_pretrained("runs/cfm_1k/export")
    z_high = model.upsample(z_low, first_stage, nfe=40, solver="euler").x1

All latents passed in or returned are *scaled* (the convention of diffusers LDM pipelines with
``output_type="latent"``); the first stage converts them for decoding.
"""

import json
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from fmboost.atomic_files import atomic_path, write_json_atomically
from fmboost.config import FirstStageConfig, FlowConfig, FMBoostConfig, UNetConfig, merge_layers
from fmboost.errors import WeightsError
from fmboost.first_stage.base import FirstStage
from fmboost.flow.sampling import ODESolution, ReportingNet
from fmboost.flow.tiled_sampling import TiledNet
from fmboost.flow.upsampling import upsample_latents
from fmboost.models.unet import UNet, validate_unet
from fmboost.objectives import build_objective, validate_flow
from fmboost.run_folder import EXPORT_DIR, latest_checkpoint

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 2


def upgrade_model_section(model: dict[str, Any], version: int) -> dict[str, Any]:
    """A ``model`` section written by an older FMBoost, in today's keys (same network, same weights).

    Version 1 had ``num_head_channels`` (one head per that many channels) and allowed attention
    factors that no level reaches.
    """
    if version >= 2:
        return model
    model = dict(model)
    if "num_head_channels" in model:
        model["num_heads"], model["head_channels"] = None, model.pop("num_head_channels")
    levels = len(model.get("channel_mult", [1, 2, 4, 8]))
    reachable = {2**level for level in range(levels)}
    model["attention_resolutions"] = [f for f in model.get("attention_resolutions", []) if f in reachable]
    model.setdefault("time_scale", 1000.0)
    return model


def find_export(path: str | Path) -> Path:
    """The model directory ``path`` names: itself (``save_pretrained`` output), a checkpoint's ``export/``,
    or the export of a training run's latest complete checkpoint."""
    directory = Path(path).expanduser()
    if not directory.exists():
        raise WeightsError(f"{directory} does not exist")
    if (directory / CONFIG_NAME).is_file() or not directory.is_dir():
        return directory
    if (directory / EXPORT_DIR / CONFIG_NAME).is_file():
        return directory / EXPORT_DIR
    latest = latest_checkpoint(directory)
    if latest is not None:
        return latest / EXPORT_DIR
    raise WeightsError(
        f"{directory} is not an FMBoost model directory ({CONFIG_NAME} is missing), nor a checkpoint or "
        "a training run with a complete checkpoint"
    )


def check_stored_shapes(weights_path: Path, expected: dict[str, tuple[int, ...]], config_name: str) -> None:
    """Compare the tensors a safetensors header lists with the network's, before anything is loaded."""
    try:
        with safe_open(str(weights_path), "pt") as handle:
            stored = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118
    except Exception as error:  # a truncated or foreign file: safetensors raises its own error types
        raise WeightsError(f"{weights_path}: not a readable safetensors file ({error})") from None
    missing, unexpected = sorted(expected.keys() - stored.keys()), sorted(stored.keys() - expected.keys())
    problems = [f"missing {missing[:3]}"] if missing else []
    problems += [f"unexpected {unexpected[:3]}"] if unexpected else []
    problems += [
        f"{name} is {list(stored[name])}, {config_name} says {list(shape)}"
        for name, shape in expected.items()
        if name in stored and stored[name] != shape
    ][:3]
    if problems:
        raise WeightsError(f"{weights_path}: weights do not fit {config_name}: " + "; ".join(problems))


class FMBoostModel(nn.Module):
    """A CFM stage; ``first_stage`` records the first stage its training latents were made with.

    The U-Net's input channels are derived from the objective (latent and context concatenated for
    flow matching, the context alone for regression), and so is its step-size input (shortcut students).
    """

    def __init__(
        self, unet: UNetConfig, flow: FlowConfig, first_stage: FirstStageConfig | dict | None = None
    ) -> None:
        super().__init__()
        validate_flow(flow, unet)
        self.objective = build_objective(flow)
        self.unet_config = replace(
            unet,
            in_channels=self.objective.input_channels(unet.out_channels),
            step_conditioning=self.objective.step_conditioned,
        )
        self.flow_config = flow
        self.first_stage = FirstStageConfig.from_record(first_stage) if first_stage is not None else None
        self.net = UNet(self.unet_config)

    @classmethod
    def from_config(
        cls, config: FMBoostConfig, first_stage: FirstStageConfig | dict | None = None
    ) -> "FMBoostModel":
        return cls(config.model, config.flow, first_stage)

    @property
    def latent_channels(self) -> int:
        return self.unet_config.out_channels

    def forward(
        self,
        x1: torch.Tensor,
        z_up: torch.Tensor,
        generator: torch.Generator | None = None,
        x0: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Training loss for high-res latents ``x1`` and upsampled low-res latents ``z_up`` (both scaled);
        ``x0``: stored ODE start points (teacher pairs), for objectives that train on them."""
        if self.objective.uses_start_points:
            return self.objective.loss(self.net, x1, z_up, generator, x0=x0)
        return self.objective.loss(self.net, x1, z_up, generator)

    def check_first_stage(self, first_stage: FirstStage) -> None:
        if first_stage.latent_channels != self.latent_channels:
            raise WeightsError(
                f"this CFM stage works on {self.latent_channels}-channel latents, but the first stage "
                f"{first_stage.name!r} has {first_stage.latent_channels} channels"
            )

    @torch.no_grad()
    def prepare_context(
        self, z_low: torch.Tensor, first_stage: FirstStage, image_low: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scaled low-res latents → scaled upsampled context ``z_up`` on the high-res grid."""
        self.check_first_stage(first_stage)
        z_up = upsample_latents(
            first_stage.unscale_latents(z_low.float()),
            self.flow_config.upsampling,
            first_stage,
            self.flow_config.scale_factor,
            image_low,
        )
        return first_stage.scale_latents(z_up.float())

    @torch.no_grad()
    def sample(
        self,
        z_up: torch.Tensor,
        generator: torch.Generator | None = None,
        solver: str | None = None,
        nfe: int | None = None,
        return_trajectory: bool = False,
        tile_size: int | None = None,
        tile_overlap: int = 0,
        on_evaluation: Callable[[], None] | None = None,
    ) -> ODESolution:
        """Integrate from the prepared context; solver settings default to the model's ``flow`` config.

        With ``tile_size``, the network is evaluated in overlapping tiles of at most that many latent
        positions per side (:class:`~fmboost.flow.tiled_sampling.TiledNet`), bounding memory for large inputs.
        ``on_evaluation`` is called before every evaluation of the field (all its tiles), for progress.
        """
        flow = self.flow_config
        parameter = next(self.net.parameters())
        net = self.net if tile_size is None else TiledNet(self.net, tile_size, tile_overlap)
        if on_evaluation is not None:
            net = ReportingNet(net, on_evaluation)
        return self.objective.sample(
            net,
            z_up.to(device=parameter.device, dtype=parameter.dtype),
            generator,
            solver=solver or flow.solver,
            nfe=nfe or flow.nfe,
            atol=flow.atol,
            rtol=flow.rtol,
            return_trajectory=return_trajectory,
        )

    @torch.no_grad()
    def upsample(
        self,
        z_low: torch.Tensor,
        first_stage: FirstStage,
        nfe: int | None = None,
        solver: str | None = None,
        generator: torch.Generator | None = None,
        return_trajectory: bool = False,
        tile_size: int | None = None,
        tile_overlap: int = 0,
    ) -> ODESolution:
        """Scaled low-res latents → scaled high-res latents in ``.x1`` (with the NFE used)."""
        z_up = self.prepare_context(z_low, first_stage)
        return self.sample(z_up, generator, solver, nfe, return_trajectory, tile_size, tile_overlap)

    @property
    def size_multiple(self) -> int:
        """Latent sides the U-Net accepts are multiples of this (its total downsampling)."""
        return self.net.size_multiple

    def config_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "model": asdict(self.unet_config),
            "flow": asdict(self.flow_config),
            "first_stage": asdict(self.first_stage) if self.first_stage is not None else None,
        }

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` and ``config.json`` (files are replaced atomically)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in self.net.state_dict().items()}
        with atomic_path(directory / WEIGHTS_NAME) as partial:
            save_file(tensors, str(partial), metadata={"format": "pt"})
        write_json_atomically(directory / CONFIG_NAME, self.config_dict())
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> "FMBoostModel":
        """Load a model directory, a checkpoint or a run's latest checkpoint (no DeepSpeed needed)."""
        directory = find_export(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for required in (config_path, weights_path):
            if not required.is_file():
                raise WeightsError(
                    f"{directory} is not an FMBoost model directory: {required.name} is missing"
                )
        try:
            saved = json.loads(config_path.read_text())
        except json.JSONDecodeError as error:
            raise WeightsError(f"{config_path}: not valid JSON ({error})") from None
        model_section = upgrade_model_section(saved.get("model", {}), saved.get("format_version", 1))
        config = merge_layers(
            FMBoostConfig, [(str(config_path), {"model": model_section, "flow": saved.get("flow", {})})]
        )
        validate_unet(config.model)  # the flow section is checked by the model itself
        with torch.device("meta"):  # the shapes the config implies, without allocating the network
            expected = {name: tuple(t.shape) for name, t in cls.from_config(config).net.state_dict().items()}
        check_stored_shapes(weights_path, expected, config_path.name)
        model = cls.from_config(config, saved.get("first_stage"))
        model.net.load_state_dict(load_file(str(weights_path)))
        return model.to(device=device, dtype=dtype).eval()
