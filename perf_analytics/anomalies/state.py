"""Baseline state: what one day of an org's snapshots contributes to later days' baselines.

The detectors never re-read raw history. Each day is summarised once, from that day's
snapshots alone, into a small frame (`STATE_SCHEMA`, one row per summary, `part` says
which kind):

- `hour`: per series (org, asset, metric) and hour of the day: count, quartiles, minimum
  and maximum of the value (on the detectors' scale: byte rates as log1p), the median
  sample-to-sample step (the series' noise), the highest and lowest level held for
  `outlier_sustained_points` samples in a row, how many samples changed value, the first
  and last time seen, the reporting interval, and least-squares sums (for disk trends);
- `agent`: per asset: first and last snapshot, the uptime at both, the last reboot within
  the day, the 95th percentile of its spacings and its last reporting interval;
- `pair`: per asset and pair of its metrics: the count and sums of products of the
  samples' residuals from their own hour (in that hour's spreads, clipped), from which
  the joint detector derives how the asset's metrics usually move together.

Every row depends on its own day's snapshots only (no earlier state, no later data), so a
day's state is the same whether it was kept or rebuilt from the raw day, a late snapshot
changes the state of its own day only, and days can be summarised in any order or in
parallel. A day's baselines are merged from the `baseline_days` states before it
(`baselines.py`). `STATE_VERSION` changes whenever a summary's definition does.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl

from perf_analytics.anomalies.config import AnomalyConfig
from perf_analytics.anomalies.joint import asset_blocks
from perf_analytics.anomalies.series import (
    ASSET,
    SERIES,
    agent_frame,
    floored_sigma,
    read_points,
    transformed,
)
from perf_analytics.frames import Frames

STATE_VERSION = 1
TIME = pl.Datetime("ms", "UTC")
HOUR, AGENT, PAIR = "hour", "agent", "pair"
RESIDUAL_CLIP = 4.0  # residuals are clipped to this many spreads before their products are summed
DISK_USAGE = r"^disk\[.*\]\.usagePercent$"
_ORIGIN = datetime(2020, 1, 1, tzinfo=UTC)  # disk-trend time is in days since this moment

STATE_SCHEMA: dict[str, pl.DataType] = {
    "part": pl.String(),
    "orgId": pl.String(),
    "assetId": pl.String(),
    "metric": pl.String(),
    "metric_b": pl.String(),
    "kind": pl.String(),
    "date": pl.Date(),
    "hour": pl.Int8(),
    "n": pl.Int64(),
    "q25": pl.Float64(),
    "q50": pl.Float64(),
    "q75": pl.Float64(),
    "lo": pl.Float64(),
    "hi": pl.Float64(),
    "step": pl.Float64(),
    "held_hi": pl.Float64(),
    "held_lo": pl.Float64(),
    "changed": pl.Int64(),
    "first": TIME,
    "last": TIME,
    "interval_s": pl.Float64(),
    "st": pl.Float64(),
    "sy": pl.Float64(),
    "sty": pl.Float64(),
    "stt": pl.Float64(),
    "up_first": pl.Float64(),
    "up_last": pl.Float64(),
    "boot": TIME,
    "spacing_p95": pl.Float64(),
    "sa": pl.Float64(),
    "sb": pl.Float64(),
    "sab": pl.Float64(),
    "saa": pl.Float64(),
    "sbb": pl.Float64(),
}
STATE_COLUMNS = tuple(STATE_SCHEMA)


def empty_state() -> pl.DataFrame:
    return pl.DataFrame(schema=STATE_SCHEMA)


def _typed(df: pl.DataFrame, part: str) -> pl.DataFrame:
    """`df` in the state's columns and types (absent ones null), tagged with its part."""
    exprs = [
        (pl.lit(part) if name == "part" else pl.col(name) if name in df.columns else pl.lit(None))
        .cast(dtype)
        .alias(name)
        for name, dtype in STATE_SCHEMA.items()
    ]
    return df.select(exprs)


