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

from perf_analytics.anomalies.baselines import (
    Baselines,
    earlier_hours,
    idle_series,
    level_windows,
    moving_shares,
    trend_sums,
)
from perf_analytics.anomalies.config import AnomalyConfig
from perf_analytics.anomalies.joint import detect_joint
from perf_analytics.anomalies.series import (
    ASSET,
    CPU,
    MAD_TO_SIGMA,
    PERCENT,
    RATE,
    SERIES,
    step_noise,
)
from perf_analytics.anomalies.state import DISK_USAGE, trend_time

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

_PEER_SCALE_FLOOR = 0.1
_DISK_USAGE = DISK_USAGE


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


def _learned(config: AnomalyConfig, hours: float | None = None, at: str = "timestamp") -> pl.Expr:
    """The series has been watched for the learning period, or `hours` (baselines are meaningful).

    Reads `first_seen`, the series' first sample in the baseline days or the day itself.
    """
    return _seconds(pl.col(at) - pl.col("first_seen")) >= (config.learn_hours if hours is None else hours) * 3600.0


def _settling(df: pl.DataFrame, boots: pl.DataFrame | None, config: AnomalyConfig) -> pl.DataFrame:
    """Add `settling`: the asset rebooted less than `reboot_settle_hours` before the point.

    A reboot resets memory, caches and process counts: values lower than the baseline in
    the hours after one are the reboot's doing, not a new anomaly.
    """
    if "settling" in df.columns:
        return df
    if boots is None or boots.is_empty() or df.is_empty():
        return df.with_columns(pl.lit(False).alias("settling"))
    # A point is settling when some boot lies in the hours before it. Boots are few per
    # asset, so each asset's k-th boot is joined in turn (no sort of the points).
    settle = pl.duration(milliseconds=round(config.reboot_settle_hours * 3_600_000))
    ranked = boots.select(*ASSET, pl.col("timestamp").alias("_boot")).unique().sort([*ASSET, "_boot"]).with_columns(
        pl.int_range(pl.len()).over(ASSET).alias("_k")
    )
    settling = pl.lit(False)
    out = df
    most = ranked.height and int(ranked.get_column("_k").cast(pl.Int64).to_numpy().max()) + 1
    for k in range(most):
        name = f"_boot{k}"
        out = out.join(ranked.filter(pl.col("_k") == k).select(*ASSET, pl.col("_boot").alias(name)), on=ASSET,
                       how="left", maintain_order="left")
        t, b = pl.col("timestamp"), pl.col(name)
        settling = settling | ((t >= b) & (t < b + settle)).fill_null(False)
    names = [f"_boot{k}" for k in range(most)]
    return out.with_columns(settling.alias("settling")).drop(names)


# ---- sustained thresholds ---------------------------------------------------------------


