"""Shared setup for training tests: a tiny latent dataset and a tiny CPU config."""

import os
import subprocess
import sys
from pathlib import Path

from data_pipeline.encode_shards import run
from tests.conftest import REPO_ROOT
from tests.data_pipeline.builders import good_shards, tiny_encode_config

TINY_MODEL = [
    "model.out_channels=3",
    "model.model_channels=16",
    "model.channel_mult=[1,2]",
    "model.num_res_blocks=1",
    "model.attention_resolutions=[2]",
    "model.num_heads=2",
    "model.head_channels=16",
    "model.norm_groups=4",
    "first_stage.name=identity",
    "flow.nfe=2",
]


def build_latents(root: Path) -> Path:
    """4 training shards and 1 validation shard of 32 px pixel-space pairs."""
    run(tiny_encode_config(good_shards(root / "images", shards=5, per_shard=8), root / "latents"))
    return root / "latents"


def training_overrides(latents: Path, run_dir: Path, **train) -> list[str]:
    settings = {
        "max_steps": 6,
        "log_every": 1,
        "validate_every": 3,
        "checkpoint_every": 3,
        "lr": 1e-3,
        "warmup_steps": 2,
        "precision": "fp32",
        "run_dir": str(run_dir),
    }
    settings.update(train)
    return [
        *TINY_MODEL,
        f"data.train={latents}/shards/{{000000..000003}}.tar",
        f"data.validation={latents}/shards/000004.tar",
        "data.batch_size=4",
        "eval.num_images=4",
        "eval.nfe=2",
        "data.num_workers=0",
        "data.shuffle_buffer=8",
        "deepspeed.zero_optimization.stage=1",
        "cluster.request_gpus=false",
        "cluster.cpus_per_task=1",
        *[f"train.{key}={value}" for key, value in settings.items()],
    ]


def run_on_two_ranks(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """``fmboost.train`` with ``args`` under torchrun, two processes on this machine."""
    port = f"--master_port={29700 + os.getpid() % 200}"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", port]
    command += ["-m", "fmboost.train", *args]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
