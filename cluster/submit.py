"""Submit FMBoost jobs with submitit: DeepSpeed training on Slurm or locally, and encoding arrays.

    python cluster/submit.py [--nodes N] [--gpus-per-node G] [--partition P] [--time MIN]
                             [--cluster auto|slurm|local] [--dry-run] [--wait] CONFIG [key=value ...]
    python cluster/submit.py --array N configs/encode/laion_1k.yaml [key=value ...]
    python cluster/submit.py --array N configs/distill/pairs_1k.yaml [key=value ...]
    python cluster/submit.py --array N configs/boost/folder.yaml [key=value ...]

A training config starts one task per GPU on every node; each task sets up the distributed
environment from submitit's JobEnvironment and runs the trainer. Jobs checkpoint and requeue
themselves on Slurm's time-limit/pre-emption signal. An encode config (top-level ``input``/``output``),
a teacher-pair config (top-level ``teacher``), a folder-boosting config (top-level ``input_dir``) or an
evaluation config (top-level ``benchmark``) with ``--array N`` runs N array tasks, each doing its share;
the last evaluation task merges the results.
"""

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import submitit
import yaml

from cluster.jobs import BoostJob, EncodeJob, EvaluationJob, PairsJob, TrainingJob, read_error_record
from fmboost.cli import exit_without_collecting, report_errors
from fmboost.config import to_yaml
from fmboost.config_loading import load_config
from fmboost.errors import ConfigError
from fmboost.tracking import default_tracking_uri

SRUN_WAIT_SECONDS = 120  # longer than a requeue's bound (cluster.jobs.REQUEUE_SECONDS) and its word


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python cluster/submit.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "config", help="training config (configs/cfm_1k.yaml) or encode config (configs/encode/*.yaml)"
    )
    parser.add_argument("overrides", nargs="*", help="config overrides as section.key=value")
    parser.add_argument("--nodes", type=int, help="number of nodes (default: cluster.nodes)")
    parser.add_argument(
        "--gpus-per-node", type=int, help="tasks (one per GPU) per node (default: cluster.gpus_per_node)"
    )
    parser.add_argument(
        "--partition", help="Slurm partition (default: cluster.partition, else the cluster default)"
    )
    parser.add_argument(
        "--time", type=int, metavar="MIN", help="time limit in minutes (default: cluster.time_minutes)"
    )
    parser.add_argument(
        "--cluster",
        choices=("auto", "slurm", "local"),
        default=None,
        help="auto: Slurm if sbatch is on PATH, else local processes (default: cluster.backend)",
    )
    parser.add_argument(
        "--cpus-per-task",
        type=int,
        help="CPUs per task (default: cluster.cpus_per_task; encoding: num_workers + 2)",
    )
    parser.add_argument(
        "--array",
        type=int,
        metavar="N",
        help="run an encode, pairs, folder-boosting or eval config as N array tasks",
    )
    parser.add_argument(
        "--job-dir",
        type=Path,
        help="submitit logs and pickles (default: RUN_DIR/submitit or OUTPUT/submitit)",
    )
    add_requeue_arguments(parser)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate, print the resolved config and job parameters, submit nothing",
    )
    parser.add_argument("--wait", action="store_true", help="wait for the job and print its result")
    return parser.parse_args(argv)


def add_requeue_arguments(parser: argparse.ArgumentParser) -> None:
    """When a training job checkpoints and requeues itself, and how often it may."""
    parser.add_argument(
        "--signal-delay",
        type=int,
        default=120,
        metavar="S",
        help="seconds before the time limit at which Slurm signals the job to checkpoint (default 120); "
        "training then checks for the signal at least every quarter of it",
    )
    parser.add_argument(
        "--max-requeues",
        type=int,
        default=100,
        metavar="N",
        help="how often a training job may reach its time limit and be requeued from its checkpoint "
        "(default 100; submitit's own default, 3, would end a long run after four time limits)",
    )
    parser.add_argument(
        "--max-stall-requeues",
        type=int,
        default=3,
        metavar="N",
        help="how often a training job that stalled (no rank made progress for train.stall_timeout_seconds) "
        "requeues itself without a new checkpoint in between before it gives up (default 3)",
    )
    parser.add_argument(
        "--max-failure-requeues",
        type=int,
        default=3,
        metavar="N",
        help="how often a training job that lost a rank (killed, crashed, failed with an error that is not "
        "the user's to fix) requeues itself without a new checkpoint in between before it gives up "
        "(default 3); a user error is never requeued",
    )


