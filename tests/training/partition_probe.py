"""Load a checkpoint on this job's ranks and write what each rank's optimizer then holds (run by torchrun).

    torchrun --nproc_per_node W tests/training/partition_probe.py CONFIG CHECKPOINT OUT [key=value ...]

Every rank builds the model and the DeepSpeed engine as the trainer does, restores CHECKPOINT through
the trainer's own :class:`Checkpointer` (re-cutting the ZeRO partitions when W differs from the ranks
that wrote it), and writes ``OUT/rank{R}.safetensors``: its flat fp32 masters, both Adam moments and
the step, with the parameter groups' settings in the metadata. The tests compare those partitions with
the checkpoint's, bit for bit.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from fmboost.config_loading import load_config
from fmboost.distributed import DistributedEnv, device_for, init_distributed
from fmboost.models import EMA, FMBoostModel
from fmboost.training.checkpointing import Checkpointer, load_trainer_state
from fmboost.training.engine_setup import build_engine


def main(config_path: str, checkpoint: str, out: str, *overrides: str) -> None:
    config = load_config(config_path, list(overrides))
    env = DistributedEnv.from_environ()
    device = device_for(env)
    init_distributed(env)
    directory = Path(checkpoint)
    state = load_trainer_state(directory)
    model = FMBoostModel.from_config(config, config.first_stage)
    ema = EMA(model, config.train.ema_beta, config.train.ema_power, config.train.ema_update_after_step)
    size = config.model.out_channels
    engine, _, _ = build_engine(model, config, device, (config.data.batch_size, size, 16, 16))
    generator = torch.Generator(device)
    Checkpointer(directory.parent.parent, engine, ema, generator, env.rank, 0, 0).restore(directory, state)
    base = engine.optimizer.optimizer
    flat = base.param_groups[0]["params"][0]
    held = {"fp32": flat.detach().float(), **{k: v.float() for k, v in base.state[flat].items()}}
    groups = [{k: v for k, v in group.items() if k != "params"} for group in base.param_groups]
    Path(out).mkdir(parents=True, exist_ok=True)
    save_file(
        {key: tensor.reshape(-1).contiguous() for key, tensor in held.items()},
        str(Path(out) / f"rank{env.rank}.safetensors"),
        metadata={"param_groups": json.dumps(groups, default=str)},
    )
    torch.distributed.barrier()


if __name__ == "__main__":
    main(*sys.argv[1:])
