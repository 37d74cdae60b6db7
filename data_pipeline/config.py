"""Configuration of the encoding job (``configs/encode/*.yaml``), validated like training configs."""

from dataclasses import dataclass, field
from pathlib import Path

from data_pipeline.degradation import DegradationConfig, validate_degradation
from fmboost.config import PRECISIONS, FirstStageConfig, merge_layers, read_layers
from fmboost.errors import ConfigError
from fmboost.first_stage import FIRST_STAGES
from fmboost.task_split import validate_task_split

PSU_VARIANTS = ("psu_roundtrip", "psu_pixel")
CROPS = ("center", "random", "random_window")
SMALL_IMAGE_POLICIES = ("reject", "upscale")


@dataclass
class EncodeConfig:
    """What to encode, how to preprocess it, and how to split the work.

    ``input`` is a brace pattern of img2dataset tars (``/data/{00000..00127}.tar``), a directory of
    tars, or a folder or zip of images (captions from sidecar ``.txt`` files), cut into shards of
    ``images_per_shard`` images.

    ``crop``: ``center`` or ``random`` take the square of the short side (resized to ``high_res``),
    centred or at a seeded offset; ``random_window`` takes ``high_res``² windows at the image's own
    resolution (no resizing, so fine detail stays as photographed). ``crops_per_image`` crops are taken
    from each image, each a sample of its own (``KEY_cNN``) with its box recorded in its ``.json``.
    """

    input: str = "data/sample/shards/{00000..00004}.tar"
    output: str = "data/latents/sample"
    first_stage: FirstStageConfig = field(default_factory=FirstStageConfig)
    high_res: int = 64
    low_res: int = 32
    psu_variant: str = "psu_roundtrip"
    degradation: DegradationConfig | None = None
    crop: str = "center"
    small_images: str = "reject"
    max_aspect_ratio: float | None = None
    crops_per_image: int = 1
    images_per_shard: int = 1000
    save_images: bool = True
    jpeg_quality: int = 95
    batch_size: int = 16
    num_workers: int = 2
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    task_index: int | None = None
    num_tasks: int | None = None


def _choice(value: str, choices: tuple[str, ...], key: str) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}")


def validate_encode_config(config: EncodeConfig) -> None:
    FIRST_STAGES.get(config.first_stage.name, "first_stage.name")
    _choice(config.psu_variant, PSU_VARIANTS, "psu_variant")
    _choice(config.crop, CROPS, "crop")
    _choice(config.small_images, SMALL_IMAGE_POLICIES, "small_images")
    _choice(config.precision, PRECISIONS, "precision")
    if config.low_res <= 0 or config.high_res % config.low_res:
        raise ConfigError(
            f"high_res ({config.high_res}) must be a whole multiple of low_res ({config.low_res})"
        )
    if config.max_aspect_ratio is not None and config.max_aspect_ratio < 1:
        raise ConfigError("max_aspect_ratio: must be at least 1 (long side / short side)")
    if config.crops_per_image < 1 or config.images_per_shard < 1:
        raise ConfigError("crops_per_image and images_per_shard must be positive")
    if config.crops_per_image > 1 and config.crop == "center":
        raise ConfigError(
            "crops_per_image: several centre crops would be identical; use crop=random or random_window"
        )
    if config.batch_size < 1 or config.num_workers < 0:
        raise ConfigError("batch_size must be positive and num_workers not negative")
    validate_task_split(config.task_index, config.num_tasks)
    if config.degradation is not None:
        validate_degradation(config.degradation)


def load_encode_config(path: str | Path | None = None, overrides: list[str] | None = None) -> EncodeConfig:
    """Defaults ← YAML file ← ``key=value`` overrides, validated."""
    config = merge_layers(EncodeConfig, read_layers(path, overrides))
    validate_encode_config(config)
    return config
