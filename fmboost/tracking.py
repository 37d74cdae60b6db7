"""MLflow tracking that never takes a training run down.

Rank 0 logs params, metrics by step and artifacts to MLflow: by default a SQLite store inside the run
folder, or the server named by ``logging.tracking_uri``. Every metric is also appended to
``metrics.jsonl`` in the run folder. If the tracking backend fails (a dead server, a full disk), the
run logs one warning, keeps training and keeps that local copy, and tries MLflow again later. The
MLflow run id is stored in the run folder, so a resumed or requeued job continues the same run.
"""

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fmboost.tracking_store import seed_new_store, sqlite_store_lock

logger = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id"
METRICS_FILE = "metrics.jsonl"
RETRY_SECONDS = 60.0


def default_tracking_uri(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"


class Tracker:
    """Logs to MLflow (if ``enabled``) and to a local JSONL file; failures only warn."""

    def __init__(
        self,
        run_dir: Path,
        tracking_uri: str | None,
        experiment: str,
        run_name: str | None = None,
        enabled: bool = True,
        parent_run_id: str | None = None,
    ) -> None:
        self.run_dir, self.enabled, self.parent_run_id = Path(run_dir), enabled, parent_run_id
        self.tracking_uri = tracking_uri or default_tracking_uri(self.run_dir)
        self.experiment, self.run_name = experiment, run_name
        self.run_id: str | None = None
        self._client = None
        self.retry_at = 0.0
        self.resumed = False
        self.local_copy_failed = False
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Fail fast instead of retrying for minutes: training must not wait on tracking.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        self._call("start the run", self._start)

    @property
    def client(self):
        """The MLflow client, built on first use (a new SQLite store starts as a copy of the cached empty
        one, see :mod:`fmboost.tracking_store`); only ever used inside :meth:`_call`, so an unreadable
        store is a warning, not a crash."""
        if self._client is None:
            from mlflow.tracking import MlflowClient

            with sqlite_store_lock(self.tracking_uri):
                seed_new_store(self.tracking_uri)
                client = MlflowClient(tracking_uri=self.tracking_uri)
                client.search_experiments(max_results=1)  # opens the store now, under the lock
            self._client = client
        return self._client

    def _start(self) -> None:
        client = self.client
        saved = self.run_dir / RUN_ID_FILE
        if saved.is_file():
            self.run_id, self.resumed = saved.read_text().strip(), True
            client.update_run(self.run_id, status="RUNNING")
            return
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is None:
            artifacts = None
            if self.tracking_uri.startswith("sqlite:"):
                artifacts = (self.run_dir / "mlartifacts").resolve().as_uri()
            experiment_id = client.create_experiment(self.experiment, artifact_location=artifacts)
        else:
            experiment_id = experiment.experiment_id
        tags = {"mlflow.parentRunId": self.parent_run_id} if self.parent_run_id else None
        run = client.create_run(experiment_id, run_name=self.run_name or self.run_dir.name, tags=tags)
        self.run_id = run.info.run_id
        saved.write_text(self.run_id)

    def _call(self, what: str, action: Callable[[], None]) -> bool:
        """Run one MLflow action; on failure warn (once per outage), back off, and report False."""
        if not self.enabled or time.monotonic() < self.retry_at:
            return False
        if self.run_id is None and action != self._start and not self._call("start the run", self._start):
            return False
        try:
            action()
        except Exception as error:  # any backend failure: network, HTTP, database, disk
            if self.retry_at == 0.0 or time.monotonic() >= self.retry_at:
                logger.warning(
                    "MLflow at %s failed to %s (%s: %s); training goes on, metrics are kept in %s",
                    self.tracking_uri,
                    what,
                    type(error).__name__,
                    str(error).splitlines()[0][:200],
                    self.run_dir / METRICS_FILE,
                )
            self.retry_at = time.monotonic() + RETRY_SECONDS
            return False
        self.retry_at = 0.0
        return True

    def log_params(self, params: dict[str, Any]) -> None:
        if self.resumed:
            return  # MLflow params are immutable; the resumed run already holds them
        from mlflow.entities import Param

        items = [Param(key, str(value)[:6000]) for key, value in params.items()]
        self._call("log params", lambda: self.client.log_batch(self.run_id, params=items))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        try:
            with open(self.run_dir / METRICS_FILE, "a") as handle:
                handle.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")
        except OSError as error:  # a full disk: say so once, keep training
            if not self.local_copy_failed:
                logger.warning(
                    "cannot append to %s (%s); training goes on", self.run_dir / METRICS_FILE, error
                )
            self.local_copy_failed = True
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        items = [Metric(key, float(value), stamp, step) for key, value in metrics.items()]
        self._call("log metrics", lambda: self.client.log_batch(self.run_id, metrics=items))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if not self.enabled:
            return

        def upload() -> None:
            action = self.client.log_artifacts if Path(path).is_dir() else self.client.log_artifact
            action(self.run_id, str(path), artifact_path)

        self._call(f"upload {path}", upload)

    def finish(self, status: str = "FINISHED") -> None:
        if self.enabled and self.run_id is not None:
            self._call("close the run", lambda: self.client.set_terminated(self.run_id, status=status))
