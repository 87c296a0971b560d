"""Checkpoints of bulk loads, so a re-run after a crash skips what was already committed.

A load has one small JSON checkpoint, replaced atomically (temp file, fsync, rename) at
each commit, after the batches it covers are inserted, their lastSeen updates made and the
rejects file synced. It only ever describes committed work: a crash between a batch's
insert and the next checkpoint makes the re-run insert that batch again, which the unique
key turns into counted duplicates. A finished load removes its checkpoint, so loading the
same archives later re-reads them and finds every record a duplicate.

The checkpoint's file is found by the server, the database and the archive paths; inside,
it names everything that changes what the load does (server, database, org, format,
compression, rejects file, and each archive's size, modification time and first bytes).
A checkpoint of the same archives whose identity differs belongs to another load: it is
set aside and the load starts from the beginning (safe, as records already stored come
back as duplicates), never resumed, since skipping records another load had committed
would lose them (another org's, another format's). Each file carries a format version; a
version this code does not know is refused rather than discarded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from perf_analytics.atomic import write_atomic
from perf_analytics.errors import CheckpointError

DEFAULT_DIR = "data/checkpoints"
VERSION = 1
HEAD_BYTES = 64 * 1024  # how much of each archive's start is hashed into its identity


@dataclass
class LoadCheckpoint:
    run: str  # names the checkpoint file: server, database, archive paths
    identity: dict[str, Any]  # everything that changes the load's outcome (see load_identity)
    archive_index: int = 0  # the archive being loaded
    records_done: int = 0  # records of that archive already committed
    rejects_bytes: int = 0  # length of the rejects file at the last commit
    counts: dict[str, int] = field(default_factory=dict)
    version: int = VERSION


def server_identity(client: MongoClient[Any]) -> str:
    """The server a client talks to, without credentials: its replica set and host list."""
    hosts = sorted(f"{host}:{port}" for host, port in client.topology_description.server_descriptions())
    replica_set = client.options.replica_set_name
    return ",".join(hosts) + (f"/?replicaSet={replica_set}" if replica_set else "")


def archive_identity(path: Path) -> dict[str, Any]:
    """Path, size, modification time and a hash of the first bytes of one archive: an archive
    replaced or rewritten in place, even with the same size, is another archive."""
    st = path.stat()
    with path.open("rb") as fh:
        head = hashlib.sha256(fh.read(HEAD_BYTES)).hexdigest()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "head_sha256": head}


def load_identity(
    server: str,
    database: str,
    archives: Sequence[Path],
    *,
    org: str | None,
    fmt: str | None,
    compression: str | None,
    rejects: Path | None,
) -> dict[str, Any]:
    """Everything that changes what a load does; two loads resume each other only if equal."""
    return {
        "server": server,
        "database": database,
        "org": org,
        "format": fmt,
        "compression": compression,
        "rejects": str(rejects.resolve()) if rejects else None,
        "archives": [archive_identity(p) for p in archives],
    }


def run_key(identity: dict[str, Any]) -> str:
    """The checkpoint slot of a load: its server, database and archive paths (the options
    are compared inside, so another load of the same files finds and reports it)."""
    parts = [identity["server"], identity["database"], *(a["path"] for a in identity["archives"])]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two load identities, in words for the summary."""
    diffs = [key for key in ("server", "database", "org", "format", "compression", "rejects") if old.get(key) != new[key]]
    old_archives = old.get("archives") or []
    for i, archive in enumerate(new["archives"]):
        before = old_archives[i] if i < len(old_archives) else {}
        changed = [k for k in ("size", "mtime_ns", "head_sha256") if before.get(k) != archive[k]]
        if changed:
            diffs.append(f"archive {Path(archive['path']).name} ({', '.join(changed)})")
    return diffs


def _path(directory: Path, run: str) -> Path:
    return directory / f"ingest-{run}.json"


def open_checkpoint(directory: Path, identity: dict[str, Any], *, resume: bool) -> tuple[LoadCheckpoint, str | None]:
    """The checkpoint to continue from: the stored one if it is this same load, else a new one.

    Also returns, when a checkpoint of another load of these archives was set aside, what
    differed. A checkpoint set aside, or ignored with `resume=False` (--restart), is removed
    at once, so the file always describes the load started last. Raises CheckpointError for
    a checkpoint that cannot be understood (unknown version, unreadable) unless `resume` is
    False.
    """
    run = run_key(identity)
    fresh = LoadCheckpoint(run=run, identity=identity)
    path = _path(directory, run)
    if not path.exists():
        return fresh, None
    stored = _read(path) if resume else None
    if stored is not None and stored.identity == identity:
        return stored, None
    path.unlink()
    return fresh, ", ".join(differences(stored.identity, identity)) if stored is not None else None


def _read(path: Path) -> LoadCheckpoint:
    hint = "pass --restart to start the load over"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable ({exc}); {hint}") from None
    version = data.get("version") if isinstance(data, dict) else None
    if version != VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version!r}; this perf_analytics reads version "
            f"{VERSION}: finish that load with the perf_analytics that wrote it, or {hint}"
        )
    try:
        return LoadCheckpoint(**data)
    except TypeError as exc:
        raise CheckpointError(f"checkpoint {path} is malformed ({exc}); {hint}") from None


def save_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old or the new content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)


def save_checkpoint(directory: Path, cp: LoadCheckpoint) -> None:
    save_atomic(_path(directory, cp.run), json.dumps(asdict(cp)).encode())


def clear_checkpoint(directory: Path, run: str) -> None:
    _path(directory, run).unlink(missing_ok=True)