def trend_time() -> pl.Expr:
    """The time axis of disk trends: days since a fixed origin (sums over days add up)."""
    return (pl.col("timestamp") - pl.lit(_ORIGIN).cast(TIME)).dt.total_milliseconds().cast(pl.Float64) / 86_400_000.0


def held_levels(config: AnomalyConfig) -> list[pl.Expr]:
    """The level the last `outlier_sustained_points` samples of the day all reached, up and down."""
    n = config.outlier_sustained_points
    return [
        pl.col("x").rolling_min(n).over(SERIES).alias("held_up"),
        pl.col("x").rolling_max(n).over(SERIES).alias("held_down"),
    ]


def prepare(points: pl.DataFrame, config: AnomalyConfig) -> pl.DataFrame:
    """A day's points with what the summaries and the detectors read per point.

    `x` (the value on the detectors' scale), `hour`, `step` (from the previous sample of
    the day), `changed`, and the levels held up and down. The first sample of a day has
    no step and counts as changed: nothing before the day is read.
    """
    x = pl.col("x")
    return points.with_columns(transformed().alias("x"), pl.col("timestamp").dt.hour().cast(pl.Int8).alias("hour")).with_columns(
        (x - x.shift(1)).abs().over(SERIES).alias("step"),
        (pl.col("value") != pl.col("value").shift(1)).fill_null(True).over(SERIES).alias("changed"),
        *held_levels(config),
    )


def hour_rows(prepared: pl.DataFrame) -> pl.DataFrame:
    """Per series and hour: the `hour` summaries (see the module's docstring)."""
    x, t, y = pl.col("x"), pl.col("t"), pl.col("value")
    return (
        prepared.with_columns(trend_time().alias("t"))
        .group_by([*SERIES, "hour"])
        .agg(
            pl.col("kind").first(),
            pl.len().cast(pl.Int64).alias("n"),
            x.quantile(0.25, "linear").alias("q25"),
            x.median().alias("q50"),
            x.quantile(0.75, "linear").alias("q75"),
            x.min().alias("lo"),
            x.max().alias("hi"),
            pl.col("step").median().alias("step"),
            pl.col("held_up").max().alias("held_hi"),
            pl.col("held_down").min().alias("held_lo"),
            pl.col("changed").sum().cast(pl.Int64).alias("changed"),
            pl.col("timestamp").min().alias("first"),
            pl.col("timestamp").max().alias("last"),
            pl.col("interval_s").max().alias("interval_s"),
            t.sum().alias("st"),
            y.sum().alias("sy"),
            (t * y).sum().alias("sty"),
            (t * t).sum().alias("stt"),
        )
    )


def _agent_rows(agents: pl.DataFrame) -> pl.DataFrame:
    """Per asset: first and last snapshot and uptime, the day's last reboot, its spacings."""
    up = pl.col("uptime")
    spacing = pl.col("timestamp").diff().dt.total_milliseconds().cast(pl.Float64) / 1000.0
    booted = up < up.shift(1).forward_fill()
    return (
        agents.with_columns(spacing.over(ASSET).alias("_spacing"), booted.over(ASSET).alias("_boot"))
        .group_by(ASSET)
        .agg(
            pl.col("timestamp").min().alias("first"),
            pl.col("timestamp").max().alias("last"),
            up.drop_nulls().first().alias("up_first"),
            up.drop_nulls().last().alias("up_last"),
            pl.col("timestamp").filter(pl.col("_boot")).max().alias("boot"),
            pl.col("_spacing").quantile(0.95, "linear").alias("spacing_p95"),
            pl.col("interval_s").last().alias("interval_s"),
        )
    )


def hour_scale(hours: pl.DataFrame) -> pl.Expr:
    """An hour's own spread (its interquartile range as a standard deviation, floored)."""
    return floored_sigma((pl.col("q75") - pl.col("q25")) / 1.349, pl.col("q50"))


