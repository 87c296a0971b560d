"""Files that a crash leaves either old or new, never half-written.

`atomic_path(path)` yields a hidden temporary name beside `path`; whatever the block
writes there is fsynced and renamed over `path` when the block ends normally (rename is
atomic on POSIX), and the directory is fsynced so the rename itself survives a power
loss. If the block raises, the temporary file is removed and `path` is untouched. Readers
never list the temporary names (they start with a dot and end in `.tmp`).

Used for checkpoints, lake partitions, generated archives and saved figures.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make renames and removals in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path to write; renamed over `path` when the block succeeds."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
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
