"""Configuration of ``evaluation/run_benchmarks.py`` (``configs/eval/*.yaml``)."""

from dataclasses import dataclass, field
from pathlib import Path

from fmboost.config import CONSISTENCY_MODES, LoggingConfig, merge_layers, read_layers
from fmboost.errors import ConfigError
from fmboost.flow.sampling import SOLVERS
from fmboost.inference.upsampling_eval import BASELINES

BENCHMARKS = ("upsampling", "zero_shot")
METRICS = ("psnr", "ssim", "hf_ratio", "spectral_distance", "fid", "pfid_fmboost", "pfid_anyres", "clip")
DETAIL_METRICS = ("hf_ratio", "spectral_distance")
FEATURE_METRICS = ("fid", "pfid_fmboost", "pfid_anyres")
DEMO_RUN = "runs/demo"  # what `make demo` trains: the default model to evaluate


@dataclass
class EvalRunConfig:
    """What to evaluate, on which data, with which metrics, and where to report.

    Few-step students: ``teacher`` names one of the evaluated models (by its label, e.g. ``cfm`` for
    ``runs/cfm``); its output with ``teacher_solver`` at ``teacher_nfe`` from the *same* start noise is the
    reference of ``teacher_psnr`` for every entry. ``diversity_seeds`` extra seeds per image give
    ``diversity`` (0: not measured). ``extra_nfe`` adds NFE values for single models (``{cfm: [40]}``).

    ``require_degraded``: the data must have been encoded with a degradation model (the degraded
    benchmark, ``configs/eval/sr4x_degraded.yaml``), so that clean latents are never reported as degraded.

    ``compile``: torch.compile the flow networks and the autoencoder (CUDA graphs on CUDA); each model is
    warmed up on the first batch before anything is timed, so ``s/img`` excludes compilation (a smaller
    last batch compiles once more).

    ``models`` are FMBoost model directories, checkpoints or training runs (their latest checkpoint; by
    default the run ``make demo`` trains); for ``zero_shot`` they are the CFM
    stages, applied in order after ``base``. ``baselines`` need no model (see
    :mod:`fmboost.inference.upsampling_eval`): ``bicubic`` enlarges the decoded low-res image,
    ``context`` decodes the model's upsampled context, ``latent_bilinear`` (an ablation) resizes the
    low-res latent, ``context`` is the model's own upsampled context (PSU), i.e. the ODE start without noise,
    and ``first_stage_ceiling`` decodes the ground truth's own latent: what no latent method can beat.

    ``consistency``: every model and baseline is scored once per consistency step listed
    (:mod:`fmboost.consistency`: ``none``, ``adain``, ``wavelet``, ``projection``), from the same samples.
    """

    benchmark: str = "upsampling"
    models: list[str] = field(default_factory=lambda: [DEMO_RUN])
    baselines: list[str] = field(
        default_factory=lambda: ["bicubic", "context", "latent_bilinear", "first_stage_ceiling"]
    )
    data: str = "data/latents/sample/shards/000004.tar"
    require_degraded: bool = False
    compile: bool = False
    num_images: int = 64
    batch_size: int = 8
    consistency: list[str] = field(default_factory=lambda: ["none"])
    solvers: list[str] = field(default_factory=lambda: ["euler"])
    nfe: list[int] = field(default_factory=lambda: [1, 2, 4, 10, 20, 40, 50])
    extra_nfe: dict[str, list[int]] = field(default_factory=dict)
    teacher: str | None = None
    teacher_solver: str = "euler"
    teacher_nfe: int = 40
    diversity_seeds: int = 0
    metrics: list[str] = field(default_factory=lambda: [m for m in METRICS if m != "clip"])
    require_feature_metrics: bool = False
    inception_path: str = "~/.cache/clean-fid/inception-2015-12-05.pt"
    clip_model: str = "openai/clip-vit-large-patch14"
    pfid_crop: int = 512
    pfid_crops_per_image: int = 4
    anyres_crop: int = 299
    base: str | None = None
    base_steps: int = 25
    guidance_scale: float = 7.5
    seed: int = 0
    device: str = "auto"
    results_dir: str = "results/eval"
    task_index: int | None = None
    num_tasks: int | None = None
    logging: LoggingConfig = field(default_factory=lambda: LoggingConfig(experiment="fmboost-eval"))


def choices(values: list[str], allowed: tuple[str, ...], key: str) -> None:
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ConfigError(f"{key}: unknown {', '.join(unknown)}; choose from {', '.join(allowed)}")


def validate_eval_config(config: EvalRunConfig) -> None:
    choices([config.benchmark], BENCHMARKS, "benchmark")
    choices(config.metrics, METRICS, "metrics")
    choices(config.solvers, SOLVERS, "solvers")
    choices(config.baselines, BASELINES, "baselines")
    choices(config.consistency, CONSISTENCY_MODES, "consistency")
    if not config.consistency or len(set(config.consistency)) < len(config.consistency):
        raise ConfigError("consistency: list each step once, at least one (none: the raw output)")
    if config.benchmark == "zero_shot" and not config.base:
        raise ConfigError(
            "base: the zero_shot benchmark needs a base LDM (a diffusers pipeline directory or hub id)"
        )
    if config.benchmark == "zero_shot" and config.baselines:
        raise ConfigError(
            "baselines: only the upsampling benchmark has model-free baselines; set baselines=[]"
        )
    if not config.models and not config.baselines:
        raise ConfigError("models: nothing to evaluate (no models and no baselines)")
    if config.models == [DEMO_RUN] and not Path(DEMO_RUN).exists():
        raise ConfigError(
            f"models: the default model is the demo run {DEMO_RUN}, which does not exist yet; run "
            "`make demo` first, or pass models=[DIR] (a model directory, checkpoint or training run)"
        )
    if any(n < 1 for n in config.nfe) or config.num_images < 1 or config.batch_size < 1:
        raise ConfigError("nfe, num_images and batch_size must be positive")
    if (config.task_index is None) != (config.num_tasks is None):
        raise ConfigError("task_index and num_tasks: set both or neither")
    validate_student_metrics(config)


def validate_student_metrics(config: EvalRunConfig) -> None:
    """The keys that measure few-step students: a teacher reference and diversity over seeds."""
    if config.diversity_seeds < 0 or config.teacher_nfe < 1:
        raise ConfigError("diversity_seeds must not be negative and teacher_nfe must be positive")
    if any(n < 1 for values in config.extra_nfe.values() for n in values):
        raise ConfigError("extra_nfe: every NFE must be positive")
    if config.teacher is not None and config.benchmark != "upsampling":
        raise ConfigError("teacher: teacher_psnr is measured by the upsampling benchmark only")
    choices([config.teacher_solver], SOLVERS, "teacher_solver")


def load_eval_config(path: str | Path | None = None, overrides: list[str] | None = None) -> EvalRunConfig:
    config = merge_layers(EvalRunConfig, read_layers(path, overrides))
    validate_eval_config(config)
    return config
