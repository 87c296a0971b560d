"""One org's day, end to end: snapshots from the lake → anomaly flags → rollups → lake (→ optional sinks).

`run_day` is what the nightly run does for each org and what `perf-analytics rollup` and
`perf-analytics anomalies` do for one, after a `sync`. It reads the day from the lake's
snapshot mirror (`mirror.py`), never from the server, an asset batch at a time; the
flags' baselines come from the baseline state the lake keeps for the days before it
(`anomaly_state.py`: small per-day summaries, rebuilt from a day's snapshots when they are
missing or stale), so a night reads one day of snapshots, not its history. The flags of
day D come from D and the configured history before it, never from later days, so
re-running D after D+1 arrived gives the same flags, with the state kept or rebuilt. Every output for (org, D) is replaced as a whole: lake
partitions are rewritten (a dataset without rows that day gets an empty partition, so
nothing stale survives), and the Mongo sinks (`sinks.py`) upsert by natural key and remove
what the new run no longer produces.

`ServerSnapshots` reads the server instead (extraction, as before the mirror), for
comparing the two and for benchmarks: both give the same results on the same snapshots.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from perf_analytics.anomalies import (
    AnomalyConfig,
    FlagOptions,
    combine_dropped,
    combine_episodes,
    flag_assets,
    flag_peers,
)
from perf_analytics.anomalies.series import empty_dropped
from perf_analytics.anomalies.state import baseline_dates
from perf_analytics.anomaly_state import day_fingerprint, prior_state, sort_state, write_state
from perf_analytics.errors import InvalidArgument
from perf_analytics.extract import MAX_REPORTED, Extraction, extract_window
from perf_analytics.frames import Frames, empty_frames
from perf_analytics.lake import (
    ANOMALIES,
    ANOMALY_SCHEMA,
    AVAILABILITY,
    ROLLUP_DATASETS,
    write_anomalies,
    write_availability,
    write_partition,
    write_rollups,
)
from perf_analytics.mirror import LakeSnapshots
from perf_analytics.rollups import WINDOWS, Rollups, compute_availability, compute_rollups
from perf_analytics.schema import SNAPSHOTS, Problem
from perf_analytics.sinks import (
    ANOMALY_FLAGS as ANOMALY_FLAGS,  # re-exported: where callers found it
)
from perf_analytics.sinks import upsert_flags, upsert_rollups
from perf_analytics.store import Db


@dataclass
class DayResult:
    org_id: str
    day: date
    snapshots: int = 0
    flags: pl.DataFrame = field(default_factory=pl.DataFrame)
    rollup_rows: dict[str, int] = field(default_factory=dict)
    paths: list[Path] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)
    skipped_count: int = 0
    sink_writes: int = 0
    # Values of the day that could be no reading of their metric and were left out of the
    # flags (anomalies.DROPPED_COLUMNS: per series and reason, count, first, last, example),
    # so a run's record can say what it did not look at.
    dropped: pl.DataFrame = field(default_factory=empty_dropped)


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def _only(frames: Frames, start: datetime, end: datetime) -> Frames:
    def cut(df: pl.DataFrame) -> pl.DataFrame:
        return df.filter((pl.col("timestamp") >= start) & (pl.col("timestamp") < end))

    return Frames(cut(frames.snapshots), cut(frames.disks), cut(frames.interfaces))


DEFAULT_ASSET_BATCH = 100
_ROLLUP_KEYS = ("orgId", "assetId", "disk", "interface", "bucket")


class SnapshotSource(Protocol):
    """Where `run_day` reads an org's snapshots: `mirror.LakeSnapshots` (the default) or
    `ServerSnapshots`. Every snapshot of the window belongs to one of `assets()`."""

    def assets(self, org_id: str, start: datetime, end: datetime) -> list[Any]:
        """The assets with snapshots in [start, end), in the order batches are read."""

    def read(self, org_id: str, start: datetime, end: datetime, *, asset_ids: Sequence[Any]) -> Extraction:
        """These assets' snapshots of [start, end), and those that had to be skipped."""


class ServerSnapshots:
    """The server as `run_day`'s source: extraction, as before the mirror (a scan of the
    collection per batch on FerretDB). For comparisons and benchmarks."""

    def __init__(self, db: Db) -> None:
        self.db = db

    def assets(self, org_id: str, start: datetime, end: datetime) -> list[Any]:
        """The distinct assetId values, kept as stored (not turned into strings), so a batch's
        `$in` matches exactly the documents the whole-org read would have."""
        ids = self.db[SNAPSHOTS].distinct("assetId", {"orgId": org_id, "timestamp": {"$gte": start, "$lt": end}})
        return sorted(ids, key=lambda a: (type(a).__name__, str(a)))

    def read(self, org_id: str, start: datetime, end: datetime, *, asset_ids: Sequence[Any]) -> Extraction:
        return extract_window(self.db, org_id, start, end, asset_ids=asset_ids)


