"""Versioned JSON manifests under `<lake>/_manifests/`: what a dataset's views may read.

A manifest is the lake's record of which files hold a dataset's rows, with each file's
row count and a hash of its `_id`s, plus the state a writer needs to resume (the sync's
high-water mark). It is replaced atomically (`atomic.write_atomic`), so a reader sees
either the old or the new one. Each file carries `"version"`; a manifest of a version
this code does not know is refused with `ManifestError` rather than read as something
it is not (a newer toolkit may have changed its meaning).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from perf_analytics.atomic import fsync_dir, write_atomic
from perf_analytics.errors import ManifestError, PerfAnalyticsError

VERSION = 1
MANIFESTS = "_manifests"


def manifest_path(root: str | os.PathLike[str], *parts: str) -> Path:
    """`<root>/_manifests/<parts...>`."""
    return Path(root, MANIFESTS, *parts)


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest at `path` (None when there is none yet); refuses unknown versions."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ManifestError(f"manifest {path} cannot be read: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"manifest {path} is not a JSON object")
    version = data.get("version")
    if version != VERSION:
        raise ManifestError(
            f"manifest {path} has version {version!r}; this perf_analytics reads version {VERSION} only "
            "(written by a newer release? upgrade perf_analytics)"
        )
    return data


def write_manifest(path: Path, payload: dict[str, Any]) -> None:
    """Replace the manifest at `path` atomically, stamped with the current version."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"version": VERSION, **{k: v for k, v in payload.items() if k != "version"}}
    write_atomic(path, (json.dumps(body, indent=1, sort_keys=True) + "\n").encode())


def make_dirs(directory: Path) -> None:
    """Create `directory` and make each new level's entry durable in its parent."""
    missing = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
        fsync_dir(path.parent)


@contextmanager
def lake_lock(
    root: str | os.PathLike[str], name: str, error: Callable[[str], PerfAnalyticsError], *, who: str
) -> Iterator[None]:
    """Hold `<root>/_manifests/.<name>.lock` for the block: one `who` (a sync, a retention
    run) per lake at a time.

    The lock is an flock, so it goes with the process, even on kill -9. When another
    process holds it, or the directory cannot be made, `error(message)` is raised.
    """
    directory = manifest_path(root)
    try:
        make_dirs(directory)
    except OSError as exc:
        raise error(f"cannot create {directory}: {exc.strerror or exc}") from None
    with (directory / f".{name}.lock").open("a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise error(f"another {who} is using the lake at {root}; wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
