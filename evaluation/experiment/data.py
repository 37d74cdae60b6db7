"""The experiment's data: latent shards of the training and evaluation images (and, with a degradation,
the degraded training images), and the teacher arm's pairs for the students. Each resumes."""

import logging
from pathlib import Path

from evaluation.experiment.config import ExperimentConfig

logger = logging.getLogger("evaluation.run_experiment")


def encode(config: ExperimentConfig, root: Path) -> dict[str, Path]:
    """Latent shards of the training, the evaluation (and the validation) images (resumable: complete
    shards are kept). Validation images are encoded as the evaluation images are, with their own seed."""
    from data_pipeline.encode_shards import run as encode_shards

    degraded = config.degradation is not None
    latents = {}
    for split, images, crops, seed, degrade in (
        ("train", "train", config.train_crops_per_image, 0, False),
        ("eval", "eval", config.eval_crops_per_image, 1, degraded),
        *(
            [("validation", "validation", config.eval_crops_per_image, 2, degraded)]
            if config.validation_every
            else []
        ),
        *([("train_degraded", "train", config.train_crops_per_image, 0, True)] if degraded else []),
    ):
        output = root / "latents" / split
        encode_config = config.encode_config(
            root / "images" / images, output, crops, seed, split in ("eval", "validation"), degrade
        )
        logger.info("encoding the %s images into %s%s", images, output, " (degraded)" if degrade else "")
        encode_shards(encode_config)
        latents[split] = output
    return latents


def make_pairs(config: ExperimentConfig, latents: dict[str, Path], root: Path) -> Path:
    """The teacher arm's (start, result) pairs over the training latents (resumable)."""
    from data_pipeline.pairs_config import PairsConfig, validate_pairs_config
    from data_pipeline.teacher_pairs import run as run_pairs

    settings = config.pairs
    output = root / "pairs"
    pairs = PairsConfig(
        teacher=str(root / "runs" / settings.teacher),
        input=str(latents["train"]),
        output=str(output),
        solver=settings.solver,
        nfe=settings.nfe,
        seed=settings.seed,
        batch_size=settings.batch_size,
    )
    validate_pairs_config(pairs)
    logger.info(
        "pairs: the %s arm's %s %d-NFE results into %s", settings.teacher, pairs.solver, pairs.nfe, output
    )
    run_pairs(pairs)
    return output
