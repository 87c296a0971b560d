"""Files that a crash leaves either old or new, never half-written.

`atomic_path(path)` yields a hidden temporary name beside `path`; whatever the block
writes there is fsynced and renamed over `path` when the block ends normally (rename is
atomic on POSIX), and the directory is fsynced so the rename itself survives a power
loss. If the block raises, the temporary file is removed and `path` is untouched. Readers
never list the temporary names (they start with a dot and end in `.tmp`).

A writer killed between creating its temporary file and the rename (kill -9, a lost
worker, a power cut) leaves that file behind; `sweep_temp_files` removes such leftovers
under a directory, and nothing else (the nightly run does it at its start, under its lock).

Used for checkpoints, lake partitions, generated archives and saved figures.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# `.<name>.<pid>.<8 hex>.tmp`, as `_temp_name` makes them: only such files are ever swept.
TEMP_NAME = re.compile(r"\.(?P<name>.+)\.(?P<pid>[0-9]+)\.[0-9a-f]{8}\.tmp")


def fsync_dir(directory: Path) -> None:
    """Make renames and removals in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(path: Path) -> str:
    """A hidden name beside `path` that says which process writes it (see TEMP_NAME)."""
    return f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path to write; renamed over `path` when the block succeeds."""
    tmp = path.with_name(_temp_name(path))
    try:
        yield tmp
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path`'s content with `data` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _running(pid: int) -> bool:
    """Whether a process with this id runs on this machine (signal 0 only asks)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it runs, as another user
    return True


def sweep_temp_files(root: Path, *, older_than: float) -> list[Path]:
    """Remove the temporary files that killed writers of `atomic_path` left under `root`.

    A file is removed only when its name is the writer's pattern (TEMP_NAME: other hidden
    files, lock files included, are never touched), it was last written before
    `older_than` (a POSIX time: the caller's start, taken before the lock that keeps
    writers of its own kind out), and the process its name records is not running on
    this machine (a writer of another kind, say a sync begun earlier, may still rename
    it). Returns the files removed, sorted.
    """
    removed: list[Path] = []
    for current, _, files in os.walk(root):
        for name in files:
            found = TEMP_NAME.fullmatch(name)
            if found is None:
                continue
            path = Path(current, name)
            try:
                if path.stat().st_mtime >= older_than or _running(int(found["pid"])):
                    continue
                path.unlink()
            except FileNotFoundError:
                continue  # its writer renamed or removed it meanwhile
            removed.append(path)
    for directory in sorted({p.parent for p in removed}):
        fsync_dir(directory)
    return sorted(removed)
