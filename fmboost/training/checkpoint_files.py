"""What a checkpoint holds, written when it is saved and checked before it is loaded.

A node that dies while writing to a shared file system, or a quota that is hit, can leave a checkpoint
marked complete whose files are short, empty or gone. ``MANIFEST.json`` lists every file of the
checkpoint with its size and CRC-32, each rank describing the files it wrote; :func:`problems` compares
a checkpoint with its file list, every rank checking the sizes of all files and the checksums of its
share of them, so a broken checkpoint is found before DeepSpeed or safetensors trip over it.

CRC-32 runs at about 2 GB/s on one core, several times faster than the checkpoint is written
(``bench/checkpoint_checksum.py`` measures both), so every file gets one. Describing a file also
fsyncs it: a checkpoint is declared complete only once every file it lists is on stable storage.

A file that cannot be read while it is checked (an I/O error, a permission the file system refuses) is
one more thing wrong with the checkpoint, never an exception: with several ranks, one that raised here
would leave the others waiting for it in the collective that shares what each found.
"""

import json
import os
import re
import zlib
from collections.abc import Callable
from pathlib import Path

from fmboost.atomic_files import fsync_directory, write_json_atomically

FILE_LIST = "MANIFEST.json"
CHUNK_BYTES = 8 * 1024**2
RANK_OWNED = re.compile(r"(?:zero_pp_rank_|rng_rank)(\d+)")


def owner_of(relative: str) -> int:
    """The rank that writes a checkpoint file: per-rank shards and RNG states name theirs, rank 0 the rest."""
    match = RANK_OWNED.search(Path(relative).name)
    return int(match.group(1)) if match else 0


def crc32_of(path: Path, sync: bool = False) -> str:
    """The CRC-32 of ``path``'s bytes; with ``sync``, the file is also fsynced through the same handle."""
    checksum = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            checksum = zlib.crc32(chunk, checksum)
        if sync:
            os.fsync(handle.fileno())
    return f"{checksum:08x}"


def describe_files(
    directory: Path, owned: Callable[[str], bool] | None = None
) -> dict[str, dict[str, int | str]]:
    """Size and CRC-32 of every file under ``directory`` (those ``owned`` accepts, by relative path),
    each fsynced as it is read."""
    described = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory).as_posix()
        if relative != FILE_LIST and (owned is None or owned(relative)):
            described[relative] = {"bytes": path.stat().st_size, "crc32": crc32_of(path, sync=True)}
    return described


def describe_own_files(directory: Path, rank: int) -> dict[str, dict[str, int | str]]:
    """Size and CRC-32 of every file under ``directory`` that ``rank`` wrote, fsynced, by relative path."""
    return describe_files(directory, lambda relative: owner_of(relative) == rank)


def sync_folders(directory: Path) -> None:
    """fsync ``directory`` and every folder under it, so that the names of the files in them are durable."""
    for folder in sorted((p for p in directory.rglob("*") if p.is_dir()), reverse=True):
        fsync_directory(folder)
    fsync_directory(directory)


def write_file_list(directory: Path, files: dict[str, dict[str, int | str]], **extra: object) -> None:
    """``MANIFEST.json`` (atomically, fsynced): the file list, and any ``extra`` top-level entries."""
    write_json_atomically(directory / FILE_LIST, {"files": files, **extra})


def read_file_list_record(directory: Path) -> dict | None:
    """The whole file list; ``None`` for a checkpoint written before file lists existed.

    Raises ``ValueError`` for one without its ``files``, ``OSError`` for one that cannot be read."""
    path = directory / FILE_LIST
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        record["files"].items()
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"no file list ({error})") from None
    return record


def read_file_list(directory: Path) -> dict[str, dict[str, int | str]] | None:
    """The files a checkpoint should hold; ``None`` for one written before file lists existed."""
    record = read_file_list_record(directory)
    return None if record is None else record["files"]


def unreadable(path: Path, error: OSError) -> str:
    return f"{path} could not be read ({error.strerror or type(error).__name__})"


def problems(directory: Path, rank: int = 0, world_size: int = 1) -> list[str]:
    """What is wrong with ``directory`` (empty if it checks out): every file's size, and the checksums
    of this rank's share of the files (``files[rank::world_size]``), against its file list."""
    if not directory.is_dir():
        return [f"{directory} does not exist"]
    try:
        files = read_file_list(directory)
    except ValueError:
        return [f"{directory / FILE_LIST} is unreadable"]
    except OSError as error:
        return [unreadable(directory / FILE_LIST, error)]
    if files is None:
        return []
    found = []
    for index, (relative, expected) in enumerate(sorted(files.items())):
        path = directory / relative
        try:
            found.extend(file_problems(path, expected, check_content=index % world_size == rank))
        except OSError as error:
            found.append(unreadable(path, error))
    return found


def file_problems(path: Path, expected: dict, check_content: bool) -> list[str]:
    """What is wrong with one file against its entry in the list (its CRC-32 only if ``check_content``)."""
    if not path.is_file():
        return [f"{path} is missing"]
    size = path.stat().st_size
    if size != expected["bytes"]:
        kind = "empty" if size == 0 else "truncated" if size < expected["bytes"] else "longer than written"
        return [f"{path} is {kind} ({size} bytes, {expected['bytes']} written)"]
    if check_content and crc32_of(path) != expected["crc32"]:
        return [f"{path} is corrupt (its CRC-32 differs from the one written)"]
    return []
