"""How archives are read and loaded: one `LoadOptions` for every loading call.

`ingest_archives`, `ingest_archives_all_orgs` and `validate_archives` (a dry run) read
archives the same way, so they take the same options as one value, checked when it is
built: a script builds it once and hands it to a dry run and then to the load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from perf_analytics.errors import InvalidArgument
from perf_analytics.ingest.checkpoint import DEFAULT_DIR
from perf_analytics.ingest.readers import COMPRESSIONS, FORMATS


def _at_least_one(name: str, value: int) -> None:
    """An InvalidArgument naming `name` unless `value` is a whole number >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(f"{name} must be a whole number >= 1, got {value!r}")


@dataclass(frozen=True)
class LoadOptions:
    """How archives are read and loaded.

    - `rejects`: a file that receives every rejected record with its reason (NDJSON); it
      may not be one of the archives.
    - `fmt`, `compression`: the archives' format (one of `FORMATS`) and compression (one
      of `COMPRESSIONS`), when their names and first bytes do not tell.
    - `batch_size`: records sent per insert; `workers`: inserts sent at once.
    - `checkpoint_dir`: where a load keeps its progress; with `resume` an interrupted
      identical load continues where it stopped; progress is committed every
      `commit_seconds` (0: after every batch).
    - `allow_partial`: accept a load whose archives are damaged part-way; without it such
      a load raises IncompleteLoad at the end.

    A dry run (`validate_archives`) reads `rejects`, `fmt`, `compression`, `batch_size`
    and `allow_partial`; it keeps no checkpoint and sends nothing.

    Raises:
        InvalidArgument: on construction, for a count below 1, a negative or non-finite
            `commit_seconds`, or an unknown format or compression.
    """

    rejects: str | Path | None = None
    fmt: str | None = None
    compression: str | None = None
    batch_size: int = 2000
    checkpoint_dir: str | Path = DEFAULT_DIR
    resume: bool = True
    workers: int = 2
    commit_seconds: float = 10.0
    allow_partial: bool = False

    def __post_init__(self) -> None:
        _at_least_one("batch_size", self.batch_size)
        _at_least_one("workers", self.workers)
        if not math.isfinite(self.commit_seconds) or self.commit_seconds < 0:
            raise InvalidArgument(f"commit_seconds must be a finite number >= 0, got {self.commit_seconds!r}")
        if self.fmt is not None and self.fmt not in FORMATS:
            raise InvalidArgument(f"fmt must be one of {', '.join(FORMATS)}, got {self.fmt!r}")
        if self.compression is not None and self.compression not in COMPRESSIONS:
            raise InvalidArgument(f"compression must be one of {', '.join(COMPRESSIONS)}, got {self.compression!r}")
