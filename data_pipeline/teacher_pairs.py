"""Run a trained stage (the teacher) over latent shards and write its (start, result) pairs as shards.

    python -m data_pipeline.teacher_pairs [CONFIG] teacher=RUN input=LATENTS output=PAIRS [key=value ...]
    python cluster/submit.py --array N configs/distill/pairs_1k.yaml      # the same, as N Slurm tasks

Few-step students (``flow.objective=reflow``) learn the teacher's map from the ODE start point to its
full-solver result. For every sample the start point is the noise-augmented context drawn from a seed
of its own (``seed`` and the key, recorded in its ``.json``), rounded to the float16 it is stored in,
and integrated by the teacher with ``solver`` and ``nfe`` (default Euler 40, paper Tab. 1). Pair shards
are latent shards (:mod:`fmboost.data.shards`): ``latent`` is the teacher's result, ``latent_start``
the start, ``latent_real`` the source's high-res latent; context, low-res latent, caption and image are
copied. One output shard per input shard; a shard is complete once its ``.stats.json`` exists, so a
rerun (after ``kill -9`` or a pre-emption) skips complete shards and redoes the rest, byte for byte.
The manifest's ``pairs`` records the teacher (its path and config), the solver, the NFE and the source.
"""

import argparse
import json
import logging
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm
from webdataset import TarWriter

from data_pipeline.job_cli import add_config_arguments, run_from_command_line
from data_pipeline.latent_encoder import unstorable
from data_pipeline.manifest import refuse_mixed_settings, update_manifest
from data_pipeline.pairs_config import PairsConfig, load_pairs_config
from fmboost.atomic_files import atomic_path, write_json_atomically
from fmboost.cli import exit_without_collecting, report_errors
from fmboost.data import shards as schema
from fmboost.data.dataset import SampleTransform, check_compatible, decode_sample, resolve_dataset
from fmboost.data.streams import raw_samples
from fmboost.devices import resolve_device, resolve_precision
from fmboost.errors import FMBoostError
from fmboost.flow.sampling import solve_ode
from fmboost.models import FMBoostModel
from fmboost.models.fmboost_model import CONFIG_NAME, find_export
from fmboost.objectives.flow_matching import FlowMatchingObjective
from fmboost.randomness import keyed_seed
from fmboost.task_split import task_share

logger = logging.getLogger("data_pipeline.teacher_pairs")

COPIED = (schema.LATENT_LOWRES, schema.LATENT_PSU, schema.CAPTION, schema.IMAGE)


