"""Reading folders under the data root and writing sorted copies under the output root, safely.

A folder named by a client is a path relative to the data root. Nothing outside that root is ever
read: `..`, absolute paths and symlinks that lead out are refused, and only regular files are opened
(a FIFO or a device would block or never end). Sorted copies go to <output root>/real|fake/, never
overwrite a file, and are never written through a link below the output root (`folder_below`, which the
CLI's annotated pictures use too); a photo answered "uncertain" goes to <output root>/uncertain/.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Sequence

from service.errors import ServiceError, bad_field

LABELS = ("real", "fake", "uncertain")


@dataclass(frozen=True)
class FolderFile:
    """One entry of a folder listing: `name` relative to the data root; `error` when it must not be read."""

    name: str
    path: Path
    error: ServiceError | None = None

    def read(self, max_bytes: int) -> bytes:
        if self.error is not None:
            raise self.error
        return read_regular_file(self.path, max_bytes)


def resolve_folder(root: Path, folder: str) -> Path:
    """The real path of `folder` (relative to `root`), or a 403/404/422 ServiceError."""
    if "\x00" in folder:
        raise bad_field("folder contains a NUL character")
    relative = PurePosixPath(folder)
    if relative.is_absolute() or folder.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", folder):
        raise ServiceError("folder must be relative to the data root, not an absolute path", 403, "path_outside_root")
    if ".." in relative.parts:
        raise ServiceError("folder must not contain '..'", 403, "path_outside_root")
    real_root = root.resolve()
    target = (real_root / relative).resolve()
    if not target.is_relative_to(real_root):
        raise ServiceError("folder leads outside the data root (through a symlink)", 403, "path_outside_root")
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        raise ServiceError(f"folder not found: {folder}", 404, "folder_not_found") from None
    except OSError as exc:
        raise ServiceError(f"folder cannot be read: {exc.strerror}", 403, "folder_unreadable") from None
    if stat.S_ISREG(mode):
        raise ServiceError(f"not a folder: {folder}", 404, "folder_not_found")
    if not stat.S_ISDIR(mode):
        raise ServiceError(f"not a folder but a special file: {folder}", 403, "special_file")
    return target


def list_files(root: Path, folder: Path, recursive: bool, limit: int, exclude: Path | Iterable[Path] | None = None) -> list[FolderFile]:
    """Every file in `folder` (a resolved folder under `root`), sorted by name; subfolders when `recursive`.

    Entries that must not be read (symlinks out of the root, FIFOs, devices, sockets) are listed with an
    error rather than dropped. Symlinked folders are not descended into; `exclude` (an output folder, or
    several) is skipped. More than `limit` files is a 413.
    """
    real_root = root.resolve()
    excluded = [exclude] if isinstance(exclude, Path) else list(exclude or ())
    skip = {path.resolve() for path in excluded}
    found: list[FolderFile] = []
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda entry: entry.name)
        except OSError as exc:
            raise ServiceError(f"folder cannot be read: {exc.strerror}", 403, "folder_unreadable") from None
        subfolders = []
        for entry in entries:
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                if recursive and path not in skip:
                    subfolders.append(path)
                continue
            item = _file_entry(real_root, path)
            if item is None:
                continue
            found.append(item)
            if len(found) > limit:
                raise ServiceError(f"the folder holds more than {limit} files (FACECHECK_MAX_BATCH_FILES)", 413, "too_many_files")
        pending.extend(reversed(subfolders))
    return sorted(found, key=lambda item: item.name)


def _file_entry(real_root: Path, path: Path) -> FolderFile | None:
    """None for a symlink to a folder inside the root: links are not followed (no loops, no duplicates)."""
    name = path.relative_to(real_root).as_posix()
    target = path.resolve()
    if not target.is_relative_to(real_root):
        return FolderFile(name, path, ServiceError("symlink leads outside the data root", 403, "path_outside_root"))
    try:
        mode = target.stat().st_mode
    except OSError as exc:
        return FolderFile(name, path, ServiceError(f"file cannot be read: {exc.strerror}", 403, "file_unreadable"))
    if stat.S_ISDIR(mode):
        return None
    if not stat.S_ISREG(mode):
        return FolderFile(name, path, ServiceError("not a regular file (FIFO, device or socket)", 403, "special_file"))
    return FolderFile(name, target)


def read_regular_file(path: Path, max_bytes: int) -> bytes:
    """At most max_bytes + 1 bytes of a regular file; opening never blocks, even on a FIFO swapped in."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise ServiceError(f"file cannot be read: {exc.strerror}", 403, "file_unreadable") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ServiceError("not a regular file (FIFO, device or socket)", 403, "special_file")
        return handle.read(max_bytes + 1)


def safe_name(filename: str, fallback: str = "upload") -> str:
    """A client's file name reduced to one harmless path component."""
    name = PurePosixPath(filename.replace("\\", "/")).name
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).lstrip(".")[-200:]
    return name or fallback


@contextlib.contextmanager
def folder_below(root: Path, parts: Sequence[str]) -> Iterator[int]:
    """An open descriptor of the folder root/parts[0]/parts[1]/..., each made where missing.

    Every step below the root is opened relative to the one before and without following a link, so a
    link anywhere below the root (swapped in at any moment) is refused with 403 rather than written through.
    """
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                raise ServiceError(f"{part}/ under the output folder is a link or a file; refusing to write through it", 403, "path_outside_root") from None
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


class SortedCopier:
    """Copies classified files into <root>/real/, <root>/fake/ or <root>/uncertain/ without ever overwriting a file."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def copy(self, data: bytes, filename: str, label: str) -> str:
        """Write `data` as <root>/<label>/<name>, adding -1, -2, ... before the suffix when taken.

        Returns the copy's path relative to the root. A link in place of <label>/ is refused (403); one in
        place of the name counts as taken.
        """
        if label not in LABELS:
            raise ValueError(f"unknown label {label!r}")
        name = PurePosixPath(safe_name(filename))
        with folder_below(self.root, [label]) as folder:
            for attempt in range(10_000):
                candidate = name.name if attempt == 0 else f"{name.stem}-{attempt}{name.suffix}"
                try:
                    fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=folder)
                except FileExistsError:
                    continue
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                return f"{label}/{candidate}"
        raise ServiceError(f"no free name for {name} in {label}/", 500, "copy_failed")
