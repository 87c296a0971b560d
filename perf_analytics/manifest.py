"""Versioned JSON manifests under `<lake>/_manifests/`: what a dataset's views may read.

A manifest is the lake's record of which files hold a dataset's rows, with each file's
row count and a hash of its `_id`s, plus the state a writer needs to resume (the sync's
high-water mark). It is replaced atomically (`atomic.write_atomic`), so a reader sees
either the old or the new one. Each file carries `"version"`; a manifest of a version
this code does not know is refused with `ManifestError` rather than read as something
it is not (a newer toolkit may have changed its meaning).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from perf_analytics.atomic import write_atomic
from perf_analytics.errors import PerfAnalyticsError

VERSION = 1
MANIFESTS = "_manifests"


class ManifestError(PerfAnalyticsError):
    """A manifest cannot be read: malformed, or written by a version this code does not know."""


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
