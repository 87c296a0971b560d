"""The detectors: each turns points into flagged points, causally and without row loops.

Every detector returns rows in `FLAG_COLUMNS`: the series (orgId, assetId, metric), the
detector's name, the flagged `timestamp` (and `end`, later than it for a gap), `since`
(when the condition began, which may be before the first flagged point, as for a
threshold held for five minutes), the `value` seen, a reference `ref` (threshold,
baseline, fleet median...), a `score` (higher is more unusual) and a `severity` rank.
Every window looks backwards only, so a point's flag depends on that point and what came
before it, never on later data.
"""

from __future__ import annotations

import math
from datetime import datetime

import polars as pl

from perf_analytics.anomalies.config import AnomalyConfig
from perf_analytics.anomalies.joint import detect_joint
from perf_analytics.anomalies.series import ASSET, LEVEL, PERCENT, RATE, SERIES

INFO, WARNING, CRITICAL = 0, 1, 2
SEVERITIES = ("info", "warning", "critical")

THRESHOLD = "threshold"
OUTLIER = "outlier"
LEVEL_SHIFT = "level_shift"
FLATLINE = "flatline"
GAP = "gap"
OFFLINE = "offline"
REBOOT = "reboot"
DISK_FORECAST = "disk_forecast"
PEER = "peer"
JOINT = "joint"
DETECTORS = (THRESHOLD, OUTLIER, LEVEL_SHIFT, FLATLINE, GAP, OFFLINE, REBOOT, DISK_FORECAST, PEER, JOINT)

AGENT_METRIC = "*"
UPTIME_METRIC = "system.uptime"

TIME = pl.Datetime("ms", "UTC")
FLAG_SCHEMA: dict[str, pl.DataType] = {
    "orgId": pl.String(),
    "assetId": pl.String(),
    "metric": pl.String(),
    "detector": pl.String(),
    "timestamp": TIME,
    "end": TIME,
    "since": TIME,
    "value": pl.Float64(),
    "ref": pl.Float64(),
    "score": pl.Float64(),
    "severity": pl.Int8(),
    "interval_s": pl.Float64(),
    "note": pl.String(),  # words for the message (the metrics that moved, for `joint`)
}
FLAG_COLUMNS = tuple(FLAG_SCHEMA)

_IQR_TO_SIGMA = 1.349  # the interquartile range of a normal distribution, in standard deviations
_MAD_TO_SIGMA = 1.4826
# Smallest spread a baseline may claim, per kind of metric: a series that sat perfectly
# still must not make a one-point wobble look like a thousand-sigma event.
_SCALE_FLOOR = {PERCENT: 0.1, RATE: 0.1, LEVEL: 0.1}
_SCALE_FLOOR_RELATIVE = 0.02
_DISK_USAGE = r"^disk\[.*\]\.usagePercent$"
_ONES = pl.col("timestamp").is_not_null().cast(pl.Float64)  # counts rows in a rolling window


def _flags(df: pl.DataFrame, detector: str) -> pl.DataFrame:
    """Select the flag columns in their order and types (missing ones as their defaults)."""
    defaults: dict[str, pl.Expr] = {
        "detector": pl.lit(detector),
        "end": pl.col("timestamp"),
        "since": pl.col("timestamp"),
        "ref": pl.lit(None, dtype=pl.Float64),
        "note": pl.lit(None, dtype=pl.String),
    }
    exprs = [
        (pl.col(name) if name in df.columns else defaults[name]).cast(dtype).alias(name)
        for name, dtype in FLAG_SCHEMA.items()
    ]
    return df.select(exprs)


def empty_flags() -> pl.DataFrame:
    return pl.DataFrame(schema=FLAG_SCHEMA)


def _seconds(expr: pl.Expr) -> pl.Expr:
    return expr.dt.total_milliseconds().cast(pl.Float64) / 1000.0


def _duration(seconds: float) -> str:
    """A polars window string for a number of seconds."""
    return f"{max(1, round(seconds))}s"


def _learned(config: AnomalyConfig, hours: float | None = None) -> pl.Expr:
    """The series has been watched for the learning period, or `hours` (baselines are meaningful)."""
    first = pl.col("timestamp").min().over(SERIES)
    return _seconds(pl.col("timestamp") - first) >= (config.learn_hours if hours is None else hours) * 3600.0


