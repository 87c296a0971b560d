"""Windowed extraction: one org's snapshots of [start, end) as Arrow, flattened into Polars.

The server filters (orgId, optional assetIds, time range) and projects (the fields of the
Arrow schema in `frames.py`); pymongoarrow builds Arrow in C, so no Python dict is made
per document. Long windows are read in time slices to keep memory bounded;
`iter_window` yields one slice at a time, `extract_window` concatenates them.

A document written by other code with an off-type field (a metric stored as a string,
say) would make pymongoarrow refuse the whole slice. Such a slice is read again without
those documents, which are counted and reported with their _id for `doctor --fix`.
Documents whose timestamp is not a date cannot fall in any window (a date range never
matches a string); `doctor` counts and repairs those.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import polars as pl
import pyarrow as pa
from pymongoarrow.api import Schema, find_arrow_all
from pymongoarrow.types import ObjectIdType

from perf_analytics.doctor import off_type_filter, off_type_kinds
from perf_analytics.errors import ConfigError, PerfAnalyticsError
from perf_analytics.frames import KEYS, Frames, arrow_schema, empty_frames, frames_from_arrow
from perf_analytics.schema import SNAPSHOTS
from perf_analytics.store import Db, Doc, probe_capabilities

# One query per slice. Servers without range pushdown (FerretDB 1.x) read all of the org's
# documents for every slice, so there the whole window is one slice (see `_slice_length`).
DEFAULT_SLICE = timedelta(days=1)
MAX_REPORTED = 100  # skipped documents listed by _id; the count is complete


class ExtractError(PerfAnalyticsError):
    """A window could not be read."""


@dataclass(frozen=True)
class Skipped:
    """A document left out of the frames, and why (for `doctor --fix`)."""

    id: Any
    reason: str


@dataclass
class Extraction:
    frames: Frames
    skipped: list[Skipped] = field(default_factory=list)
    skipped_count: int = 0  # all skipped documents (the list keeps the first MAX_REPORTED)


def _mongo_schema() -> Schema:
    fields = {f.name: f.type for f in arrow_schema(with_id=False)}
    return Schema({"_id": ObjectIdType(), **fields})


def _check_window(start: datetime, end: datetime, slice_length: timedelta) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise ConfigError("window bounds must be timezone-aware (UTC)")
    if end <= start:
        raise ConfigError(f"empty window: end {end.isoformat()} is not after start {start.isoformat()}")
    if slice_length <= timedelta(0):
        raise ConfigError("slice length must be positive")


def _slice_length(db: Db, start: datetime, end: datetime, asked: timedelta | None) -> timedelta:
    if asked is not None:
        return asked
    return DEFAULT_SLICE if probe_capabilities(db).range_pushdown else max(end - start, DEFAULT_SLICE)


def _slices(start: datetime, end: datetime, length: timedelta) -> Iterator[tuple[datetime, datetime]]:
    lo = start
    while lo < end:
        hi = min(lo + length, end)
        yield lo, hi
        lo = hi


def _read_slice(db: Db, query: Doc, schema: Schema) -> tuple[pa.Table, list[Skipped]]:
    """One slice as Arrow; off-type documents are found, left out and reported."""
    try:
        return find_arrow_all(db[SNAPSHOTS], query, schema=schema), []
    except TypeError as first:
        bad_query = {**query, **{k: v for k, v in off_type_filter(db, query["orgId"]).items() if k != "orgId"}}
        bad = list(db[SNAPSHOTS].find(bad_query))
        if not bad:
            raise ExtractError(f"the server returned a document pymongoarrow cannot read: {first}") from None
        skipped = [Skipped(d["_id"], ", ".join(off_type_kinds(d)) or "off-type field") for d in bad]
        clean = {**query, "_id": {"$nin": [d["_id"] for d in bad]}}
        try:
            return find_arrow_all(db[SNAPSHOTS], clean, schema=schema), skipped
        except TypeError as again:
            raise ExtractError(f"a document with an unexpected type remains after skipping: {again}") from None


def _query(org_id: str | None, lo: datetime, hi: datetime, asset_ids: Sequence[str] | None) -> Doc:
    query: Doc = {} if org_id is None else {"orgId": org_id}
    query["timestamp"] = {"$gte": lo, "$lt": hi}
    if asset_ids:
        query["assetId"] = {"$in": list(asset_ids)}
    return query


def _iter(
    db: Db,
    org_id: str | None,
    start: datetime,
    end: datetime,
    asset_ids: Sequence[str] | None,
    asked: timedelta | None,
) -> Iterator[Extraction]:
    slice_length = _slice_length(db, start, end, asked)
    _check_window(start, end, slice_length)
    schema = _mongo_schema()
    for lo, hi in _slices(start, end, slice_length):
        query = _query(org_id, lo, hi, asset_ids)
        if org_id is None:
            # The off-type lookup is per org; the admin read resolves it org by org.
            table, skipped = _read_all_orgs_slice(db, query, schema)
        else:
            table, skipped = _read_slice(db, query, schema)
        yield Extraction(frames_from_arrow(table), skipped[:MAX_REPORTED], len(skipped))


def _read_all_orgs_slice(db: Db, query: Doc, schema: Schema) -> tuple[pa.Table, list[Skipped]]:
    try:
        return find_arrow_all(db[SNAPSHOTS], query, schema=schema), []
    except TypeError:
        tables, skipped = [], []
        for org in db[SNAPSHOTS].distinct("orgId", query):
            table, bad = _read_slice(db, {**query, "orgId": org}, schema)
            tables.append(table)
            skipped += bad
        return pa.concat_tables(tables), skipped


def iter_window(
    db: Db,
    org_id: str,
    start: datetime,
    end: datetime,
    *,
    asset_ids: Sequence[str] | None = None,
    slice_length: timedelta | None = None,
) -> Iterator[Extraction]:
    """`org_id`'s snapshots of [start, end), one time slice at a time (bounded memory).

    `slice_length` defaults to one day, or to the whole window on a server that cannot
    narrow a scan by time (each slice would read every document of the org).
    """
    if not org_id:
        raise ConfigError("an org id is required (extract_window_all_orgs reads every org)")
    return _iter(db, org_id, start, end, asset_ids, slice_length)


def extract_window(
    db: Db,
    org_id: str,
    start: datetime,
    end: datetime,
    *,
    asset_ids: Sequence[str] | None = None,
    slice_length: timedelta | None = None,
) -> Extraction:
    """`org_id`'s snapshots of [start, end) as three frames, plus what had to be skipped."""
    if not org_id:
        raise ConfigError("an org id is required (extract_window_all_orgs reads every org)")
    return _combine(_iter(db, org_id, start, end, asset_ids, slice_length))


def extract_window_all_orgs(
    db: Db,
    start: datetime,
    end: datetime,
    *,
    slice_length: timedelta | None = None,
) -> Extraction:
    """Admin read across tenants: every org's snapshots of [start, end)."""
    return _combine(_iter(db, None, start, end, None, slice_length))


def _combine(parts: Iterator[Extraction]) -> Extraction:
    frames, skipped, count = [], [], 0
    for part in parts:
        frames.append(part.frames)
        skipped += part.skipped
        count += part.skipped_count
    if not frames:
        return Extraction(empty_frames())
    keys = list(KEYS)
    combined = Frames(
        pl.concat([f.snapshots for f in frames]).sort(keys),
        pl.concat([f.disks for f in frames]).sort([*keys, "disk"]),
        pl.concat([f.interfaces for f in frames]).sort([*keys, "interface"]),
    )
    return Extraction(combined, skipped[:MAX_REPORTED], count)
