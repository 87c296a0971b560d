"""Reading the snapshot mirror (`lake/snapshots`, filled by `sync`) as analytics frames.

`read_window(lake, org_id, start, end)` gives what `extract_window(db, org_id, start, end)`
gives for the same snapshots (the same `Extraction`: three sorted frames and the
documents left out, and why) without a query to the server; `scan_window` is the lazy
Polars scan underneath, rows in the nested `frames.arrow_schema()` shape.

**What is opened.** Only the part files the org's manifest lists (`sync.listed_snapshot_files`),
and of those only the `date=` partitions the window touches: another org's files, an
unlisted part of a killed sync, and the days outside the window are never opened. Polars
pushes the time and asset filters into the scan, where the Parquet statistics of each
part (sync sorts a part by asset and time) let it skip what cannot match.

**The same rows as extraction.** A mirror row with `typed` true holds the contract's
columns exactly as pymongoarrow built them from the server's BSON, so those rows give
the frames extraction gives (tests/test_mirror.py compares both on the same data). The
rows extraction leaves out are the rest: `typed` false (an off-type value pymongoarrow
refuses) or an `_id` that is no ObjectId (extraction reads `_id` as an ObjectId). They are
decoded from their exact `bson` and reported as extraction reports them (`schema.Problem`
with the off-type kinds `doctor --fix` repairs; a document showing none of them stops
the read with `ExtractError`). Rows are unique by `_id` in an org's partition by `sync`'s
construction; the read still keeps one row per `_id`.

**Fresh as the last sync.** The mirror holds what the org's last sync saw: a caller that
wants the server's latest snapshots syncs first (`perf-analytics rollup` and `anomalies`
do, unless `--no-sync`). An org the lake has never mirrored is an error (`NotSynced`),
not an empty window, so a forgotten sync cannot replace a day's results with nothing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
from bson.codec_options import CodecOptions, DatetimeConversion

from perf_analytics.errors import InvalidArgument, MirrorError, NotSynced
from perf_analytics.extract import MAX_REPORTED, Extraction, refused_problem
from perf_analytics.frames import arrow_schema, empty_frames, frames_from_arrow
from perf_analytics.schema import Problem
from perf_analytics.store import Doc
from perf_analytics.sync import last_synced, listed_snapshot_files, part_schema

_DECODE: CodecOptions[Doc] = CodecOptions(tz_aware=True, tzinfo=UTC, datetime_conversion=DatetimeConversion.DATETIME_AUTO)


def _check_window(start: datetime, end: datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidArgument("window bounds must be timezone-aware (UTC)")
    if end <= start:
        raise InvalidArgument(f"empty window: end {end.isoformat()} is not after start {start.isoformat()}")


def _window_dates(start: datetime, end: datetime) -> set[str]:
    """The UTC days [start, end) touches: the `date=` partitions a window read opens."""
    first = start.astimezone(UTC).date()
    last = (end.astimezone(UTC) - timedelta(microseconds=1)).date()
    return {(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)}


def window_files(lake: str | os.PathLike[str], org_id: str, start: datetime, end: datetime) -> list[Path]:
    """The org's listed part files of the days [start, end) touches: all a window read opens.

    Raises NotSynced when no sync has covered the org yet, MirrorError when a listed
    file is missing.
    """
    if not org_id:
        raise InvalidArgument("an org id is required to read the lake's snapshots")
    _check_window(start, end)
    if last_synced(lake, org_id=org_id) is None:
        raise NotSynced(f"the lake at {lake} holds no snapshots of org {org_id} yet: run `perf-analytics sync --org {org_id}` first")
    days = _window_dates(start, end)
    files = [Path(lake, f.path) for f in listed_snapshot_files(lake, org_id=org_id) if f.date in days]
    for path in files:
        if not path.is_file():
            raise MirrorError(f"the manifest of org {org_id} lists {path}, which is missing")
    return files


def _part_schema() -> pl.Schema:
    """A part file's columns under the contract in force, as Polars types."""
    return pl.Schema(pl.from_arrow(part_schema().empty_table()).schema)  # type: ignore[union-attr]


def _scan(files: Sequence[Path]) -> pl.LazyFrame:
    """The raw mirror rows of `files`; a part written under an older or newer contract
    reads with the fields it lacks as nulls and the ones it has beyond it ignored."""
    if not files:
        return pl.LazyFrame(schema=_part_schema())
    return pl.scan_parquet(
        list(files),
        schema=_part_schema(),
        missing_columns="insert",
        extra_columns="ignore",
        cast_options=pl.ScanCastOptions(missing_struct_fields="insert", extra_struct_fields="ignore"),
    )


def _in_window(start: datetime, end: datetime, asset_ids: Sequence[str | None] | None) -> pl.Expr:
    cond = (pl.col("timestamp") >= start) & (pl.col("timestamp") < end)
    if asset_ids is not None:
        # None stands for the snapshots whose assetId is no string (see `window_assets`).
        cond &= pl.col("assetId").is_in(pl.Series(list(asset_ids), dtype=pl.String).implode(), nulls_equal=True)
    return cond


