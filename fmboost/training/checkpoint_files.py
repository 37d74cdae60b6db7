"""What a checkpoint holds, written when it is saved and checked before it is loaded.

A node that dies while writing to a shared file system, or a quota that is hit, can leave a checkpoint
marked complete whose files are short, empty or gone. ``MANIFEST.json`` lists every file of the
checkpoint with its size and CRC-32, each rank describing the files it wrote; :func:`problems` compares
a checkpoint with its manifest, every rank checking the sizes of all files and the checksums of its
share of them, so a broken checkpoint is found before DeepSpeed or safetensors trip over it.

CRC-32 runs at about 2 GB/s on one core, several times faster than the checkpoint is written
(``bench/checkpoint_checksum.py`` measures both), so every file gets one.
"""

import json
import re
import zlib
from pathlib import Path

MANIFEST = "MANIFEST.json"
CHUNK_BYTES = 8 * 1024**2
RANK_OWNED = re.compile(r"(?:zero_pp_rank_|rng_rank)(\d+)")


def owner_of(relative: str) -> int:
    """The rank that writes a checkpoint file: per-rank shards and RNG states name theirs, rank 0 the rest."""
    match = RANK_OWNED.search(Path(relative).name)
    return int(match.group(1)) if match else 0


def crc32_of(path: Path) -> str:
    checksum = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            checksum = zlib.crc32(chunk, checksum)
    return f"{checksum:08x}"


def describe_own_files(directory: Path, rank: int) -> dict[str, dict[str, int | str]]:
    """Size and CRC-32 of every file under ``directory`` that ``rank`` wrote, by path relative to it."""
    described = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory).as_posix()
        if relative != MANIFEST and owner_of(relative) == rank:
            described[relative] = {"bytes": path.stat().st_size, "crc32": crc32_of(path)}
    return described


def write_manifest(directory: Path, files: dict[str, dict[str, int | str]]) -> None:
    (directory / MANIFEST).write_text(json.dumps({"files": files}, indent=2, sort_keys=True) + "\n")


def read_manifest(directory: Path) -> dict[str, dict[str, int | str]] | None:
    """The files a checkpoint should hold; ``None`` for one written before manifests existed.

    Raises ``ValueError`` for a manifest that cannot be read."""
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())["files"]
    except (KeyError, TypeError) as error:
        raise ValueError(f"no file list ({error})") from None


def problems(directory: Path, rank: int = 0, world_size: int = 1) -> list[str]:
    """What is wrong with ``directory`` (empty if it checks out): every file's size, and the checksums
    of this rank's share of the files (``files[rank::world_size]``), against its manifest."""
    if not directory.is_dir():
        return [f"{directory} does not exist"]
    try:
        files = read_manifest(directory)
    except ValueError:
        return [f"{directory / MANIFEST} is unreadable"]
    if files is None:
        return []
    found = []
    for index, (relative, expected) in enumerate(sorted(files.items())):
        path = directory / relative
        if not path.is_file():
            found.append(f"{path} is missing")
            continue
        size = path.stat().st_size
        if size != expected["bytes"]:
            kind = (
                "empty" if size == 0 else "truncated" if size < expected["bytes"] else "longer than written"
            )
            found.append(f"{path} is {kind} ({size} bytes, {expected['bytes']} written)")
        elif index % world_size == rank and crc32_of(path) != expected["crc32"]:
            found.append(f"{path} is corrupt (its CRC-32 differs from the one written)")
    return found
