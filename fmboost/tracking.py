"""MLflow tracking that never takes a training run down and loses nothing when MLflow goes away.

Rank 0 logs params, metrics by step and artifacts to MLflow: by default a SQLite store inside the run
folder, or the server named by ``logging.tracking_uri``. Every metric is first appended to
``metrics.jsonl`` in the run folder, which is the record MLflow is filled from: ``mlflow_sync.json``
says how far into it MLflow has been sent, and holds the params and artifacts that could not be sent
yet. So when the tracking backend fails (a dead server, a full disk):

- the run logs one warning per outage and keeps training; each call makes at most one request, so
  training never waits on MLflow longer than its request timeout (``MLFLOW_HTTP_REQUEST_TIMEOUT``,
  5 s here unless set);
- it tries again after 2 s, then 4, 8, … up to a minute;
- once MLflow answers, the metrics logged meanwhile are back-filled from ``metrics.jsonl`` with the
  time and step they were logged at (a thousand per request), then the params and artifacts that
  failed; what is still missing when the job ends is sent at its end or by the next job that resumes
  the run.

The MLflow run id is stored in the run folder, so a resumed or requeued job continues the same run.
"""

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fmboost.atomic_files import write_json_atomically
from fmboost.tracking_store import seed_new_store, sqlite_store_lock

logger = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id"
METRICS_FILE = "metrics.jsonl"
SYNC_FILE = "mlflow_sync.json"
FIRST_RETRY_SECONDS = 2.0
LONGEST_RETRY_SECONDS = 60.0
METRICS_PER_REQUEST = 1000  # MLflow's limit for one log_batch


