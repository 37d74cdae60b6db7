"""Reading raw input samples: img2dataset webdataset tars, a folder of images, or a zip of images.

Folders (searched recursively) and zips hold ``.jpg``/``.jpeg``/``.png``/``.webp`` images with optional
sidecars of the same stem (``.txt`` caption, ``.json`` metadata); they are listed in sorted order and
cut into shards of ``images_per_shard`` samples, so the sharding is deterministic and resumable.

Tars are read as a stream, so a truncated or corrupt tar yields every sample before the break; the
break itself is reported (with the key of the sample it cut) instead of being raised.
"""

import hashlib
import tarfile
import zipfile
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
    """One unit of work: a tar, or a slice of a sorted folder or zip listing (``path``: the folder/zip)."""

    index: int
    name: str
    path: Path
    folder_files: tuple[Path, ...] = ()
    zip_members: tuple[str, ...] = ()


FINGERPRINT_BYTES = 1 << 20


def fingerprint(shard: InputShard) -> dict[str, str | int]:
    """What identifies an input shard's content, cheaply enough to check on every rerun.

    A tar: its path, size and a SHA-256 of its first and last MiB. A folder or zip slice: its path and
    a SHA-256 over its files' names and sizes (zip: and their stored CRC-32s).
    """
    digest = hashlib.sha256()
    if shard.folder_files:
        sizes = [file.stat().st_size for file in shard.folder_files]
        for file, file_size in zip(shard.folder_files, sizes, strict=True):
            digest.update(f"{file.relative_to(shard.path)}:{file_size}\n".encode())
        size = sum(sizes)
    elif shard.zip_members:
        with zipfile.ZipFile(shard.path) as archive:
            infos = [archive.getinfo(name) for name in shard.zip_members]
        for info in infos:
            digest.update(f"{info.filename}:{info.file_size}:{info.CRC}\n".encode())
        size = sum(info.file_size for info in infos)
    else:
        size = shard.path.stat().st_size
        with open(shard.path, "rb") as handle:
            digest.update(handle.read(FINGERPRINT_BYTES))
            handle.seek(max(0, size - FINGERPRINT_BYTES))
            digest.update(handle.read(FINGERPRINT_BYTES))
    return {"path": str(shard.path.resolve()), "size": size, "sha256": digest.hexdigest()}


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


@dataclass(frozen=True)
class NotAFile:
    """A tar member that is no regular file (a directory, a link, a device): counted, never read."""

    name: str
    kind: str


MEMBER_KINDS = {tarfile.DIRTYPE: "directory", tarfile.SYMTYPE: "symbolic link", tarfile.LNKTYPE: "hard link"}


def iter_tar(path: Path) -> Iterator[RawSample | TarBreak | NotAFile]:
    """Samples of a tar in order; a final :class:`TarBreak` if the tar is truncated or corrupt."""
    current: RawSample | None = None
    try:
        with tarfile.open(path, mode="r|*") as archive:
            for member in archive:
                if not member.isfile():
                    yield NotAFile(member.name, MEMBER_KINDS.get(member.type, "special file"))
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


WANTED_EXTENSIONS = {*IMAGE_EXTENSIONS, "txt", "json"}


def group_by_stem(names: list[str]) -> Iterator[tuple[str, list[str]]]:
    """Sorted ``(stem, names)`` groups of relative paths: an image and its sidecars share a stem."""
    current, group = None, []
    for name in sorted(names, key=lambda n: (n.rsplit(".", 1)[0], n)):
        stem = name.rsplit(".", 1)[0]
        if group and stem != current:
            yield current, group
            group = []
        current = stem
        group.append(name)
    if group:
        yield current, group


def sample_key(stem: str) -> str:
    """A webdataset key for a relative path stem (dots would split it into extensions)."""
    return stem.replace(".", "_")


def iter_listing(names: tuple[str, ...], read) -> Iterator[RawSample]:
    """Samples of a sorted listing slice, each file read with ``read(name)``."""
    for stem, group in group_by_stem(list(names)):
        yield RawSample(sample_key(stem), {name.rsplit(".", 1)[1].lower(): read(name) for name in group})


def iter_shard(shard: InputShard) -> Iterator[RawSample | TarBreak | NotAFile]:
    if shard.folder_files:
        names = tuple(str(p.relative_to(shard.path)) for p in shard.folder_files)
        yield from iter_listing(names, lambda name: (shard.path / name).read_bytes())
    elif shard.zip_members:
        with zipfile.ZipFile(shard.path) as archive:
            yield from iter_listing(shard.zip_members, archive.read)
    else:
        yield from iter_tar(shard.path)


def wanted(name: str) -> bool:
    return "." in name and name.rsplit(".", 1)[1].lower() in WANTED_EXTENSIONS


def listing_shards(path: Path, names: list[str], shard_size: int) -> list[tuple[int, str, tuple[str, ...]]]:
    """``(index, name, members)`` of each shard of ``shard_size`` samples of a sorted listing."""
    groups = list(group_by_stem(names))
    shards = []
    for index, start in enumerate(range(0, len(groups), shard_size)):
        chosen = groups[start : start + shard_size]
        members = tuple(name for _, group in chosen for name in group)
        shards.append((index, f"{path.name}[{start}:{start + len(chosen)}]", members))
    return shards


def folder_shards(root: Path, shard_size: int = FOLDER_SHARD_SIZE) -> list[InputShard]:
    """A folder of images (recursively), cut into shards of ``shard_size`` samples in sorted order."""
    names = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and wanted(p.name)]
    return [
        InputShard(index, name, root, tuple(root / member for member in members))
        for index, name, members in listing_shards(root, names, shard_size)
    ]


def zip_shards(path: Path, shard_size: int = FOLDER_SHARD_SIZE) -> list[InputShard]:
    """A zip of images, cut into shards of ``shard_size`` samples in sorted member order."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [
                info.filename for info in archive.infolist() if not info.is_dir() and wanted(info.filename)
            ]
    except (zipfile.BadZipFile, OSError) as error:
        raise ConfigError(f"input: {path} is not a readable zip ({error})") from None
    return [
        InputShard(index, name, path, zip_members=members)
        for index, name, members in listing_shards(path, names, shard_size)
    ]


def list_input_shards(spec: str, images_per_shard: int = FOLDER_SHARD_SIZE) -> list[InputShard]:
    """Resolve ``input``: a brace pattern or path of tars, a directory of tars, a folder or zip of images."""
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() == ".zip":
        shards = zip_shards(path, images_per_shard)
        if not shards:
            raise ConfigError(f"input: {path} holds no images")
        return shards
    if path.is_dir():
        tars = sorted(path.glob("*.tar"))
        if not tars:
            shards = folder_shards(path, images_per_shard)
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