def _concat_rollups(parts: list[dict[str, Rollups]], windows: Sequence[str]) -> dict[str, Rollups]:
    """The batches' rollups joined per window and level. `parts` is emptied as it goes
    (the caller's own list): each level's batch frames are let go once joined, so the
    org's rollups are held about once, not twice (the 1min window is most of them)."""

    def joined(frames: list[pl.DataFrame]) -> pl.DataFrame:
        frame = pl.concat(frames) if len(frames) > 1 else frames[0]
        frames.clear()
        return frame.sort([k for k in _ROLLUP_KEYS if k in frame.columns], maintain_order=True)

    out = {}
    for w in windows:
        of_window = [p.pop(w) for p in parts]
        levels = [r.assets for r in of_window], [r.disks for r in of_window], [r.interfaces for r in of_window]
        del of_window
        out[w] = Rollups(w, *(joined(frames) for frames in levels))
    return out


def run_day(
    lake: str | Path,
    org_id: str,
    day: date,
    *,
    windows: Sequence[str] = WINDOWS,
    config: AnomalyConfig | None = None,
    rollups: bool = True,
    anomalies: bool = True,
    sink: Db | None = None,
    asset_batch: int = DEFAULT_ASSET_BATCH,
    progress: Callable[[int, int], None] | None = None,
    source: SnapshotSource | None = None,
) -> DayResult:
    """Flag and roll up `org_id`'s snapshots of `day` (UTC) from the lake into the lake.

    Reads the snapshot mirror as the org's last `sync` left it (`sync_snapshots` first for
    the server's latest; an org never synced raises `NotSynced`), or `source`.
    The org's assets are read `asset_batch` at a time, the day only: the flags' baselines
    come from the state of the `baseline_days` before it (kept in the lake's
    `anomaly_state/`, rebuilt from those days' snapshots where missing or stale, and the
    day's own state is written with its flags); with another `source`, the day's history
    of `config.history_days` is read instead. The day itself is kept for the whole org
    until the rollups. The only
    comparison across assets (peers) runs once over small per-asset summaries, so the
    flags do not depend on the batch size. With `sink`, flags and rollups also go to
    that database's `anomaly_flags` and `performance_rollups`.
    `progress(assets_done, assets)` is called after each batch. The result's `dropped`
    counts the day's values that could be no reading of their metric and were left out of
    the flags, per series and reason (a run record should show it: they are otherwise
    only logged).

    It is the composition of the three steps the nightly run names: `flag_day`,
    `rollup_day`, `write_day`.

    Raises:
        InvalidArgument: `asset_batch` below 1.
        NotSynced: the org has no mirror in the lake yet.
    """
    flagged = flag_day(lake, org_id, day, config=config, anomalies=anomalies, asset_batch=asset_batch,
                       progress=progress, source=source)
    derived = rollup_day(flagged, windows=windows) if rollups else None
    result = flagged.result
    if derived is not None:
        result.rollup_rows = {w: r.assets.height for w, r in derived.rollups.items()}
    written = write_day(lake, flagged, derived, sink=sink)
    result.paths += written.paths
    result.sink_writes += written.sink_writes
    return result


# ---- the steps of a day: flag, roll up, write ----------------------------------------------


@dataclass
class Flagged:
    """What `flag_day` read and found: the day's frames (one per asset batch) and its flags
    (None when flagging was not asked for)."""

    result: DayResult
    todays: list[Frames]
    flags: pl.DataFrame | None
    # The day's own baseline state and its fingerprint, for `write_day` to keep in the lake
    # (None when not flagged, or read from a source other than the lake's mirror).
    state: tuple[pl.DataFrame, str] | None = None


@dataclass
class Derived:
    """What `rollup_day` computed from a flagged day: rollups per window and availability."""

    rollups: dict[str, Rollups]
    availability: pl.DataFrame


@dataclass
class Written:
    """What `write_day` wrote: the lake files, and the documents sent to the sinks."""

    paths: list[Path] = field(default_factory=list)
    sink_writes: int = 0