def _settling(df: pl.DataFrame, boots: pl.DataFrame | None, config: AnomalyConfig) -> pl.DataFrame:
    """Add `settling`: the asset rebooted less than `reboot_settle_hours` before the point.

    A reboot resets memory, caches and process counts: values lower than the baseline in
    the hours after one are the reboot's doing, not a new anomaly.
    """
    if boots is None or boots.is_empty() or df.is_empty():
        return df.with_columns(pl.lit(False).alias("settling"))
    last_boot = boots.select(*ASSET, pl.col("timestamp").alias("_boot")).sort("_boot")
    joined = (
        df.with_row_index("_row")
        .sort("timestamp")
        .join_asof(last_boot, left_on="timestamp", right_on="_boot", by=ASSET, strategy="backward", check_sortedness=False)
        .sort("_row")
    )
    settling = _seconds(pl.col("timestamp") - pl.col("_boot")) < config.reboot_settle_hours * 3600.0
    return joined.with_columns(settling.fill_null(False).alias("settling")).drop("_row", "_boot")


def _transformed(points: pl.DataFrame) -> pl.Expr:
    """Byte rates are judged on a log scale (a burst is a ratio), the rest as they are."""
    return pl.when(pl.col("kind") == RATE).then(pl.col("value").log1p()).otherwise(pl.col("value"))


def _floored(sigma: pl.Expr, median: pl.Expr) -> pl.Expr:
    """A spread no smaller than its kind's floor and a small share of the level."""
    floor = pl.col("kind").replace_strict(_SCALE_FLOOR, default=0.5, return_dtype=pl.Float64)
    return pl.max_horizontal(sigma, floor, _SCALE_FLOOR_RELATIVE * median.abs())


def _scale(q25: pl.Expr, q75: pl.Expr, median: pl.Expr) -> pl.Expr:
    return _floored((q75 - q25) / _IQR_TO_SIGMA, median)


# ---- sustained thresholds ---------------------------------------------------------------


def detect_thresholds(points: pl.DataFrame, config: AnomalyConfig) -> pl.DataFrame:
    """CPU, memory or disk above its threshold for at least the sustain time.

    A run of consecutive samples above the threshold is flagged from the sample at which
    it has lasted the sustain time (one interval counts for the first sample), so the
    flag of a sample never waits for later samples.
    """
    metric = pl.col("metric")
    limits = (
        pl.when(metric == "cpu.usage")
        .then(pl.struct(t=pl.lit(config.cpu_threshold), c=pl.lit(config.cpu_critical), s=pl.lit(config.sustain_minutes)))
        .when(metric == "memory.usagePercent")
        .then(pl.struct(t=pl.lit(config.memory_threshold), c=pl.lit(config.memory_critical), s=pl.lit(config.sustain_minutes)))
        .when(metric.str.contains(_DISK_USAGE))
        .then(pl.struct(t=pl.lit(config.disk_threshold), c=pl.lit(config.disk_critical), s=pl.lit(config.disk_sustain_minutes)))
        .otherwise(None)
    )
    df = points.with_columns(limits.alias("lim")).filter(pl.col("lim").is_not_null()).unnest("lim")
    if df.is_empty():
        return empty_flags()
    above = pl.col("value") > pl.col("t")
    broken = _seconds(pl.col("timestamp").diff()) > config.gap_intervals * pl.col("interval_s")
    df = df.with_columns(
        ((above != above.shift(1)) | broken.fill_null(True)).cum_sum().over(SERIES).alias("run"),
    ).with_columns(pl.col("timestamp").min().over([*SERIES, "run"]).alias("since"))
    held = _seconds(pl.col("timestamp") - pl.col("since")) + pl.col("interval_s")
    count = pl.col("timestamp").cum_count().over([*SERIES, "run"])
    sustained = (held >= pl.col("s") * 60.0 - 1e-9) & ((count >= config.sustain_min_points) | (pl.col("s") == 0))
    flagged = df.filter(above & sustained).with_columns(
        pl.col("t").alias("ref"),
        pl.col("value").alias("score"),
        pl.when(pl.col("value") >= pl.col("c")).then(CRITICAL).otherwise(WARNING).alias("severity"),
    )
    return _flags(flagged, THRESHOLD)


# ---- robust outliers against the asset's own baseline ----------------------------------


