"""Train a CFM stage under torchrun (or as one process).

    torchrun --nproc_per_node 8 -m fmboost.train configs/cfm_1k.yaml [key=value ...]

On a Slurm cluster prefer ``python cluster/submit.py``, which sets the same environment through
submitit and adds pre-emption handling.
"""

import argparse
import logging

from fmboost.cli import exit_without_collecting, report_errors
from fmboost.config_loading import load_config
from fmboost.distributed import DistributedEnv, leave_process_group


def configure_logging(env: DistributedEnv) -> None:
    """INFO on rank 0, warnings only on the other ranks, each line tagged with its rank."""
    logging.basicConfig(
        level=logging.INFO if env.is_main else logging.WARNING,
        format=f"%(asctime)s [rank {env.rank}] %(levelname)s %(name)s: %(message)s",
        force=True,
    )


@report_errors()
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fmboost.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="training config YAML, e.g. configs/cfm_1k.yaml")
    parser.add_argument("overrides", nargs="*", help="config overrides as section.key=value")
    args = parser.parse_args(argv)
    env = DistributedEnv.from_environ()
    configure_logging(env)
    from fmboost.training.trainer import train

    result = train(load_config(args.config, args.overrides), env)
    leave_process_group()
    if env.is_main:
        print(f"{result.status} at step {result.step}")
        print(f"exported model: {result.export_dir}")
        print(f"MLflow run: {result.mlflow_run_id} in {result.run_dir}")
    return 0


if __name__ == "__main__":
    exit_without_collecting(main())