def flag_day(
    lake: str | Path,
    org_id: str,
    day: date,
    *,
    config: AnomalyConfig | None = None,
    anomalies: bool = True,
    asset_batch: int = DEFAULT_ASSET_BATCH,
    progress: Callable[[int, int], None] | None = None,
    source: SnapshotSource | None = None,
) -> Flagged:
    """Read the org's day and its history from the lake, a batch of assets at a time, and
    flag its anomalies (see `run_day`). Nothing is written but the baseline state of
    earlier days that was missing or stale (a cache: see `anomaly_state.py`); the day's
    own state is in the result, for `write_day`.

    Raises:
        InvalidArgument: `asset_batch` below 1.
        NotSynced: the org has no mirror in the lake yet.
    """
    if asset_batch < 1:
        raise InvalidArgument(f"asset_batch must be at least 1, got {asset_batch}")
    cfg = config or AnomalyConfig()
    snapshots = source if source is not None else LakeSnapshots(lake)
    start, end = day_bounds(day)
    history_start = start - timedelta(days=cfg.history_days)
    assets = snapshots.assets(org_id, history_start, end)
    # From the mirror, the baselines come from the kept state of the days before (rebuilt
    # where stale) and only the day itself is read; another source reads the history.
    kept = anomalies and source is None
    prior = prior_state(lake, org_id, baseline_dates(day, cfg), cfg, asset_batch=asset_batch) if kept else None
    read_from = start if kept else history_start
    batches = [assets[i : i + asset_batch] for i in range(0, len(assets), asset_batch)] or [[]]
    result = DayResult(org_id, day)
    todays: list[Frames] = []
    own_flags: list[pl.DataFrame] = []
    buckets: list[pl.DataFrame] = []
    dropped: list[pl.DataFrame] = []
    states: list[pl.DataFrame] = []
    done = 0
    for batch in batches:
        got = snapshots.read(org_id, read_from, end, asset_ids=batch) if batch else None
        frames = got.frames if got is not None else empty_frames()
        if got is not None:
            result.skipped += got.skipped
            result.skipped_count += got.skipped_count
        today = _only(frames, start, end)
        todays.append(today)
        result.snapshots += today.snapshots.height
        if anomalies:
            mine = None if prior is None else prior.filter(pl.col("assetId").is_in([a for a in batch if a is not None]))
            found = flag_assets(frames, options=FlagOptions(day=day, config=cfg), state=mine)
            own_flags.append(found.episodes)
            buckets.append(found.peer_buckets)
            dropped.append(found.dropped)
            states.append(found.state)
        done += len(batch)
        if progress is not None:
            progress(done, len(assets))
    result.skipped = result.skipped[:MAX_REPORTED]
    flags: pl.DataFrame | None = None
    if anomalies:
        flags = combine_episodes([*own_flags, flag_peers(buckets, day=day, config=cfg)])
        result.flags = flags
        result.dropped = combine_dropped(dropped)
    state = (sort_state(pl.concat(states)), day_fingerprint(lake, org_id, day, cfg)) if kept else None
    return Flagged(result, todays, flags, state)


def rollup_day(flagged: Flagged, *, windows: Sequence[str] = WINDOWS) -> Derived:
    """Roll the flagged day up into `windows` (counting its flags per bucket) and compute
    its availability; nothing is written, and the flags are left as they are."""
    parts = [compute_rollups(today, windows=windows, flags=flagged.flags) for today in flagged.todays]
    availability = pl.concat([compute_availability(today) for today in flagged.todays])
    return Derived(_concat_rollups(parts, windows), availability.sort(["orgId", "assetId", "date"]))


def write_day(lake: str | Path, flagged: Flagged, derived: Derived | None, *, sink: Db | None = None) -> Written:
    """Replace the day's lake partitions (flags when flagged, rollups and availability when
    derived) and, with `sink`, the same in the MongoDB sinks (`sinks.py`)."""
    org_id, day = flagged.result.org_id, flagged.result.day
    written = Written()
    if flagged.flags is not None:
        written.paths += _replace_flags(lake, org_id, day, flagged.flags)
        if flagged.state is not None:
            written.paths.append(write_state(lake, org_id, day, *flagged.state))
        if sink is not None:
            written.sink_writes += upsert_flags(sink, org_id, day, flagged.flags)
    if derived is not None:
        written.paths += write_rollups(lake, derived.rollups)
        written.paths += write_availability(lake, derived.availability)
        written.paths += _replace_empty_days(lake, org_id, day, derived.rollups, derived.availability)
        if sink is not None:
            written.sink_writes += upsert_rollups(sink, org_id, derived.rollups)
    return written


def _replace_empty_days(
    lake: str | Path, org_id: str, day: date, computed: dict[str, Rollups], availability: pl.DataFrame
) -> list[Path]:
    """An empty partition for each dataset the day has no rows in, replacing stale ones."""
    written = []
    key = day.isoformat()
    for window, r in computed.items():
        for level, frame in (("assets", r.assets), ("disks", r.disks), ("interfaces", r.interfaces)):
            if frame.is_empty():
                written.append(write_partition(lake, ROLLUP_DATASETS[level], {"window": window, "orgId": org_id, "date": key}, frame))
    if availability.is_empty():
        written.append(write_partition(lake, AVAILABILITY, {"orgId": org_id, "date": key}, availability))
    return written


def _replace_flags(lake: str | Path, org_id: str, day: date, flags: pl.DataFrame) -> list[Path]:
    """Write the day's flags; a day without flags gets an empty partition, replacing old ones."""
    if flags.height:
        return write_anomalies(lake, flags)
    empty = pl.from_arrow(ANOMALY_SCHEMA.empty_table())
    assert isinstance(empty, pl.DataFrame)
    return [write_partition(lake, ANOMALIES, {"orgId": org_id, "date": day.isoformat()}, empty)]