def choose_backend(requested: str) -> str:
    if requested == "auto":
        backend = "slurm" if shutil.which("sbatch") else "local"
        print(f"cluster: {backend} ({'sbatch found on PATH' if backend == 'slurm' else 'no sbatch on PATH'})")
        return backend
    if requested == "slurm" and not shutil.which("sbatch"):
        raise ConfigError(
            "--cluster slurm: sbatch is not on PATH; use --cluster local to run on this machine"
        )
    return requested


def config_kind(path: str) -> str:
    """``pairs`` (top-level teacher), ``encode`` (top-level input/output), ``boost`` (top-level
    input_dir), ``evaluation`` (top-level benchmark) or ``training``."""
    try:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return "training"  # load_config reports the problem with its own message
    if isinstance(loaded, dict) and "teacher" in loaded:
        return "pairs"
    if isinstance(loaded, dict) and "input" in loaded and "output" in loaded:
        return "encode"
    if isinstance(loaded, dict) and "input_dir" in loaded:
        return "boost"
    if isinstance(loaded, dict) and "benchmark" in loaded:
        return "evaluation"
    return "training"


def job_parameters(args: argparse.Namespace, cluster, backend: str) -> dict:
    nodes = args.nodes or cluster.nodes
    tasks = args.gpus_per_node or cluster.gpus_per_node
    parameters = {
        "name": "fmboost",
        "nodes": nodes,
        "tasks_per_node": tasks,
        "cpus_per_task": args.cpus_per_task or cluster.cpus_per_task,
        "timeout_min": args.time or cluster.time_minutes,
    }
    if cluster.request_gpus:
        parameters["gpus_per_node"] = tasks
    if backend == "slurm":
        parameters["slurm_signal_delay_s"] = args.signal_delay
        # The first task to end gives the others this long before srun ends them (a stopped one
        # included): long enough for a rank that saw a peer die to requeue the job and say so, which
        # --kill-on-bad-exit would cut short; ranks that finish leave together.
        parameters["slurm_srun_args"] = [f"--wait={SRUN_WAIT_SECONDS}"]
        if args.partition or cluster.partition:
            parameters["slurm_partition"] = args.partition or cluster.partition
    return parameters


def check_training_data(config) -> None:
    """The data the job will read exists and fits the model: checked here, not minutes later in a job."""
    from fmboost.data.dataset import resolve_for_model

    for key in ("train", "validation"):
        if getattr(config.data, key):
            resolve_for_model(config, key)


def wait_for_results(job: submitit.Job) -> list[Any]:
    """Every task's result; a job that failed with an error the user can fix raises that error (one line)
    instead of submitit's copy of the task's traceback."""
    try:
        return job.results()
    except submitit.core.utils.FailedJobError:
        recorded = read_error_record(job.paths.folder, str(job.job_id))
        if recorded is None:
            raise
        raise recorded from None


def refuse_busy_run_folder(run_dir: Path) -> None:
    """A run folder held by a live job refuses a second one here, before anything is submitted or written."""
    from fmboost.training.run_lock import RunFolderLock

    RunFolderLock(run_dir).check_free()


def job_overrides(args: argparse.Namespace, config, backend: str) -> list[str]:
    """The user's overrides; on Slurm, stop checks at least every quarter of ``--signal-delay``, so the
    requeue checkpoint is written before the job is killed however slow its steps are."""
    check_seconds = args.signal_delay / 4
    if backend == "slurm" and config.train.stop_check_seconds > check_seconds:
        return [*args.overrides, f"train.stop_check_seconds={check_seconds}"]
    return list(args.overrides)