def _pair_rows(prepared: pl.DataFrame, hours: pl.DataFrame) -> pl.DataFrame:
    """Per asset and pair of metrics: count and sums of products of hour residuals."""
    df = prepared.filter(~pl.col("metric").str.contains(DISK_USAGE))
    if df.is_empty():
        return pl.DataFrame()
    scale = hours.select(*SERIES, "hour", "q50", hour_scale(hours).alias("_scale"))
    resid = (
        df.select(*SERIES, "hour", "timestamp", "x")
        .join(scale, on=[*SERIES, "hour"], how="left")
        .select(*ASSET, "metric", "timestamp", ((pl.col("x") - pl.col("q50")) / pl.col("_scale")).clip(-RESIDUAL_CLIP, RESIDUAL_CLIP).alias("r"))
    )
    _, metrics, matrix, blocks = asset_blocks(resid, "r")
    parts = []
    for org, asset, lo, hi in blocks:
        block = matrix[lo:hi]
        mine = [i for i in range(len(metrics)) if not np.isnan(block[:, i]).all()]
        values = block[:, mine]
        present = (~np.isnan(values)).astype(np.float64)
        values = np.nan_to_num(values, nan=0.0)
        n = present.T @ present
        sums = values.T @ present  # sums[i, j]: sum of metric i where j is present too
        squares = (values * values).T @ present
        products = values.T @ values
        i, j = np.triu_indices(len(mine))
        take = n[i, j] > 0
        i, j = i[take], j[take]
        parts.append(pl.DataFrame({
            "orgId": [org] * i.size, "assetId": [asset] * i.size,
            "metric": [metrics[mine[k]] for k in i], "metric_b": [metrics[mine[k]] for k in j],
            "n": n[i, j].astype(np.int64), "sa": sums[i, j], "sb": sums[j, i], "sab": products[i, j],
            "saa": squares[i, j], "sbb": squares[j, i],
        }))
    return pl.concat(parts) if parts else pl.DataFrame()


def summarize(prepared: pl.DataFrame, agents: pl.DataFrame, day: date) -> pl.DataFrame:
    """The state of one day from its prepared points (`prepare`) and its agent rows."""
    hours = hour_rows(prepared)
    parts = [_typed(hours, HOUR), _typed(_agent_rows(agents), AGENT)]
    pairs = _pair_rows(prepared, hours)
    if not pairs.is_empty():
        parts.append(_typed(pairs, PAIR))
    state = pl.concat(parts).with_columns(pl.lit(day).alias("date"))
    return state.sort(["part", *SERIES, "metric_b", "hour"], nulls_last=True)


def day_frames(frames: Frames, day: date) -> Frames:
    """The rows of one UTC day, in each frame."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    ts = pl.col("timestamp")
    return Frames(
        *(
            getattr(frames, name).filter((ts >= start) & (ts < start + timedelta(days=1)))
            for name in ("snapshots", "disks", "interfaces")
        )
    )


def summarize_day(frames: Frames, day: date, config: AnomalyConfig) -> pl.DataFrame:
    """The state of `day` from frames holding (at least) that day: only its rows are read."""
    one = day_frames(frames, day)
    if one.snapshots.is_empty() and one.disks.is_empty() and one.interfaces.is_empty():
        return empty_state()
    agents = agent_frame(one)
    points = read_points(one, agents)[0]
    return summarize(prepare(points, config), agents, day)


def summarize_days(frames: Frames, days: Iterable[date], config: AnomalyConfig) -> pl.DataFrame:
    """The states of several days, each from its own day's rows (a rebuild from raw data)."""
    parts = [summarize_day(frames, d, config) for d in days]
    parts = [p for p in parts if not p.is_empty()]
    return pl.concat(parts) if parts else empty_state()


def baseline_dates(day: date, config: AnomalyConfig) -> list[date]:
    """The days whose state the baselines of `day` are merged from, oldest first."""
    n = max(1, round(config.baseline_days))
    return [day - timedelta(days=i) for i in range(n, 0, -1)]
