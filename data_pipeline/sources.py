"""Reading raw input samples: img2dataset webdataset tars, or a plain folder of images.

Tars are read as a stream, so a truncated or corrupt tar yields every sample before the break; the
break itself is reported (with the key of the sample it cut) instead of being raised.
"""

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from braceexpand import braceexpand

from fmboost.errors import ConfigError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
FOLDER_SHARD_SIZE = 1000
TAR_BLOCK = 512


@dataclass
class RawSample:
    """One key's files, by extension (``{"jpg": b"...", "txt": b"..."}``)."""

    key: str
    files: dict[str, bytes] = field(default_factory=dict)


@dataclass
class TarBreak:
    """The tar could not be read past this point; ``key`` is the sample it cut, if any."""

    error: str
    key: str | None


@dataclass(frozen=True)
class InputShard:
    """One unit of work: a tar, or a slice of a sorted folder listing (``path`` is then the folder)."""

    index: int
    name: str
    path: Path
    folder_files: tuple[Path, ...] = ()


def split_member_name(name: str) -> tuple[str, str]:
    """webdataset convention: the key is the path up to the first dot of the file name."""
    directory, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    key = f"{directory}/{stem}" if directory else stem
    return key, extension.lower() if dot else ""


def missing_end_marker(path: Path) -> bool:
    """A complete tar ends with two zero blocks; without them, the file was cut at a member boundary."""
    size = path.stat().st_size
    if size % TAR_BLOCK or size < 2 * TAR_BLOCK:
        return True
    with open(path, "rb") as handle:
        handle.seek(-2 * TAR_BLOCK, 2)
        return any(handle.read())


def iter_tar(path: Path) -> Iterator[RawSample | TarBreak]:
    """Samples of a tar in order; a final :class:`TarBreak` if the tar is truncated or corrupt."""
    current: RawSample | None = None
    try:
        with tarfile.open(path, mode="r|*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                key, extension = split_member_name(member.name)
                if current is not None and key != current.key:
                    yield current
                    current = None
                if current is None:
                    current = RawSample(key)
                handle = archive.extractfile(member)
                current.files[extension] = handle.read() if handle else b""
    except (tarfile.TarError, EOFError, OSError) as error:
        yield TarBreak(f"{type(error).__name__}: {error}", current.key if current else None)
        return
    if missing_end_marker(path):
        # The last group may have lost files after the cut: it cannot be trusted.
        yield TarBreak(
            "tar ends without its end-of-archive blocks (truncated at a file boundary)",
            current.key if current else None,
        )
        return
    if current is not None:
        yield current


def iter_folder(files: tuple[Path, ...], root: Path) -> Iterator[RawSample]:
    """Group a sorted folder slice by file stem: an image plus optional ``.txt``/``.json`` sidecars."""
    current: RawSample | None = None
    for path in files:
        relative = path.relative_to(root).with_suffix("")
        key = str(relative).replace(".", "_")
        extension = path.suffix.lower().lstrip(".")
        if current is not None and key != current.key:
            yield current
            current = None
        if current is None:
            current = RawSample(key)
        current.files[extension] = path.read_bytes()
    if current is not None:
        yield current


def iter_shard(shard: InputShard) -> Iterator[RawSample | TarBreak]:
    if shard.folder_files:
        yield from iter_folder(shard.folder_files, shard.path)
    else:
        yield from iter_tar(shard.path)


def folder_shards(root: Path, shard_size: int = FOLDER_SHARD_SIZE) -> list[InputShard]:
    """A folder of images, cut into shards of ``shard_size`` samples in sorted order."""
    wanted = {*IMAGE_EXTENSIONS, "txt", "json"}
    files = sorted(
        (p for p in root.rglob("*") if p.is_file() and p.suffix.lower().lstrip(".") in wanted),
        key=lambda p: (str(p.with_suffix("")), p.suffix),
    )
    stems: list[Path] = []
    for path in files:
        stem = path.with_suffix("")
        if not stems or stems[-1] != stem:
            stems.append(stem)
    shards = []
    for index, start in enumerate(range(0, len(stems), shard_size)):
        chosen = set(stems[start : start + shard_size])
        members = tuple(p for p in files if p.with_suffix("") in chosen)
        shards.append(InputShard(index, f"{root.name}[{start}:{start + len(chosen)}]", root, members))
    return shards


def list_input_shards(spec: str) -> list[InputShard]:
    """Resolve ``input``: a brace pattern or path of tars, a directory of tars, or a folder of images."""
    path = Path(spec).expanduser()
    if path.is_dir():
        tars = sorted(path.glob("*.tar"))
        if not tars:
            shards = folder_shards(path)
            if not shards:
                raise ConfigError(f"input: {path} holds neither .tar shards nor images")
            return shards
        paths = tars
    else:
        paths = [Path(p).expanduser() for p in braceexpand(spec)]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise ConfigError(
                f"input: {len(missing)} of {len(paths)} shards do not exist (first: {missing[0]})"
            )
    return [InputShard(index, p.name, p) for index, p in enumerate(paths)]