def detect_thresholds(points: pl.DataFrame, config: AnomalyConfig, base: Baselines | None = None) -> pl.DataFrame:
    """CPU, memory or disk above its threshold for at least the sustain time.

    A run of consecutive samples above the threshold is flagged from the sample at which
    it has lasted the sustain time (one interval counts for the first sample), so the
    flag of a sample never waits for later samples. With `threshold_unusual_only` and
    `base`, a series whose usual level at that time of day is itself above the threshold
    counts only at its critical level (see `_usual_bar`).
    """
    metric = pl.col("metric")
    limits = (
        pl.when(metric == CPU)
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
    raised = pl.lit(False)
    if config.threshold_unusual_only and base is not None:
        df, raised = _usual_bar(df, base, config)
    # Where the usual level is above the threshold, the run is one at the critical level.
    above = pl.when(raised).then(pl.col("value") >= pl.col("c")).otherwise(pl.col("value") > pl.col("t"))
    broken = _seconds(pl.col("timestamp").diff()) > config.gap_intervals * pl.col("interval_s")
    df = df.with_columns(
        ((above != above.shift(1)) | broken.fill_null(True)).cum_sum().over(SERIES).alias("run"),
    ).with_columns(pl.col("timestamp").min().over([*SERIES, "run"]).alias("since"))
    held = _seconds(pl.col("timestamp") - pl.col("since")) + pl.col("interval_s")
    count = pl.col("timestamp").cum_count().over([*SERIES, "run"])
    sustained = (held >= pl.col("s") * 60.0 - 1e-9) & ((count >= config.sustain_min_points) | (pl.col("s") == 0))
    flagged = df.filter(above & sustained).with_columns(
        pl.when(raised).then(pl.col("c")).otherwise(pl.col("t")).alias("ref"),
        pl.col("value").alias("score"),
        pl.when(pl.col("value") >= pl.col("c")).then(CRITICAL).otherwise(WARNING).alias("severity"),
    )
    return _flags(flagged, THRESHOLD)


def _usual_bar(df: pl.DataFrame, base: Baselines, config: AnomalyConfig) -> tuple[pl.DataFrame, pl.Expr]:
    """Join each point's usual level and tell where the threshold is the series' usual state.

    The usual level is the time-of-day centre of the baseline days (`base.tod`), trusted
    from `baseline_min_points` on, so a new series is judged by the threshold alone. A
    server that runs above its threshold at that hour by design (a batch host, a packed
    cache) is not news when it does so again: only its critical level is, and where even
    that is its usual state, the outlier detector speaks for it. With
    `threshold_novel_only`, the highest level a CPU held in the baseline days (`_held`,
    the greatest of its hours' `held_hi`) counts as its usual state too: a box that
    saturates in bursts every few days (a batch job, a build agent) is doing its work when
    it saturates again. With `threshold_idle_spells`, a CPU idle at every time of day
    (`baselines.idle_series`: a worker that runs jobs when they arrive) counts the highest
    sample of its spells too: a CPU-bound job takes all the CPU it is given, so a spell that
    touched saturation once shows that saturating is how its jobs run; whether a spell is
    longer or busier than the week's is the level-shift and outlier rules' to say. Memory
    and disks are capacities: a leak or a full disk is news however often it has
    happened. Returns the frame with `_usual` and the expression
    `raised` (its null-free boolean); both come from earlier days only, so today's run
    cannot raise its own bar.
    """
    usual = base.tod.filter(pl.col("n_tod") >= config.baseline_min_points).select(
        *SERIES, pl.col("tod").cast(pl.Int8), pl.col("med_tod").alias("_usual")
    )
    df = df.with_columns((pl.col("timestamp").dt.hour() // config.time_of_day_hours).cast(pl.Int8).alias("tod")).join(
        usual, on=[*SERIES, "tod"], how="left", maintain_order="left"
    )
    held = pl.lit(None, dtype=pl.Float64)
    if config.threshold_novel_only:
        cpu_hours = earlier_hours(base).filter(pl.col("metric") == CPU)
        week = cpu_hours.group_by(SERIES).agg(pl.col("held_hi").max().alias("_held"))
        df = df.join(week, on=SERIES, how="left", maintain_order="left")
        held = pl.col("_held")
        if config.threshold_idle_spells:
            spells = idle_series(cpu_hours, config).filter(pl.col("idle"))
            df = df.join(spells.select(*SERIES, pl.col("peak").alias("_spell_peak")), on=SERIES, how="left",
                         maintain_order="left")
            held = pl.max_horizontal(held, pl.col("_spell_peak"))
    usual_level = pl.max_horizontal(pl.col("_usual"), held)
    raised = (usual_level > pl.col("t")).fill_null(False)
    # Usually at or beyond the critical level too: nothing above it is left to call news.
    df = df.with_columns(
        pl.when(usual_level >= pl.col("c")).then(pl.lit(math.inf)).otherwise(pl.col("c")).alias("c")
    )
    return df, raised


# ---- robust outliers against the asset's own baselines ---------------------------------


def score_points(
    prepared: pl.DataFrame, base: Baselines, config: AnomalyConfig, boots: pl.DataFrame | None = None
) -> pl.DataFrame:
    """The day's points (disk usage aside) with their baselines and robust z-scores.

    `prepared` is `state.prepare(points)`. Adds the time-of-day and last-24-hours
    baselines (`baselines.py`), the week's extremes and held departures, `ref_x` (the
    usual level at that time), `z` for the point and `z_up`/`z_down` for the level held
    by the last samples, and `settling` (after a reboot in `boots`); shared by the
    outlier and the joint detectors.
    """
    df = prepared.filter(~pl.col("metric").str.contains(_DISK_USAGE))
    if df.is_empty():
        return df
    tod_keys = [*SERIES, "tod"]
    df = (
        df.with_columns((pl.col("hour") // config.time_of_day_hours).alias("tod"))
        .join(base.tod, on=tod_keys, how="left")
        .join(base.recent, on=[*SERIES, "hour"], how="left")
        .join(base.week, on=SERIES, how="left")
        .with_columns(
            (pl.col("n_tod").fill_null(0) >= config.baseline_min_points).alias("enough_tod"),
            (pl.col("n_day").fill_null(0) >= config.baseline_min_points).alias("enough_day"),
        )
        .with_columns(_reference().alias("ref_x"))
        .with_columns(
            (pl.col("held_up") - pl.col("ref_x")).alias("res_up"),
            (pl.col("ref_x") - pl.col("held_down")).alias("res_down"),
        )
    )
    # What the day did before the point belongs to the baseline too: the first excursion
    # of the day beyond the week's range is new, the next ones at the same height are not.
    novel_by = [*SERIES, "tod"] if config.outlier_novel_time_of_day else SERIES

    def so_far(name: str, how: str, by: list[str]) -> pl.Expr:
        earlier = pl.col(name).shift(1)
        return (earlier.cum_max() if how == "max" else earlier.cum_min()).over(by)

    df = df.with_columns(
        pl.max_horizontal("max_week", so_far("x", "max", novel_by)).alias("max_week"),
        pl.min_horizontal("min_week", so_far("x", "min", novel_by)).alias("min_week"),
        pl.max_horizontal("max_res_up", so_far("res_up", "max", SERIES)).alias("max_res_up"),
        pl.max_horizontal("max_res_down", so_far("res_down", "max", SERIES)).alias("max_res_down"),
    )
    return _settling(df, boots, config).with_columns(
        _robust_z(pl.col("x")).alias("z"),
        _hour_z(pl.col("held_up")).alias("z_up"),
        _robust_z(pl.col("held_down")).alias("z_down"),
    )


def _robust_z(value: pl.Expr) -> pl.Expr:
    """The smaller of the value's robust z-scores against the time-of-day and last-day baselines.

    Same sign required: above one baseline and below the other is not unusual. Null while
    neither baseline has `baseline_min_points` (`enough_*` columns).
    """
    z_tod = (value - pl.col("med_tod")) / pl.col("sigma_tod")
    z_day = (value - pl.col("med_day")) / pl.col("sigma_day")
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
    z_tod = (value - pl.col("med_tod")) / pl.col("sigma_tod")
    z_day = (value - pl.col("med_day")) / pl.col("sigma_day")
    return pl.when(pl.col("enough_tod")).then(z_tod).when(pl.col("enough_day")).then(z_day).otherwise(None)


def _reference() -> pl.Expr:
    return pl.when(pl.col("enough_tod")).then(pl.col("med_tod")).otherwise(pl.col("med_day"))


def detect_outliers(scored: pl.DataFrame, config: AnomalyConfig, boots: pl.DataFrame | None = None) -> pl.DataFrame:
    """Points far from both the same time of day on previous days and the last day.

    The z-score is the smaller of the two robust z-scores (median and interquartile
    spread): a morning peak is normal against earlier mornings, a quiet weekend is normal
    against the hours just before, and only what is unusual against both is flagged. The
    point must also pass the highest (or lowest) value of the baseline days by a margin:
    what the asset already did this week is part of its life. Several samples in a row
    far out (`outlier_sustained_points` beyond `outlier_sustained_z`) are an outlier too
    when they depart from their hour's usual level further than any held departure of
    the baseline days. `scored` is `score_points(...)`.
    """
    df = scored
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
    held_novel_up = pl.col("res_up") > (1.0 + margin) * pl.col("max_res_up").fill_null(0.0)
    held_novel_down = pl.col("res_down") > (1.0 + margin) * pl.col("max_res_down").fill_null(0.0)
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
    scored: pl.DataFrame, base: Baselines, config: AnomalyConfig, boots: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Several metrics of one asset off together (see `joint.detect_joint`), as flags.

    Not in the day after a reboot, when every metric starts afresh at once.
    """
    if scored.is_empty():
        return empty_flags()
    df = _settling(scored, boots, config).filter(~pl.col("settling") & _learned(config))
    found = detect_joint(df, base.pairs, config)
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


def detect_level_shifts(base: Baselines, config: AnomalyConfig, boots: pl.DataFrame | None = None) -> pl.DataFrame:
    """The level held through the last hours (3) far from the median of the day before them.

    Evaluated at the end of each hour of the day from the hourly medians
    (`baselines.level_windows`): the level held is the least of the window's hourly
    medians for a move up (the greatest for one down), so every hour of the window must
    have moved. Hourly medians are robust to single spikes, and a service busy for an hour,
    idle for the next, is no new level; this fires on a lasting change of level (a service
    that now runs hotter, a memory footprint that jumped), two to three hours after it
    began. Far is measured in the series' sample-to-sample noise. The new level must also lie beyond every recent median seen at
    the same time of day over the baseline days, by as many noise units, so daily rhythms
    and on/off services that have been there before are not flagged.
    """
    df = level_windows(base, config).filter(~pl.col("metric").str.contains(_DISK_USAGE))
    if df.is_empty():
        return empty_flags()
    if config.level_idle_any_hour:
        df = df.join(idle_series(earlier_hours(base), config).select(*SERIES, "idle"), on=SERIES, how="left")
    recent_s = config.level_recent_minutes * 60.0
    # Spreads are the series' sample-to-sample noise (the median step, as a standard
    # deviation of one sample), not its spread over the day: counting the daily swing as
    # noise hid every shift smaller than that swing. The swing is judged by novelty instead:
    # the recent median must pass every recent median seen at this time of day in the
    # baseline days by `level_shift_z` noise units too, so a busy morning like the last
    # ones is no shift, while a service that now runs hotter than ever at this hour is.
    # The level held: the least hourly median of the recent window for a shift up, the
    # greatest for one down. A service that runs hotter is hotter every hour; one that
    # bursts (idle, then busy for an hour, then idle) moves its median from hour to hour,
    # which is no new level.
    up = pl.col("med_recent") > pl.col("med_base")
    change = (
        pl.when(up)
        .then((pl.col("lo_recent") - pl.col("med_base")).clip(lower_bound=0.0))
        .otherwise((pl.col("hi_recent") - pl.col("med_base")).clip(upper_bound=0.0))
    )
    noise = step_noise(pl.col("noise_base"), pl.col("med_base"))
    seen_max, seen_min = _seen_levels(config)
    beyond = pl.when(up).then(pl.col("lo_recent") - seen_max).otherwise(seen_min - pl.col("hi_recent"))
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
    df = _settling(df.with_columns(pl.col("last").alias("timestamp")), boots, config)
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
        # Evaluated once an hour: flags an hour apart belong to one episode.
        pl.max_horizontal("interval_s", pl.lit(3600.0)).alias("interval_s"),
    )
    return _flags(flagged, LEVEL_SHIFT)


def _seen_levels(config: AnomalyConfig) -> tuple[pl.Expr, pl.Expr]:
    """The highest and lowest levels of the baseline days a new level must pass.

    Those of the same time of day, so a daily rhythm's busy hours are no shift at that hour
    and a night that now runs like the day is. A series idle at every time of day
    (`baselines.idle_series`: a batch host, a disk written in sessions, a worker fed by a
    queue) works when work arrives, at no fixed hour: with `level_idle_any_hour` its busy
    spells (its hourly medians rise once it is busy for more than half of an hour) are
    judged against the spells of every hour of the week. A spell like Tuesday night's is
    no new level on Thursday afternoon; one busier than any spell of the week still is.
    """
    if not config.level_idle_any_hour:
        return pl.col("seen_max"), pl.col("seen_min")
    # Every hour's levels include that time of day's, so this only ever raises the bar (and
    # a time of day never seen before stays unjudged, as without the rule).
    idles = pl.col("idle").fill_null(False) & pl.col("seen_max").is_not_null()
    return (
        pl.when(idles).then(pl.col("seen_any_max")).otherwise(pl.col("seen_max")),
        pl.when(idles).then(pl.col("seen_any_min")).otherwise(pl.col("seen_min")),
    )


# ---- flatlines ------------------------------------------------------------------------


def detect_flatlines(prepared: pl.DataFrame, base: Baselines, config: AnomalyConfig) -> pl.DataFrame:
    """A metric that normally moves repeats exactly the same value for a long time.

    "Normally moves" means it changed on at least `flatline_moving_share` of its samples
    over the day before the run began (`baselines.moving_shares`); an idle byte rate stuck
    at zero is quiet, not stuck. Runs are counted from the day's first sample.
    """
    df = prepared.filter(~pl.col("metric").str.contains(_DISK_USAGE))
    if df.is_empty():
        return empty_flags()
    # The points are sorted by series and time and a series' first point counts as
    # changed, so a run starts at the last changed row: no group per run is needed.
    row = pl.int_range(pl.len())
    stuck_s = _seconds(pl.col("timestamp") - pl.col("since"))
    df = df.with_columns(
        pl.when("changed").then(pl.col("timestamp")).forward_fill().alias("since"),
        (row - pl.when("changed").then(row).forward_fill() + 1).alias("n_run"),
    ).filter((stuck_s >= config.flatline_minutes * 60.0) & (pl.col("n_run") >= config.flatline_min_points))
    df = df.with_columns(pl.col("since").dt.hour().cast(pl.Int8).alias("_run_hour"))
    shares = moving_shares(base, config).rename({"hour": "_run_hour"})
    df = df.join(shares, on=[*SERIES, "_run_hour"], how="left").join(
        base.week.select(*SERIES, "first_seen").unique(SERIES), on=SERIES, how="left"
    )
    flagged = df.filter(
        _learned(config)
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


def detect_disk_forecasts(points: pl.DataFrame, base: Baselines, config: AnomalyConfig) -> pl.DataFrame:
    """A disk whose recent trend (least squares over the last hours) fills it within days.

    The window is the point's hour so far and the whole hours before it up to
    `forecast_window_hours` (their sums come from the hour summaries, so the previous
    day's points are not read again).
    """
    df = points.filter(pl.col("metric").str.contains(_DISK_USAGE))
    if df.is_empty():
        return empty_flags()
    hour = [*SERIES, "_hour"]
    t, y = pl.col("t"), pl.col("value")
    df = (
        df.with_columns(trend_time().alias("t"), pl.col("timestamp").dt.hour().cast(pl.Int8).alias("_hour"))
        .join(trend_sums(base, config).rename({"hour": "_hour"}), on=hour, how="left")
        .with_columns(
            (t.cum_sum().over(hour) + pl.col("w_st").fill_null(0.0)).alias("st"),
            (y.cum_sum().over(hour) + pl.col("w_sy").fill_null(0.0)).alias("sy"),
            ((t * y).cum_sum().over(hour) + pl.col("w_sty").fill_null(0.0)).alias("sty"),
            ((t * t).cum_sum().over(hour) + pl.col("w_stt").fill_null(0.0)).alias("stt"),
            (pl.col("timestamp").cum_count().over(hour).cast(pl.Float64) + pl.col("w_n").fill_null(0.0)).alias("n"),
            pl.coalesce(pl.col("w_first"), pl.col("timestamp").min().over(hour)).alias("first"),
        )
    )
    n = pl.col("n")
    var_t = pl.col("stt") / n - (pl.col("st") / n) ** 2
    slope = (pl.col("sty") / n - pl.col("st") / n * pl.col("sy") / n) / var_t  # percent per day
    span_ok = _seconds(pl.col("timestamp") - pl.col("first")) >= 0.5 * config.forecast_window_hours * 3600
    df = df.with_columns(slope.alias("slope"), var_t.alias("var_t")).with_columns(
        ((100.0 - y) / pl.col("slope")).alias("days")
    )
    flagged = df.filter(
        (n >= config.forecast_min_points)
        & span_ok
        & (pl.col("var_t") > 0)
        & (pl.col("slope") > 0)
        & (pl.col("days") < config.forecast_days)
    ).with_columns(
        pl.col("days").alias("ref"),
        (config.forecast_days / pl.col("days").clip(lower_bound=1e-3)).alias("score"),
        pl.when(pl.col("days") < 1.0).then(CRITICAL).otherwise(WARNING).alias("severity"),
    )
    return _flags(flagged, DISK_FORECAST)

# ---- peers ----------------------------------------------------------------------------


PEER_METRICS = (CPU, "memory.usagePercent")


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
    z = diff / pl.max_horizontal(MAD_TO_SIGMA * pl.col("mad"), pl.lit(_PEER_SCALE_FLOOR * 4))
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
