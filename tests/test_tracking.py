import json
import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from mlflow.tracking import MlflowClient

from fmboost.tracking import METRICS_FILE, RUN_ID_FILE, Tracker
from tests.conftest import free_port, stop_server


def test_default_store_is_sqlite_in_the_run_folder_with_local_artifacts(tmp_path):
    tracker = Tracker(tmp_path / "run", None, "exp")
    tracker.log_params({"train.lr": 0.001})
    tracker.log_metrics({"train/loss": 0.5}, step=3)
    (tmp_path / "grid.png").write_bytes(b"png")
    tracker.log_artifact(tmp_path / "grid.png", "samples")
    tracker.finish()
    client = MlflowClient(f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    run = client.get_run(tracker.run_id)
    assert run.data.params == {"train.lr": "0.001"} and run.data.metrics == {"train/loss": 0.5}
    assert run.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(tracker.run_id, "samples")] == ["samples/grid.png"]
    assert (tmp_path / "run" / "mlartifacts").is_dir()


def test_a_resumed_run_continues_the_same_mlflow_run(tmp_path):
    first = Tracker(tmp_path, None, "exp")
    first.log_params({"a": 1})
    second = Tracker(tmp_path, None, "exp")
    second.log_params({"a": 2})  # immutable in MLflow: skipped on resume instead of failing
    second.log_metrics({"m": 1.0}, step=1)
    assert second.run_id == first.run_id == (tmp_path / RUN_ID_FILE).read_text()


def test_a_dead_server_only_warns_and_metrics_stay_local(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    started = time.monotonic()
    tracker = Tracker(tmp_path, f"http://127.0.0.1:{free_port()}", "exp")
    for step in range(3):
        tracker.log_metrics({"train/loss": 1.0 / (step + 1)}, step)
    tracker.finish()
    assert time.monotonic() - started < 30, "a dead server must not stall training"
    warnings = [r for r in caplog.records if "training goes on" in r.getMessage()]
    assert len(warnings) == 1
    lines = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 1, 2]


def test_non_main_ranks_log_nothing(tmp_path):
    tracker = Tracker(tmp_path / "run", None, "exp", enabled=False)
    tracker.log_metrics({"x": 1.0}, 0)
    assert not (tmp_path / "run").exists()


def test_logging_to_a_real_server_and_surviving_its_death(tmp_path, mlflow_server, caplog):
    uri, process = mlflow_server
    tracker = Tracker(tmp_path / "run", uri, "server-exp")
    tracker.log_params({"train.lr": 0.1})
    tracker.log_metrics({"train/loss": 2.0}, step=1)
    assert MlflowClient(uri).get_run(tracker.run_id).data.metrics == {"train/loss": 2.0}

    stop_server(process)
    caplog.set_level(logging.WARNING)
    tracker.log_metrics({"train/loss": 1.0}, step=2)
    tracker.finish()
    assert any("training goes on" in r.getMessage() for r in caplog.records)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / METRICS_FILE).read_text().splitlines()]
    assert steps == [1, 2]


def test_an_unreadable_store_warns_once_and_every_call_keeps_training(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    (tmp_path / "mlflow.db").write_text("this is not a database")
    tracker = Tracker(tmp_path, None, "exp")
    tracker.log_params({"a": 1})
    tracker.log_metrics({"train/loss": 1.0}, step=1)
    (tmp_path / "grid.png").write_bytes(b"png")
    tracker.log_artifact(tmp_path / "grid.png", "samples")
    tracker.finish()
    assert len([r for r in caplog.records if "training goes on" in r.getMessage()]) == 1
    assert json.loads((tmp_path / METRICS_FILE).read_text())["train/loss"] == 1.0


def log_one_metric(run_dir: str, tracking_uri: str, go: str) -> str | None:
    """In a fresh process: say ready, wait for the common start signal, then create the store and log."""
    Path(run_dir).mkdir(parents=True)
    (Path(run_dir) / "ready").touch()
    while not Path(go).exists():
        time.sleep(0.01)
    tracker = Tracker(Path(run_dir), tracking_uri, "exp")
    tracker.log_metrics({"train/loss": 1.0}, step=0)
    return tracker.run_id


def test_processes_creating_one_sqlite_store_at_once_all_log(tmp_path):
    uri, go, jobs = f"sqlite:///{tmp_path / 'shared.db'}", tmp_path / "go", 4
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(log_one_metric, str(tmp_path / f"job{i}"), uri, str(go)) for i in range(jobs)]
        while len(list(tmp_path.glob("job*/ready"))) < jobs:
            time.sleep(0.01)
        go.touch()
        run_ids = [future.result() for future in futures]
    assert None not in run_ids
    client = MlflowClient(uri)
    assert all(client.get_run(run_id).data.metrics == {"train/loss": 1.0} for run_id in run_ids)
