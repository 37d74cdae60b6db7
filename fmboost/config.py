"""Typed configuration: OmegaConf YAML validated against dataclasses.

A config file is merged onto the dataclass defaults, then ``section.key=value`` overrides from the
command line are merged on top. A file may start from another with ``extends: other.yaml`` (a path
relative to it): the other file is merged first, so a family of configs shares one recipe. Unknown
keys, wrong types and invalid choices raise :class:`~fmboost.errors.ConfigError` naming the key,
before any job starts.

This module is a leaf: it defines the sections and how they merge, and imports no component, not even
inside a function. Each component checks its own section (``validate_unet``, ``validate_flow``,
``validate_first_stage``, ``validate_training``); :mod:`fmboost.config_loading`, one level up, loads a
config for a job and composes those checks.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fmboost.errors import ConfigError


@dataclass
class UNetConfig:
    """Architecture of :class:`fmboost.models.unet.UNet`; the defaults are the released code's network.

    ``in_channels`` is derived by :class:`fmboost.models.FMBoostModel` from the objective and the latent
    channels (``out_channels``) unless set. ``attention_resolutions`` are downsampling factors (1 =
    input size); with ``len(channel_mult)`` levels only 1, 2, …, 2^(levels−1) exist. ``num_heads`` ×
    ``head_channels`` is the inner width of every attention layer (``num_heads=None``: one head per
    ``head_channels`` channels). ``time_scale`` multiplies t ∈ [0, 1] before the sinusoidal embedding.
    """

    in_channels: int | None = None
    out_channels: int = 4
    model_channels: int = 128
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    num_res_blocks: int = 3
    attention_resolutions: list[int] = field(default_factory=lambda: [8])
    num_heads: int | None = 4
    head_channels: int = 64
    dropout: float = 0.0
    norm_groups: int = 32
    time_scale: float = 1.0
    step_conditioning: bool = False  # also embed the step size d (shortcut students); zero at init

    def downsampling_factors(self) -> list[int]:
        """The factors the levels run at: 1, 2, …, 2^(levels−1)."""
        return [2**level for level in range(len(self.channel_mult))]

    def attention_heads(self, channels: int) -> int:
        """Heads of the attention layer in a level with ``channels`` channels."""
        return self.num_heads if self.num_heads is not None else channels // self.head_channels


CONSISTENCY_MODES = ("none", "adain", "wavelet", "projection")  # the steps of fmboost.consistency


@dataclass
class FlowConfig:
    """The objective, the upsampling of the context and the default sampler of a CFM stage.

    A few-step *student* (objectives ``reflow`` and ``shortcut``, :mod:`fmboost.objectives.distillation`)
    records the stage it was distilled from in ``teacher`` and the step counts it was trained for in
    ``trained_nfe``; ``nfe`` is then its default, the smallest of them. ``bootstrap_share`` is the
    share of a shortcut batch trained on self-consistency targets.

    ``consistency`` is the stage's default consistency step at inference (:mod:`fmboost.consistency`):
    ``projection``, which a validation split also chose for stages fine-tuned on degraded inputs
    (``docs/sr4x.md``); a stage whose inputs call for another sets its own.
    """

    objective: str = "cfm"
    upsampling: str = "psu_roundtrip"
    noise_aug_step: int = 400
    scale_factor: int = 2
    solver: str = "euler"
    nfe: int = 40
    atol: float = 1e-5
    rtol: float = 1e-5
    teacher: str | None = None
    trained_nfe: list[int] = field(default_factory=list)
    bootstrap_share: float = 0.25
    consistency: str = "projection"


@dataclass
class FirstStageConfig:
    """Which frozen autoencoder maps images to latents, and how (see :mod:`fmboost.first_stage`).

    The same type is the *record* of a first stage: :meth:`FirstStage.record` fills in everything
    (absolute paths, the actual scale and shift, the tiling); encoding stores it in the manifest, a
    trained model carries it in its ``config.json``, and ``build_first_stage(record)`` rebuilds exactly
    that first stage, so inference computes the latents and contexts training saw.
    """

    name: str = "identity"
    path: str | None = None
    config: str | None = None
    subfolder: str | None = None
    scale: float | None = None
    shift: float | None = None
    tile_size: int | None = 64
    tile_overlap: int = 16

    @classmethod
    def from_record(cls, record: "dict[str, Any] | FirstStageConfig") -> "FirstStageConfig":
        """The record as a manifest or model config stores it (JSON); unknown keys are derived data.

        Records written before the path had its own key named it ``source``.
        """
        if isinstance(record, FirstStageConfig):
            return record
        fields = {key: value for key, value in record.items() if key in cls.__dataclass_fields__}
        if "path" not in fields and record.get("source") not in (None, "none"):
            fields["path"] = record["source"]
        return cls(**fields)


@dataclass
class DataConfig:
    """Latent shards for training and validation (written by ``make encode-shards``)."""

    train: str = "data/latents/sample"
    validation: str | None = None
    batch_size: int = 8
    num_workers: int = 2
    shuffle_buffer: int = 1000
    crop_size: int | None = None
    pin_memory: bool = True  # page-locked batches for asynchronous host-to-GPU copies (CUDA only)
    prefetch_factor: int = 2  # batches each worker prepares ahead (with num_workers > 0)


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
    bf16_weights: bool = False  # bf16 module weights, fp32 masters in the optimizer (needs bf16 precision)
    ema_beta: float = 0.999
    ema_power: float = 0.75
    ema_update_after_step: int = 0
    log_every: int = 50
    stop_check_seconds: float = 30.0  # a stop request (pre-emption) is honoured within about this time
    # A stalled rank ends the job when no rank made progress for this long (0: no watchdog); validations
    # and checkpoints have their own allowances. Sized for the paper configs on GPUs (a step: 0.15 s).
    stall_timeout_seconds: float = 300.0
    stall_timeout_validation_seconds: float = 1800.0
    stall_timeout_checkpoint_seconds: float = 1800.0
    validate_every: int = 5000
    checkpoint_every: int = 10_000
    keep_checkpoints: int = 3  # 0 keeps all; 1 is refused: the one being written may be the broken one
    resume: str = "auto"
    # Optimizer steps whose batches every rank draws and discards instead of training on them (the steps
    # a non-finite loss error names, when the data explains it); the step then trains on the next ones.
    skip_steps: list[int] = field(default_factory=list)
    keep_global_batch: bool = True  # on another number of ranks, rescale grad_accum where it divides
    init_from: str | None = None  # an exported stage or run whose weights (and EMA) start a fresh run
    channels_last: bool = False  # NHWC U-Net activations (faster convolutions on tensor cores)
    channels_last_group_norm: bool = False  # GroupNorm reads NHWC in place (needs channels_last)
    compile: bool = False  # torch.compile the U-Net; falls back to eager with a warning if it cannot
    fused_optimizer: bool = False  # AdamW as one fused kernel over all parameters (same update rule)


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


@dataclass(frozen=True)
class MemoryBound:
    """What bounds inference memory, whatever the input size.

    The flow network runs in tiles of at most ``flow_tile_size`` latent positions per side (0: never
    tile), neighbours sharing ``flow_tile_overlap`` positions; what remains grows with the result's
    area (latents, decoded pixels), so results above ``max_output_pixels`` are refused before any work
    (0: no limit). Peak memory is then about a constant per output pixel plus one tile's activations.
    """

    flow_tile_size: int = 256
    flow_tile_overlap: int = 32
    max_output_pixels: int = 8192 * 8192


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


def require(condition: bool, key: str, message: str) -> None:
    """Raise a :class:`ConfigError` naming ``key`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


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
