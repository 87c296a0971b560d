"""The frames reshaped for the detectors: one long frame of metric points, one of agents.

Detectors work on `(orgId, assetId, metric, timestamp, value)` points, whatever frame
the metric came from, so a disk or interface is just another metric name
(`disk[C:].usagePercent`, `network.interfaces[eth0].bytesRecvPerSec`). Bad values are
dropped here, once, so no detector sees them: non-finite numbers, percentages outside
0-100, negative rates, impossible temperatures (each counted per series and reason, so
the caller can report them), and the second of two rows with the same timestamp. Each point carries its asset's reporting interval at that moment (from
`timeWindow`, or from the recent spacing of its snapshots when that is longer), so an
asset that changes interval is judged by its current one. Each agent row also carries the
asset's usual long spacing (a high quantile of its spacings over the previous day), so an
agent that reports irregularly is judged against its own pattern, not a nominal interval.
"""

from __future__ import annotations

import math
from datetime import datetime

import polars as pl

from perf_analytics.frames import Frames
from perf_analytics.schema import TIME_WINDOWS

PERCENT = "percent"
RATE = "rate"
LEVEL = "level"

CPU = "cpu.usage"  # the CPU's metric

ASSET = ["orgId", "assetId"]
SERIES = ["orgId", "assetId", "metric"]

# (frame column, metric name, kind) of the snapshot metrics the detectors watch.
SNAPSHOT_METRICS = (
    ("cpu_usage", CPU, PERCENT),
    ("memory_usage_percent", "memory.usagePercent", PERCENT),
    ("cpu_temperature", "cpu.temperature", LEVEL),
)
DISK_METRICS = (
    ("usage_percent", "usagePercent", PERCENT),
    ("read_bytes_per_sec", "readBytesPerSec", RATE),
    ("write_bytes_per_sec", "writeBytesPerSec", RATE),
)
INTERFACE_METRICS = (
    ("bytes_recv_per_sec", "bytesRecvPerSec", RATE),
    ("bytes_sent_per_sec", "bytesSentPerSec", RATE),
)
_WINDOW_SECONDS = {name: delta.total_seconds() for name, delta in TIME_WINDOWS.items()}
_RECENT_SPACINGS = 5  # the interval estimate is the median of this many previous spacings
_DEFAULT_INTERVAL_S = 300.0  # for an asset with a single snapshot and no timeWindow
_PATTERN_WINDOW = "1d"  # the spacings an agent's reporting pattern is drawn from
_PATTERN_QUANTILE = 0.95  # its usual long spacing: this quantile of them


def _invalid_reason(value: pl.Expr, kind: str) -> pl.Expr:
    """Why `value` cannot be a reading of its kind (null when it can, or when it is absent)."""
    if kind == PERCENT:
        out_of_range, why = (value < 0.0) | (value > 100.0), "outside 0-100 for a percentage"
    elif kind == RATE:
        out_of_range, why = value < 0.0, "negative for a rate"
    else:
        out_of_range, why = (value <= -100.0) | (value >= 250.0), "outside -100 to 250 for a temperature"
    return (
        pl.when(value.is_null())
        .then(None)
        .when(~value.is_finite())
        .then(pl.lit("not a finite number"))
        .when(out_of_range)
        .then(pl.lit(why))
        .otherwise(None)
    )


def _column(frame: pl.DataFrame, name: str) -> pl.Expr:
    """A float column of the frame, or nulls when an older frame lacks it."""
    return pl.col(name).cast(pl.Float64) if name in frame.columns else pl.lit(None, dtype=pl.Float64)