def submit_training(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    backend = choose_backend(args.cluster or config.cluster.backend)
    parameters = job_parameters(args, config.cluster, backend)
    run_dir = Path(config.train.run_dir).resolve()
    if args.dry_run:
        print(to_yaml(config))
        print(
            f"{backend} job parameters: {parameters}; requeued at most {args.max_requeues} times at its time "
            f"limit, {args.max_stall_requeues} times in a row after a stall and {args.max_failure_requeues} "
            "after a lost rank"
        )
        return 0
    check_training_data(config)
    refuse_busy_run_folder(run_dir)
    job_dir = args.job_dir or run_dir / "submitit"
    executor = submitit.AutoExecutor(
        folder=job_dir / "%j", cluster=backend, slurm_max_num_timeout=args.max_requeues
    )
    executor.update_parameters(**parameters)
    training = TrainingJob(
        str(Path(args.config).resolve()),
        job_overrides(args, config, backend),
        args.max_stall_requeues,
        args.max_failure_requeues,
    )
    job = executor.submit(training)
    print(f"job id: {job.job_id}")
    print(f"logs: {job.paths.folder}")
    tracking_uri = config.logging.tracking_uri or default_tracking_uri(run_dir)
    print(f"MLflow: experiment {config.logging.experiment!r} at {tracking_uri}")
    if args.wait:
        main_result = wait_for_results(job)[0]
        print(f"result: {main_result}")
    return 0


def submit_array(args: argparse.Namespace, kind: str) -> int:
    """Encoding, teacher pairs, folder boosting or evaluation as ``--array N`` tasks, each with its task
    index and count."""
    from data_pipeline.config import load_encode_config
    from data_pipeline.pairs_config import load_pairs_config
    from evaluation.config import load_eval_config
    from fmboost.config import ClusterConfig
    from fmboost.folder_boost import load_boost_config

    tasks = args.array or 1
    if kind == "encode":
        config = load_encode_config(args.config, args.overrides)
        job_fn, job_dir, cpus = (
            EncodeJob(str(Path(args.config).resolve()), args.overrides),
            config.output,
            config.num_workers + 2,
        )
    elif kind == "pairs":
        config = load_pairs_config(args.config, args.overrides)
        job_fn, job_dir, cpus = PairsJob(str(Path(args.config).resolve()), args.overrides), config.output, 4
    elif kind == "boost":
        config = load_boost_config(args.config, args.overrides)
        job_fn, job_dir, cpus = BoostJob(str(Path(args.config).resolve()), args.overrides), config.output, 4
    else:
        config = load_eval_config(args.config, args.overrides)
        job_fn, job_dir, cpus = (
            EvaluationJob(str(Path(args.config).resolve()), args.overrides),
            config.results_dir,
            4,
        )
    on_gpu = kind in ("pairs", "boost") and config.device != "cpu"  # stages run many NFE per sample
    cluster = ClusterConfig(
        nodes=1, gpus_per_node=1, request_gpus=on_gpu, time_minutes=1440, cpus_per_task=cpus
    )
    backend = choose_backend(args.cluster or "auto")
    parameters = job_parameters(args, cluster, backend) | {"name": f"fmboost-{kind}"}
    if backend == "slurm":
        parameters["slurm_array_parallelism"] = tasks
    if args.dry_run:
        print(to_yaml(config))
        print(f"{backend} array of {tasks} tasks, parameters: {parameters}")
        return 0
    executor = submitit.AutoExecutor(
        folder=(args.job_dir or Path(job_dir).resolve() / "submitit") / "%j", cluster=backend
    )
    executor.update_parameters(**parameters)
    jobs = executor.map_array(job_fn, list(range(tasks)), [tasks] * tasks)
    print(f"job ids: {', '.join(job.job_id for job in jobs)}")
    print(f"logs: {jobs[0].paths.folder.parent}")
    if args.wait:
        for job in jobs:
            print(f"result: {wait_for_results(job)[0]}")
    return 0


@report_errors()
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    kind = config_kind(args.config)
    if args.array is not None and kind == "training":
        raise ConfigError(
            "--array runs encode, pairs, boost or evaluation configs; training uses --nodes/--gpus-per-node"
        )
    try:
        code = submit_training(args) if kind == "training" else submit_array(args, kind)
    except submitit.core.utils.FailedJobError as error:
        print(f"error: the job failed:\n{error}", file=sys.stderr)
        return 1
    if args.wait:
        print(f"done in {time.perf_counter() - started:.0f} s")
    return code


if __name__ == "__main__":
    exit_without_collecting(main())
