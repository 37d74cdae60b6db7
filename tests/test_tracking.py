import json
import logging
import multiprocessing
import sqlite3
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from pathlib import Path

import mlflow
import mlflow.store.db.utils
import pytest
from mlflow.tracking import MlflowClient

from fmboost.tracking import METRICS_FILE, RUN_ID_FILE, Tracker
from fmboost.tracking_store import empty_store
from tests.conftest import free_port, start_mlflow_server, stop_server


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


def logged_steps(uri: str, run_id: str, key: str) -> list[int]:
    return sorted(metric.step for metric in MlflowClient(uri).get_metric_history(run_id, key))


@pytest.mark.slow
def test_mlflow_receives_every_step_after_an_outage_from_the_next_job_or_the_same_one(tmp_path, caplog):
    """A real `mlflow server`, down and up again on the same port and store:

    1. a training job that never reaches it trains on; once it is up, the next job of the run (a resume
       that finds the run finished) sends every step, the params, the config and the exported model;
    2. a tracker that loses it in the middle of a job warns once, never waits longer than a request
       timeout, retries after seconds, and back-fills what it missed once it answers, at the steps and
       times they were logged."""
    from fmboost.config_loading import load_config
    from fmboost.distributed import DistributedEnv
    from fmboost.training.trainer import train
    from tests.conftest import REPO_ROOT
    from tests.training.helpers import build_latents, training_overrides

    port = free_port()
    uri, run_dir = f"http://127.0.0.1:{port}", tmp_path / "run"
    settings = training_overrides(build_latents(tmp_path / "data"), run_dir, max_steps=6, validate_every=100)
    config = load_config(REPO_ROOT / "configs/demo/tiny_cpu.yaml", [*settings, f"logging.tracking_uri={uri}"])
    caplog.set_level(logging.INFO)
    first = train(config, DistributedEnv())
    assert (first.status, first.step, first.mlflow_run_id) == ("finished", 6, None)
    assert "training goes on" in caplog.text and "the next job that resumes" in caplog.text

    process = start_mlflow_server(tmp_path / "server", port)
    try:
        second = train(config, DistributedEnv())
        client = MlflowClient(uri)
        run = client.get_run(second.mlflow_run_id)
        assert run.info.status == "FINISHED"
        assert logged_steps(uri, run.info.run_id, "train/loss") == list(range(1, 7)), "no hole"
        assert run.data.params["train.max_steps"] == "6"
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"config.yaml", "model"}

        caplog.clear()
        tracker = Tracker(tmp_path / "tracked", uri, "outage")
        tracker.log_params({"train.lr": 0.1})
        for step in range(1, 6):
            tracker.log_metrics({"train/loss": 1.0 / step}, step)
        assert logged_steps(uri, tracker.run_id, "train/loss") == [1, 2, 3, 4, 5]

        stop_server(process)  # the server goes away: every call fails fast, training goes on
        for step in range(6, 11):
            started = time.monotonic()
            tracker.log_metrics({"train/loss": 1.0 / step}, step)
            assert time.monotonic() - started < 6, "never longer than one request timeout (5 s)"
        (tmp_path / "late.png").write_bytes(b"png")
        tracker.log_artifact(tmp_path / "late.png", "samples")
        warnings = [r.getMessage() for r in caplog.records if "training goes on" in r.getMessage()]
        assert len(warnings) == 1 and "sent to MLflow once it answers" in warnings[0]
        assert 0 < tracker.backoff.retry_at - time.monotonic() <= 8, "retries back off from seconds"

        process = start_mlflow_server(tmp_path / "server", port)  # the same store, the same port
        while not tracker.backoff.ready():
            time.sleep(0.1)
        for step in range(11, 13):
            tracker.log_metrics({"train/loss": 1.0 / step}, step)
        tracker.finish()
        assert "answers again" in caplog.text
        run = client.get_run(tracker.run_id)
        assert logged_steps(uri, tracker.run_id, "train/loss") == list(range(1, 13)), "no hole"
        assert run.info.status == "FINISHED" and run.data.params == {"train.lr": "0.1"}
        assert [a.path for a in client.list_artifacts(tracker.run_id, "samples")] == ["samples/late.png"]
        local = [json.loads(line) for line in (tmp_path / "tracked" / METRICS_FILE).read_text().splitlines()]
        history = client.get_metric_history(tracker.run_id, "train/loss")
        assert {m.step: m.timestamp for m in history} == {e["step"]: int(e["time"] * 1000) for e in local}
    finally:
        stop_server(process)


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


def test_processes_creating_one_sqlite_store_at_once_all_log(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # they also race to make the empty store
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


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "fmboost" / f"mlflow-{mlflow.__version__}-empty.db"


def schema_and_rows(database: Path) -> dict:
    """Every table and index definition, the Alembic revision, and each experiment but its times.

    A definition is compared as its set of lines: two runs of MLflow's own migrations list a table's
    constraints in different orders.
    """
    with closing(sqlite3.connect(database)) as connection:
        query = "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
        return {
            "schema": [
                (kind, name, sorted(line.strip().rstrip(",") for line in (sql or "").splitlines()))
                for kind, name, sql in connection.execute(query)
            ],
            "revision": connection.execute("SELECT version_num FROM alembic_version").fetchall(),
            "experiments": connection.execute(
                "SELECT experiment_id, name, artifact_location, lifecycle_stage FROM experiments"
            ).fetchall(),
        }


def test_a_new_store_is_a_copy_of_the_cached_empty_store_and_equals_one_mlflow_migrated(tmp_path, cache):
    copied = Tracker(tmp_path / "copied", None, "exp")
    copied.log_metrics({"train/loss": 0.5}, step=1)
    assert cache.is_file()
    migrated = MlflowClient(f"sqlite:///{tmp_path / 'migrated.db'}")
    migrated.create_experiment(
        "exp", artifact_location=(tmp_path / "copied" / "mlartifacts").resolve().as_uri()
    )
    assert schema_and_rows(tmp_path / "copied" / "mlflow.db") == schema_and_rows(tmp_path / "migrated.db")


def test_once_the_empty_store_is_cached_new_stores_run_no_migration(tmp_path, cache, monkeypatch):
    Tracker(tmp_path / "first", None, "exp").log_metrics({"train/loss": 0.5}, step=1)

    def migrate(engine):
        raise AssertionError("MLflow migrated a new store")

    monkeypatch.setattr(mlflow.store.db.utils, "_initialize_tables", migrate)
    second = Tracker(tmp_path / "second", None, "exp")
    second.log_metrics({"train/loss": 0.25}, step=1)
    run = MlflowClient(f"sqlite:///{tmp_path / 'second' / 'mlflow.db'}").get_run(second.run_id)
    assert run.data.metrics == {"train/loss": 0.25}


def test_an_unreadable_cached_store_is_made_again_and_a_cache_that_cannot_be_written_is_skipped(
    tmp_path, cache, monkeypatch
):
    empty_store()
    cache.write_bytes(cache.read_bytes()[:100])  # cut short
    Tracker(tmp_path / "remade", None, "exp").log_metrics({"train/loss": 0.5}, step=1)
    assert schema_and_rows(cache)["revision"]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-folder"))
    (tmp_path / "not-a-folder").write_text("a file")
    tracker = Tracker(tmp_path / "uncached", None, "exp")
    tracker.log_metrics({"train/loss": 0.5}, step=1)
    run = MlflowClient(f"sqlite:///{tmp_path / 'uncached' / 'mlflow.db'}").get_run(tracker.run_id)
    assert run.data.metrics == {"train/loss": 0.5}
