"""Configuration of ``evaluation/run_experiment.py`` (``configs/experiments/*.yaml``).

An experiment names a data recipe (image folders and encode settings), a base training config and a
list of *arms* (a name and training overrides each). Every arm trains on the same encoded data with the
same budget and is evaluated on one held-out set with one seed list.

An override value may name what the experiment makes: ``@ARM`` is that arm's run folder (e.g.
``train.init_from=@cfm``: a student starts from the teacher arm), ``@pairs`` the teacher pairs of the
``pairs`` section (made from its teacher arm once that arm is trained), ``@degraded_latents`` the
training images encoded with the ``degradation`` section. Such an arm trains after the arms it names.

``degradation`` (Real-ESRGAN's model, :mod:`data_pipeline.degradation`; ``null``: none) degrades the
low-res side of the evaluation images, with the recipe's seed so every arm sees the same inputs, and
of a second encoding of the training images (``@degraded_latents``); the plain training data stays
clean.

``validation_every`` sets aside every N-th remaining training image (after the held-out ones) as a
*validation* split: neither trained on nor part of the held-out evaluation, encoded like the evaluation
images and evaluated the same way into ``validation.json``/``validation.md``. Choices made from results
(a default consistency step per stage kind) are made there, never on the held-out images.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_pipeline.config import EncodeConfig, validate_encode_config
from data_pipeline.degradation import DegradationConfig, validate_degradation
from evaluation.config import EvalRunConfig, validate_eval_config
from fmboost.config import FirstStageConfig, LoggingConfig, merge_layers, read_layers
from fmboost.errors import ConfigError
from fmboost.first_stage import validate_first_stage

CLUSTER_BACKENDS = ("local", "slurm", "auto")


@dataclass
class ArmConfig:
    """One arm: a name for the results and the training overrides that make it differ."""

    name: str = ""
    overrides: list[str] = field(default_factory=list)


@dataclass
class ExperimentPairsConfig:
    """Teacher pairs for student arms (``data.train=@pairs``): ``teacher`` is the arm whose run teaches."""

    teacher: str = ""
    solver: str = "euler"
    nfe: int = 40
    seed: int = 0
    batch_size: int = 16


@dataclass
class ExperimentClusterConfig:
    """Where the arms train (``cluster/submit.py`` flags); Slurm runs the arms in parallel."""

    backend: str = "local"
    nodes: int = 1
    gpus_per_node: int = 1
    partition: str | None = None
    time_minutes: int | None = None


@dataclass
class ExperimentConfig:
    """See the module docstring; every relative path is relative to the working directory."""

    name: str = "experiment"
    train_images: list[str] = field(default_factory=list)
    eval_images: list[str] = field(default_factory=list)
    holdout_every: int = 0
    validation_every: int = 0
    results_dir: str = "results/experiment"
    first_stage: FirstStageConfig = field(default_factory=FirstStageConfig)
    encode: dict[str, Any] = field(default_factory=dict)
    degradation: DegradationConfig | None = None
    train_crops_per_image: int = 1
    eval_crops_per_image: int = 1
    train_config: str = "configs/experiments/mini_train.yaml"
    train_overrides: list[str] = field(default_factory=list)
    arms: list[ArmConfig] = field(default_factory=list)
    pairs: ExperimentPairsConfig | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)
    cluster: ExperimentClusterConfig = field(default_factory=ExperimentClusterConfig)
    logging: LoggingConfig = field(default_factory=lambda: LoggingConfig(experiment="fmboost-experiments"))

    def encode_config(
        self, images: Path, output: Path, crops_per_image: int, seed: int, save_images: bool, degraded: bool
    ) -> EncodeConfig:
        """The data recipe applied to one image folder (``save_images``: keep the pixels as ground truth,
        whatever the recipe says; ``degraded``: with the experiment's degradation)."""
        settings = {**self.encode, "input": str(images), "output": str(output)}
        settings |= {"crops_per_image": crops_per_image, "seed": seed}
        if save_images:
            settings["save_images"] = True
        config = merge_layers(
            EncodeConfig, [("encode", settings), ("first_stage", {"first_stage": self.first_stage})]
        )
        config.degradation = self.degradation if degraded else None
        validate_encode_config(config)
        return config

    def eval_run_config(self, models: list[str], data: Path, results_dir: Path) -> EvalRunConfig:
        """The evaluation of every arm on the held-out latents."""
        fixed = {
            "benchmark": "upsampling",
            "models": models,
            "data": str(data),
            "results_dir": str(results_dir),
        }
        config = merge_layers(EvalRunConfig, [("evaluation", self.evaluation), ("experiment", fixed)])
        validate_eval_config(config)
        return config


DEGRADED = "degraded_latents"
RESERVED_NAMES = ("pairs", DEGRADED)


def references(overrides: list[str]) -> list[str]:
    """The names an arm's overrides refer to with ``@NAME`` (an arm, ``pairs``, ``degraded_latents``)."""
    return [value[1:] for _, _, value in (o.partition("=") for o in overrides) if value.startswith("@")]


def validate_references(config: ExperimentConfig) -> None:
    """``@ARM`` names an earlier arm; ``@pairs`` needs a ``pairs`` section whose teacher is an earlier arm."""
    earlier: list[str] = []
    for arm in config.arms:
        for name in references(arm.overrides):
            if name == DEGRADED:
                if config.degradation is None:
                    raise ConfigError(
                        f"arms: {arm.name} trains on @{DEGRADED}, which needs a degradation section"
                    )
            elif name == "pairs":
                if config.pairs is None or config.pairs.teacher not in earlier:
                    raise ConfigError(
                        f"arms: {arm.name} trains on @pairs, which needs a pairs section whose teacher is "
                        f"an arm listed before it (arms before it: {earlier})"
                    )
            elif name not in earlier:
                raise ConfigError(f"arms: {arm.name} refers to @{name}, which is not an arm listed before it")
        earlier.append(arm.name)


def validate_experiment_config(config: ExperimentConfig) -> None:
    for key in ("train_images", "eval_images"):
        folders = getattr(config, key)
        if not folders:
            raise ConfigError(f"{key}: name at least one image folder, e.g. {key}=[/data/photos/train]")
        missing = [folder for folder in folders if not Path(folder).expanduser().is_dir()]
        if missing:
            raise ConfigError(f"{key}: {missing[0]} is not a folder of images")
    names = [arm.name for arm in config.arms]
    reserved = set(names) & set(RESERVED_NAMES)
    if not names or any(not name for name in names) or len(set(names)) != len(names) or reserved:
        raise ConfigError(
            f"arms: give each arm a distinct, non-empty name other than {' and '.join(RESERVED_NAMES)} "
            f"(got {names})"
        )
    validate_references(config)
    if min(config.holdout_every, config.validation_every) < 0:
        raise ConfigError("holdout_every and validation_every must not be negative")
    if config.train_crops_per_image < 1 or config.eval_crops_per_image < 1:
        raise ConfigError("the crops per image must be positive")
    if config.cluster.backend not in CLUSTER_BACKENDS:
        raise ConfigError(f"cluster.backend: choose one of {', '.join(CLUSTER_BACKENDS)}")
    if not Path(config.train_config).is_file():
        raise ConfigError(f"train_config: {config.train_config} does not exist")
    validate_first_stage(config.first_stage)
    if config.degradation is not None:
        validate_degradation(config.degradation)


IMAGE_FOLDER_KEYS = ("train_images", "eval_images")


def load_experiment_config(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Defaults ← YAML ← overrides; ``train_images=DIR`` (one folder) is taken as ``[DIR]``."""
    layers = read_layers(path, overrides)
    for _, layer in layers:
        for key in IMAGE_FOLDER_KEYS:
            if isinstance(layer.get(key), str):
                layer[key] = [layer[key]]
    config = merge_layers(ExperimentConfig, layers)
    validate_experiment_config(config)
    return config
