"""File helpers shared by the bundle, the pipeline and the Hub transfer: hashing, atomic writes, links, swaps."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` so that `path` is either absent, the old file, or complete: never a torn file after a kill."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def link_or_copy(source: str | os.PathLike, target: str | os.PathLike, fallback=shutil.copyfile) -> None:
    """Make `target` a hard link to the file behind `source` (links followed): one copy on disk. Across file systems,
    `fallback(the file behind source, target)` instead: a copy, or e.g. os.symlink."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    real = os.path.realpath(source)
    try:
        os.link(real, target)
    except OSError:
        fallback(real, target)


def swap_in(new: Path, target: Path) -> None:
    """Replace folder `target` with folder `new`; the old one is kept aside (backup_path) until the next swap, so an
    app that follows `target` (fashion_search.live) can finish the requests it is answering from it."""
    backup = backup_path(target)
    if target.exists():
        if backup.exists():
            shutil.rmtree(backup)
        os.replace(target, backup)
    os.replace(new, target)


def restore_interrupted_swap(target: Path) -> None:
    """A kill between the two renames of `swap_in` leaves only the backup: put it back."""
    backup = backup_path(target)
    if backup.exists() and not target.exists():
        os.replace(backup, target)


def backup_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.previous")
