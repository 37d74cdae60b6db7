"""Typed configuration: OmegaConf YAML validated against dataclasses.

A config file is merged onto the dataclass defaults, then ``section.key=value`` overrides from the
command line are merged on top. A file may start from another with ``extends: other.yaml`` (a path
relative to it): the other file is merged first, so a family of configs shares one recipe. Unknown
keys, wrong types and invalid choices raise :class:`~fmboost.errors.ConfigError` naming the key,
before any job starts.

Example:
    >>> config = load_config("configs/cfm_1k.yaml", ["train.lr=1e-4", "flow.nfe=20"])
    >>> config.train.lr
    0.0001
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fmboost.errors import ConfigError
from fmboost.first_stage import FIRST_STAGES
from fmboost.models.unet import UNetConfig
from fmboost.noise_schedule import NUM_STEPS
from fmboost.objectives import OBJECTIVES
from fmboost.sampling import SOLVERS, is_valid_nfe
from fmboost.upsampling import UPSAMPLERS


@dataclass
class FlowConfig:
    """The objective, the upsampling of the context and the default sampler of a CFM stage."""

    objective: str = "cfm"
    upsampling: str = "psu_roundtrip"
    noise_aug_step: int = 400
    scale_factor: int = 2
    solver: str = "euler"
    nfe: int = 40
    atol: float = 1e-5
    rtol: float = 1e-5


@dataclass
class FirstStageConfig:
    """Which frozen autoencoder maps images to latents (see :mod:`fmboost.first_stage`)."""

    name: str = "identity"
    path: str | None = None
    config: str | None = None
    subfolder: str | None = None
    scale: float | None = None
    shift: float | None = None
    tile_size: int | None = 64
    tile_overlap: int = 16


@dataclass
class DataConfig:
    """Latent shards for training and validation (written by ``make encode-shards``)."""

    train: str = "data/latents/sample"
    validation: str | None = None
    batch_size: int = 8
    num_workers: int = 2
    shuffle_buffer: int = 1000
    crop_size: int | None = None


@dataclass
class TrainConfig:
    """The optimisation recipe; the loop counts images seen, as EDM does."""

    run_dir: str = "runs/default"
    seed: int = 0
    lr: float = 3e-5
    weight_decay: float = 0.0
    warmup_steps: int = 1000
    max_steps: int = 100_000
    grad_clip: float = 0.0  # 0: no clipping, as in the released trainer
    grad_accum: int = 1
    precision: str = "auto"
    ema_beta: float = 0.999
    ema_power: float = 0.75
    ema_update_after_step: int = 0
    log_every: int = 50
    validate_every: int = 5000
    checkpoint_every: int = 10_000
    keep_checkpoints: int = 3
    resume: str = "auto"


@dataclass
class ClusterConfig:
    """Where and how big the job is; ``cluster/submit.py`` flags override these."""

    backend: str = "auto"
    nodes: int = 1
    gpus_per_node: int = 1
    partition: str | None = None
    time_minutes: int = 4320
    cpus_per_task: int = 8
    request_gpus: bool = True


@dataclass
class LoggingConfig:
    """MLflow tracking: a SQLite store in the run folder unless ``tracking_uri`` names a server."""

    tracking_uri: str | None = None
    experiment: str = "fmboost"
    run_name: str | None = None


@dataclass
class EvalConfig:
    """Periodic validation during training: solver, NFE and how many validation images.

    The standalone benchmarks (``evaluation/run_benchmarks.py``) have configs of their own.
    """

    solver: str = "euler"
    nfe: int = 40
    num_images: int = 8


@dataclass
class FMBoostConfig:
    model: UNetConfig = field(default_factory=UNetConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    first_stage: FirstStageConfig = field(default_factory=FirstStageConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    deepspeed: dict[str, Any] = field(default_factory=lambda: {"zero_optimization": {"stage": 1}})
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


PRECISIONS = ("auto", "bf16", "fp16", "fp32")
T = TypeVar("T")


def _describe(error: OmegaConfBaseException, source: str) -> str:
    key = getattr(error, "full_key", None)
    message = str(getattr(error, "msg", None) or error).splitlines()[0]
    return f"{source}: {key}: {message}" if key else f"{source}: {message}"


def _read_yaml(path: str | Path) -> DictConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        loaded = OmegaConf.load(path)
    except Exception as error:  # YAML syntax errors come from several libraries
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return loaded


def _parse_overrides(overrides: list[str]) -> DictConfig:
    malformed = [item for item in overrides if "=" not in item or item.startswith("=")]
    if malformed:
        raise ConfigError(f"overrides must look like section.key=value, got {', '.join(malformed)}")
    parsed = OmegaConf.create()
    for item in overrides:
        try:
            parsed = OmegaConf.merge(parsed, OmegaConf.from_dotlist([item]))
        except yaml.YAMLError:
            # Values such as shard patterns "/data/{00000..00127}.tar" are not YAML: keep them verbatim.
            key, _, value = item.partition("=")
            OmegaConf.update(parsed, key, value, force_add=True)
    return parsed


def merge_layers(schema: type[T], layers: list[tuple[str, DictConfig | dict]]) -> T:
    """Merge ``(source, layer)`` pairs onto the defaults of ``schema``, in order; no cross-key checks.

    ``source`` names the layer in error messages (a file path, "command line").
    """
    merged = OmegaConf.structured(schema)
    for source, layer in layers:
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as error:
            raise ConfigError(_describe(error, source)) from None
    try:
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise ConfigError(_describe(error, "config")) from None


EXTENDS = "extends"


def _read_file_layers(path: Path, children: tuple[Path, ...] = ()) -> list[tuple[str, DictConfig]]:
    """The file and, before it, the files it extends (each relative to the file naming it)."""
    layer = _read_yaml(path)
    parent = layer.pop(EXTENDS, None)
    if parent is None:
        return [(str(path), layer)]
    parent_path = path.parent / str(parent)
    if not parent_path.is_file():
        raise ConfigError(f"{path}: {EXTENDS}: {parent_path} does not exist")
    if parent_path.resolve() in (*children, path.resolve()):
        raise ConfigError(f"{path}: {EXTENDS}: {parent} extends itself through a cycle")
    return [*_read_file_layers(parent_path, (*children, path.resolve())), (str(path), layer)]


def read_layers(path: str | Path | None, overrides: list[str] | None) -> list[tuple[str, DictConfig]]:
    """The YAML file (after any it extends) and the overrides, as named layers for :func:`merge_layers`."""
    layers = _read_file_layers(Path(path)) if path is not None else []
    try:
        layers.append(("command line", _parse_overrides(overrides or [])))
    except OmegaConfBaseException as error:
        raise ConfigError(_describe(error, "command line")) from None
    return layers


def merge_config(layers: list[tuple[str, DictConfig | dict]]) -> FMBoostConfig:
    """Merge named layers onto the training defaults and validate the result."""
    config = merge_layers(FMBoostConfig, layers)
    validate(config)
    return config


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> FMBoostConfig:
    """Defaults ← YAML file ← ``key=value`` overrides, validated."""
    return merge_config(read_layers(path, overrides))


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


def validate(config: FMBoostConfig) -> None:
    """Checks across keys that types alone cannot express; the first problem found is raised."""
    flow, model = config.flow, config.model
    objective = OBJECTIVES.get(flow.objective, "flow.objective")()
    UPSAMPLERS.get(flow.upsampling, "flow.upsampling")
    FIRST_STAGES.get(config.first_stage.name, "first_stage.name")
    _require(
        flow.solver in SOLVERS,
        "flow.solver",
        f"unknown solver {flow.solver!r}; choose one of {', '.join(SOLVERS)}",
    )
    _require(
        is_valid_nfe(flow.solver, flow.nfe),
        "flow.nfe",
        f"{flow.nfe} evaluations do not fit the {flow.solver} solver",
    )
    evaluation = config.eval
    _require(evaluation.solver in SOLVERS, "eval.solver", f"unknown solver {evaluation.solver!r}")
    _require(
        is_valid_nfe(evaluation.solver, evaluation.nfe),
        "eval.nfe",
        f"{evaluation.nfe} evaluations do not fit the {evaluation.solver} solver",
    )
    _require(evaluation.num_images > 0, "eval.num_images", "must be positive")
    _require(0 <= flow.noise_aug_step < NUM_STEPS, "flow.noise_aug_step", f"must lie in [0, {NUM_STEPS - 1}]")
    _require(flow.scale_factor >= 1, "flow.scale_factor", "must be at least 1")
    expected_in = objective.input_channels(model.out_channels)
    _require(
        model.in_channels == expected_in,
        "model.in_channels",
        f"the {flow.objective} objective feeds {expected_in} channels for "
        f"{model.out_channels}-channel latents (model.out_channels), got {model.in_channels}",
    )
    _require(
        all(m > 0 for m in model.channel_mult) and model.channel_mult,
        "model.channel_mult",
        "needs positive entries",
    )
    for mult in model.channel_mult:
        _require(
            (mult * model.model_channels) % model.norm_groups == 0,
            "model.norm_groups",
            f"{mult * model.model_channels} channels do not split into {model.norm_groups} groups",
        )
    validate_attention(model)
    _require(model.time_scale > 0, "model.time_scale", "must be positive")
    _require(config.train.grad_clip >= 0, "train.grad_clip", "must not be negative (0 turns clipping off)")
    _require(
        config.train.precision in PRECISIONS, "train.precision", f"choose one of {', '.join(PRECISIONS)}"
    )
    _require(config.first_stage.tile_overlap >= 0, "first_stage.tile_overlap", "must not be negative")
    _require(
        config.train.resume in ("auto", "never") or Path(config.train.resume).is_dir(),
        "train.resume",
        f"use auto, never or the directory of a checkpoint ({config.train.resume!r} is none of these)",
    )
    for key in ("max_steps", "log_every", "validate_every", "checkpoint_every", "grad_accum"):
        _require(getattr(config.train, key) > 0, f"train.{key}", "must be positive")


def validate_attention(model: UNetConfig) -> None:
    """Attention only at factors the levels reach, with heads that fit every attention layer."""
    factors = model.downsampling_factors()
    unreachable = [f for f in model.attention_resolutions if f not in factors]
    _require(
        not unreachable,
        "model.attention_resolutions",
        f"factor(s) {unreachable} never occur with {len(model.channel_mult)} levels "
        f"(factors {', '.join(map(str, factors))})",
    )
    _require(model.head_channels > 0, "model.head_channels", "must be positive")
    if model.num_heads is not None:
        _require(
            model.num_heads > 0, "model.num_heads", "must be positive (or null: one head per head_channels)"
        )
        return
    widths = {model.model_channels * model.channel_mult[-1]}  # the middle block always attends
    widths |= {
        model.model_channels * m
        for m, f in zip(model.channel_mult, factors, strict=True)
        if f in model.attention_resolutions
    }
    for width in sorted(widths):
        _require(
            width % model.head_channels == 0,
            "model.head_channels",
            f"{width} channels do not split into heads of {model.head_channels} (or set model.num_heads)",
        )


def to_yaml(config: FMBoostConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def to_flat_dict(config: FMBoostConfig) -> dict[str, Any]:
    """``{"section.key": value}`` for every leaf, e.g. for MLflow params."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        else:
            flat[prefix] = node

    walk("", OmegaConf.to_container(OmegaConf.structured(config)))
    return flat
