"""Files that readers never see half-written: write a hidden sibling, fsync it, rename it into place.

    with atomic_path(shard_path) as partial:
        write_tar(partial)                        # any writer that takes a path
    write_json_atomically(stats_path, stats)      # small files in one call

A rename within one directory is atomic on POSIX file systems, so a reader (or a resumed job) sees
either the old file or the complete new one. The folder is fsynced after the rename, so the new name
survives a power loss as well as the new content (ext4 and XFS otherwise may lose the rename). A block
that raises leaves no partial file behind. Writers that must take turns (several tasks updating one
manifest or creating one SQLite store) hold :func:`exclusive_lock` around the update.
"""

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Block until this process holds an exclusive ``flock`` on ``lock_path`` (created if missing)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fsync_file(path: Path) -> None:
    """Flush ``path``'s data to stable storage (any open file descriptor of it will do on Linux)."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_directory(path: Path) -> None:
    """Flush ``path``'s entries (names created, renamed or removed in it) to stable storage."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write; fsynced, renamed over ``path`` and its folder fsynced when
    the block succeeds."""
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)
    try:
        yield partial
        fsync_file(partial)
        partial.replace(path)
        fsync_directory(path.parent)
    finally:
        partial.unlink(missing_ok=True)


def write_text_atomically(path: Path, text: str) -> None:
    with atomic_path(path) as partial:
        partial.write_text(text)


def write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    """Indented, key-sorted JSON with a final newline."""
    write_text_atomically(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