def agent_frame(frames: Frames) -> pl.DataFrame:
    """One row per (org, asset, timestamp): the reporting interval, usual spacing and uptime.

    `usual_spacing_s` is the 95th percentile of the asset's spacings in the day before the
    row (the row's own spacing excluded): for an agent that reports like a clock it equals
    the interval; for one that reports irregularly it is the long spacing it often takes,
    which a gap must exceed before it is unusual for that agent.
    Rows without an org, asset or timestamp are dropped; duplicates keep their last row.
    """
    snaps = frames.snapshots
    window = (
        pl.col("timeWindow").replace_strict(_WINDOW_SECONDS, default=None, return_dtype=pl.Float64)
        if "timeWindow" in snaps.columns
        else pl.lit(None, dtype=pl.Float64)
    )
    uptime = _column(snaps, "system_uptime")
    df = (
        snaps.select(
            pl.col("orgId").cast(pl.String),
            pl.col("assetId").cast(pl.String),
            pl.col("timestamp").cast(pl.Datetime("ms", "UTC")),
            window.alias("window_s"),
            pl.when(uptime.is_finite() & (uptime >= 0)).then(uptime).otherwise(None).alias("uptime"),
        )
        .drop_nulls(["orgId", "assetId", "timestamp"])
        .sort([*ASSET, "timestamp"], maintain_order=True)  # stable: "last" stays the last given
        .unique([*ASSET, "timestamp"], keep="last", maintain_order=True)
    )
    spacing = pl.col("timestamp").diff().dt.total_milliseconds().cast(pl.Float64) / 1000.0
    recent = (
        spacing.shift(1).rolling_median(_RECENT_SPACINGS, min_samples=1).over(ASSET)
    )
    usual = (
        pl.col("_spacing")
        .rolling_quantile_by("timestamp", _PATTERN_WINDOW, quantile=_PATTERN_QUANTILE, closed="left")
        .over(ASSET)
    )
    return (
        df.with_columns(spacing.over(ASSET).alias("_spacing"))
        .with_columns(
            pl.max_horizontal(pl.col("window_s"), recent)
            .fill_null(pl.col("window_s").fill_null(spacing.median().over(ASSET)))
            .fill_null(_DEFAULT_INTERVAL_S)
            .alias("interval_s"),
            usual.alias("usual_spacing_s"),
        )
        .with_columns(pl.max_horizontal("interval_s", "usual_spacing_s").alias("usual_spacing_s"))
        .drop("window_s", "_spacing")
    )


def _long(frame: pl.DataFrame, name: pl.Expr, column: str, kind: str) -> pl.DataFrame:
    """One metric of a frame as long rows, with `reason` set where the value is no reading."""
    value = _column(frame, column)
    return (
        frame.select(
            pl.col("orgId").cast(pl.String),
            pl.col("assetId").cast(pl.String),
            name.alias("metric"),
            pl.lit(kind).alias("kind"),
            pl.col("timestamp").cast(pl.Datetime("ms", "UTC")),
            value.alias("value"),
            _invalid_reason(value, kind).alias("reason"),
        )
        .drop_nulls(["orgId", "assetId", "metric", "timestamp", "value"])
    )


DROPPED_SCHEMA: dict[str, pl.DataType] = {
    "orgId": pl.String(),
    "assetId": pl.String(),
    "metric": pl.String(),
    "reason": pl.String(),
    "count": pl.Int64(),
    "first": pl.Datetime("ms", "UTC"),
    "last": pl.Datetime("ms", "UTC"),
    "example": pl.Float64(),
}


def empty_dropped() -> pl.DataFrame:
    return pl.DataFrame(schema=DROPPED_SCHEMA)


def _dropped(long: pl.DataFrame, since: datetime | None) -> pl.DataFrame:
    """Per series and reason, how many values from `since` on were dropped, when, and one of them."""
    bad = long.filter(pl.col("reason").is_not_null())
    if since is not None:
        bad = bad.filter(pl.col("timestamp") >= since)
    if bad.is_empty():
        return empty_dropped()
    return (
        bad.group_by([*SERIES, "reason"])
        .agg(
            pl.len().cast(pl.Int64).alias("count"),
            pl.col("timestamp").min().alias("first"),
            pl.col("timestamp").max().alias("last"),
            pl.col("value").sort_by("timestamp").first().alias("example"),
        )
        .select(*(pl.col(n).cast(t) for n, t in DROPPED_SCHEMA.items()))
        .sort([*SERIES, "reason"])
    )