def default_tracking_uri(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"


class Backoff:
    """When to try a failing backend again: after 2 s, then twice as long each time, at most a minute."""

    def __init__(self) -> None:
        self.failures, self.retry_at, self.down_since = 0, 0.0, None

    def ready(self) -> bool:
        return time.monotonic() >= self.retry_at

    def failed(self) -> None:
        delay = min(FIRST_RETRY_SECONDS * 2**self.failures, LONGEST_RETRY_SECONDS)
        self.failures += 1
        self.retry_at = time.monotonic() + delay
        if self.down_since is None:
            self.down_since = time.monotonic()

    def answered(self) -> float | None:
        """Reset; returns how long the backend was down (None if it was not)."""
        down = None if self.down_since is None else time.monotonic() - self.down_since
        self.failures, self.retry_at, self.down_since = 0, 0.0, None
        return down


class Tracker:
    """Logs to MLflow (if ``enabled``) from a local record that is never lost; failures only warn."""

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
        self.backoff = Backoff()
        self.local_copy_failed = False
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Fail fast instead of retrying for minutes: training must not wait on tracking.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        saved = self.run_dir / RUN_ID_FILE
        self.started_before = saved.is_file()  # by an earlier job, which also logged the params
        self.run_id = saved.read_text().strip() if self.started_before else None
        self.reopened = False
        self.pending = self.read_pending()
        self._call("start the run", self.sync)

    # ------------------------------------------------------------------ what MLflow has not received yet
    def read_pending(self) -> dict[str, Any]:
        """``mlflow_sync.json``, or for a run folder without one, what an earlier job must have sent: all
        of ``metrics.jsonl`` when it had an MLflow run, nothing when it never reached MLflow."""
        path = self.run_dir / SYNC_FILE
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            metrics = self.run_dir / METRICS_FILE
            sent = metrics.stat().st_size if self.started_before and metrics.is_file() else 0
            return {"metrics_offset": sent, "params": None, "artifacts": []}

    def save_pending(self) -> None:
        try:
            write_json_atomically(self.run_dir / SYNC_FILE, self.pending)
        except OSError as error:  # a full disk: MLflow may receive some metrics twice later, nothing more
            logger.debug("cannot write %s (%s)", self.run_dir / SYNC_FILE, error)

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

    def start_run(self) -> None:
        client = self.client
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
        (self.run_dir / RUN_ID_FILE).write_text(self.run_id)

    def sync(self, upload_artifacts: bool = False) -> None:
        """Send MLflow one request of what it lacks, oldest first: the run (or its reopening), the
        params, a thousand metrics; with ``upload_artifacts`` every artifact that failed before."""
        if self.run_id is None:
            self.start_run()
        elif self.started_before and not self.reopened:
            self.client.update_run(self.run_id, status="RUNNING")
            self.reopened = True
        elif self.pending["params"]:
            self.send_params()
        elif not self.send_metrics() and upload_artifacts:
            self.send_artifacts()

    def send_params(self) -> None:
        from mlflow.entities import Param

        items = [Param(key, value) for key, value in self.pending["params"].items()]
        self.client.log_batch(self.run_id, params=items)
        self.pending["params"] = None
        self.save_pending()

    def send_metrics(self) -> bool:
        """Send the next ≤ 1000 metrics of ``metrics.jsonl``; whether there were any."""
        from mlflow.entities import Metric

        offset, items = self.pending["metrics_offset"], []
        try:
            with open(self.run_dir / METRICS_FILE, "rb") as handle:
                handle.seek(offset)
                while len(items) < METRICS_PER_REQUEST and (line := handle.readline()).endswith(b"\n"):
                    offset += len(line)
                    entry = json.loads(line)
                    step, stamp = entry.pop("step"), int(entry.pop("time") * 1000)
                    items.extend(Metric(key, float(value), stamp, step) for key, value in entry.items())
        except FileNotFoundError:
            return False
        if offset == self.pending["metrics_offset"]:
            return False
        self.client.log_batch(self.run_id, metrics=items)
        self.pending["metrics_offset"] = offset
        self.save_pending()
        return True

    def send_artifacts(self) -> None:
        for path, artifact_path in list(self.pending["artifacts"]):
            if Path(path).exists():
                action = self.client.log_artifacts if Path(path).is_dir() else self.client.log_artifact
                action(self.run_id, path, artifact_path)
            else:
                logger.warning("%s was removed before MLflow could receive it (%s)", path, artifact_path)
            self.pending["artifacts"].remove([path, artifact_path])
            self.save_pending()

    def _call(self, what: str, action: Callable[[], None]) -> bool:
        """Run one MLflow action unless it is backing off; on failure warn (once per outage) and back off."""
        if not self.enabled or not self.backoff.ready():
            return False
        try:
            action()
        except Exception as error:  # any backend failure: network, HTTP, database, disk
            if self.backoff.down_since is None:
                logger.warning(
                    "MLflow at %s failed to %s (%s: %s); training goes on, metrics are kept in %s and "
                    "sent to MLflow once it answers",
                    self.tracking_uri,
                    what,
                    type(error).__name__,
                    str(error).splitlines()[0][:200] if str(error) else "",
                    self.run_dir / METRICS_FILE,
                )
            self.backoff.failed()
            return False
        if (down := self.backoff.answered()) is not None:
            logger.info(
                "MLflow at %s answers again after %.0f s; sending what it missed", self.tracking_uri, down
            )
        return True

    # ------------------------------------------------------------------ what the caller logs
    def log_params(self, params: dict[str, Any]) -> None:
        if not self.enabled or self.started_before:
            return  # MLflow params are immutable; the resumed run holds (or has pending) the first job's
        self.pending["params"] = {key: str(value)[:6000] for key, value in params.items()}
        self.save_pending()
        self._call("log params", self.sync)

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
        self._call("log metrics", self.sync)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if not self.enabled:
            return
        if [str(path), artifact_path] not in self.pending["artifacts"]:
            self.pending["artifacts"].append([str(path), artifact_path])
            self.save_pending()
        self._call(f"upload {path}", lambda: self.sync(upload_artifacts=True))

    def finish(self, status: str = "FINISHED") -> None:
        """Send MLflow everything it lacks and close the run; what fails is left for the next job."""
        if not self.enabled:
            return
        self.backoff.retry_at = 0.0  # the end of the job is worth one more try
        while self._call("send what it missed", lambda: self.sync(upload_artifacts=True)):
            if not self.pending["params"] and not self.pending["artifacts"] and self.all_metrics_sent():
                self._call("close the run", lambda: self.client.set_terminated(self.run_id, status=status))
                return
        if self.pending["params"] or self.pending["artifacts"] or not self.all_metrics_sent():
            logger.warning(
                "MLflow at %s did not receive everything before the job ended; the next job that resumes "
                "%s sends the rest",
                self.tracking_uri,
                self.run_dir,
            )

    def all_metrics_sent(self) -> bool:
        metrics = self.run_dir / METRICS_FILE
        return not metrics.is_file() or metrics.stat().st_size <= self.pending["metrics_offset"]