def _baselines(df: pl.DataFrame, config: AnomalyConfig) -> pl.DataFrame:
    """Median and spread of the same time of day over the last days, and of the last day.

    Windows are closed on the left: the point itself is not part of its baseline.
    """
    ts = pl.col("timestamp")
    bucket = (ts.dt.hour() // config.time_of_day_hours).alias("tod")
    week = _duration(config.baseline_days * 86400)
    day = _duration(config.recent_hours * 3600)
    x = pl.col("x")
    novel_by = [*SERIES, "tod"] if config.outlier_novel_time_of_day else SERIES

    def stats(window: str, by: list[str], tag: str) -> list[pl.Expr]:
        return [
            x.rolling_median_by("timestamp", window, closed="left").over(by).alias(f"med_{tag}"),
            x.rolling_quantile_by("timestamp", window, quantile=0.25, closed="left").over(by).alias(f"q25_{tag}"),
            x.rolling_quantile_by("timestamp", window, quantile=0.75, closed="left").over(by).alias(f"q75_{tag}"),
            _ONES.rolling_sum_by("timestamp", window, closed="left").over(by).alias(f"n_{tag}"),
        ]

    return (
        df.with_columns(_transformed(df).alias("x"), bucket)
        .with_columns(
            *stats(week, [*SERIES, "tod"], "tod"),
            *stats(day, SERIES, "day"),
            x.rolling_max_by("timestamp", week, closed="left").over(novel_by).alias("max_week"),
            x.rolling_min_by("timestamp", week, closed="left").over(novel_by).alias("min_week"),
        )
        .with_columns(
            (pl.col("n_tod") >= config.baseline_min_points).alias("enough_tod"),
            (pl.col("n_day") >= config.baseline_min_points).alias("enough_day"),
            *_held(config),
        )
        .with_columns(_reference().alias("ref_x"))
        .with_columns(
            (pl.col("held_up") - pl.col("ref_x")).alias("res_up"),
            (pl.col("ref_x") - pl.col("held_down")).alias("res_down"),
        )
        .with_columns(
            pl.col("res_up").rolling_max_by("timestamp", week, closed="left").over(SERIES).alias("max_res_up"),
            pl.col("res_down").rolling_max_by("timestamp", week, closed="left").over(SERIES).alias("max_res_down"),
        )
    )


def _held(config: AnomalyConfig) -> list[pl.Expr]:
    """The level the last `outlier_sustained_points` samples all reached, up and down."""
    n = config.outlier_sustained_points
    return [
        pl.col("x").rolling_min(n).over(SERIES).alias("held_up"),
        pl.col("x").rolling_max(n).over(SERIES).alias("held_down"),
    ]


def _robust_z(value: pl.Expr) -> pl.Expr:
    """The smaller of the value's robust z-scores against the time-of-day and last-day baselines.

    Same sign required: above one baseline and below the other is not unusual. Null while
    neither baseline has `baseline_min_points` (see `_baselines`; `enough_*` columns).
    """
    z_tod = (value - pl.col("med_tod")) / _scale(pl.col("q25_tod"), pl.col("q75_tod"), pl.col("med_tod"))
    z_day = (value - pl.col("med_day")) / _scale(pl.col("q25_day"), pl.col("q75_day"), pl.col("med_day"))
    return (
        pl.when(pl.col("enough_tod") & pl.col("enough_day") & (z_tod.sign() == z_day.sign()))
        .then(pl.when(z_tod.abs() < z_day.abs()).then(z_tod).otherwise(z_day))
        .when(pl.col("enough_day") & ~pl.col("enough_tod"))
        .then(z_day)
        .otherwise(None)
    )


def _hour_z(value: pl.Expr) -> pl.Expr:
    """The value's robust z-score against its time of day (the last day until that has formed).

    For a level held high: judged against the last day, a night-time transfer would be
    measured by the spread of the whole day, busy hours included; its own hour is the fair
    measure. A level held low keeps the smaller of both z-scores, as single points do:
    quiet spells (a weekend, a holiday) come in runs and are quiet against the hours
    before them too.
    """
    z_tod = (value - pl.col("med_tod")) / _scale(pl.col("q25_tod"), pl.col("q75_tod"), pl.col("med_tod"))
    z_day = (value - pl.col("med_day")) / _scale(pl.col("q25_day"), pl.col("q75_day"), pl.col("med_day"))
    return pl.when(pl.col("enough_tod")).then(z_tod).when(pl.col("enough_day")).then(z_day).otherwise(None)


def _reference() -> pl.Expr:
    return pl.when(pl.col("enough_tod")).then(pl.col("med_tod")).otherwise(pl.col("med_day"))


def score_points(points: pl.DataFrame, config: AnomalyConfig) -> pl.DataFrame:
    """The points (disk usage aside) with their baselines and robust z-scores.

    `z` for the point, `z_up`/`z_down` for the level held by the last samples; shared by
    the outlier and the joint detectors.
    """
    df = points.filter(~pl.col("metric").str.contains(_DISK_USAGE))
    if df.is_empty():
        return df
    return _baselines(df, config).with_columns(
        _robust_z(pl.col("x")).alias("z"),
        _hour_z(pl.col("held_up")).alias("z_up"),
        _robust_z(pl.col("held_down")).alias("z_down"),
    )


def detect_outliers(
    points: pl.DataFrame,
    config: AnomalyConfig,
    boots: pl.DataFrame | None = None,
    *,
    scored: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Points far from both the same time of day on previous days and the last day.

    The z-score is the smaller of the two robust z-scores (median and interquartile
    spread): a morning peak is normal against earlier mornings, a quiet weekend is normal
    against the hours just before, and only what is unusual against both is flagged. The
    point must also pass the highest (or lowest) value of the baseline days by a margin:
    what the asset already did this week is part of its life. Several samples in a row
    far out (`outlier_sustained_points` beyond `outlier_sustained_z`) are an outlier too
    when they depart from their hour's usual level further than any held departure of
    the baseline days. `scored` is `score_points(points, config)` when already computed.
    """
    df = score_points(points, config) if scored is None else scored
    if df.is_empty():
        return empty_flags()
    x = pl.col("x")
    df = _settling(df, boots, config)
    margin = config.outlier_novel_margin
    ref_x = pl.col("ref_x")
    # Beyond everything the series did in the baseline days: a value that recurs (a nightly
    # backup, a periodic burst) is part of the asset's life, however far from the median.
    novel = (
        pl.when(pl.col("z") > 0)
        .then(x > pl.col("max_week") + margin * (pl.col("max_week") - ref_x))
        .otherwise(x < pl.col("min_week") - margin * (ref_x - pl.col("min_week")))
        if config.outlier_novel_only
        else pl.lit(True)
    )
    # A held excursion: several samples in a row far out, and further from the usual level
    # of their time of day than anything held in the baseline days. A routine spike is one
    # sample; an incident (a transfer, a runaway job) holds, so it is unusual at a lower z
    # (for independent noise, three samples beyond 4 spreads are rarer than one beyond 6),
    # and it is measured from its hour's usual level, where a night-time burst stands out
    # although busy hours reach as high.
    held_novel_up = pl.col("res_up") > (1.0 + margin) * pl.col("max_res_up")
    held_novel_down = pl.col("res_down") > (1.0 + margin) * pl.col("max_res_down")
    held = (
        ((pl.col("z_up") >= config.outlier_sustained_z) & (held_novel_up if config.outlier_novel_only else True))
        | (
            (pl.col("z_down") <= -config.outlier_sustained_z)
            & (held_novel_down if config.outlier_novel_only else True)
            & ~pl.col("settling")
        )
    ).fill_null(False)
    single = ((pl.col("z").abs() >= config.outlier_z) & novel & ~(pl.col("settling") & (pl.col("z") < 0))).fill_null(
        False
    )
    # The score: the point's own z, or the held level's when only that one counts.
    score = pl.max_horizontal(
        pl.when(single).then(pl.col("z").abs()),
        pl.when(held).then(pl.max_horizontal(pl.col("z_up"), -pl.col("z_down"))),
    )
    flagged = df.filter((single | held) & _learned(config)).with_columns(
        pl.when(pl.col("kind") == RATE).then(ref_x.exp() - 1.0).otherwise(ref_x).alias("ref"),
        score.alias("score"),
        pl.when(score >= config.outlier_critical_z).then(CRITICAL).otherwise(WARNING).alias("severity"),
    )
    return _flags(flagged, OUTLIER)


def detect_joint_moves(
    scored: pl.DataFrame, config: AnomalyConfig, boots: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Several metrics of one asset off together (see `joint.detect_joint`), as flags.

    Not in the day after a reboot, when every metric starts afresh at once.
    """
    if scored.is_empty():
        return empty_flags()
    df = _settling(scored, boots, config).filter(~pl.col("settling"))
    found = detect_joint(df, config)
    if found.is_empty():
        return empty_flags()
    flagged = found.with_columns(
        pl.lit(AGENT_METRIC).alias("metric"),
        pl.col("held").sqrt().alias("value"),
        pl.col("threshold").sqrt().alias("ref"),
        pl.lit(WARNING).alias("severity"),
    )
    return _flags(flagged, JOINT)


# ---- level shifts ---------------------------------------------------------------------


def detect_level_shifts(
    points: pl.DataFrame, config: AnomalyConfig, boots: pl.DataFrame | None = None
) -> pl.DataFrame:
    """The median of the recent window (3 hours) far from the median of the day before it.

    Both medians are robust to single spikes, so this fires on a lasting change of level
    (a service that now runs hotter, a memory footprint that jumped), about half the
    recent window after it began. Far is measured in the series' sample-to-sample noise.
    The new level must also lie beyond every recent median seen at the same time of day
    over the baseline days, by as many noise units, so daily rhythms and on/off services
    that have been there before are not flagged.
    """
    df = points.filter(~pl.col("metric").str.contains(_DISK_USAGE))
    if df.is_empty():
        return empty_flags()
    recent_s = config.level_recent_minutes * 60.0
    recent = _duration(recent_s)
    base = _duration(config.level_baseline_hours * 3600)
    x = pl.col("x")
    step = (x - x.shift(1)).abs().over(SERIES)
    df = df.with_columns(_transformed(df).alias("x")).with_columns(step.alias("step")).with_columns(
        x.rolling_median_by("timestamp", recent).over(SERIES).alias("med_recent"),
        _ONES.rolling_sum_by("timestamp", recent).over(SERIES).alias("n_recent"),
        x.rolling_median_by("timestamp", base).over(SERIES).alias("med_base"),
        pl.col("step").rolling_median_by("timestamp", base).over(SERIES).alias("noise_base"),
        _ONES.rolling_sum_by("timestamp", base).over(SERIES).alias("n_base"),
        (pl.col("timestamp") - pl.duration(milliseconds=round(recent_s * 1000))).alias("_before"),
    )
    # The baseline as it stood when the recent window began (an as-of join, backwards).
    baseline = df.select(
        *SERIES,
        pl.col("timestamp").alias("_before"),
        "med_base",
        "noise_base",
        "n_base",
    ).sort("_before")
    df = (
        df.drop("med_base", "noise_base", "n_base")
        .sort("_before")
        .join_asof(baseline, on="_before", by=SERIES, strategy="backward", check_sortedness=False)
        .sort([*SERIES, "timestamp"])
    )
    # A new level: beyond every recent median of the same time of day in the baseline days
    # (a daily batch, a weekly busy spell, a service that is off half the time are not new).
    week = _duration(config.baseline_days * 86400)
    tod = [*SERIES, (pl.col("timestamp").dt.hour() // config.time_of_day_hours).alias("tod")]
    df = df.with_columns(
        pl.col("med_recent").rolling_max_by("timestamp", week, closed="left").over(tod).alias("seen_max"),
        pl.col("med_recent").rolling_min_by("timestamp", week, closed="left").over(tod).alias("seen_min"),
    )
    # Spreads are the series' sample-to-sample noise (the median step, as a standard
    # deviation of one sample), not its spread over the day: counting the daily swing as
    # noise hid every shift smaller than that swing. The swing is judged by novelty instead:
    # the recent median must pass every recent median seen at this time of day in the
    # baseline days by `level_shift_z` noise units too, so a busy morning like the last
    # ones is no shift, while a service that now runs hotter than ever at this hour is.
    change = pl.col("med_recent") - pl.col("med_base")
    noise = _floored(_MAD_TO_SIGMA * pl.col("noise_base") / math.sqrt(2.0), pl.col("med_base"))
    beyond = (
        pl.when(change > 0)
        .then(pl.col("med_recent") - pl.col("seen_max"))
        .otherwise(pl.col("seen_min") - pl.col("med_recent"))
    )
    novel = (beyond / noise >= config.level_shift_z).fill_null(False)
    z = change / noise
    is_rate = pl.col("kind") == RATE
    big_enough = (
        pl.when(pl.col("kind") == PERCENT)
        .then(change.abs() >= config.level_min_percent_points)
        .when(is_rate)
        .then(change.abs() >= math.log1p(config.level_min_change))
        .otherwise(change.abs() >= config.level_min_change * pl.col("med_base").abs())
    )
    min_recent = max(3.0, 0.5 * recent_s)
    df = _settling(df, boots, config)
    shifted = (
        _learned(config, config.level_learn_hours)
        & ~(pl.col("settling") & (change < 0))
        & (pl.col("n_base") >= config.baseline_min_points)
        & (pl.col("n_recent") * pl.col("interval_s") >= min_recent)
        & (pl.col("n_recent") >= 3)
        & (z.abs() >= config.level_shift_z)
        & big_enough
    ).fill_null(False)
    # A shift stays flagged while it lasts, once it has reached a new level at some point.
    df = df.with_columns(shifted.alias("shifted"), (novel & shifted).alias("novel")).with_columns(
        (pl.col("shifted") != pl.col("shifted").shift(1)).fill_null(True).cum_sum().over(SERIES).alias("run")
    )
    reached = pl.col("novel").cast(pl.Int8).cum_max().over([*SERIES, "run"]) == 1
    flagged = df.filter(pl.col("shifted") & reached).with_columns(
        pl.when(is_rate).then(pl.col("med_recent").exp() - 1.0).otherwise(pl.col("med_recent")).alias("value"),
        pl.when(is_rate).then(pl.col("med_base").exp() - 1.0).otherwise(pl.col("med_base")).alias("ref"),
        z.abs().alias("score"),
        pl.lit(WARNING).alias("severity"),
    )
    return _flags(flagged, LEVEL_SHIFT)


# ---- flatlines ------------------------------------------------------------------------


def detect_flatlines(points: pl.DataFrame, config: AnomalyConfig) -> pl.DataFrame:
    """A metric that normally moves repeats exactly the same value for a long time.

    "Normally moves" means it changed on at least `flatline_moving_share` of its samples
    over the previous day; an idle byte rate stuck at zero is quiet, not stuck.
    """
    df = points.filter(~pl.col("metric").str.contains(_DISK_USAGE))
    if df.is_empty():
        return empty_flags()
    changed = (pl.col("value") != pl.col("value").shift(1)).fill_null(True)
    day = _duration(86400)
    df = df.with_columns(changed.over(SERIES).alias("changed")).with_columns(
        pl.col("changed").cum_sum().over(SERIES).alias("run"),
        pl.col("changed")
        .cast(pl.Float64)
        .rolling_mean_by("timestamp", day, closed="left")
        .over(SERIES)
        .alias("moving"),
        _ONES.rolling_sum_by("timestamp", day, closed="left").over(SERIES).alias("n_day"),
    )
    df = df.with_columns(
        pl.col("timestamp").min().over([*SERIES, "run"]).alias("since"),
        pl.col("timestamp").cum_count().over([*SERIES, "run"]).alias("n_run"),
        # The share of moving samples as it was when the run began.
        pl.col("moving").first().over([*SERIES, "run"]).alias("moving_before"),
        pl.col("n_day").first().over([*SERIES, "run"]).alias("n_before"),
    )
    stuck_s = _seconds(pl.col("timestamp") - pl.col("since"))
    flagged = df.filter(
        _learned(config)
        & (stuck_s >= config.flatline_minutes * 60.0)
        & (pl.col("n_run") >= config.flatline_min_points)
        & (pl.col("moving_before") >= config.flatline_moving_share)
        & (pl.col("n_before") >= config.baseline_min_points)
        & ~((pl.col("kind") == RATE) & (pl.col("value") == 0.0))
    ).with_columns(
        pl.col("value").alias("ref"),
        (stuck_s / 60.0).alias("score"),
        pl.lit(WARNING).alias("severity"),
    )
    return _flags(flagged, FLATLINE)


# ---- disk-full forecasts --------------------------------------------------------------


def detect_disk_forecasts(points: pl.DataFrame, config: AnomalyConfig) -> pl.DataFrame:
    """A disk whose recent trend (least squares over the last hours) fills it within days."""
    df = points.filter(pl.col("metric").str.contains(_DISK_USAGE))
    if df.is_empty():
        return empty_flags()
    window = _duration(config.forecast_window_hours * 3600)
    origin = pl.col("timestamp").min().over(SERIES)
    df = df.with_columns((_seconds(pl.col("timestamp") - origin) / 86400.0).alias("t"))
    t, y = pl.col("t"), pl.col("value")

    def mean(expr: pl.Expr) -> pl.Expr:
        return expr.rolling_mean_by("timestamp", window).over(SERIES)

    df = df.with_columns(
        mean(t).alias("mt"),
        mean(y).alias("my"),
        mean(t * y).alias("mty"),
        mean(t * t).alias("mtt"),
        _ONES.rolling_sum_by("timestamp", window).over(SERIES).alias("n"),
        pl.col("timestamp").rolling_min_by("timestamp", window).over(SERIES).alias("first"),
    )
    var_t = pl.col("mtt") - pl.col("mt") ** 2
    slope = (pl.col("mty") - pl.col("mt") * pl.col("my")) / var_t  # percent per day
    span_ok = _seconds(pl.col("timestamp") - pl.col("first")) >= 0.5 * config.forecast_window_hours * 3600
    df = df.with_columns(slope.alias("slope")).with_columns(
        ((100.0 - y) / pl.col("slope")).alias("days")
    )
    flagged = df.filter(
        (pl.col("n") >= config.forecast_min_points)
        & span_ok
        & (var_t > 0)
        & (pl.col("slope") > 0)
        & (pl.col("days") < config.forecast_days)
    ).with_columns(
        pl.col("days").alias("ref"),
        (config.forecast_days / pl.col("days").clip(lower_bound=1e-3)).alias("score"),
        pl.when(pl.col("days") < 1.0).then(CRITICAL).otherwise(WARNING).alias("severity"),
    )
    return _flags(flagged, DISK_FORECAST)


# ---- peers ----------------------------------------------------------------------------


PEER_METRICS = ("cpu.usage", "memory.usagePercent")


def peer_buckets(points: pl.DataFrame, config: AnomalyConfig) -> pl.DataFrame:
    """Each asset's mean of the peer metrics per `peer_bucket_minutes` bucket.

    Small (one row per asset, metric and bucket) and computed per asset, so a fleet flagged
    in batches of assets collects these and compares them once (`detect_peers_in`).
    """
    df = points.filter(pl.col("metric").is_in(PEER_METRICS))
    every = f"{config.peer_bucket_minutes}m"
    return df.group_by(*SERIES, pl.col("timestamp").dt.truncate(every).alias("bucket")).agg(
        pl.col("value").mean().alias("value"),
        pl.col("timestamp").max().alias("timestamp"),
        pl.col("interval_s").max().alias("interval_s"),
    )


def detect_peers_in(buckets: pl.DataFrame, config: AnomalyConfig) -> pl.DataFrame:
    """Peer flags of a whole org's `peer_buckets` (see `detect_peers`)."""
    if buckets.is_empty():
        return empty_flags()
    fleet = ["orgId", "metric", "bucket"]
    per_asset = buckets.with_columns(
        pl.col("value").median().over(fleet).alias("ref"),
        pl.len().over(fleet).alias("n"),
    ).with_columns((pl.col("value") - pl.col("ref")).abs().median().over(fleet).alias("mad"))
    diff = pl.col("value") - pl.col("ref")
    z = diff / pl.max_horizontal(_MAD_TO_SIGMA * pl.col("mad"), pl.lit(_SCALE_FLOOR[PERCENT] * 4))
    flagged = per_asset.filter(
        (pl.col("n") >= config.peer_min_assets)
        & (z.abs() >= config.peer_z)
        & (diff.abs() >= config.peer_min_percent_points)
    ).with_columns(
        pl.col("bucket").alias("since"),
        z.abs().alias("score"),
        pl.lit(INFO).alias("severity"),
    )
    return _flags(flagged, PEER)


def detect_peers(points: pl.DataFrame, config: AnomalyConfig) -> pl.DataFrame:
    """An asset far from the rest of its own org's fleet in the same time bucket.

    Compared only within one org: the median and spread come from that org's assets.
    """
    return detect_peers_in(peer_buckets(points, config), config)


# ---- agent-level: gaps, offline agents, reboots ----------------------------------------


def detect_gaps(agents: pl.DataFrame, config: AnomalyConfig) -> pl.DataFrame:
    """No snapshot for more than `gap_intervals` reporting intervals between two snapshots.

    The interval is the longest of the nominal one and the agent's usual long spacing (see
    `series.agent_frame`): an agent that reports every few minutes at random is judged
    against how it reports, so its ordinary pauses do not flood the flags, while one that
    reports like a clock is judged against its clock. The flag spans the missing samples:
    from one interval after the last snapshot before the gap to one interval before the
    first after it.
    """
    prev = pl.col("timestamp").shift(1).over(ASSET)
    df = agents.with_columns(prev.alias("prev"), pl.col("interval_s").shift(1).over(ASSET).alias("prev_interval"))
    expected = pl.max_horizontal("interval_s", "prev_interval", "usual_spacing_s")
    delta = _seconds(pl.col("timestamp") - pl.col("prev"))
    gaps = df.filter(pl.col("prev").is_not_null() & (delta > config.gap_intervals * expected + 1e-6))
    step = pl.duration(milliseconds=(pl.col("prev_interval") * 1000).round().cast(pl.Int64))
    gaps = gaps.with_columns(
        pl.lit(AGENT_METRIC).alias("metric"),
        (pl.col("prev") + step).alias("start"),
        (pl.col("timestamp") - step).alias("end"),
        (delta / expected - 1.0).alias("score"),
        (delta / 60.0).alias("value"),
        pl.when(delta >= 86400.0).then(CRITICAL).otherwise(WARNING).alias("severity"),
    ).with_columns(pl.col("start").alias("timestamp"), pl.col("start").alias("since"))
    return _flags(gaps, GAP)


def detect_offline(
    agents: pl.DataFrame, config: AnomalyConfig, *, now: datetime, last_seen: pl.DataFrame | None
) -> pl.DataFrame:
    """Assets whose last snapshot (or `lastSeen`, whichever is later) is too old at `now`.

    Too old means more than `gap_intervals` of the agent's usual spacing, as for a gap.
    """
    latest = agents.group_by(ASSET).agg(
        pl.col("timestamp").max().alias("last"),
        pl.max_horizontal("interval_s", "usual_spacing_s").last().alias("expected_s"),
        pl.col("interval_s").last().alias("interval_s"),
    )
    if last_seen is not None and last_seen.height:
        seen = last_seen.select(
            pl.col("orgId").cast(pl.String),
            pl.col("assetId").cast(pl.String),
            pl.col("lastSeen").cast(TIME).alias("seen"),
        ).filter(pl.col("seen") <= now)
        latest = latest.join(seen, on=ASSET, how="full", coalesce=True).with_columns(
            pl.max_horizontal("last", "seen").alias("last"),
            pl.col("interval_s").fill_null(300.0),
            pl.col("expected_s").fill_null(300.0),
        )
    now_lit = pl.lit(now).cast(TIME)
    silent = _seconds(now_lit - pl.col("last"))
    step = pl.duration(milliseconds=(pl.col("interval_s") * 1000).round().cast(pl.Int64))
    df = latest.filter(pl.col("last").is_not_null() & (silent > config.gap_intervals * pl.col("expected_s"))).with_columns(
        pl.lit(AGENT_METRIC).alias("metric"),
        (pl.col("last") + step).alias("timestamp"),
        now_lit.alias("end"),
        (silent / 60.0).alias("value"),
        (silent / pl.col("interval_s")).alias("score"),
        pl.when(silent >= 86400.0).then(CRITICAL).otherwise(WARNING).alias("severity"),
    ).with_columns(pl.col("timestamp").alias("since"))
    return _flags(df, OFFLINE)


def detect_reboots(agents: pl.DataFrame, config: AnomalyConfig) -> pl.DataFrame:
    """Uptime went down: the machine booted between two snapshots."""
    up = agents.filter(pl.col("uptime").is_not_null())
    prev = pl.col("uptime").shift(1).over(ASSET)
    df = up.with_columns(prev.alias("prev_uptime"))
    boots = df.filter(pl.col("uptime") < pl.col("prev_uptime")).with_columns(
        pl.lit(UPTIME_METRIC).alias("metric"),
        pl.col("uptime").alias("value"),
        pl.col("prev_uptime").alias("ref"),
        (pl.col("timestamp") - pl.duration(milliseconds=(pl.col("uptime") * 1000).round().cast(pl.Int64))).alias(
            "since"
        ),
        (pl.col("prev_uptime") / 86400.0).alias("score"),
        pl.lit(INFO).alias("severity"),
    )
    return _flags(boots, REBOOT)
