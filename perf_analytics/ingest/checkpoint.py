"""Checkpoints of bulk loads, so a re-run after a crash skips what was already committed.

A load (the ordered list of archives, the rejects file, the target database) has one
small JSON checkpoint, replaced atomically (temp file, fsync, rename) at each commit,
after the batches it covers are inserted and their lastSeen updates made. It only ever
describes committed work: a crash between a batch's insert and the next checkpoint makes
the re-run insert that batch again, which the unique key turns into counted duplicates. A finished load removes its checkpoint, so
loading the same archives later re-reads them and finds every record a duplicate.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from perf_analytics.atomic import write_atomic

DEFAULT_DIR = "data/checkpoints"


@dataclass
class LoadCheckpoint:
    run: str  # identifies the load: archives, rejects file, database
    fingerprint: str  # sizes and mtimes of the archives: a changed file starts over
    archive_index: int = 0  # the archive being loaded
    records_done: int = 0  # records of that archive already committed
    rejects_bytes: int = 0  # length of the rejects file at the last commit
    counts: dict[str, int] = field(default_factory=dict)


def run_key(archives: Sequence[Path], target: str, rejects: Path | None) -> str:
    parts = [target, str(rejects.resolve()) if rejects else "", *(str(p.resolve()) for p in archives)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


def fingerprint(archives: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in archives:
        st = p.stat()
        h.update(f"{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:24]


def _path(directory: Path, run: str) -> Path:
    return directory / f"ingest-{run}.json"


def load_checkpoint(directory: Path, run: str, archives: Sequence[Path]) -> LoadCheckpoint | None:
    """The checkpoint of an unfinished load, if there is one and its archives are unchanged."""
    path = _path(directory, run)
    try:
        cp = LoadCheckpoint(**json.loads(path.read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None
    if cp.fingerprint != fingerprint(archives):
        return None  # an archive changed since: start over (duplicates keep that safe)
    return cp


def save_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old or the new content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)


def save_checkpoint(directory: Path, cp: LoadCheckpoint) -> None:
    save_atomic(_path(directory, cp.run), json.dumps(asdict(cp)).encode())


def clear_checkpoint(directory: Path, run: str) -> None:
    _path(directory, run).unlink(missing_ok=True)
