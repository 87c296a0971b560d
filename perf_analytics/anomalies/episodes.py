"""Flagged points merged into episodes, each with a sentence a person understands.

Points of the same (asset, metric, detector) at most `merge_gap_minutes` apart (or two
reporting intervals, when that is longer) form one episode: its start is the first
flagged point, its end the last, its severity and score the highest of its points.
"""

from __future__ import annotations

import polars as pl

from perf_analytics.anomalies.config import AnomalyConfig
from perf_analytics.anomalies.detectors import (
    DISK_FORECAST,
    FLATLINE,
    GAP,
    JOINT,
    LEVEL_SHIFT,
    OFFLINE,
    OUTLIER,
    PEER,
    REBOOT,
    SEVERITIES,
    THRESHOLD,
    TIME,
)
from perf_analytics.anomalies.series import CPU, SERIES

EPISODE_SCHEMA: dict[str, pl.DataType] = {
    "orgId": pl.String(),
    "assetId": pl.String(),
    "metric": pl.String(),
    "detector": pl.String(),
    "start": TIME,
    "end": TIME,
    "severity": pl.String(),
    "score": pl.Float64(),
    "message": pl.String(),
}
EPISODE_COLUMNS = tuple(EPISODE_SCHEMA)
_KEY = [*SERIES, "detector"]


def empty_episodes() -> pl.DataFrame:
    return pl.DataFrame(schema=EPISODE_SCHEMA)


def _num(expr: pl.Expr, decimals: int = 1) -> pl.Expr:
    """A number as short text: 98.7, 12, 1234567."""
    rounded = expr.round(decimals)
    return (
        pl.when(rounded == rounded.round(0))
        .then(rounded.round(0).cast(pl.Int64).cast(pl.String))
        .otherwise(rounded.cast(pl.String))
    )


def _label() -> pl.Expr:
    """What a person calls the metric: "CPU", "Disk C: usage", "Interface eth0 received bytes/s"."""
    metric = pl.col("metric")
    disk = metric.str.extract(r"^disk\[(.*)\]\.", 1)
    iface = metric.str.extract(r"^network\.interfaces\[(.*)\]\.", 1)
    disk_what = (
        pl.when(metric.str.ends_with(".usagePercent"))
        .then(pl.lit("usage"))
        .when(metric.str.ends_with(".readBytesPerSec"))
        .then(pl.lit("reads (bytes/s)"))
        .otherwise(pl.lit("writes (bytes/s)"))
    )
    iface_what = (
        pl.when(metric.str.ends_with(".bytesRecvPerSec")).then(pl.lit("received bytes/s")).otherwise(pl.lit("sent bytes/s"))
    )
    return (
        pl.when(metric == CPU)
        .then(pl.lit("CPU"))
        .when(metric == "memory.usagePercent")
        .then(pl.lit("Memory"))
        .when(metric == "cpu.temperature")
        .then(pl.lit("CPU temperature"))
        .when(disk.is_not_null())
        .then(pl.format("Disk {} {}", disk, disk_what))
        .when(iface.is_not_null())
        .then(pl.format("Interface {} {}", iface, iface_what))
        .otherwise(metric)
    )


def _unit() -> pl.Expr:
    metric = pl.col("metric")
    percent = (metric == CPU) | metric.str.ends_with("usagePercent")
    return pl.when(percent).then(pl.lit("%")).otherwise(pl.lit(""))


def _num_text(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.1f}"


