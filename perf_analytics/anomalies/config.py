"""Every threshold of the anomaly detectors, in one frozen dataclass.

One configuration serves every asset and every kind of series: the values below were
chosen for server metrics (percentages, byte rates, temperatures sampled every 1 to 15
minutes), not for any one data set. Change one with `dataclasses.replace(config, ...)`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from perf_analytics.errors import ConfigError


@dataclass(frozen=True)
class AnomalyConfig:
    """Thresholds, windows and tolerances of the detectors (minutes unless named otherwise)."""

    # Sustained thresholds: above `*_threshold` for at least the sustain time is a warning,
    # a peak above `*_critical` makes it critical.
    cpu_threshold: float = 90.0
    cpu_critical: float = 98.0
    memory_threshold: float = 90.0
    memory_critical: float = 95.0
    disk_threshold: float = 90.0
    disk_critical: float = 95.0
    sustain_minutes: float = 5.0
    disk_sustain_minutes: float = 0.0
    sustain_min_points: int = 3  # at coarse sampling two readings are too few to call sustained
    # A series whose usual level at that time of day (baseline days, `baseline_min_points`)
    # is above its threshold runs hot by design: only its critical level is flagged.
    threshold_unusual_only: bool = True
    # A CPU that already held above its threshold in the baseline days (for
    # `outlier_sustained_points` samples) saturates in its routine: only its critical level,
    # or nothing where it held that too, is news (needs `threshold_unusual_only`). CPU is
    # work being done; memory and disk are capacities, and running out again is news.
    threshold_novel_only: bool = True
    # A CPU idle at every time of day (as for `level_idle_any_hour`) whose spells reached
    # its threshold in the baseline days, if only for a sample, runs CPU-bound jobs: the
    # job takes all the CPU it is given, so its spells saturate by design (with
    # `threshold_novel_only`, the spells' peak counts as its usual state).
    threshold_idle_spells: bool = True

    # Learning period: baselines of a series younger than this are not trusted yet
    # (outliers, level shifts and flatlines wait for it).
    learn_hours: float = 24.0

    # Robust outliers against the asset's own trailing baseline at the same time of day.
    outlier_z: float = 6.0
    outlier_critical_z: float = 12.0
    baseline_days: float = 7.0
    time_of_day_hours: int = 3  # width of the time-of-day bucket the baseline is drawn from
    baseline_min_points: int = 24
    recent_hours: float = 24.0  # the recent baseline, used with the time-of-day one
    outlier_novel_only: bool = True  # and beyond the range of the baseline days...
    outlier_novel_margin: float = 0.1  # ...by this share of that range's distance from the median
    outlier_novel_time_of_day: bool = False  # the range of the same time of day only
    # Held excursions: this many samples in a row all this far out, and further from their
    # hour's usual level than any held departure of the baseline days (by the same
    # margin), are an outlier too.
    outlier_sustained_points: int = 3
    outlier_sustained_z: float = 4.0

    # Joint moves: the robust Mahalanobis distance of an asset's vector of z-scores from its
    # baseline days beyond the chi-square quantile with the tail of a `joint_z`-sigma event,
    # for `joint_points` samples in a row, with at least two metrics `joint_metric_z` out.
    joint_z: float = 4.0
    joint_metric_z: float = 2.0
    joint_points: int = 3

    # After a reboot, values below the baseline (memory, processes, caches start afresh) are
    # not flagged for this long.
    reboot_settle_hours: float = 24.0

    # Level shifts: the level held through the last `level_recent_minutes` (every hourly
    # median of them beyond it) against the median of the `level_baseline_hours` before
    # them, in units of the series' sample-to-sample noise. Each hourly median sits far
    # closer to the level than one sample does, so three of them all this far out are
    # rarer under noise than three samples beyond `outlier_sustained_z`.
    level_shift_z: float = 4.0
    level_recent_minutes: float = 180.0
    level_baseline_hours: float = 24.0
    level_min_change: float = 0.25  # and at least this share of the baseline's level...
    level_min_percent_points: float = 8.0  # ...or this many points on a percent metric
    # A new level is one no earlier day reached at that hour: with a single earlier day to
    # go by, any day that differs from it looks new, so level shifts learn for two days.
    level_learn_hours: float = 48.0
    level_novel_time_of_day: bool = True  # beyond the levels of that time of day (else of any hour)
    # A series idle at every time of day (a CPU or byte rate whose every time of day is
    # usually at its own floor, within `level_shift_z` units of its own noise, and a tenth
    # or less of its spells' peak: `baselines.idle_series`) works in spells that come when
    # work arrives, not by the clock: with this on, its new level must pass the levels of
    # every hour of the baseline days.
    # Off by default: on NAB's series it costs a labelled spell (a disk's held-out window,
    # one its CPU also shows, unlabelled) and NAB's own score (36.71 -> 36.11 standard;
    # bench/README.md).
    level_idle_any_hour: bool = False
    # Whether a series idles at a time of day (`baselines.idle_series`, read by
    # `threshold_idle_spells` and `level_idle_any_hour`) is judged from the times of day
    # the baseline days saw on at least this many days. An idle series works in spells
    # that come when work arrives, at no fixed hour: a time of day busy on the one day it
    # was seen is a spell, not yet a rhythm (a rhythm shows on every day; level shifts
    # learn for two days for the same reason). 1 judges every time of day seen.
    idle_tod_min_days: int = 2

    # Flatlines: a metric that moves on at least `flatline_moving_share` of its samples
    # (over the previous day) repeats the same value for `flatline_minutes` or longer.
    flatline_minutes: float = 60.0
    flatline_min_points: int = 4
    flatline_moving_share: float = 0.8

    # Gaps and offline agents: no snapshot for more than `gap_intervals` reporting intervals,
    # or of the agent's usual long pause: the longest of its daily 95th-percentile spacings
    # over the `gap_pattern_days` before the day (an irregular reporter pauses longer on
    # some days than on others; a clock-like one has its interval every day).
    gap_intervals: float = 3.0
    gap_pattern_days: float = 7.0

    # Disk-full forecast: the trend of the last `forecast_window_hours` reaches 100% in
    # fewer than `forecast_days` days.
    forecast_days: float = 7.0
    forecast_window_hours: float = 6.0
    forecast_min_points: int = 6

    # Peers: an asset this many robust spreads away from its org's median at the same
    # time, by at least `peer_min_percent_points`, with at least `peer_min_assets` reporting.
    peer_z: float = 6.0
    peer_min_assets: int = 5
    peer_bucket_minutes: int = 15
    peer_min_percent_points: float = 40.0

    # Episodes: flagged points of the same asset, metric and detector at most this far
    # apart (or two reporting intervals, whichever is longer) are one episode.
    merge_gap_minutes: float = 60.0

    # Trailing data a day's flags need (the longest window above): `flag_anomalies` with
    # `day` uses no data older than this before the day.
    history_days: float = 8.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) and f.type in ("bool", bool):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0:
                raise ConfigError(f"anomaly setting {f.name} must be a number >= 0, got {value!r}")
        if self.time_of_day_hours < 1 or 24 % self.time_of_day_hours:
            raise ConfigError(f"time_of_day_hours must divide 24, got {self.time_of_day_hours}")
        if self.history_days * 24 < max(self.baseline_days * 24, self.level_baseline_hours, self.recent_hours):
            raise ConfigError("history_days must cover the longest baseline window")
        if self.gap_pattern_days > self.baseline_days:
            raise ConfigError("gap_pattern_days must not exceed baseline_days (the days whose state is read)")
        if self.outlier_sustained_points < 2:
            raise ConfigError(f"outlier_sustained_points must be at least 2, got {self.outlier_sustained_points}")
        if self.joint_points < 1:
            raise ConfigError(f"joint_points must be at least 1, got {self.joint_points}")
        if self.peer_min_assets < 2:
            raise ConfigError(f"peer_min_assets must be at least 2, got {self.peer_min_assets}")
