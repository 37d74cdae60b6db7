"""The SQLite stores MLflow keeps in run folders: created once per MLflow version, copied after that.

MLflow creates a SQLite store by running every one of its Alembic migrations in turn, about 1-2 s for each
new run folder (a training run, an evaluation, each array task, each arm of an experiment). For one
MLflow version the result is always the same empty database, so the first one made is kept in the user's
cache (``$XDG_CACHE_HOME/fmboost``, else ``~/.cache/fmboost``) and later stores start as a copy of it
(milliseconds). The copy holds no experiment: MLflow adds its ``Default`` experiment when it first opens
the store, with the artifact folder and time it would have given a store it migrated itself. Where the
cached store cannot be made or copied, MLflow creates the store as before.
"""

import logging
import os
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from fmboost.atomic_files import atomic_path, exclusive_lock

logger = logging.getLogger(__name__)

SQLITE_PREFIX = "sqlite:///"


def sqlite_database(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI; None for servers and other stores."""
    if not tracking_uri.startswith(SQLITE_PREFIX):
        return None
    return Path("/" + tracking_uri[len(SQLITE_PREFIX) :].lstrip("/"))


@contextmanager
def sqlite_store_lock(tracking_uri: str) -> Iterator[None]:
    """Hold an exclusive file lock beside a SQLite store (no-op for other stores).

    Two processes creating the same SQLite store at once both run MLflow's schema migrations and one
    fails (``table _alembic_tmp_latest_metrics already exists``); the lock makes them take turns.
    """
    database = sqlite_database(tracking_uri)
    if database is None:
        yield
        return
    with exclusive_lock(database.with_name(database.name + ".lock")):
        yield


def cache_folder() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fmboost"


def empty_store() -> Path:
    """This MLflow version's empty store in the cache, made (under a lock) if it is missing or unreadable."""
    import mlflow

    template = cache_folder() / f"mlflow-{mlflow.__version__}-empty.db"
    with exclusive_lock(template.with_name(template.name + ".lock")):
        if not readable_store(template):
            make_empty_store(template)
            logger.info("made the empty MLflow store that new run folders copy: %s", template)
    return template


def make_empty_store(template: Path) -> None:
    """MLflow migrates a new store, which then loses its ``Default`` experiment and replaces ``template``.

    Each attempt uses a new file name, because MLflow keeps the engine of every store URI it opened.
    """
    from mlflow.tracking import MlflowClient

    partial = template.with_name(f".{template.name}.{uuid.uuid4().hex}.partial")
    try:
        MlflowClient(tracking_uri=SQLITE_PREFIX + str(partial)).search_experiments(max_results=1)
        with closing(sqlite3.connect(partial)) as connection, connection:
            connection.execute("DELETE FROM experiments")
        partial.replace(template)
    finally:
        partial.unlink(missing_ok=True)


def readable_store(database: Path) -> bool:
    """Whether ``database`` is an intact SQLite file at an Alembic revision (a store MLflow finished)."""
    if not database.is_file():
        return False
    try:
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as connection:
            intact = connection.execute("PRAGMA quick_check").fetchall() == [("ok",)]
            return intact and bool(connection.execute("SELECT version_num FROM alembic_version").fetchall())
    except sqlite3.Error:
        return False


def seed_new_store(tracking_uri: str) -> None:
    """Start the SQLite store of ``tracking_uri`` as a copy of the cached empty one, if it does not exist.

    Call it under :func:`sqlite_store_lock`. Stores that exist and servers are left to MLflow, and so
    is every store when the cached one cannot be made or copied (a read-only cache, a file system
    where SQLite cannot lock): that only costs MLflow's migrations, so no such failure stops a run.
    """
    database = sqlite_database(tracking_uri)
    if database is None or database.exists():
        return
    try:
        template = empty_store()
        database.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(database) as partial:
            shutil.copyfile(template, partial)
    except Exception as error:  # OSError, sqlite3.Error, MlflowException: MLflow then makes the store
        logger.info("MLflow creates %s itself (no cached empty store: %s)", database, error)