def point_frame(frames: Frames, agents: pl.DataFrame) -> pl.DataFrame:
    """Every valid metric point (see `read_points`)."""
    return read_points(frames, agents)[0]


def read_points(
    frames: Frames, agents: pl.DataFrame, *, report_from: datetime | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Every valid metric point, long, and a count of the values that were no readings.

    The points: orgId, assetId, metric, kind, timestamp, value, interval_s, sorted by
    (orgId, assetId, metric, timestamp), one row per timestamp and metric. The dropped
    values (`DROPPED_SCHEMA`): per series and reason, how many, the first and last time
    and the first such value, so a field that holds the wrong quantity (a byte rate where
    a percentage belongs) is reported rather than silently ignored. With `report_from`,
    only values from then on are counted (history read again as a baseline is not
    reported again).
    """
    parts = [_long(frames.snapshots, pl.lit(metric), column, kind) for column, metric, kind in SNAPSHOT_METRICS]
    if frames.disks.height and "disk" in frames.disks.columns:
        disk_name = pl.col("disk").cast(pl.String)
        parts += [
            _long(frames.disks, pl.format("disk[{}].{}", disk_name, pl.lit(field)), column, kind)
            for column, field, kind in DISK_METRICS
        ]
    if frames.interfaces.height and "interface" in frames.interfaces.columns:
        iface = pl.col("interface").cast(pl.String)
        parts += [
            _long(frames.interfaces, pl.format("network.interfaces[{}].{}", iface, pl.lit(field)), column, kind)
            for column, field, kind in INTERFACE_METRICS
        ]
    long = pl.concat(parts)
    dropped = _dropped(long, report_from)
    keys = [*SERIES, "timestamp"]
    # Sorted stably, the last of rows with equal keys is the one whose next row differs.
    last = pl.any_horizontal(*(pl.col(k) != pl.col(k).shift(-1) for k in keys)).fill_null(True)
    points = long.filter(pl.col("reason").is_null()).drop("reason").sort(keys, maintain_order=True).filter(last)
    intervals = agents.select(*ASSET, "timestamp", "interval_s")
    # A disk or interface row whose snapshot row went missing still gets its asset's interval.
    fallback = agents.group_by(ASSET).agg(pl.col("interval_s").median().alias("_fallback"))
    points = (
        points.join(intervals, on=[*ASSET, "timestamp"], how="left", maintain_order="left")
        .join(fallback, on=ASSET, how="left", maintain_order="left")
        .with_columns(pl.col("interval_s").fill_null(pl.col("_fallback")).fill_null(_DEFAULT_INTERVAL_S))
        .drop("_fallback")
    )
    return points, dropped


# Smallest spread a baseline may claim, per kind of metric: a series that sat perfectly
# still must not make a one-point wobble look like a thousand-sigma event.
SCALE_FLOOR = {PERCENT: 0.1, RATE: 0.1, LEVEL: 0.1}
SCALE_FLOOR_RELATIVE = 0.02


def transformed() -> pl.Expr:
    """Byte rates are judged on a log scale (a burst is a ratio), the rest as they are."""
    return pl.when(pl.col("kind") == RATE).then(pl.col("value").log1p()).otherwise(pl.col("value"))


def floored_sigma(sigma: pl.Expr, median: pl.Expr) -> pl.Expr:
    """A spread no smaller than its kind's floor and a small share of the level."""
    floor = pl.col("kind").replace_strict(SCALE_FLOOR, default=0.5, return_dtype=pl.Float64)
    return pl.max_horizontal(sigma, floor, SCALE_FLOOR_RELATIVE * median.abs())


MAD_TO_SIGMA = 1.4826  # a median absolute deviation of a normal distribution, in standard deviations


def step_noise(step: pl.Expr, level: pl.Expr) -> pl.Expr:
    """A series' sample-to-sample noise as the standard deviation of one sample, from its
    median absolute step (a step is the difference of two samples: sqrt(2) of one's
    spread), floored as every spread is (`floored_sigma`) at its `level`."""
    return floored_sigma(MAD_TO_SIGMA * step / math.sqrt(2.0), level)
