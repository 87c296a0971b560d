"""Writing a fleet to files: snapshots (NDJSON, gzip or zstd), labels and asset documents.

Each file appears under its final name only when complete (perf_analytics.atomic), and
the snapshots come last, so their presence means the run finished. Compressed output
carries no file name or time in its header, so the same arguments give the same bytes.

The labels file is one JSON object: the generation arguments (`seed`, `orgs`,
`assetsPerOrg`, `days`, `intervalSeconds`, `timeWindow`, `start`, `end`, `anomalies`),
the number of `snapshots` written, and `labels` (see perf_analytics.synth.plan).
"""

from __future__ import annotations

import gc
import gzip
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import orjson
import zstandard
from bson import json_util

from perf_analytics.atomic import atomic_path, write_atomic
from perf_analytics.errors import InvalidArgument
from perf_analytics.synth.payloads import chunks
from perf_analytics.synth.plan import FleetPlan
from perf_analytics.synth.spec import FleetSpec

ZSTD_LEVEL = 1  # on these repetitive lines level 1 compresses as well as 3, twice as fast
GZIP_LEVEL = 1  # a quarter larger than level 6, but twice as fast to write
# The labels files have always named their generator so; readers may key on it, and the
# same arguments keep giving the same bytes.
GENERATOR = "perf_analytics.generate"

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class GenerateSummary:
    """What `write_fleet` wrote: counts, where, and how long it took."""

    snapshots: int
    assets: int
    labels: int
    path: Path
    seconds: float
    orgs: int = 0
    injected: int = 0
    labels_path: Path | None = None
    assets_path: Path | None = None


def default_labels_path(out_path: str | os.PathLike[str]) -> Path:
    """Where the labels go unless told: the output's stem plus `.labels.json`.

    Compression and NDJSON suffixes are dropped first: `fleet.ndjson.zst` gives
    `fleet.labels.json`, `runs/x.jsonl.gz` gives `runs/x.labels.json`.
    """
    path = Path(out_path)
    name = path.name
    for suffix in (".gz", ".zst"):
        name = name.removesuffix(suffix)
    for suffix in (".ndjson", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return path.with_name(f"{name or 'fleet'}.labels.json")


class _Sink(Protocol):
    """What the snapshot writer needs of a (possibly compressing) output stream."""

    def write(self, data: bytes, /) -> int: ...

    def close(self) -> None: ...


def _write_snapshots(path: Path, fleet: FleetPlan, progress: Progress | None) -> int:
    expected = fleet.expected_snapshots()
    written = 0
    dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    with atomic_path(path) as tmp, tmp.open("wb") as raw:
        stream: _Sink
        if path.name.endswith(".gz"):
            # No file name and mtime 0 in the header, so equal data gives equal bytes.
            stream = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=GZIP_LEVEL)
        elif path.name.endswith(".zst"):
            stream = zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(raw, closefd=False)
        else:
            stream = raw
        was_enabled = gc.isenabled()
        gc.disable()  # the payloads are acyclic and short-lived; collections only cost time here
        try:
            for docs in chunks(fleet):
                while lines := [dumps(doc, option=newline) for doc in islice(docs, 4096)]:
                    stream.write(b"".join(lines))
                    written += len(lines)
                if progress is not None:
                    progress(written, expected)
        finally:
            if was_enabled:
                gc.enable()
        if stream is not raw:
            stream.close()
    return written


def _check_targets(targets: list[Path]) -> None:
    """Distinct files in existing directories, or an InvalidArgument before anything is written."""
    resolved = [p.resolve() for p in targets]
    if len(set(resolved)) != len(resolved):
        raise InvalidArgument(f"output files must differ: {', '.join(str(p) for p in targets)}")
    for p in targets:
        if not p.parent.is_dir():
            raise InvalidArgument(f"directory {p.parent} does not exist (for {p.name})")
        if p.is_dir():
            raise InvalidArgument(f"{p} is a directory")


def _labels_document(fleet: FleetPlan, labels: list[dict[str, Any]]) -> bytes:
    spec = fleet.spec
    header = {
        "generator": GENERATOR,
        "seed": spec.seed,
        "orgs": spec.orgs,
        "assetsPerOrg": spec.assets,
        "days": spec.days,
        "intervalSeconds": spec.interval_s,
        "timeWindow": spec.window,
        "start": spec.start_time.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "end": spec.end.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "anomalies": spec.anomalies,
        "snapshots": fleet.expected_snapshots(),
        "labels": labels,
    }
    return orjson.dumps(header, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)


def write_fleet(
    out_path: str | os.PathLike[str],
    spec: FleetSpec,
    *,
    labels_path: str | os.PathLike[str] | None = None,
    assets_path: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> GenerateSummary:
    """Write the snapshots of the fleet `spec` describes as NDJSON (gzip for .gz, zstd for .zst, else plain).

    Also writes the labels (JSON: the generation arguments and `labels`, at `labels_path`,
    default `default_labels_path(out_path)`) and, when `assets_path` is given, the asset
    documents as Extended JSON lines. Each file appears under its final name only when
    complete; the snapshots come last, so their presence means the run finished.
    `progress(written, expected)` is called after each time chunk.

    Raises:
        InvalidArgument: equal output paths, a missing directory or a directory as a file.
    """
    began = time.perf_counter()
    fleet = FleetPlan.of(spec)
    out = Path(out_path)
    labels_out = Path(labels_path) if labels_path is not None else default_labels_path(out)
    assets_out = Path(assets_path) if assets_path is not None else None
    _check_targets([out, labels_out] + ([assets_out] if assets_out is not None else []))

    labels = fleet.labels()
    write_atomic(labels_out, _labels_document(fleet, labels))
    if assets_out is not None:
        lines = [
            json_util.dumps(a.document(), json_options=json_util.RELAXED_JSON_OPTIONS) + "\n" for a in fleet.assets
        ]
        write_atomic(assets_out, "".join(lines).encode())
    written = _write_snapshots(out, fleet, progress)
    return GenerateSummary(
        snapshots=written,
        assets=len(fleet.assets),
        labels=len(labels),
        path=out,
        seconds=time.perf_counter() - began,
        orgs=spec.orgs,
        injected=sum(1 for label in labels if label["injected"]),
        labels_path=labels_out,
        assets_path=assets_out,
    )
