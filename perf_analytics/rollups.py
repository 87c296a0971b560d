"""Rollups of the snapshot frames into UTC time buckets, and the daily availability figure.

`compute_rollups(frames)` turns the three flat frames of `frames.py` into, per window
(`1min`, `5min`, `15min`, `1hour`, `1day`), a `Rollups` of three Polars frames:

- `assets`: one row per (orgId, assetId, bucket): `samples`, `interval_s`, `coverage`,
  `longest_gap_s`, `anomaly_flags`, then mean/min/max/p95/last of `cpu_usage`,
  `memory_usage_percent`, `memory_swap_used`, `system_process_count`,
  `system_thread_count` (columns `<metric>_<stat>`);
- `disks`: one row per (orgId, assetId, disk, bucket): `samples`, `usage_percent_max`,
  `usage_percent_last`, `used_bytes_last`, `free_bytes_last`, and mean/max of the read/write
  bytes and ops per second;
- `interfaces`: one row per (orgId, assetId, interface, bucket): `samples`, mean/max of
  bytes and packets per second (received and sent), `bytes_recv_total`,
  `bytes_sent_total`, `bytes_total`.

`mergeable_rollups(frames)` gives the per-asset statistics of 1-minute buckets with what
it takes to merge them (counts, sums and DDSketch-style bins for p95), and
`coarsen_rollups(rollups, window)` merges those into 5min ... 1day or 1week buckets, also
across days rolled up separately, without the raw data: exact but for p95, which is
within SKETCH_ALPHA (1%) of the exact value (see `coarsen_rollups`).

`compute_availability(frames)` gives one row per (orgId, assetId, date) with samples.
`sinks.upsert_rollups(db, org_id, rollups)` copies one org's rollups into the optional
`performance_rollups` collection for the application's dashboards. `lake.write_rollups`
puts them in the Parquet lake.

Definitions (the tests check them against an independent DuckDB SQL / plain-loop reference):

- bucket: `timestamp` truncated to the window in UTC; [bucket, bucket + window). Every
  window divides a day, so a bucket never straddles two UTC dates.
- interval (`interval_s`): an asset's reporting interval, per asset and UTC day, is the
  median (mean of the two middle values for an even count) of the differences between its
  successive timestamps within that day. Per day, so an asset that changes interval is
  measured with the interval it mostly used that day; the median ignores outages. A day
  with a single sample falls back to the duration of that day's first `timeWindow`
  ("1min" -> 60 s); without it the interval is unknown (null) and so are coverage,
  interface totals and availability.
- coverage: `min(1, samples / (window_s / interval_s))`: samples received over samples
  expected (window length / interval), capped at 1.
- longest gap (`longest_gap_s`): the longest stretch of the bucket without a sample: the
  largest of (first sample - bucket start), the differences between successive samples in
  the bucket, and (bucket end - last sample). A bucket is [start, end), so a 1-minute
  bucket with one sample at :17 has a longest gap of 43 s.
- anomaly flags: flags (optional frame with orgId, assetId, start) whose `start` falls in
  the bucket. Flags in buckets where the asset sent nothing are not counted anywhere.
- p95: linear interpolation between closest ranks (position (n-1)*0.95), the definition
  of DuckDB `quantile_cont(x, 0.95)` and numpy's default.
- last: the value of the latest sample in the bucket at which the metric is not null
  (the last known value: an optional field missing from the very last snapshot does not
  blank the bucket).
- mean/min/max/p95 ignore nulls; a metric null in every sample of a bucket gives nulls.
- interface totals: `bytes_recv_total = interval_s * sum(bytes_recv_per_sec)` (each sample
  stands for one reporting interval of its asset; time lost to an outage is not invented
  back; null when no sample has the rate), same for sent; `bytes_total` is their sum.
- availability: each sample covers the time before it, back to the latest of
  (timestamp - interval), the previous sample and the machine's boot (timestamp - uptime),
  and never more than a day. Time covered is split across midnight; `availability` is the
  covered share of the UTC day (86,400 s, also for a day that is not over yet). Because a
  sample never reaches back past the boot, the downtime of a reboot counts as unavailable
  even when the first post-boot sample comes within one interval of the last pre-reboot
  one. `reboots` counts samples whose uptime is lower than the previous sample's.

Bad data never fails the whole run: duplicate (orgId, assetId, timestamp) rows keep the
first in frame order (per disk / interface for those frames); NaN is null; a value
outside its field's limits in the contract (`schema.LIMITS`: percentages outside [0, 100],
negative bytes, rates, counts and uptimes) is null (an impossible value, not a measurement); rows without orgId, assetId or timestamp are dropped; optional columns
missing from a hand-made frame are null. A frame that lacks a key column or has a column
of the wrong type raises `RollupError` naming it.

No Python loop touches rows. The cleaned frames, and each window's bucketed rows, are
materialised once so that every aggregation groups by a sorted integer (see `_prepare` and
`_bucketed`); the groups, contiguous slices, are then reduced as a numpy grid with one
column per group (see `_aggregate`). The per-asset groups of 15min, 1hour and 1day are
merged from those of the window before (see `_asset_groups`). The windows are computed
one after the other to bound memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Final

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa

from perf_analytics.errors import InvalidArgument, RollupError
from perf_analytics.frames import Frames, column_name
from perf_analytics.schema import LIMITS, TABLES, TIME_WINDOWS, Limits
from perf_analytics.store import Db

WINDOWS: tuple[str, ...] = tuple(TIME_WINDOWS)
WINDOW_SECONDS: dict[str, int] = {w: int(d.total_seconds()) for w, d in TIME_WINDOWS.items()}
_TRUNCATE: dict[str, str] = {"1min": "1m", "5min": "5m", "15min": "15m", "1hour": "1h", "1day": "1d"}
DAY_S = 86_400
P95 = 0.95

# Polars' default (streaming) engine hashes every group key; the in-memory engine
# aggregates groups of a sorted key as contiguous slices, several times faster on
# 1-minute buckets (one or two samples per group).
ENGINE: Final = "in-memory"

ASSET_METRICS: tuple[str, ...] = (
    "cpu_usage",
    "memory_usage_percent",
    "memory_swap_used",
    "system_process_count",
    "system_thread_count",
)
ASSET_STATS: tuple[str, ...] = ("mean", "min", "max", "p95", "last")

DISK_STATS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("usage_percent", ("max", "last")),
    ("used_bytes", ("last",)),
    ("free_bytes", ("last",)),
    ("read_bytes_per_sec", ("mean", "max")),
    ("write_bytes_per_sec", ("mean", "max")),
    ("read_ops_per_sec", ("mean", "max")),
    ("write_ops_per_sec", ("mean", "max")),
)
INTERFACE_RATES: tuple[str, ...] = (
    "bytes_recv_per_sec",
    "bytes_sent_per_sec",
    "packets_recv_per_sec",
    "packets_sent_per_sec",
)

def _frame_limits() -> dict[str, Limits]:
    """Each frame column's limits from the contract (`schema.LIMITS` of its field's kind),
    named as the frames name them: `<table>_<field>` on the snapshot frame, `<field>` on a
    repeated table's frame. Outside them a value is impossible and nulled before
    aggregating; the contract is the one place that says what is possible."""
    limits: dict[str, Limits] = {}
    for table in TABLES:
        for name, kind, _ in table.fields:
            if kind in LIMITS:
                limits[column_name(table, name)] = LIMITS[kind]
    return limits


_LIMITS: Final = _frame_limits()

# Columns each frame must or may have, with their types (missing optional ones become null).
_SNAPSHOT_COLUMNS: dict[str, pl.DataType] = {
    "cpu_usage": pl.Float64(),
    "memory_usage_percent": pl.Float64(),
    "memory_swap_used": pl.Float64(),
    "system_uptime": pl.Float64(),
    "system_process_count": pl.Int64(),
    "system_thread_count": pl.Int64(),
    "timeWindow": pl.String(),
}
_DISK_COLUMNS: dict[str, pl.DataType] = {name: pl.Float64() for name, _ in DISK_STATS}
_INTERFACE_COLUMNS: dict[str, pl.DataType] = {name: pl.Float64() for name in INTERFACE_RATES}

_KEYS = ("orgId", "assetId")


@dataclass(frozen=True)
class Rollups:
    """The rollups of one window: per asset, per disk and per interface, by bucket."""

    window: str
    assets: pl.DataFrame
    disks: pl.DataFrame
    interfaces: pl.DataFrame


# ---- input cleaning -----------------------------------------------------------------------


def _prepare(frame: pl.DataFrame, name: str, item: str | None, optional: Mapping[str, pl.DataType]) -> pl.LazyFrame:
    """Check key columns, add missing optional ones, null out bad values, drop duplicates.

    The result is sorted by (orgId, assetId[, item], timestamp) and numbers each series
    (orgId, assetId[, item]) in that order in `_series`, so that every later grouping is
    by a sorted integer: Polars then groups by contiguous slices instead of hashing
    strings, which is what makes the 1-minute window cheap.
    """
    series = [*_KEYS, *([item] if item else [])]
    keys = [*series, "timestamp"]
    for column in keys:
        if column not in frame.columns:
            raise RollupError(name, column, "column is missing")
        dtype = frame.schema[column]
        if column == "timestamp":
            if not isinstance(dtype, pl.Datetime):
                raise RollupError(name, column, f"expected a datetime column, got {dtype}")
        elif dtype != pl.String:
            raise RollupError(name, column, f"expected a string column, got {dtype}")
    for column, want in optional.items():
        if column in frame.columns and not _compatible(frame.schema[column], want):
            raise RollupError(name, column, f"expected a {want} column, got {frame.schema[column]}")

    lf = frame.lazy().with_columns(_utc_ms("timestamp", frame.schema["timestamp"]))
    missing = [pl.lit(None, dtype=t).alias(c) for c, t in optional.items() if c not in frame.columns]
    if missing:
        lf = lf.with_columns(missing)
    # Only the columns that hold a bad value, and only the rows to drop, are rewritten: most
    # frames hold neither, and a copy of every column of a large frame cost more than
    # looking (in time and in memory).
    bad = {column: _bad_value(column, want) for column, want in optional.items()}
    found = lf.select(
        *(expr.any().alias(column) for column, expr in bad.items() if expr is not None),
        pl.any_horizontal(pl.col(k).is_null() for k in keys).any().alias("_null_key"),
    ).collect(engine=ENGINE)
    clean = []
    for column, want in optional.items():
        value, check = pl.col(column).cast(want), bad[column]
        clean.append(pl.when(~check).then(value).alias(column) if check is not None and found[column].item() else value)
    lf = lf.select(*keys, *clean)
    if found.get_column("_null_key").item():
        lf = lf.drop_nulls(keys)
    df = _sort(lf.collect(engine=ENGINE), series, item)
    duplicate = pl.all_horizontal(pl.col(k) == pl.col(k).shift(1) for k in keys).fill_null(False)
    if df.select(duplicate.any()).item():
        df = df.filter(~duplicate)
    new_series = ~pl.all_horizontal(pl.col(k) == pl.col(k).shift(1) for k in series).fill_null(False)
    return df.lazy().with_columns((new_series.cum_sum().cast(pl.Int64) - 1).set_sorted().alias("_series"))


def _bad_value(column: str, want: pl.DataType) -> pl.Expr | None:
    """True where `column`, cast to `want`, is NaN or impossible and so counts as null;
    None for a column that cannot hold such a value."""
    value = pl.col(column).cast(want)
    checks = [value.is_nan()] if want == pl.Float64 else []
    limits = _LIMITS.get(column)
    if limits is not None and math.isfinite(limits.minimum):
        checks.append(value < limits.minimum)
    if limits is not None and math.isfinite(limits.maximum):
        checks.append(value > limits.maximum)
    return pl.any_horizontal(checks).fill_null(False) if checks else None


def _in_order(frame: pl.DataFrame, keys: Sequence[str]) -> bool:
    """Whether the rows are already sorted by `keys` (ties allowed)."""
    at_least = pl.lit(True)
    for k in reversed(keys):
        at_least = (pl.col(k) > pl.col(k).shift(1)) | ((pl.col(k) == pl.col(k).shift(1)) & at_least)
    return bool(frame.select(at_least.fill_null(True).all()).item())


def _sort(frame: pl.DataFrame, series: list[str], item: str | None) -> pl.DataFrame:
    """`frame` sorted by (series..., timestamp), stably (the first of duplicates stays first).

    Frames from `frames.py` come sorted by (orgId, assetId, timestamp[, item]): snapshots
    then need nothing, and disks and interfaces only a stable sort by one integer, (asset
    run, item's rank among the item names), instead of a sort by strings, which took most
    of the time of the whole rollup. Any other order takes the general sort.
    """
    contract = [*_KEYS, "timestamp", *([item] if item else [])]
    if _in_order(frame, contract):
        if item is None:
            return frame
        names = frame.get_column(item).unique().sort()
        asset_run = (~pl.all_horizontal(pl.col(k) == pl.col(k).shift(1) for k in _KEYS).fill_null(False)).cum_sum()
        rank = pl.col(item).cast(pl.Enum(names)).to_physical()
        key = asset_run.cast(pl.Int64) * (names.len() + 1) + rank.cast(pl.Int64)
        return frame.sort(key, maintain_order=True)
    return frame.sort([*series, "timestamp"], maintain_order=True)


def _utc_ms(column: str, dtype: pl.DataType) -> pl.Expr:
    """`column` as UTC milliseconds; a naive datetime is taken to be UTC already."""
    col = pl.col(column)
    zone = getattr(dtype, "time_zone", None)
    utc = col.dt.replace_time_zone("UTC") if zone is None else col.dt.convert_time_zone("UTC")
    return utc.dt.cast_time_unit("ms").alias(column)


def _compatible(have: pl.DataType, want: pl.DataType) -> bool:
    return have == want or (have.is_numeric() and want.is_numeric()) or have == pl.Null


def _divide(expr: pl.Expr, divisor: float) -> pl.Expr:
    """`expr / divisor`, correctly rounded.

    Polars divides a column by a scalar as a multiplication by its reciprocal, which is
    one ulp off for about one value in eight (x / 1000 against x * 0.001). Dividing by a
    column holding the divisor is IEEE division, so seconds and shares come out exactly
    as the SQL reference computes them.
    """
    numerator = expr.cast(pl.Float64)
    return numerator / (numerator * 0.0 + divisor)


def _same_series() -> pl.Expr:
    """True where a row continues the previous row's series (frames as `_prepare` leaves them)."""
    return (pl.col("_series") == pl.col("_series").shift(1)).fill_null(False)


def _run_id(by: str) -> pl.Expr:
    """A sorted integer numbering the runs of equal (series, `by`): the group of each row."""
    return (~(_same_series() & (pl.col(by) == pl.col(by).shift(1)).fill_null(False))).cum_sum().set_sorted()


def _step_in_run() -> pl.Expr:
    """Milliseconds since the previous row of the same run (`_g`), else null."""
    step = (pl.col("timestamp") - pl.col("timestamp").shift(1)).dt.total_milliseconds()
    return pl.when(pl.col("_g") == pl.col("_g").shift(1)).then(step)


def _day() -> pl.Expr:
    return pl.col("timestamp").dt.truncate("1d")


def _intervals(snapshots: pl.LazyFrame) -> pl.LazyFrame:
    """(_series, day, interval_s): the reporting interval of each asset and day."""
    fallback = pl.col("timeWindow").first().replace_strict(
        {w: float(s) for w, s in WINDOW_SECONDS.items()}, default=None, return_dtype=pl.Float64
    )
    return (
        snapshots.with_columns(_day().alias("day"))
        .with_columns(_run_id("day").alias("_g"))
        .with_columns(_step_in_run().alias("_step_ms"))
        .group_by("_g", maintain_order=True)
        .agg(
            pl.col("_series").first(),
            pl.col("day").first(),
            pl.col("_step_ms").median().alias("_median_ms"),
            fallback.alias("_fallback_s"),
        )
        .select("_series", "day", pl.coalesce(_divide(pl.col("_median_ms"), 1000.0), "_fallback_s").alias("interval_s"))
    )


def _series_names(lf: pl.LazyFrame, *names: str) -> pl.LazyFrame:
    """One row per series: `_series` and its key columns."""
    return lf.filter(~_same_series()).select("_series", *names)


# ---- rollups ------------------------------------------------------------------------------


def _stat(column: str, stat: str) -> tuple[str, str, str]:
    """The aggregation spec (kind, column, output name) of a statistic of the module docstring."""
    return (stat, column, f"{column}_{stat}")


# A window's groups are laid out as one grid (one column per group, as many rows as the
# largest group) when the grid holds at most this many cells per row of data; groups of
# very unequal sizes (an asset reporting every second beside one reporting every minute)
# would make it mostly padding, and are split by size first (see `_aggregate`).
_GRID_FILL: Final = 2
# Up to this many values, p95 (position 0.95 (n - 1)) lies between the two largest.
_TOP_TWO_MAX_N: Final = 21


@dataclass(frozen=True, eq=False)
class _Grid:
    """The rows of groups sorted by `_g` placed in a (largest group, groups) grid: row
    `i` of the data goes to cell (its position in its group, its group)."""

    starts: npt.NDArray[np.int64]
    lengths: npt.NDArray[np.int64]
    cells: npt.NDArray[np.int64]
    shape: tuple[int, int]

    @classmethod
    def of(cls, g: pl.Series, *, bounded: bool = True) -> _Grid | None:
        """The grid of the groups of `g`, or None when `bounded` and the grid would hold
        more than _GRID_FILL cells per row."""
        values = g.to_numpy()
        new = np.empty(values.size, dtype=bool)
        new[:1] = True
        np.not_equal(values[1:], values[:-1], out=new[1:])
        starts = np.flatnonzero(new)
        lengths = np.diff(np.append(starts, values.size))
        width = int(lengths.max())
        if bounded and width * starts.size > _GRID_FILL * values.size:
            return None
        group = np.cumsum(new) - 1
        position = np.arange(values.size) - starts[group]
        return cls(starts, lengths, position * starts.size + group, (width, starts.size))

    @cached_property
    def filled(self) -> npt.NDArray[np.bool_]:
        """The cells that hold a row (the others are padding)."""
        filled = np.zeros(self.shape[0] * self.shape[1], dtype=bool)
        filled[self.cells] = True
        return filled.reshape(self.shape)

    def place(self, column: pl.Series) -> _Placed:
        """The column in the grid as float64, NaN for null and for padding (the cleaned
        frames hold no NaN; timestamps in milliseconds and counts are exact in a float64)."""
        physical = column.to_physical() if column.dtype.is_temporal() else column
        grid = np.full(self.shape[0] * self.shape[1], np.nan)
        grid[self.cells] = physical.cast(pl.Float64).to_numpy()
        grid = grid.reshape(self.shape)
        if column.null_count() == 0:  # most columns: the valid cells are the rows, shared
            return _Placed(column, grid, self.filled, self.lengths, complete=True)
        valid = ~np.isnan(grid)
        return _Placed(column, grid, valid, valid.sum(axis=0), complete=False)


@dataclass(frozen=True)
class _Placed:
    """A column laid out in a `_Grid`, with its non-null cells and their count per group."""

    column: pl.Series
    grid: npt.NDArray[np.float64]
    valid: npt.NDArray[np.bool_]
    count: npt.NDArray[np.int64]
    complete: bool  # no null values: a group's last value is in its last row

    @cached_property
    def total(self) -> npt.NDArray[np.float64]:
        """The sum of each group's values (shared by the sum and the mean)."""
        # Row after row, always in this order: numpy's own sum adds a single column
        # pairwise, which would make a group's sum depend on the other groups of the grid.
        total = np.zeros(self.grid.shape[1])
        for row, valid in zip(self.grid, self.valid, strict=True):
            np.add(total, row, out=total, where=valid)
        return total

    @cached_property
    def top_two(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """`_top_two` of the grid (shared by p95 and the second largest value)."""
        return _top_two(self.grid, self.valid, self.count)

    def like(self, values: npt.NDArray[np.float64], alias: str) -> pl.Series:
        """Float results (NaN for null) back in the type of the column."""
        out = pl.Series(alias, values, nan_to_null=True)
        if self.column.dtype.is_temporal():
            return out.cast(pl.Int64).cast(self.column.dtype)
        return out.cast(self.column.dtype)


def _grid_stat(kind: str, placed: _Placed, layout: _Grid, alias: str) -> pl.Series:
    """One statistic of every group from the grid of its column (reductions over axis 0)."""
    grid, valid, count = placed.grid, placed.valid, placed.count
    if kind == "count":
        return pl.Series(alias, count, dtype=pl.Int64)
    if kind in ("sum", "mean"):
        total = placed.total
        if kind == "sum":
            return pl.Series(alias, total)
        return pl.Series(alias, np.divide(total, count, out=np.full(total.size, np.nan), where=count > 0), nan_to_null=True)
    if kind == "min":
        return placed.like(np.fmin.reduce(grid, axis=0), alias)
    if kind == "max":
        return placed.like(np.fmax.reduce(grid, axis=0), alias)
    if kind == "last" and placed.complete:
        return placed.column.gather(layout.starts + layout.lengths - 1).alias(alias)
    if kind == "last":
        from_end = np.argmax(valid[::-1], axis=0)
        rows = np.where(count > 0, layout.starts + layout.shape[0] - 1 - from_end, np.nan)
        return placed.column.gather(pl.Series(rows, nan_to_null=True).cast(pl.Int64)).alias(alias)
    high, second = placed.top_two
    if kind == "second":
        return pl.Series(alias, second, nan_to_null=True)
    return pl.Series(alias, _p95_of_top_two(high, second, count), nan_to_null=True)


def _top_two(
    grid: npt.NDArray[np.float64], valid: npt.NDArray[np.bool_], count: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The largest and second largest value (a repeated largest value counts twice) of
    each grid column, NaN where there is none, in one pass over the grid's rows."""
    high = np.full(grid.shape[1], -np.inf)
    second = high.copy()
    lower = np.empty_like(high)
    for row, present in zip(grid, valid, strict=True):
        np.minimum(high, row, out=lower, where=present)
        np.maximum(second, lower, out=second, where=present)
        np.maximum(high, row, out=high, where=present)
    return np.where(count > 0, high, np.nan), np.where(count > 1, second, np.nan)


def _p95_of_top_two(
    high: npt.NDArray[np.float64], second: npt.NDArray[np.float64], count: npt.NDArray[np.int64]
) -> npt.NDArray[np.float64]:
    """p95 of groups of at most _TOP_TWO_MAX_N values from their two largest, which are
    then the two closest ranks (n - 2 and n - 1); sorting every column of a grid of small
    groups costs far more."""
    return _interpolate(np.where(count > 1, second, high), high, count)


def _interpolate(
    low: npt.NDArray[np.float64], high: npt.NDArray[np.float64], count: npt.NDArray[np.int64]
) -> npt.NDArray[np.float64]:
    """p95 from the values at the two closest ranks of each group: lo + (hi - lo) *
    fraction, as DuckDB's quantile_cont writes it; NaN for a group without values.

    Every route to p95 ends here, so a group's p95 has the same bits whichever route the
    batch it came in took."""
    position = (np.maximum(count, 1) - 1) * P95
    with np.errstate(invalid="ignore"):  # NaN of groups without values, kept
        return low + (high - low) * (position - np.floor(position))


# Up to this many values per group, p95 of groups too large for the two largest values
# comes from sorting each group's row of a grid (numpy's vectorised sort: 60 values, an
# hour of a 1-minute agent, in half the time of Polars' selection of two ranks); larger
# groups from Polars (1,440 values, a day, sort three times slower).
_SORT_MAX_N: Final = 128


def _p95_by_ranks(rows: pl.LazyFrame, columns: Sequence[tuple[str, str]]) -> pl.DataFrame:
    """p95 (column -> alias) of every group `_g` of `rows`, for groups too large for the
    two largest values: from the sorted rows of a grid with one row per group while the
    groups are at most _SORT_MAX_N values and similar in size, else Polars selects the two
    closest ranks of each group in parallel."""
    frame = rows.collect(engine=ENGINE)
    layout = _Grid.of(frame.get_column("_g"))
    if layout is not None and layout.shape[0] <= _SORT_MAX_N:
        return pl.DataFrame([_p95_of_sorted(layout, frame.get_column(name), alias) for name, alias in columns])
    ranks = []
    for name, alias in columns:
        value = pl.col(name).cast(pl.Float64)
        ranks += [
            value.quantile(P95, interpolation="lower").alias(f"{alias}:lo"),
            value.quantile(P95, interpolation="higher").alias(f"{alias}:hi"),
            value.count().cast(pl.Int64).alias(f"{alias}:n"),
        ]
    found = frame.lazy().group_by("_g", maintain_order=True).agg(ranks).collect(engine=ENGINE)
    out = []
    for _, alias in columns:
        low, high = (found.get_column(f"{alias}:{k}").cast(pl.Float64).to_numpy() for k in ("lo", "hi"))
        p95 = _interpolate(low, high, found.get_column(f"{alias}:n").to_numpy())
        out.append(pl.Series(alias, p95, nan_to_null=True))
    return pl.DataFrame(out)


def _p95_of_sorted(layout: _Grid, column: pl.Series, alias: str) -> pl.Series:
    """p95 of each group of `layout` from its values sorted: the grid transposed (one row
    per group, so that each group's values are contiguous), each row sorted, nulls and
    padding (NaN) last, and the two closest ranks read from it."""
    width, groups = layout.shape
    by_group = (layout.cells % groups) * width + layout.cells // groups
    flat = np.full(groups * width, np.nan)
    flat[by_group] = column.cast(pl.Float64).to_numpy()
    grid = flat.reshape(groups, width)  # a view: sorting its rows sorts `flat`
    grid.sort(axis=1)
    count = layout.lengths if column.null_count() == 0 else (~np.isnan(grid)).sum(axis=1)
    position = (np.maximum(count, 1) - 1) * P95
    row = np.arange(groups) * width
    low = flat[row + np.floor(position).astype(np.int64)]
    high = flat[row + np.ceil(position).astype(np.int64)]
    return pl.Series(alias, _interpolate(low, high, count), nan_to_null=True)


def _aggregate(rows: pl.LazyFrame, specs: Sequence[tuple[str, str, str]]) -> pl.LazyFrame:
    """Aggregate `rows` (from `_bucketed`) per group `_g`, in `_g` order.

    Groups of one row (nearly all of them in 1-minute buckets of a 1-minute agent) are
    plain projections. Otherwise the groups, contiguous slices of the sorted `_g`, are laid
    out as a grid with one column per group and every statistic is a numpy reduction over
    the grid's rows: the cost of a call per group, larger than its arithmetic for the many
    small groups of the short windows, is gone. A group's figures are computed the same
    way whatever the other groups, so they do not depend on the batch it came in.
    """
    frame = rows.collect(engine=ENGINE)
    g = frame.get_column("_g")
    if not frame.height or g[-1] - g[0] == frame.height - 1:
        # No rows, or every group is one row (`_g` counts up by one from row to row): plain
        # projections, without laying out a grid.
        return frame.lazy().select("_g", *(_single_expr(*spec) for spec in specs))
    layout = _Grid.of(g)
    if layout is None:
        # Groups too unequal in size for one grid: one grid per class of sizes within a
        # factor of two of each other, each no more than half padding.
        size = frame.select(pl.len().over("_g").log(2).ceil().cast(pl.Int64)).to_series()
        parts = [_aggregate(frame.filter(size == c).lazy(), specs).collect(engine=ENGINE) for c in size.unique()]
        return pl.concat(parts).sort("_g").lazy()
    if layout.shape[0] == 1:  # every group of this size class is one row
        return frame.lazy().select("_g", *(_single_expr(*spec) for spec in specs))
    out: list[pl.Series] = [frame.get_column("_g").gather(layout.starts)]
    placed: _Placed | None = None
    wide: list[tuple[str, str]] = []  # p95 of groups too large for the two largest values
    for kind, name, alias in specs:
        if kind == "len":
            out.append(pl.Series(alias, layout.lengths, dtype=pl.Int64))
            continue
        column = frame.get_column(name)
        if kind in ("first", "final"):
            at = layout.starts if kind == "first" else layout.starts + layout.lengths - 1
            out.append(column.gather(at).alias(alias))
            continue
        if kind == "p95" and layout.shape[0] > _TOP_TWO_MAX_N:
            wide.append((name, alias))
            out.append(pl.Series(alias, [None], dtype=pl.Float64))  # replaced below
            continue
        # Placed once for the statistics of a column that follow one another, and only one
        # column's grid is held at a time.
        if placed is None or placed.column.name != name:
            placed = layout.place(column)
        out.append(_grid_stat(kind, placed, layout, alias))
    if wide:
        quantiles = _p95_by_ranks(frame.lazy(), wide)
        out = [quantiles.get_column(c.name) if c.name in quantiles.columns else c for c in out]
    return pl.DataFrame(out).lazy()


def _single_expr(kind: str, column: str, alias: str) -> pl.Expr:
    """A statistic of a group of one row, in the type the grid gives it: the mean, p95 or
    last of one value is that value, a sum of nothing is 0, there is no second largest."""
    col = pl.col(column)
    expr = {
        "first": col,
        "final": col,
        "len": pl.lit(1, dtype=pl.Int64),
        "mean": col.cast(pl.Float64),
        "min": col,
        "max": col,
        "p95": col.cast(pl.Float64),
        "last": col,
        "sum": col.cast(pl.Float64).fill_null(0.0),
        "count": col.is_not_null().cast(pl.Int64),
        "second": pl.lit(None, dtype=pl.Float64),
    }[kind]
    return expr.alias(alias)


def _bucketed(lf: pl.LazyFrame, window: str, *, steps: bool = False) -> pl.LazyFrame:
    """Rows with their `bucket`, group number `_g` (one per series and bucket) and, with
    `steps`, `_step_ms` (time since the previous sample of the group).

    Collected here on purpose: a group_by in the same plan as the columns it groups by
    does not know that `_g` is sorted and hashes it, which made the 1-minute window several
    times slower; on a materialised sorted column it aggregates contiguous slices.
    """
    frame = lf.collect(engine=ENGINE)
    time = frame.get_column("timestamp").to_physical().to_numpy()
    # Every window divides a UTC day, so flooring epoch milliseconds is the UTC truncation.
    start = time - time % (WINDOW_SECONDS[window] * 1000)
    series = frame.get_column("_series").to_numpy()
    new = np.ones(time.size, dtype=bool)
    np.not_equal(start[1:], start[:-1], out=new[1:])
    new[1:] |= series[1:] != series[:-1]
    columns = [
        pl.Series("bucket", start).cast(frame.schema["timestamp"]),
        pl.Series("_g", np.cumsum(new)).set_sorted(),
    ]
    if steps:
        step = np.diff(time, prepend=time[:1]).astype(np.float64)
        columns.append(pl.Series("_step_ms", np.where(new, np.nan, step), nan_to_null=True).cast(pl.Int64))
    return frame.with_columns(columns).lazy()


def _firsts(*names: str) -> list[tuple[str, str, str]]:
    return [("first", n, n) for n in names]


def _partials(metric: str) -> tuple[str, str, str]:
    """The hidden columns of a metric from which coarser groups are merged: its count of
    values, their sum and its second largest value."""
    return f"_n_{metric}", f"_s_{metric}", f"_t2_{metric}"


def _asset_groups(snapshots: pl.LazyFrame, window: str, finer: pl.DataFrame | None) -> pl.LazyFrame:
    """Per asset and bucket of `window`: keys, samples, `_first` and `_last` sample times,
    `_max_step_ms`, the metric statistics and, where another window is merged from them
    or they are merged, their `_partials`.

    From the raw rows, or merged from `finer`, the groups of a window that divides this
    one: counts, sums, min, max and last merge exactly, and so does the pair of largest
    values, which gives p95 exactly while a bucket holds at most _TOP_TWO_MAX_N values of
    a metric. Merging needs far fewer rows than the raw ones for every window past the
    shortest.
    """
    if finer is not None and finer.height:
        return _merge_groups(snapshots, finer, window).lazy()
    specs = [
        *_firsts(*_KEYS, "_series", "bucket"),
        ("len", "", "samples"),
        ("first", "timestamp", "_first"),  # a group's rows are in time order
        ("final", "timestamp", "_last"),
        ("max", "_step_ms", "_max_step_ms"),
    ]
    merged_into = window in _MERGED_FROM.values()  # else the partials would only take memory
    for m in ASSET_METRICS:  # a metric's statistics one after the other: its grid is placed once
        count, total, second = _partials(m)
        specs += [_stat(m, s) for s in ASSET_STATS]
        if merged_into:
            specs += [("count", m, count), ("sum", m, total), ("second", m, second)]
    return _aggregate(_bucketed(snapshots, window, steps=True), specs)


# The window whose asset groups each window's are merged from (the others come from the
# raw rows: 1-minute groups are about as many as the rows, and 5-minute ones are the first
# to be much fewer). A fixed chain, so that an asset's figures do not depend on the
# windows asked for nor on the other assets of the batch.
_MERGED_FROM: dict[str, str] = {"15min": "5min", "1hour": "15min", "1day": "1hour"}


def _chained_groups(snapshots: pl.LazyFrame, window: str, known: tuple[str, pl.DataFrame] | None) -> pl.LazyFrame:
    """`_asset_groups` of `window`, merged along `_MERGED_FROM` (reusing `known`, the
    groups of a window computed before, where it is on the way)."""
    source = _MERGED_FROM.get(window)
    if source is None:
        return _asset_groups(snapshots, window, None)
    if known is not None and known[0] == source:
        return _asset_groups(snapshots, window, known[1])
    return _asset_groups(snapshots, window, _chained_groups(snapshots, source, known).collect(engine=ENGINE))


def _merge_groups(snapshots: pl.LazyFrame, finer: pl.DataFrame, window: str) -> pl.DataFrame:
    """`_asset_groups` of `window` merged from those of a finer window (see there)."""
    bucket = finer.get_column("bucket")
    start = bucket.to_physical().to_numpy()
    start = start - start % (WINDOW_SECONDS[window] * 1000)
    series = finer.get_column("_series").to_numpy()
    new = np.ones(start.size, dtype=bool)
    np.not_equal(start[1:], start[:-1], out=new[1:])
    new[1:] |= series[1:] != series[:-1]
    # At most as many finer groups per group as the one window holds of the other, so the
    # grid is never mostly padding.
    layout = _Grid.of(pl.Series(np.cumsum(new)), bounded=False)
    assert layout is not None
    ends = layout.starts + layout.lengths - 1

    def column(name: str) -> pl.Series:
        return finer.get_column(name)

    def total(name: str, alias: str) -> pl.Series:
        return pl.Series(alias, layout.place(column(name)).total)

    # The longest step also spans from a finer group's last sample to the next one's first.
    first_ms = column("_first").to_physical().cast(pl.Float64).to_numpy()
    across = first_ms - np.concatenate(([np.nan], column("_last").to_physical().cast(pl.Float64).to_numpy()[:-1]))
    steps = np.fmax(column("_max_step_ms").cast(pl.Float64).to_numpy(), np.where(new, np.nan, across))
    step_grid = layout.place(pl.Series("_max_step_ms", steps, nan_to_null=True).cast(pl.Int64))
    out = [
        *(column(k).gather(layout.starts) for k in (*_KEYS, "_series")),
        pl.Series("bucket", start[layout.starts]).cast(bucket.dtype),
        total("samples", "samples").cast(pl.Int64),
        column("_first").gather(layout.starts),
        column("_last").gather(ends),
        step_grid.like(np.fmax.reduce(step_grid.grid, axis=0), "_max_step_ms"),
    ]
    wide: list[tuple[str, str]] = []
    for m in ASSET_METRICS:
        n_name, sum_name, second_name = _partials(m)
        count = total(n_name, n_name).cast(pl.Int64)
        sums = total(sum_name, sum_name)
        largest = layout.place(column(f"{m}_max"))
        high, second = largest.top_two
        second = np.fmax(second, np.fmax.reduce(layout.place(column(second_name)).grid, axis=0))
        counts = count.to_numpy()
        if int(counts.max(initial=0)) <= _TOP_TWO_MAX_N:
            p95 = pl.Series(f"{m}_p95", _p95_of_top_two(high, second, counts), nan_to_null=True)
        else:
            wide.append((m, f"{m}_p95"))
            p95 = pl.Series(f"{m}_p95", [None], dtype=pl.Float64)  # replaced below
        smallest = layout.place(column(f"{m}_min"))
        mean = np.divide(sums.to_numpy(), counts, out=np.full(counts.size, np.nan), where=counts > 0)
        out += [
            pl.Series(f"{m}_mean", mean, nan_to_null=True),
            smallest.like(np.fmin.reduce(smallest.grid, axis=0), f"{m}_min"),
            largest.like(high, f"{m}_max"),
            p95,
            _grid_stat("last", layout.place(column(f"{m}_last")), layout, f"{m}_last"),
            count,
            sums,
            pl.Series(second_name, second, nan_to_null=True),
        ]
    if wide:
        # p95 of buckets holding more values than the largest two tell about: exact only
        # from the raw rows, which group into the same (asset, bucket)s in the same order.
        raw = _p95_by_ranks(_bucketed(snapshots, window), wide)
        assert raw.height == layout.starts.size
        out = [raw.get_column(c.name) if c.name in raw.columns else c for c in out]
    return pl.DataFrame(out)


def _asset_rollup(
    snapshots: pl.LazyFrame, intervals: pl.DataFrame, flags: pl.LazyFrame | None, window: str, groups: pl.DataFrame
) -> pl.DataFrame:
    """The asset rollups of `window` from its `_asset_groups`: interval, coverage, longest
    gap and flags added.

    The interval and the flag counts are looked up for the keys only and put beside the
    groups: a join of the groups themselves would copy every one of their columns, which
    cost more than the rest of the 1-minute window.
    """
    seconds = WINDOW_SECONDS[window]
    end = pl.col("bucket").dt.offset_by(f"{seconds}s")
    lead_ms = (pl.col("_first") - pl.col("bucket")).dt.total_milliseconds()
    tail_ms = (end - pl.col("_last")).dt.total_milliseconds()
    expected = float(seconds) / pl.col("interval_s")  # samples expected in the bucket
    if flags is None:
        counts = pl.repeat(0, groups.height, dtype=pl.Int64, eager=True)
    else:
        per_bucket = (
            flags.join(_series_names(snapshots, *_KEYS), on=list(_KEYS), how="inner")
            .with_columns(pl.col("start").dt.truncate(_TRUNCATE[window]).alias("bucket"))
            .group_by("_series", "bucket")
            .agg(pl.len().cast(pl.Int64).alias("anomaly_flags"))
        )
        keys = groups.lazy().select("_series", "bucket")
        counts = keys.join(per_bucket, on=["_series", "bucket"], how="left", maintain_order="left").collect(
            engine=ENGINE
        )["anomaly_flags"].fill_null(0)
    metrics = [f"{m}_{s}" for m in ASSET_METRICS for s in ASSET_STATS]
    return (
        groups.with_columns(_day_intervals(groups, intervals), counts.alias("anomaly_flags"))
        .with_columns(
            # min_horizontal ignores nulls: an unknown interval must leave coverage unknown.
            pl.when(pl.col("interval_s").is_not_null())
            .then(pl.min_horizontal(pl.lit(1.0), pl.col("samples") / expected))
            .alias("coverage"),
            _divide(pl.max_horizontal(lead_ms, pl.col("_max_step_ms"), tail_ms), 1000.0).alias("longest_gap_s"),
        )
        .select(*_KEYS, "bucket", "samples", "interval_s", "coverage", "longest_gap_s", "anomaly_flags", *metrics)
    )


def _day_intervals(groups: pl.DataFrame, intervals: pl.DataFrame) -> pl.Series:
    """`interval_s` of each row of `groups` (an asset's buckets, sorted by `_series` and
    bucket), from `intervals` (one row per asset and UTC day with samples, in the same
    order): the n-th run of equal (series, day) among the groups is the n-th interval,
    since both come from the same snapshots."""
    bucket = groups.get_column("bucket").to_physical().to_numpy()
    day = bucket - bucket % (DAY_S * 1000)
    series = groups.get_column("_series").to_numpy()
    new = np.ones(bucket.size, dtype=bool)
    np.not_equal(day[1:], day[:-1], out=new[1:])
    new[1:] |= series[1:] != series[:-1]
    run = np.cumsum(new) - 1
    assert run.size == 0 or run[-1] + 1 == intervals.height
    return intervals.get_column("interval_s").gather(run)


def _disk_rollup(disks: pl.LazyFrame, window: str) -> pl.DataFrame:
    specs = [
        *_firsts(*_KEYS, "disk", "bucket"),
        ("len", "", "samples"),
        *(_stat(column, stat) for column, stats in DISK_STATS for stat in stats),
    ]
    return _aggregate(_bucketed(disks, window), specs).drop("_g").collect(engine=ENGINE)


def _interface_rollup(
    interfaces: pl.LazyFrame, assets: pl.LazyFrame, intervals: pl.DataFrame, window: str
) -> pl.DataFrame:
    totals = {"bytes_recv_total": "bytes_recv_per_sec", "bytes_sent_total": "bytes_sent_per_sec"}
    specs = [
        *_firsts(*_KEYS, "interface", "_series", "bucket"),
        ("len", "", "samples"),
        *(_stat(rate, stat) for rate in INTERFACE_RATES for stat in ("mean", "max")),
        *(("sum", rate, f"_sum_{rate}") for rate in totals.values()),
        *(("count", rate, f"_n_{rate}") for rate in totals.values()),
    ]
    grouped = _aggregate(_bucketed(interfaces, window), specs).collect(engine=ENGINE)
    # The interval is joined to the keys only (see `_asset_rollup`); an interface whose
    # asset sent no snapshot that day has none.
    interval = (
        grouped.lazy()
        .select("_series", pl.col("bucket").dt.truncate("1d").alias("day"))
        .join(assets, on="_series", how="left", maintain_order="left")
        .join(intervals.lazy().rename({"_series": "_asset"}), on=["_asset", "day"], how="left", maintain_order="left")
        .collect(engine=ENGINE)
        .get_column("interval_s")
    )
    stats = [f"{rate}_{stat}" for rate in INTERFACE_RATES for stat in ("mean", "max")]
    return (
        grouped.with_columns(interval)
        .with_columns(
            pl.when(pl.col(f"_n_{rate}") > 0).then(pl.col(f"_sum_{rate}") * pl.col("interval_s")).alias(total)
            for total, rate in totals.items()
        )
        .with_columns((pl.col("bytes_recv_total") + pl.col("bytes_sent_total")).alias("bytes_total"))
        .select(*_KEYS, "interface", "bucket", "samples", *stats, *totals, "bytes_total")
    )


def _interface_assets(interfaces: pl.LazyFrame, snapshots: pl.LazyFrame) -> pl.LazyFrame:
    """(_series of an interface, _asset: the `_series` of its asset among the snapshots)."""
    return (
        _series_names(interfaces, *_KEYS)
        .join(_series_names(snapshots, *_KEYS).rename({"_series": "_asset"}), on=list(_KEYS), how="inner")
        .select("_series", "_asset")
    )


def _prepare_flags(flags: pl.DataFrame) -> pl.LazyFrame:
    for column in (*_KEYS, "start"):
        if column not in flags.columns:
            raise RollupError("flags", column, "column is missing")
    if not isinstance(flags.schema["start"], pl.Datetime):
        raise RollupError("flags", "start", f"expected a datetime column, got {flags.schema['start']}")
    return flags.lazy().select(*_KEYS, _utc_ms("start", flags.schema["start"])).drop_nulls()


def compute_rollups(
    frames: Frames, *, windows: Sequence[str] = WINDOWS, flags: pl.DataFrame | None = None
) -> dict[str, Rollups]:
    """Roll the frames up into UTC buckets of each window (see the module docstring).

    `flags` is an optional frame of anomaly flags (orgId, assetId, start) counted per
    bucket. Returns {window: Rollups}, each frame sorted by its key. The caller's frames are
    not modified.

    Raises:
        InvalidArgument: an unknown window.
        RollupError: a frame's key column is missing or mistyped.
    """
    unknown = [w for w in windows if w not in WINDOW_SECONDS]
    if unknown:
        raise InvalidArgument(f"windows: unknown window {unknown[0]!r}; expected one of {', '.join(WINDOWS)}")
    # Cleaned once and shared by every window's plan.
    snapshots = _prepare(frames.snapshots, "snapshots", None, _SNAPSHOT_COLUMNS).collect(engine=ENGINE).lazy()
    disks = _prepare(frames.disks, "disks", "disk", _DISK_COLUMNS).collect(engine=ENGINE).lazy()
    interfaces = _prepare(frames.interfaces, "interfaces", "interface", _INTERFACE_COLUMNS).collect(engine=ENGINE).lazy()
    intervals = _intervals(snapshots).collect(engine=ENGINE)
    interface_assets = _interface_assets(interfaces, snapshots).collect(engine=ENGINE).lazy()
    flag_frame = _prepare_flags(flags) if flags is not None else None

    # One window at a time: its bucketed copies are freed before the next is built, which
    # keeps the peak memory near one window's worth (collecting all windows together
    # on two cores was no faster and doubled the peak).
    # The windows from the shortest, the asset groups of those merged from kept for the
    # next (the others are dropped once rolled up: the 1-minute ones are as large as the
    # rollups; most of their columns are the rollups' own, shared, not copied).
    out: dict[str, Rollups] = {}
    known: tuple[str, pl.DataFrame] | None = None
    for window in sorted(set(windows), key=WINDOW_SECONDS.__getitem__):
        groups = _chained_groups(snapshots, window, known).collect(engine=ENGINE)
        if window in _MERGED_FROM.values():
            known = (window, groups)
        assets = _asset_rollup(snapshots, intervals, flag_frame, window, groups)
        del groups  # the 1-minute groups are as large as the rollups: not held twice
        out[window] = Rollups(
            window, assets, _disk_rollup(disks, window), _interface_rollup(interfaces, interface_assets, intervals, window)
        )
    return {window: out[window] for window in windows}


# ---- mergeable rollups: coarser buckets without the raw data ------------------------------

# Relative accuracy of the p95 of mergeable rollups (a DDSketch-style log-bucket sketch):
# the estimate lies within SKETCH_ALPHA * the exact value (see `coarsen_rollups`).
SKETCH_ALPHA: Final = 0.01
_GAMMA: Final = (1 + SKETCH_ALPHA) / (1 - SKETCH_ALPHA)
_LOG_GAMMA: Final = math.log(_GAMMA)
# The bin of exact zeros, below every bin of a positive value (those are > -40,000).
_ZERO_KEY: Final = -(2**31)
# The windows `coarsen_rollups` merges into: the rollup windows, and ISO weeks (Monday).
MERGE_WINDOWS: dict[str, str] = {**_TRUNCATE, "1week": "1w"}
_SKETCH_DTYPE: Final = pl.List(pl.Struct({"key": pl.Int32(), "count": pl.Int64()}))
_MERGEABLE_STATS: tuple[str, ...] = ("mean", "min", "max", "p95", "last", "count", "sum", "sketch")


def _sketch_key(value: pl.Expr) -> pl.Expr:
    """The sketch bin of a non-negative value: k with gamma^(k-1) < value <= gamma^k, or
    `_ZERO_KEY` for 0. Every value of a bin is within SKETCH_ALPHA of the bin's
    representative value (`_bin_values`)."""
    positive = (value.log() / _LOG_GAMMA).ceil().cast(pl.Int32)
    return pl.when(value > 0).then(positive).otherwise(pl.lit(_ZERO_KEY, dtype=pl.Int32))


def _bin_values(keys: npt.NDArray[np.int32]) -> npt.NDArray[np.float64]:
    """The representative value of each bin: 2 gamma^k / (gamma + 1), at most SKETCH_ALPHA
    relative from any value of the bin (the bin of zeros stands for 0 exactly)."""
    value = np.exp(keys.astype(np.float64) * _LOG_GAMMA) * (2.0 / (_GAMMA + 1.0))
    return np.where(keys == _ZERO_KEY, 0.0, value)


def mergeable_rollups(frames: Frames, window: str = "1min") -> pl.DataFrame:
    """Per (orgId, assetId, bucket) of `window`: the asset metrics' rollups in a form that
    merges into coarser buckets without the raw data (see `coarsen_rollups`).

    Columns: orgId, assetId, bucket, samples, then per asset metric `<metric>_<stat>` for
    mean, min, max, p95, last (as `compute_rollups` defines them, except that p95 comes from
    the sketch: within SKETCH_ALPHA relative of the exact value), count (non-null samples),
    sum, and sketch: the metric's DDSketch-style bins, a list of {key, count} sorted by key.
    The snapshots are cleaned as `compute_rollups` cleans them, so every value is
    non-negative (percentages, bytes and counts), which the sketch relies on.

    Raises:
        InvalidArgument: `window` is not one of `MERGE_WINDOWS`.
        RollupError: a frame's key column is missing or mistyped.
    """
    if window not in MERGE_WINDOWS:
        raise InvalidArgument(f"window: unknown window {window!r}; expected one of {', '.join(MERGE_WINDOWS)}")
    snapshots = _prepare(frames.snapshots, "snapshots", None, _SNAPSHOT_COLUMNS)
    singles = []
    for metric in ASSET_METRICS:
        value = pl.col(metric)
        one = pl.struct(_sketch_key(value.cast(pl.Float64)).alias("key"), pl.lit(1, dtype=pl.Int64).alias("count"))
        singles += [
            value.is_not_null().cast(pl.Int64).alias(f"{metric}_count"),
            value.cast(pl.Float64).fill_null(0.0).alias(f"{metric}_sum"),
            *(value.alias(f"{metric}_{stat}") for stat in ("min", "max", "last")),
            pl.when(value.is_not_null()).then(pl.concat_list(one)).alias(f"{metric}_sketch"),
        ]
    rows = snapshots.select(
        *_KEYS, pl.col("timestamp").alias("bucket"), pl.lit(1, dtype=pl.Int64).alias("samples"), *singles
    )
    return _merge(rows.collect(engine=ENGINE), window)


def coarsen_rollups(rollups: pl.DataFrame, window: str) -> pl.DataFrame:
    """Merge mergeable rollups (from `mergeable_rollups` or this function) into the
    coarser buckets of `window` (a rollup window or `1week`), with the same columns.

    Rollups of separate runs (days, or disjoint parts of the fleet) can be
    concatenated first: each (orgId, assetId, bucket) of the result merges every row whose
    bucket falls in it. samples, count, sum, min, max and last are exact; mean is sum /
    count (exact up to float rounding); p95 is estimated from the merged sketch bins.

    The p95 bound: with n values, p95 interpolates between the values of ranks floor(r)
    and ceil(r), r = 0.95 (n - 1). The merged bins give each of those two values within
    SKETCH_ALPHA relative (a rank's bin is found exactly from the counts, and every value of
    a bin is within SKETCH_ALPHA of its representative), and the interpolation of two
    estimates within a relative error of non-negative values stays within it:
    |p95_estimate - p95| <= SKETCH_ALPHA * p95. The estimate is also clamped to the exact
    [min, max], which can only bring it closer.

    Raises:
        InvalidArgument: `window` is not one of `MERGE_WINDOWS`.
        RollupError: a column of mergeable rollups is missing.
    """
    if window not in MERGE_WINDOWS:
        raise InvalidArgument(f"window: unknown window {window!r}; expected one of {', '.join(MERGE_WINDOWS)}")
    for column in (*_KEYS, "bucket", "samples", *(f"{m}_{s}" for m in ASSET_METRICS for s in _MERGEABLE_STATS)):
        if column not in rollups.columns:
            raise RollupError("rollups", column, "column is missing (not a mergeable rollup)")
    keys = [*_KEYS, "bucket"]
    ordered = rollups if _in_order(rollups, keys) else rollups.sort(keys, maintain_order=True)
    return _merge(ordered.drop(f"{m}_{s}" for m in ASSET_METRICS for s in ("mean", "p95")), window)


def _merge(rows: pl.DataFrame, window: str) -> pl.DataFrame:
    """Merge `rows` (mergeable state, sorted by orgId, assetId, bucket) per bucket of `window`."""
    group = ~pl.all_horizontal(pl.col(k) == pl.col(k).shift(1) for k in (*_KEYS, "bucket")).fill_null(False)
    rows = rows.with_columns(pl.col("bucket").dt.truncate(MERGE_WINDOWS[window])).with_columns(
        (group.cum_sum().cast(pl.Int64) - 1).set_sorted().alias("_g")
    )
    merged = rows.lazy().group_by("_g", maintain_order=True).agg(
        *(pl.col(c).first() for c in (*_KEYS, "bucket")),
        pl.col("samples").sum(),
        *(
            agg
            for m in ASSET_METRICS
            for agg in (
                pl.col(f"{m}_count").sum(),
                pl.col(f"{m}_sum").sum(),
                pl.col(f"{m}_min").min(),
                pl.col(f"{m}_max").max(),
                pl.col(f"{m}_last").last(ignore_nulls=True),
            )
        ),
    )
    out = merged.collect(engine=ENGINE)
    for metric in ASSET_METRICS:
        out = out.hstack(_merge_sketch(rows, metric, out.height))
    columns = []
    for m in ASSET_METRICS:
        count = pl.col(f"{m}_count")
        p95 = pl.col(f"_{m}_p95").clip(pl.col(f"{m}_min").cast(pl.Float64), pl.col(f"{m}_max").cast(pl.Float64))
        columns += [
            pl.when(count > 0).then(pl.col(f"{m}_sum") / count).alias(f"{m}_mean"),
            pl.col(f"{m}_min"),
            pl.col(f"{m}_max"),
            p95.alias(f"{m}_p95"),
            pl.col(f"{m}_last"),
            count,
            pl.col(f"{m}_sum"),
            pl.col(f"{m}_sketch"),
        ]
    return out.select(*_KEYS, "bucket", "samples", *columns)


def _merge_sketch(rows: pl.DataFrame, metric: str, groups: int) -> list[pl.Series]:
    """[`<metric>_sketch`, `_<metric>_p95`] of each of the `groups` groups `_g` (numbered
    from 0) of `rows`: the bins of the group's rows added up (none for a group without
    values), and p95 from them.

    In numpy over the flat bins: sorted by (group, key) unless they already are (one bin
    per row, as from the raw rows), equal bins added up, then each group's ranks found
    from its running count: the value of rank i is in the first bin whose running count
    exceeds i.
    """
    column = f"{metric}_sketch"
    flat = rows.lazy().select("_g", column).explode(column).drop_nulls(column).unnest(column).collect(engine=ENGINE)
    g, key, count = (flat.get_column(c).to_numpy() for c in ("_g", "key", "count"))
    if g.size > 1 and not np.all((g[1:] > g[:-1]) | ((g[1:] == g[:-1]) & (key[1:] >= key[:-1]))):
        order = np.lexsort((key, g))
        g, key, count = g[order], key[order], count[order]
    same_bin = np.zeros(g.size, dtype=bool)
    same_bin[1:] = (g[1:] == g[:-1]) & (key[1:] == key[:-1])
    starts = np.flatnonzero(~same_bin)
    g, key = g[starts], key[starts].astype(np.int32)
    count = np.add.reduceat(count, starts) if starts.size else count.astype(np.int64)
    offsets = np.zeros(groups + 1, dtype=np.int32)
    np.cumsum(np.bincount(g, minlength=groups), out=offsets[1:])
    bins = pa.StructArray.from_arrays([pa.array(key), pa.array(count)], names=["key", "count"])
    sketch = pl.Series(column, pa.ListArray.from_arrays(pa.array(offsets), bins)).cast(_SKETCH_DTYPE)
    p95 = np.full(groups, np.nan)
    if g.size:
        new_group = np.ones(g.size, dtype=bool)
        new_group[1:] = g[1:] != g[:-1]
        group_starts = np.flatnonzero(new_group)
        group_of = np.cumsum(new_group) - 1
        seen = np.cumsum(count)
        seen_in_group = seen - (seen - count)[group_starts][group_of]
        rank = (seen_in_group[np.append(group_starts[1:], g.size) - 1] - 1) * P95  # n - 1 of each group
        value = _bin_values(key)

        def at_rank(ranks: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
            exceeds = seen_in_group > ranks[group_of]
            first = np.minimum.reduceat(np.where(exceeds, np.arange(g.size), g.size), group_starts)
            return value[first]

        low, high = at_rank(np.floor(rank)), at_rank(np.ceil(rank))
        p95[g[group_starts]] = low + (high - low) * (rank - np.floor(rank))
    return [sketch, pl.Series(f"_{metric}_p95", p95, nan_to_null=True)]


# ---- availability -------------------------------------------------------------------------


def compute_availability(frames: Frames) -> pl.DataFrame:
    """Per (orgId, assetId, date): the share of the UTC day the agent was reporting.

    Columns: orgId, assetId, date, samples, interval_s, reboots, covered_s, availability
    (see the module docstring for the definition). One row per asset and day with at
    least one sample.
    """
    snapshots = _prepare(frames.snapshots, "snapshots", None, _SNAPSHOT_COLUMNS).collect(engine=ENGINE).lazy()
    intervals = _intervals(snapshots)
    ts = pl.col("timestamp")
    same = _same_series()
    since_prev_s = _divide((ts - ts.shift(1)).dt.total_milliseconds(), 1000.0)
    into_day_s = _divide((ts - pl.col("day")).dt.total_milliseconds(), 1000.0)
    # min_horizontal skips nulls: no previous sample or no uptime means no limit from them.
    reach = pl.min_horizontal(
        pl.col("interval_s"), pl.when(same).then(since_prev_s), pl.col("system_uptime"), pl.lit(float(DAY_S))
    )
    per_sample = (
        snapshots.with_columns(_day().alias("day"))
        .join(intervals, on=["_series", "day"], how="left", maintain_order="left")
        .with_columns(
            pl.when(pl.col("interval_s").is_not_null()).then(reach).alias("_cover_s"),
            (same & (pl.col("system_uptime") < pl.col("system_uptime").shift(1))).fill_null(False).alias("_reboot"),
        )
        .with_columns(
            pl.when(pl.col("_cover_s").is_not_null())
            .then(pl.min_horizontal(pl.col("_cover_s"), into_day_s))
            .alias("_today_s"),
        )
        .with_columns((pl.col("_cover_s") - pl.col("_today_s")).alias("_spill_s"), _run_id("day").alias("_g"))
    )
    today = per_sample.group_by("_g", maintain_order=True).agg(
        *(pl.col(c).first() for c in (*_KEYS, "_series", "day", "interval_s")),
        pl.len().cast(pl.Int64).alias("samples"),
        pl.col("_reboot").sum().cast(pl.Int64).alias("reboots"),
        pl.col("_today_s").sum().alias("_today_s"),
    )
    spill = (
        per_sample.filter(pl.col("_spill_s") > 0)
        .with_columns(pl.col("day").dt.offset_by("-1d"))
        .group_by("_series", "day")
        .agg(pl.col("_spill_s").sum())
    )
    covered = pl.col("_today_s") + pl.col("_spill_s").fill_null(0.0)
    result = (
        today.join(spill, on=["_series", "day"], how="left", maintain_order="left")
        .with_columns(pl.when(pl.col("interval_s").is_not_null()).then(covered).alias("covered_s"))
        .with_columns(_divide(pl.col("covered_s"), float(DAY_S)).alias("availability"))
        .select(
            *_KEYS, pl.col("day").dt.date().alias("date"), "samples", "interval_s", "reboots", "covered_s", "availability"
        )
    )
    return result.collect(engine=ENGINE)


def rollup_frames(rollups: Mapping[str, Rollups]) -> Iterable[tuple[str, str, pl.DataFrame]]:
    """(window, level, frame) for every frame of `rollups`; level is assets, disks or interfaces."""
    for window, r in rollups.items():
        yield window, "assets", r.assets
        yield window, "disks", r.disks
        yield window, "interfaces", r.interfaces


# ---- the optional MongoDB sink ------------------------------------------------------------


def upsert_rollups(db: Db, org_id: str, rollups: Mapping[str, Rollups]) -> int:
    """`sinks.upsert_rollups`, where callers found it: the sinks share one write strategy
    and error policy there."""
    from perf_analytics.sinks import upsert_rollups as upsert  # sinks imports this module

    return upsert(db, org_id, rollups)
