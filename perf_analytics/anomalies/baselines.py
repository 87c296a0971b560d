"""A day's baselines, merged from the hour summaries of the days before it (`state.py`).

Nothing here reads a raw point of an earlier day: every baseline is a merge of small
per-hour summaries, so a night costs the same whatever its history, and the baselines
are the same whether the summaries were kept in the lake or rebuilt from raw data.

- *Time of day* (per series and `time_of_day_hours` bucket, from the `baseline_days`
  before the day): the centre is the median of the bucket's hourly medians; the spread
  combines, as variances add, the typical spread within an hour (median hourly
  interquartile range) and the spread of the hourly medians themselves (how much the
  level moves from hour to hour and day to day).
- *Last 24 hours* (per series and hour of the day): the same merge over the 24 complete
  hours before the hour (yesterday's and today's earlier ones).
- *The week's extremes*: the highest and lowest value, and the highest departures held
  for several samples (measured from the current time-of-day centres).
- *Level shift windows*: the median (and the range) of the last hours' medians, the 24 hours' before them,
  their noise (median step) and every earlier level of the same time of day.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import polars as pl

from perf_analytics.anomalies.config import AnomalyConfig
from perf_analytics.anomalies.series import (
    ASSET,
    CPU,
    MAD_TO_SIGMA,
    RATE,
    SCALE_FLOOR_RELATIVE,
    SERIES,
    floored_sigma,
)
from perf_analytics.anomalies.state import AGENT, HOUR, PAIR, TIME

IQR_TO_SIGMA = 1.349  # the interquartile range of a normal distribution, in standard deviations


def _hour_start() -> pl.Expr:
    return (pl.col("date").cast(pl.Datetime("ms", "UTC")) + pl.duration(hours=pl.col("hour").cast(pl.Int64))).alias(
        "hour_start"
    )


def _merged_sigma(iqr_within: pl.Expr, iqr_between: pl.Expr, centre: pl.Expr) -> pl.Expr:
    """The spread of merged hours: within-hour and between-hour spreads add as variances."""
    return floored_sigma((iqr_within.pow(2) + iqr_between.fill_null(0.0).pow(2)).sqrt() / IQR_TO_SIGMA, centre)


@dataclass(frozen=True)
class Baselines:
    """What a day's detectors read instead of raw history (see the module's docstring)."""

    day: date
    hours: pl.DataFrame  # hour rows of the baseline days and the day itself, with hour_start
    tod: pl.DataFrame  # per series and time-of-day bucket: med_tod, sigma_tod, n_tod (or with the extremes)
    recent: pl.DataFrame  # per series and hour of the day: med_day, sigma_day, n_day
    week: pl.DataFrame  # per series: first_seen, max_res_up, max_res_down (and max_week, min_week)
    agents: pl.DataFrame  # agent rows of the baseline days
    pairs: pl.DataFrame  # pair rows of the baseline days

    @property
    def day_start(self) -> datetime:
        return datetime(self.day.year, self.day.month, self.day.day, tzinfo=UTC)


def build(state: pl.DataFrame, today_hours: pl.DataFrame, day: date, config: AnomalyConfig) -> Baselines:
    """The baselines of `day` from the state of the days before it and the day's own hours."""
    start = day - timedelta(days=max(1, round(config.baseline_days)))
    prior = state.filter((pl.col("date") >= start) & (pl.col("date") < day))
    prev = prior.filter(pl.col("part") == HOUR).select(today_hours.columns)
    hours = (
        pl.concat([prev, today_hours.select(prev.columns)])
        .with_columns(_hour_start(), (pl.col("hour") // config.time_of_day_hours).alias("tod"))
        .sort([*SERIES, "hour_start"])
    )
    tod = _tod(hours.filter(pl.col("date") < day))
    week, extremes = _week(hours, day, tod, config)
    if config.outlier_novel_time_of_day:
        tod = tod.join(extremes, on=[*SERIES, "tod"], how="left")
    else:
        week = week.join(extremes, on=SERIES, how="left")
    return Baselines(
        day=day,
        hours=hours,
        tod=tod,
        recent=_recent(hours, day, config),
        week=week,
        agents=prior.filter(pl.col("part") == AGENT),
        pairs=prior.filter(pl.col("part") == PAIR),
    )


def _tod(prev: pl.DataFrame) -> pl.DataFrame:
    """Per series and time-of-day bucket: centre, spread and count of the baseline days.

    The spread is that of a new day around a centre drawn from `n` earlier days, so it
    grows by sqrt(1 + 1/n) (a prediction interval): with one or two days to go by, the
    centre itself is uncertain, and a day that differs from it by chance is not unusual.
    """
    q50 = pl.col("q50")
    return (
        prev.group_by([*SERIES, "tod"])
        .agg(
            pl.col("kind").first(),
            q50.median().alias("med_tod"),
            (pl.col("q75") - pl.col("q25")).median().alias("_iqr_w"),
            (q50.quantile(0.75, "linear") - q50.quantile(0.25, "linear")).alias("_iqr_b"),
            pl.col("n").sum().alias("n_tod"),
            pl.col("date").n_unique().alias("_days"),
        )
        .with_columns(
            (
                _merged_sigma(pl.col("_iqr_w"), pl.col("_iqr_b"), pl.col("med_tod"))
                * (1.0 + 1.0 / pl.col("_days").cast(pl.Float64)).sqrt()
            ).alias("sigma_tod")
        )
        .select(*SERIES, "tod", "med_tod", "sigma_tod", "n_tod")
    )


def _recent(hours: pl.DataFrame, day: date, config: AnomalyConfig) -> pl.DataFrame:
    """Per series and hour of `day`: the merge of the `recent_hours` complete hours before it."""
    window = f"{max(1, round(config.recent_hours))}h"
    yesterday = day - timedelta(days=math.ceil(config.recent_hours / 24))
    q50 = pl.col("q50")

    def roll(expr: pl.Expr, how: str, q: float = 0.5) -> pl.Expr:
        if how == "sum":
            return expr.rolling_sum_by("hour_start", window, closed="left").over(SERIES)
        return expr.rolling_quantile_by("hour_start", window, quantile=q, closed="left").over(SERIES)

    return (
        hours.filter(pl.col("date") >= yesterday)
        .with_columns(
            roll(q50, "q").alias("med_day"),
            roll(pl.col("q75") - pl.col("q25"), "q").alias("_iqr_w"),
            (roll(q50, "q", 0.75) - roll(q50, "q", 0.25)).alias("_iqr_b"),
            roll(pl.col("n").cast(pl.Float64), "sum").alias("n_day"),
        )
        .filter(pl.col("date") == day)
        .with_columns(_merged_sigma(pl.col("_iqr_w"), pl.col("_iqr_b"), pl.col("med_day")).alias("sigma_day"))
        .select(*SERIES, "hour", "med_day", "sigma_day", "n_day")
    )


def _week(
    hours: pl.DataFrame, day: date, tod: pl.DataFrame, config: AnomalyConfig
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per series: first seen and the baseline days' held departures; and their extremes
    (per series, or per series and bucket with `outlier_novel_time_of_day`)."""
    prev = hours.filter(pl.col("date") < day).join(tod.select(*SERIES, "tod", "med_tod"), on=[*SERIES, "tod"], how="left")
    first = hours.group_by(SERIES).agg(pl.col("first").min().alias("first_seen"))
    by = [*SERIES, "tod"] if config.outlier_novel_time_of_day else SERIES
    extremes = prev.group_by(by).agg(pl.col("hi").max().alias("max_week"), pl.col("lo").min().alias("min_week"))
    held = prev.group_by(SERIES).agg(
        (pl.col("held_hi") - pl.col("med_tod")).max().alias("max_res_up"),
        (pl.col("med_tod") - pl.col("held_lo")).max().alias("max_res_down"),
    )
    return first.join(held, on=SERIES, how="left"), extremes


def level_windows(base: Baselines, config: AnomalyConfig) -> pl.DataFrame:
    """Per series and hour of the day: the level shift's windows (see `detect_level_shifts`).

    `med_recent` is the median of the hourly medians of the last `level_recent_minutes`
    (the hour itself included), `lo_recent`/`hi_recent` the least and greatest of them, `med_base`, `noise_base` and `n_base` those of the
    `level_baseline_hours` before that window began, and `seen_max`/`seen_min` the
    highest and lowest `med_recent` of the same time of day in the baseline days (of any
    hour, with `level_novel_time_of_day` off); with `level_idle_any_hour`,
    `seen_any_max`/`seen_any_min` those of any hour.
    """
    recent_h = max(1, round(config.level_recent_minutes / 60))
    base_h = max(1, round(config.level_baseline_hours))
    recent, baseline = f"{recent_h}h", f"{base_h}h"
    q50 = pl.col("q50")
    hours = base.hours.with_columns(
        q50.rolling_median_by("hour_start", recent).over(SERIES).alias("med_recent"),
        q50.rolling_min_by("hour_start", recent).over(SERIES).alias("lo_recent"),
        q50.rolling_max_by("hour_start", recent).over(SERIES).alias("hi_recent"),
        pl.col("n").cast(pl.Float64).rolling_sum_by("hour_start", recent).over(SERIES).alias("n_recent"),
        q50.rolling_median_by("hour_start", baseline).over(SERIES).alias("med_base"),
        pl.col("step").rolling_median_by("hour_start", baseline).over(SERIES).alias("noise_base"),
        pl.col("n").cast(pl.Float64).rolling_sum_by("hour_start", baseline).over(SERIES).alias("n_base"),
    )
    before = hours.select(
        *SERIES,
        (pl.col("hour_start") + pl.duration(hours=recent_h)).alias("hour_start"),
        "med_base",
        "noise_base",
        "n_base",
    )
    earlier = hours.filter(pl.col("date") < base.day)
    seen_by = [*SERIES, "tod"] if config.level_novel_time_of_day else SERIES
    seen = earlier.group_by(seen_by).agg(
        pl.col("med_recent").max().alias("seen_max"), pl.col("med_recent").min().alias("seen_min")
    )
    df = (
        hours.filter(pl.col("date") == base.day)
        .select(*SERIES, "kind", "hour", "hour_start", "tod", "last", "interval_s", "med_recent", "lo_recent",
                "hi_recent", "n_recent")
        .join(before, on=[*SERIES, "hour_start"], how="left")
        .join(seen, on=seen_by, how="left")
    )
    if config.level_idle_any_hour:
        # Every hour's levels, for a series idle at every time of day (`idle_series`).
        anywhere = earlier.group_by(SERIES).agg(
            pl.col("med_recent").max().alias("seen_any_max"), pl.col("med_recent").min().alias("seen_any_min")
        )
        df = df.join(anywhere, on=SERIES, how="left")
    return df.join(base.week.select(*SERIES, "first_seen").unique(SERIES), on=SERIES, how="left").sort(
        [*SERIES, "hour_start"]
    )


def earlier_hours(base: Baselines) -> pl.DataFrame:
    """The hourly rows of the baseline days (those before the day judged)."""
    return base.hours.filter(pl.col("date") < base.day)


# An idle series' usual level is at most this share of its spells' peak, in its own units:
# an order of magnitude below the work it does when busy.
IDLE_SHARE_OF_SPELLS = 0.1


def idle_series(earlier: pl.DataFrame, config: AnomalyConfig) -> pl.DataFrame:
    """Per series of `earlier` (`earlier_hours`, or some of its series): `idle`, whether
    it does next to nothing at every time of day, and `peak`, its highest sample.

    A batch host, a disk written in sessions, a worker fed by a queue is off most of every
    hour and works in spells when work arrives, at no fixed hour. Off is the series' own
    floor, not zero in some unit: an idle CPU sits at its operating system's 0.1-3%, an
    idle disk or interface at its background of a few bytes or kilobytes a second. So
    idle is judged in the series' own terms, the same whatever unit it is counted in:

    - *at its floor at every time of day*: each 3-hour time of day's usual level (the
      median of its hourly medians, so at least half of that time of day's hours have at
      least half of their samples there or lower) lies within `level_shift_z` noise units
      of the series' floor, the median of its quietest hour. Usual means seen on
      `idle_tod_min_days` (2) baseline days or more: a series that idles works in spells
      that come when work arrives, at no fixed hour, so the busy hours of a time of day
      seen on one day only are a spell, not yet a rhythm (a rhythm shows on every day;
      level shifts learn for two days for the same reason). A time of day seen once is
      left out, and a series with none seen twice is not idle. The noise unit is the
      series' own sample-to-sample noise (its median step times `MAD_TO_SIGMA` over
      sqrt 2, and at least `SCALE_FLOOR_RELATIVE` of the level, as every spread), with
      no floor in fixed units (`SCALE_FLOOR`): such a floor is what made a rate counted in
      small units (tweets or requests a second) look idle although busy all day. A
      series with a daily rhythm has a time of day that is usually busy; a busy series'
      level stands clear of its floor by more than its noise.
    - *and working in spells far above it*: the usual level of every time of day is at
      most `IDLE_SHARE_OF_SPELLS` (a tenth) of the highest level its spells held for
      `outlier_sustained_points` samples, in the metric's own units (byte rates off their
      log scale). An idle host's floor and its work differ by orders of magnitude (0.1%
      against 60-100% of a CPU, bytes against megabytes a second); a steady service whose
      quietest and busiest hours stay within a few times of each other is not idle, nor
      is a series that was at its floor all week (nothing to compare a spell with).

    Only work done can idle: the CPU and byte rates. Memory and disk usage are
    capacities held and temperatures a physical state (`LEVEL`): they never are idle.
    """
    work = earlier.filter((pl.col("metric") == CPU) | (pl.col("kind") == RATE))
    per_tod = work.group_by([*SERIES, "tod"]).agg(
        pl.col("kind").first(),
        pl.col("q50").median().alias("_usual"),
        pl.col("step").median().alias("_step"),
        pl.col("date").n_unique().alias("_days"),
    )
    # A time of day seen on fewer than `idle_tod_min_days` baseline days has no usual
    # level yet: its usual level is left out (null), and a series none of whose times of
    # day has one is not idle.
    per_tod = per_tod.with_columns(
        pl.when(pl.col("_days") >= config.idle_tod_min_days).then(pl.col("_usual")).alias("_usual")
    )
    whole = work.group_by(SERIES).agg(
        pl.col("q50").min().alias("_floor"),
        pl.col("held_hi").max().alias("_spells"),
        pl.col("hi").max().alias("peak"),
    )
    usual, floor, spells = pl.col("_usual"), pl.col("_floor"), pl.col("_spells")
    noise = pl.max_horizontal(MAD_TO_SIGMA * pl.col("_step") / math.sqrt(2.0), SCALE_FLOOR_RELATIVE * usual.abs())
    is_rate = pl.col("kind") == RATE

    def own_units(x: pl.Expr) -> pl.Expr:
        return pl.when(is_rate).then(x.exp() - 1.0).otherwise(x)

    at_floor = usual - floor <= config.level_shift_z * noise
    in_spells = own_units(usual) <= IDLE_SHARE_OF_SPELLS * own_units(spells)
    return (
        per_tod.group_by(SERIES)
        .agg(pl.col("kind").first(), pl.col("_usual").max(), pl.col("_step").median())
        .join(whole, on=SERIES, how="left")
        .with_columns((at_floor & in_spells).fill_null(False).alias("idle"))
        .select(*SERIES, "idle", "peak")
    )


def moving_shares(base: Baselines, config: AnomalyConfig) -> pl.DataFrame:
    """Per series and hour of the day: the share of changing samples in the day before it."""
    window = f"{max(1, round(config.recent_hours))}h"
    roll = {
        name: pl.col(name).cast(pl.Float64).rolling_sum_by("hour_start", window, closed="left").over(SERIES)
        for name in ("changed", "n")
    }
    return (
        base.hours.with_columns((roll["changed"] / roll["n"]).alias("moving_before"), roll["n"].alias("n_before"))
        .filter(pl.col("date") == base.day)
        .select(*SERIES, "hour", "moving_before", "n_before")
    )


def trend_sums(base: Baselines, config: AnomalyConfig) -> pl.DataFrame:
    """Per series and hour of the day: least-squares sums of the whole hours before it in the trend window."""
    hours = max(1, math.ceil(config.forecast_window_hours) - 1)
    window = f"{hours}h"
    sums = {
        name: pl.col(name).rolling_sum_by("hour_start", window, closed="left").over(SERIES).alias(f"w_{name}")
        for name in ("st", "sy", "sty", "stt")
    }
    return (
        base.hours.filter(pl.col("metric").str.contains(r"^disk\[.*\]\.usagePercent$"))
        .with_columns(
            *sums.values(),
            pl.col("n").cast(pl.Float64).rolling_sum_by("hour_start", window, closed="left").over(SERIES).alias("w_n"),
            pl.col("first").rolling_min_by("hour_start", window, closed="left").over(SERIES).alias("w_first"),
        )
        .filter(pl.col("date") == base.day)
        .select(*SERIES, "hour", "w_st", "w_sy", "w_sty", "w_stt", "w_n", "w_first")
    )


def earlier_agents(base: Baselines) -> pl.DataFrame:
    """Per asset, its latest snapshot before the day (time, interval, uptime, usual spacing).

    Prepended to the day's agent rows, it lets a gap or a reboot across midnight, and an
    asset silent all day, be seen without reading the earlier day.
    """
    agents = base.agents
    if agents.is_empty():
        return pl.DataFrame(schema={"orgId": pl.String(), "assetId": pl.String(), "timestamp": TIME,
                                    "interval_s": pl.Float64(), "uptime": pl.Float64(), "usual_spacing_s": pl.Float64()})
    return (
        agents.sort("date")
        .group_by(ASSET)
        .agg(pl.all().last())
        .select(
            *ASSET,
            pl.col("last").alias("timestamp"),
            "interval_s",
            pl.col("up_last").alias("uptime"),
            pl.max_horizontal("interval_s", "spacing_p95").alias("usual_spacing_s"),
        )
    )


def usual_spacing(base: Baselines, config: AnomalyConfig) -> pl.DataFrame:
    """Per asset, its usual long pause: the longest of its daily 95th-percentile spacings
    over the `gap_pattern_days` before the day.

    An agent that reports like a clock has the same 95th percentile every day (its
    interval), whatever outages it had. One that reports irregularly pauses longer on some
    days than on others; judged by one day's pattern, every busier day before a quieter
    one makes that day's ordinary pauses look like outages.
    """
    since = base.day - timedelta(days=max(1, round(config.gap_pattern_days)))
    return (
        base.agents.filter(pl.col("date") >= since)
        .group_by(ASSET)
        .agg(pl.col("spacing_p95").max().alias("_p95"))
    )


def earlier_boots(base: Baselines) -> pl.DataFrame:
    """Reboots of the baseline days (each day's last, and those across midnight), per asset."""
    agents = base.agents.sort([*ASSET, "date"])
    if agents.is_empty():
        return pl.DataFrame(schema={"orgId": pl.String(), "assetId": pl.String(), "timestamp": TIME})
    across = agents.with_columns(
        pl.col("up_last").shift(1).over(ASSET).alias("_prev_up"),
        pl.col("date").shift(1).over(ASSET).alias("_prev_date"),
    ).filter(
        (pl.col("up_first") < pl.col("_prev_up")) & (pl.col("date") - pl.col("_prev_date") == timedelta(days=1))
    )
    within = agents.filter(pl.col("boot").is_not_null())
    return pl.concat([
        across.select(*ASSET, pl.col("first").alias("timestamp")),
        within.select(*ASSET, pl.col("boot").alias("timestamp")),
    ])