class Teacher:
    """A flow-matching stage that integrates given start points (with its context) to its results."""

    def __init__(self, path: str, device: torch.device, precision: str) -> None:
        self.directory = find_export(path).resolve()
        self.model = FMBoostModel.from_pretrained(self.directory, device=device)
        objective = self.model.objective
        if not isinstance(objective, FlowMatchingObjective) or objective.step_conditioned:
            raise FMBoostError(
                f"{self.directory} is a {objective.name} stage; a teacher integrates an ODE (cfm, reflow)",
                "teacher",
            )
        self.device = device
        self.autocast = (
            torch.autocast(device.type, torch.bfloat16)
            if resolve_precision(precision, device) == "bf16"
            else nullcontext()
        )

    def start_points(self, z_up: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        """Each sample's noise-augmented context from its own seed, as float16 storage keeps it."""
        starts = [
            self.model.objective.start_point(context[None], torch.Generator().manual_seed(seed))
            for context, seed in zip(z_up, seeds, strict=True)
        ]
        return torch.cat(starts).half().float()

    @torch.no_grad()
    def integrate(self, x0: torch.Tensor, z_up: torch.Tensor, solver: str, nfe: int) -> torch.Tensor:
        net, objective = self.model.net, self.model.objective
        z_up, x0 = z_up.to(self.device), x0.to(self.device)
        with self.autocast:
            solution = solve_ode(lambda x, t: objective.velocity(net, x, t, z_up), x0, solver=solver, nfe=nfe)
        return solution.x1.float().cpu()

    def record(self, config: PairsConfig) -> dict[str, Any]:
        return {
            "teacher": str(self.directory),
            "teacher_config": json.loads((self.directory / CONFIG_NAME).read_text()),
            "solver": config.solver,
            "nfe": config.nfe,
            "seed": config.seed,
        }


def pair_record(raw: dict, start: np.ndarray, result: np.ndarray, seed: int) -> dict[str, bytes | str]:
    metadata = json.loads(raw[schema.METADATA]) if schema.METADATA in raw else {}
    metadata["pair"] = {"start_seed": seed}
    record: dict[str, bytes | str] = {
        "__key__": raw["__key__"],
        schema.LATENT: schema.encode_array(result),
        schema.LATENT_START: schema.encode_array(start),
        schema.LATENT_REAL: raw[schema.LATENT],
        schema.METADATA: json.dumps(metadata, sort_keys=True).encode("utf-8"),
    }
    return record | {name: raw[name] for name in COPIED if name in raw}


def pair_shard(
    source: Path,
    index: int,
    manifest: schema.Manifest,
    teacher: Teacher,
    config: PairsConfig,
    root: Path,
    progress: tqdm,
) -> schema.ShardStats:
    """Write ``shards/NNNNNN.tar`` of pairs for one input shard; its stats file is written last."""
    final = schema.shard_path(root, index)
    final.unlink(missing_ok=True)  # a tar without its stats file was never declared complete
    stats = schema.ShardStats(source=str(source))
    transform = SampleTransform(manifest, teacher.model.flow_config.upsampling)
    scale, shift = manifest.scale, manifest.shift

    def flush(writer: TarWriter, pending: list[dict]) -> None:
        keys = [raw["__key__"] for raw in pending]
        seeds = [keyed_seed(config.seed, key) for key in keys]  # of the start points
        z_up = torch.stack([transform(decode_sample(raw, images=False), None)["z_up"] for raw in pending])
        x0 = teacher.start_points(z_up, seeds)
        results = teacher.integrate(x0, z_up, config.solver, config.nfe) / scale + shift  # stored unscaled
        for raw, start, result, seed in zip(pending, x0.numpy(), results.numpy(), seeds, strict=True):
            if (refused := unstorable({"the teacher's result": result})) is not None:
                stats.reject(raw["__key__"], *refused)
                continue
            writer.write(pair_record(raw, start, result, seed))
            stats.seen += 1
            stats.written += 1
        progress.update(len(pending))

    with atomic_path(final) as partial, open(partial, "wb") as handle:
        writer = TarWriter(handle, encoder=False, mtime=0, user="fmboost", group="fmboost", mode=0o444)
        pending: list[dict] = []
        for raw in raw_samples(str(source)):
            pending.append(raw)
            if len(pending) == config.batch_size:
                flush(writer, pending)
                pending = []
        if pending:
            flush(writer, pending)
        writer.close()
    write_json_atomically(schema.stats_path(root, index), asdict(stats))
    return stats


def pairs_manifest(source: schema.Manifest, source_root: Path, teacher: Teacher, config: PairsConfig):
    """The pair dataset's manifest before any shard is complete: the source's, plus ``pairs``."""
    return schema.Manifest(
        **{
            **asdict(source),
            "source_shards": [
                str(schema.shard_path(source_root, index)) for index in range(len(source.source_shards))
            ],
            "completed_shards": [],
            "pairs": {**teacher.record(config), "source": str(source_root)},
        }
    )


def run(config: PairsConfig) -> dict[str, Any]:
    """Make this task's share of the pair shards; returns what was done."""
    started = time.perf_counter()
    try:
        dataset = resolve_dataset(config.input)
    except FMBoostError as error:
        raise FMBoostError(error.message, "input") from None
    device = resolve_device(config.device)
    teacher = Teacher(config.teacher, device, config.precision)
    flow = teacher.model.flow_config
    try:
        check_compatible(
            dataset.manifest, teacher.model.latent_channels, flow.scale_factor, None, flow.upsampling
        )
    except FMBoostError as error:
        raise FMBoostError(
            f"the teacher {teacher.directory} cannot run on {config.input}: {error}", "input"
        ) from None
    root = Path(config.output).expanduser()
    try:
        (root / schema.SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise FMBoostError(f"{root} (or a folder above it) is a file, not a folder", "output") from None
    base = pairs_manifest(dataset.manifest, dataset.root.resolve(), teacher, config)
    refuse_mixed_settings(root, base)
    update_manifest(root, base)

    task_index, num_tasks = task_share(config.task_index, config.num_tasks)
    indices = [int(path.stem) for path in dataset.shards]
    mine = [(path, i) for path, i in zip(dataset.shards, indices, strict=True) if i % num_tasks == task_index]
    todo = [(path, i) for path, i in mine if not schema.stats_path(root, i).is_file()]
    logger.info(
        "task %d/%d: %d of %d shards are mine, %d already complete; teacher %s, %s %d NFE on %s",
        task_index,
        num_tasks,
        len(mine),
        len(indices),
        len(mine) - len(todo),
        teacher.directory,
        config.solver,
        config.nfe,
        device,
    )
    written = 0
    with tqdm(total=None, unit="pair", desc=f"task {task_index}", dynamic_ncols=True) as progress:
        for path, index in todo:
            progress.set_postfix_str(path.name)
            written += pair_shard(path, index, dataset.manifest, teacher, config, root, progress).written
    manifest = update_manifest(root, base)
    seconds = time.perf_counter() - started
    logger.info(
        "pairs %s: %d/%d shards complete, %d pairs (%d written by this task in %.0f s, %d teacher NFE each)",
        root,
        len(manifest.completed_shards),
        len(indices),
        manifest.totals["written"],
        written,
        seconds,
        config.nfe,
    )
    return {"task_index": task_index, "shards_done": len(todo), "written": written}


EPILOG = """config keys (override any with key=value):
  teacher      the trained stage: an exported model directory, a checkpoint or a training run
  input        its latent dataset (a directory written by make encode-shards)
  output       the pair dataset to write (manifest.json + shards/)
  solver       the teacher's fixed-step solver: euler | midpoint | rk4 (default euler)
  nfe          the teacher's network evaluations per sample (default 40, paper Tab. 1)
  seed         seed of the start points (each sample's own seed is derived from it and its key)
  batch_size   samples per teacher batch (the result does not depend on it)
  device       auto | cpu | cuda | cuda:N
  precision    auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32
  task_index, num_tasks
               split of the shards over tasks (default: from Slurm, else 0 of 1)
"""


@report_errors()
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_pipeline.teacher_pairs",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, "pairs config YAML (configs/distill/pairs_*.yaml)")
    return run_from_command_line(parser, argv, load_pairs_config, run)


if __name__ == "__main__":
    exit_without_collecting(main())