def _messages(config: AnomalyConfig) -> pl.Expr:
    """One sentence per episode, with its numbers, chosen by detector."""
    label, unit = pl.col("label"), pl.col("unit")
    minutes = pl.col("held_minutes")
    det = pl.col("detector")
    at = pl.col("start").dt.strftime("%Y-%m-%d %H:%M UTC")
    return (
        pl.when(det == THRESHOLD)
        .then(
            pl.format(
                "{} above {}{} for {} minutes (peak {}{}).",
                label, _num(pl.col("ref_first")), unit, _num(minutes, 0), _num(pl.col("peak")), unit,
            )
        )
        .when(det == OUTLIER)
        .then(
            pl.format(
                "{} reached {}{} where about {}{} is usual at this time of day (robust z-score {}).",
                label, _num(pl.col("value_top")), unit, _num(pl.col("ref_top")), unit, _num(pl.col("score")),
            )
        )
        .when(det == LEVEL_SHIFT)
        .then(
            pl.format(
                "{} moved from about {}{} to about {}{} and stayed there (median of the last {} minutes; robust z-score {}).",
                label, _num(pl.col("ref_top")), unit, _num(pl.col("value_top")), unit,
                pl.lit(_num_text(config.level_recent_minutes)), _num(pl.col("score")),
            )
        )
        .when(det == FLATLINE)
        .then(
            pl.format(
                "{} stuck at exactly {}{} for {} minutes, though it normally changes with every sample.",
                label, _num(pl.col("ref_first"), 2), unit, _num(pl.col("score"), 0),
            )
        )
        .when(det == GAP)
        .then(
            pl.format(
                "No snapshot for {} minutes from {} ({} reporting intervals missed).",
                _num(pl.col("peak"), 0), at, _num(pl.col("score"), 0),
            )
        )
        .when(det == OFFLINE)
        .then(
            pl.format(
                "Agent silent for {} minutes: no snapshot since {}.",
                _num(pl.col("peak"), 0), pl.col("since").dt.strftime("%Y-%m-%d %H:%M UTC"),
            )
        )
        .when(det == REBOOT)
        .then(
            pl.format(
                "Asset rebooted around {} after {} days up.",
                pl.col("since").dt.strftime("%Y-%m-%d %H:%M UTC"), _num(pl.col("score"), 1),
            )
        )
        .when(det == DISK_FORECAST)
        .then(
            pl.format(
                "{} at {}% would reach 100% in {} days at its recent rate of filling.",
                pl.col("label").str.replace(" usage$", ""), _num(pl.col("value_top")), _num(pl.col("ref_top")),
            )
        )
        .when(det == PEER)
        .then(
            pl.format(
                "{} at {}{} while the median of the org's other assets was {}{}.",
                label, _num(pl.col("value_top")), unit, _num(pl.col("ref_top")), unit,
            )
        )
        .when(det == JOINT)
        .then(
            pl.format(
                "Several metrics moved together as they usually do not: {} (robust z-scores; "
                "joint distance {} times its threshold).",
                pl.col("note_top"), _num(pl.col("score")),
            )
        )
        .otherwise(pl.format("{} flagged by {}.", label, det))
    )


def merge_episodes(flags: pl.DataFrame, config: AnomalyConfig) -> pl.DataFrame:
    """Merge flagged points (`detectors.FLAG_COLUMNS`) into episodes (`EPISODE_COLUMNS`)."""
    if flags.is_empty():
        return empty_episodes()
    tolerance_ms = pl.max_horizontal(pl.lit(config.merge_gap_minutes * 60.0), 2.0 * pl.col("interval_s")) * 1000.0
    prev_end = pl.col("end").shift(1).cum_max().over(_KEY)
    apart = (pl.col("timestamp") - prev_end).dt.total_milliseconds().cast(pl.Float64) > tolerance_ms
    df = flags.sort([*_KEY, "timestamp"]).with_columns(
        apart.fill_null(True).cum_sum().over(_KEY).alias("episode")
    )
    top = pl.col("score").arg_max()
    episodes = df.group_by([*_KEY, "episode"]).agg(
        pl.col("timestamp").min().alias("start"),
        pl.col("end").max().alias("end"),
        pl.col("since").min().alias("since"),
        pl.col("value").max().alias("peak"),
        pl.col("value").get(top).alias("value_top"),
        pl.col("ref").get(top).alias("ref_top"),
        pl.col("ref").first().alias("ref_first"),
        pl.col("note").get(top).alias("note_top"),
        pl.col("score").max().alias("score"),
        pl.col("severity").max().alias("severity"),
        pl.col("interval_s").last().alias("interval_s"),
    )
    held = (pl.col("end") - pl.col("since")).dt.total_milliseconds().cast(pl.Float64) / 60000.0 + pl.col(
        "interval_s"
    ) / 60.0
    return (
        episodes.with_columns(_label().alias("label"), _unit().alias("unit"), held.alias("held_minutes"))
        .with_columns(
            _messages(config).alias("message"),
            pl.col("severity").cast(pl.Int64).replace_strict(dict(enumerate(SEVERITIES)), return_dtype=pl.String),
        )
        .select(*(pl.col(name).cast(dtype) for name, dtype in EPISODE_SCHEMA.items()))
        .sort(["orgId", "assetId", "start", "metric", "detector"])
    )