def _collect(frame: pl.LazyFrame, org_id: str) -> pl.DataFrame:
    """Run a scan; a listed file that is damaged (truncated, not Parquet) is one clear error."""
    try:
        return frame.collect()
    except (pl.exceptions.PolarsError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MirrorError(f"a snapshot file the manifest of org {org_id} lists cannot be read: {first}") from None


_READABLE = pl.col("typed") & pl.col("_id").is_not_null()  # what extraction reads; the rest it reports


def _readable(files: Sequence[Path], org_id: str, start: datetime, end: datetime,
              asset_ids: Sequence[str | None] | None) -> pl.LazyFrame:
    return (
        _scan(files)
        .filter(_READABLE & _in_window(start, end, asset_ids))
        .unique(subset="_id", keep="first", maintain_order=True)
        .with_columns(pl.lit(org_id, pl.String).alias("orgId"))
        .select(arrow_schema().names)
    )


def scan_window(
    lake: str | os.PathLike[str],
    org_id: str,
    start: datetime,
    end: datetime,
    *,
    asset_ids: Sequence[str | None] | None = None,
) -> pl.LazyFrame:
    """`org_id`'s mirrored snapshots of [start, end) as a lazy frame in `arrow_schema()` shape.

    The rows extraction reads (typed, ObjectId `_id`), one per `_id`, in no particular
    order; `orgId` comes from the path. Only the window's listed files are scanned.
    `asset_ids` keeps those assets' rows (None in it: those whose assetId is no string).

    Raises:
        InvalidArgument: no `org_id`, a naive or empty window.
        NotSynced: no sync has covered the org yet.
        MirrorError: a listed part file is missing.
    """
    return _readable(window_files(lake, org_id, start, end), org_id, start, end, asset_ids)


def _refused(files: Sequence[Path], org_id: str, start: datetime, end: datetime,
             asset_ids: Sequence[str | None] | None) -> tuple[list[Problem], int]:
    scan = (
        _scan(files)
        .filter(~_READABLE & _in_window(start, end, asset_ids))
        .select(pl.coalesce(pl.col("_id"), pl.col("_idOther").cast(pl.Binary)).alias("key"), "bson")
        .unique(subset="key", keep="first", maintain_order=True)
    )
    refused = _collect(scan, org_id)
    problems = [refused_problem(raw, _DECODE) for raw in refused["bson"]]
    return problems[:MAX_REPORTED], len(problems)


def skipped_snapshots(
    lake: str | os.PathLike[str],
    org_id: str,
    start: datetime,
    end: datetime,
    *,
    asset_ids: Sequence[str | None] | None = None,
) -> tuple[list[Problem], int]:
    """The window's mirrored snapshots extraction cannot read: (the first MAX_REPORTED, count).

    `asset_ids` as for `scan_window`. A document none of whose off-type kinds `doctor`
    repairs raises ExtractError, as extraction does.
    """
    return _refused(window_files(lake, org_id, start, end), org_id, start, end, asset_ids)


def read_window(
    lake: str | os.PathLike[str],
    org_id: str,
    start: datetime,
    end: datetime,
    *,
    asset_ids: Sequence[str | None] | None = None,
) -> Extraction:
    """`org_id`'s mirrored snapshots of [start, end) as three sorted frames, plus what
    extraction would skip: `extract_window`'s result for the same snapshots, from the lake.

    Raises:
        InvalidArgument: no `org_id`, a naive or empty window.
        NotSynced: no sync has covered the org yet.
        MirrorError: a listed part file is missing or unreadable.
    """
    files = window_files(lake, org_id, start, end)
    frame = _collect(_readable(files, org_id, start, end, asset_ids), org_id)
    skipped, count = _refused(files, org_id, start, end, asset_ids)
    # Polars widens strings and lists and reads fixed-size binary as binary: back to the contract's types.
    frames = frames_from_arrow(frame.to_arrow().cast(arrow_schema())) if frame.height else empty_frames()
    return Extraction(frames, skipped, count)


def window_assets(lake: str | os.PathLike[str], org_id: str, start: datetime, end: datetime) -> list[str | None]:
    """The org's assets with mirrored snapshots in [start, end), sorted: for reading in batches.

    Every snapshot of the window is in one asset's batch: those extraction skips too, and
    those whose assetId is no string (an id stored as an ObjectId, say) under None, last.
    """
    files = window_files(lake, org_id, start, end)
    found = _collect(_scan(files).filter(_in_window(start, end, None)).select(pl.col("assetId").unique()), org_id)
    ids = found["assetId"].to_list()
    return sorted(a for a in ids if a is not None) + ([None] if None in ids else [])


class LakeSnapshots:
    """The mirror as `run_day`'s source of snapshots (see `pipeline.SnapshotSource`)."""

    def __init__(self, lake: str | os.PathLike[str]) -> None:
        self.lake = lake

    def assets(self, org_id: str, start: datetime, end: datetime) -> list[str | None]:
        return window_assets(self.lake, org_id, start, end)

    def read(self, org_id: str, start: datetime, end: datetime, *, asset_ids: Sequence[Any]) -> Extraction:
        return read_window(self.lake, org_id, start, end, asset_ids=asset_ids)


__all__: Sequence[str] = (
    "LakeSnapshots", "MirrorError", "NotSynced", "read_window", "scan_window", "skipped_snapshots", "window_assets", "window_files",
)
