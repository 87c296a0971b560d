"""Anomaly flags: each detector fires where it must and stays quiet where it must not."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import pytest

from perf_analytics.anomalies import (
    DROPPED_COLUMNS,
    EPISODE_COLUMNS,
    AnomalyConfig,
    FlagOptions,
    flag_anomalies,
    flag_assets,
)
from perf_analytics.anomalies.detectors import FLAG_SCHEMA
from perf_analytics.anomalies.episodes import merge_episodes
from perf_analytics.errors import AnomalyInputError, ConfigError
from perf_analytics.frames import Frames, frames_from_documents

T0 = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday
DAY2 = date(2026, 3, 3)
Edit = Callable[[np.ndarray, dict[str, np.ndarray]], None]


def asset_docs(
    *,
    days: float = 2.0,
    interval: int = 300,
    org: str = "org-a",
    asset: str = "asset-1",
    seed: int = 0,
    edit: Edit | None = None,
    disks: tuple[str, ...] = ("C:",),
) -> list[dict[str, Any]]:
    """Snapshots of one ordinary asset: a daily CPU cycle and noise on every metric.

    `edit(t, cols)` changes the arrays in place (t: seconds since T0); `cols["keep"]`
    set to False drops a snapshot.
    """
    n = round(days * 86400 / interval)
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64) * interval
    cols = {
        "cpu": 30 + 10 * np.sin(2 * np.pi * t / 86400) + rng.normal(0, 2, n),
        "memory": 50 + rng.normal(0, 1, n),
        "disk": 40 + t / 86400 * 0.1 + rng.normal(0, 0.01, n),
        "recv": 1e5 * np.exp(rng.normal(0, 0.3, n)),
        "temp": 50 + rng.normal(0, 1, n),
        "uptime": 1e6 + t,
        "keep": np.ones(n, dtype=bool),
    }
    if edit is not None:
        edit(t, cols)
    window = {60: "1min", 300: "5min"}.get(interval, "5min")
    docs = []
    for i in np.flatnonzero(cols["keep"]):
        docs.append(
            {
                "orgId": org,
                "agentId": f"agent-{asset}",
                "assetId": asset,
                "timestamp": T0 + timedelta(seconds=float(t[i])),
                "timeWindow": window,
                "performanceData": {
                    "cpu": {"usage": float(cols["cpu"][i]), "temperature": float(cols["temp"][i])},
                    "memory": {
                        "usagePercent": float(cols["memory"][i]),
                        "usedBytes": 4e9,
                        "totalBytes": 8e9,
                        "availableBytes": 4e9,
                    },
                    "disk": [
                        {
                            "name": name,
                            "usagePercent": float(cols["disk"][i]),
                            "totalBytes": 1e11,
                            "usedBytes": 4e10,
                            "freeBytes": 6e10,
                        }
                        for name in disks
                    ],
                    "network": {
                        "totalUsage": float(cols["recv"][i]),
                        "interfaces": [
                            {
                                "name": "eth0",
                                "bytesRecvPerSec": float(cols["recv"][i]),
                                "bytesSentPerSec": 100.0,
                                "packetsRecvPerSec": 1.0,
                                "packetsSentPerSec": 1.0,
                            }
                        ],
                    },
                    "system": {"uptime": float(cols["uptime"][i]), "processCount": 100, "threadCount": 1000},
                },
            }
        )
    return docs


def frames_of(*docs_lists: list[dict[str, Any]]) -> Frames:
    return frames_from_documents([d for docs in docs_lists for d in docs])


def at(hours: float) -> float:
    """Seconds since T0 of an hour of the second day."""
    return 86400 + hours * 3600


def only(flags: pl.DataFrame, detector: str, metric: str | None = None) -> pl.DataFrame:
    out = flags.filter(pl.col("detector") == detector)
    return out if metric is None else out.filter(pl.col("metric") == metric)


# ---- the ordinary asset ---------------------------------------------------------------


def test_an_ordinary_asset_raises_no_flags() -> None:
    flags = flag_anomalies(frames_of(asset_docs()))
    assert flags.columns == list(EPISODE_COLUMNS)
    assert flags.is_empty(), flags.select("detector", "metric", "message").to_dicts()


# ---- thresholds -----------------------------------------------------------------------


def test_cpu_above_90_for_half_an_hour_is_one_critical_episode_with_duration_and_peak() -> None:
    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        span = (t >= at(10)) & (t < at(10.5))
        c["cpu"][span] = 95.0
        c["cpu"][np.flatnonzero(span)[2]] = 99.2

    flags = only(flag_anomalies(frames_of(asset_docs(edit=edit))), "threshold")
    assert flags.height == 1
    row = flags.row(0, named=True)
    assert row["metric"] == "cpu.usage"
    assert row["severity"] == "critical"
    assert row["start"] == T0 + timedelta(seconds=at(10) + 600)  # the third sample makes it sustained
    assert row["message"] == "CPU above 90% for 30 minutes (peak 99.2%)."


def test_cpu_above_90_for_less_than_five_minutes_is_not_flagged() -> None:
    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        c["cpu"][(t >= at(10)) & (t < at(10) + 180)] = 97.0

    flags = flag_anomalies(frames_of(asset_docs(interval=60, edit=edit)))
    assert only(flags, "threshold").is_empty()


def test_thresholds_are_configurable() -> None:
    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        c["memory"][(t >= at(10)) & (t < at(11))] = 85.0

    frames = frames_of(asset_docs(edit=edit))
    assert only(flag_anomalies(frames), "threshold").is_empty()
    lowered = flag_anomalies(frames, options=FlagOptions(config=AnomalyConfig(memory_threshold=80.0)))
    assert only(lowered, "threshold", "memory.usagePercent").height == 1


def hot_by_design(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
    """CPU at 92-95% all day, with dips to about 70% for 75 minutes three times a day."""
    rng = np.random.default_rng(5)
    c["cpu"][:] = 93.5 + 1.5 * np.sin(2 * np.pi * t / 86400) + rng.normal(0, 0.3, t.size)
    for hour in (2.0, 10.0, 18.0):
        c["cpu"][((t / 3600) % 24 >= hour) & ((t / 3600) % 24 < hour + 1.25)] = 70.0


DAY3 = DAY2 + timedelta(days=1)


def test_an_asset_that_runs_above_90_every_day_raises_no_threshold_flags() -> None:
    frames = frames_of(asset_docs(days=3, edit=hot_by_design))
    flags = flag_anomalies(frames, options=FlagOptions(day=DAY3))
    assert only(flags, "threshold").is_empty(), only(flags, "threshold").select("start", "message").to_dicts()
    # Without its usual level to go by, every return above 90% after a dip is an episode.
    plain = flag_anomalies(frames, options=FlagOptions(day=DAY3, config=AnomalyConfig(threshold_unusual_only=False)))
    assert only(plain, "threshold", "cpu.usage").height >= 3


def test_an_asset_usually_at_40_that_holds_95_is_flagged_once_its_baseline_has_formed() -> None:
    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        c["cpu"][:] = 40 + 2 * np.sin(2 * np.pi * t / 86400)
        c["cpu"][(t >= at(24 + 13)) & (t < at(24 + 14))] = 95.0

    flags = only(flag_anomalies(frames_of(asset_docs(days=3, edit=edit)), options=FlagOptions(day=DAY3)), "threshold")
    assert flags.height == 1
    assert (flags.item(0, "metric"), flags.item(0, "severity")) == ("cpu.usage", "warning")


def nightly_batch(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
    """CPU about 30% (the ordinary cycle), with a batch job at 95% from 02:00 for 30 minutes every night."""
    c["cpu"][((t / 3600) % 24 >= 2.0) & ((t / 3600) % 24 < 2.5)] = 95.0


def test_a_saturation_the_asset_already_held_that_week_is_no_threshold_flag() -> None:
    frames = frames_of(asset_docs(days=3, edit=nightly_batch))
    flags = only(flag_anomalies(frames, options=FlagOptions(day=DAY3)), "threshold")
    assert flags.is_empty(), flags.select("start", "message").to_dicts()
    # Its usual level at 02:00 (the median of the hours 00-03) is the cycle's, far below 90%:
    # judged by that alone, the nightly job is an episode every night.
    plain = flag_anomalies(frames, options=FlagOptions(day=DAY3, config=AnomalyConfig(threshold_novel_only=False)))
    assert only(plain, "threshold", "cpu.usage").height == 1


@pytest.mark.parametrize("routine", [hot_by_design, nightly_batch], ids=["above-90-every-day", "nightly-saturation"])
def test_an_asset_hot_by_routine_is_still_flagged_at_its_critical_level(routine: Edit) -> None:
    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        routine(t, c)
        c["cpu"][(t >= at(24 + 13)) & (t < at(24 + 13.5))] = 99.5

    flags = only(flag_anomalies(frames_of(asset_docs(days=3, edit=edit)), options=FlagOptions(day=DAY3)), "threshold")
    assert flags.height == 1
    row = flags.row(0, named=True)
    assert (row["metric"], row["severity"]) == ("cpu.usage", "critical")
    assert T0 + timedelta(seconds=at(24 + 13)) <= row["start"] < T0 + timedelta(seconds=at(24 + 13.5))


def idle_with_spells(*spells: tuple[float, float, float]) -> Edit:
    """A CPU idle at 0.1% that works in spells: (from hour, to hour, level) since T0."""

    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        rng = np.random.default_rng(5)
        c["cpu"] = 0.1 + rng.uniform(0.0, 0.02, t.size)
        for lo, hi, level in spells:
            spell = (t >= lo * 3600) & (t < hi * 3600)
            c["cpu"][spell] = level + rng.normal(0.0, 5.0, int(spell.sum()))

    return edit


def test_an_idle_host_whose_spells_peaked_at_saturation_is_not_flagged_when_one_holds_it() -> None:
    """A worker idle at 0.1% whose job spells touched 95% for a sample on the second day:
    on the fourth a spell holds 95% for half an hour. The job takes all the CPU it gets;
    that is its work, not a shortage. A CPU with a daily rhythm that touched 95% once is
    still flagged when it holds it (only a saturation it held counts as its routine)."""

    def idle(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        idle_with_spells((24 + 1, 24 + 3, 40.0), (72 + 13, 72 + 15, 40.0))(t, c)
        c["cpu"][(t >= (24 + 2) * 3600) & (t < (24 + 2) * 3600 + 300)] = 95.0
        c["cpu"][(t >= (72 + 14) * 3600) & (t < (72 + 14.5) * 3600)] = 95.0

    def rhythm(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        c["cpu"][(t >= (24 + 2) * 3600) & (t < (24 + 2) * 3600 + 300)] = 95.0
        c["cpu"][(t >= (72 + 14) * 3600) & (t < (72 + 14.5) * 3600)] = 95.0

    day4 = DAY2 + timedelta(days=2)
    frames = frames_of(asset_docs(days=4, edit=idle))
    flags = flag_anomalies(frames, options=FlagOptions(day=day4))
    assert only(flags, "threshold").is_empty(), only(flags, "threshold").get_column("message").to_list()
    plain = FlagOptions(day=day4, config=AnomalyConfig(threshold_idle_spells=False))
    assert only(flag_anomalies(frames, options=plain), "threshold", "cpu.usage").height == 1
    busy = only(flag_anomalies(frames_of(asset_docs(days=4, edit=rhythm)), options=FlagOptions(day=day4)), "threshold")
    assert busy.get_column("metric").to_list() == ["cpu.usage"]


def test_a_time_of_day_busy_on_the_one_day_it_was_seen_does_not_make_an_idle_host_busy() -> None:
    """A worker idle at 0.1% whose recording begins at noon: on its first whole day a job
    spell fills the morning (06:00-09:00, about 60%, touching 99% once), the only morning
    seen so far; on the third day a spell holds 95% for half an hour. One morning's spell
    is no rhythm: the host is idle at every time of day seen twice, and its spells
    saturate by design. With every time of day seen judged (`idle_tod_min_days=1`) the
    morning counts as usually busy and the saturation is flagged, as it is when the
    morning was busy on both days (a daily rhythm)."""

    def spells(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        idle_with_spells((20, 21, 40.0), (24 + 6, 24 + 9, 60.0))(t, c)
        c["cpu"][(t >= (24 + 7) * 3600) & (t < (24 + 7) * 3600 + 300)] = 99.0
        c["cpu"][(t >= (48 + 14) * 3600) & (t < (48 + 14.5) * 3600)] = 95.0

    def from_noon(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        spells(t, c)
        c["keep"] = t >= 12 * 3600

    def every_morning(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        spells(t, c)
        c["cpu"][(t >= 6 * 3600) & (t < 9 * 3600)] = 60.0 + np.random.default_rng(7).normal(0.0, 5.0, 36)

    day3 = DAY2 + timedelta(days=1)
    frames = frames_of(asset_docs(days=3, edit=from_noon))
    assert only(flag_anomalies(frames, options=FlagOptions(day=day3)), "threshold").is_empty()
    seen_once = FlagOptions(day=day3, config=AnomalyConfig(idle_tod_min_days=1))
    assert only(flag_anomalies(frames, options=seen_once), "threshold", "cpu.usage").height == 1
    rhythm = flag_anomalies(frames_of(asset_docs(days=3, edit=every_morning)), options=FlagOptions(day=day3))
    assert only(rhythm, "threshold", "cpu.usage").height == 1


def test_memory_that_runs_out_again_is_flagged_again() -> None:
    """Memory is a capacity: a second exhaustion is news, however routine CPU bursts are."""

    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        c["memory"][((t / 3600) % 24 >= 2.0) & ((t / 3600) % 24 < 2.5)] = 93.0

    flags = only(flag_anomalies(frames_of(asset_docs(days=3, edit=edit)), options=FlagOptions(day=DAY3)), "threshold")
    assert flags.get_column("metric").to_list() == ["memory.usagePercent"]


# ---- outliers, level shifts, flatlines --------------------------------------------------


def test_a_network_burst_is_an_outlier_of_its_interface() -> None:
    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        c["recv"][(t >= at(14)) & (t < at(14.25))] = 5e6

    flags = only(flag_anomalies(frames_of(asset_docs(edit=edit))), "outlier")
    assert flags.get_column("metric").to_list() == ["network.interfaces[eth0].bytesRecvPerSec"]
    assert flags.item(0, "start") == T0 + timedelta(seconds=at(14))
    assert "Interface eth0 received bytes/s reached 5000000" in flags.item(0, "message")


def busy_days_with_spikes(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
    """Received bytes follow the working day, with a one-sample spike of 3-10x now and then."""
    hour = np.mod(t / 3600.0, 24.0)
    busy = (hour >= 8) & (hour < 18)
    c["recv"] *= np.where(busy, 1.0, 0.1)
    spikes = np.random.default_rng(5).random(t.size) < 0.02
    c["recv"][spikes] *= np.random.default_rng(6).uniform(3.0, 10.0, spikes.sum())


def test_a_night_transfer_below_the_daytime_spikes_is_an_outlier_because_it_holds() -> None:
    """Twenty minutes at 30x the night's level: less than a busy hour's spikes, but it holds."""

    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        busy_days_with_spikes(t, c)
        c["recv"][(t >= at(24 + 3)) & (t < at(24 + 3) + 1200)] *= 30.0

    day3 = DAY2 + timedelta(days=1)
    flags = only(flag_anomalies(frames_of(asset_docs(days=3, edit=edit)), options=FlagOptions(day=day3)), "outlier")
    assert flags.get_column("metric").to_list() == ["network.interfaces[eth0].bytesRecvPerSec"]
    assert T0 + timedelta(seconds=at(24 + 3)) <= flags.item(0, "start") <= T0 + timedelta(seconds=at(24 + 3) + 1200)
    assert flags.item(0, "score") >= 4.0
    assert "robust z-score" in flags.item(0, "message")
    quiet = flag_anomalies(frames_of(asset_docs(days=3, edit=busy_days_with_spikes)), options=FlagOptions(day=day3))
    assert only(quiet, "outlier").is_empty()


def test_held_a_little_off_the_one_day_before_is_no_outlier_but_far_off_is() -> None:
    """With a single earlier day, the centre of its time of day is uncertain too.

    Memory (one point of noise) held 5 points up for 20 minutes on the second day is 5
    spreads from the first day's level, but within the spread of a new day around a
    centre drawn from one day (sqrt 2 wider); 9 points up is an outlier still.
    """

    def held(points: float) -> Edit:
        def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
            c["memory"][(t >= at(14)) & (t < at(14) + 1200)] = 50.0 + points

        return edit

    assert only(flag_anomalies(frames_of(asset_docs(edit=held(5.0)))), "outlier").is_empty()
    far = only(flag_anomalies(frames_of(asset_docs(edit=held(9.0)))), "outlier")
    assert far.get_column("metric").to_list() == ["memory.usagePercent"]


def test_a_value_the_asset_reached_before_is_not_an_outlier() -> None:
    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        c["recv"][(t >= 3 * 3600) & (t < 3 * 3600 + 900)] = 5e6  # day one: part of its history
        c["recv"][(t >= at(14)) & (t < at(14.25))] = 4e6

    flags = flag_anomalies(frames_of(asset_docs(edit=edit)))
    assert only(flags, "outlier").is_empty()


def test_a_lasting_memory_jump_is_a_level_shift() -> None:
    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        c["memory"][t >= at(24 + 12)] += 25.0

    flags = only(flag_anomalies(frames_of(asset_docs(days=3, edit=edit))), "level_shift", "memory.usagePercent")
    assert flags.height == 1
    start = flags.item(0, "start")
    # Flagged once every hour of the recent window (three) has held the new level.
    assert T0 + timedelta(seconds=at(24 + 12)) < start <= T0 + timedelta(seconds=at(24 + 15))
    assert re.match(r"Memory moved from about (49|50)\S*% to about 7[45]\S*% and stayed there", flags.item(0, "message"))


def test_a_cpu_shift_smaller_than_the_daily_swing_is_a_level_shift() -> None:
    """CPU swings 20 points a day with 2 points of noise; on the third day it runs 15 hotter.

    Against the spread of the whole previous day (the swing) 15 points are nothing; against
    the sample-to-sample noise, and beyond anything that hour did before, they are a shift.
    """

    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        c["cpu"][(t >= at(24 + 6)) & (t < at(24 + 14))] += 15.0

    day3 = DAY2 + timedelta(days=1)
    flags = only(flag_anomalies(frames_of(asset_docs(days=3, edit=edit)), options=FlagOptions(day=day3)), "level_shift", "cpu.usage")
    assert flags.height == 1
    # At the peak of its day (6:00) the shift must first pass the peaks of earlier days.
    assert T0 + timedelta(seconds=at(24 + 6)) < flags.item(0, "start") <= T0 + timedelta(seconds=at(24 + 9))
    assert only(flag_anomalies(frames_of(asset_docs(days=3)), options=FlagOptions(day=day3)), "level_shift").is_empty()


def test_memory_held_five_noise_units_higher_for_hours_is_a_level_shift() -> None:
    """Memory with two points of sample noise runs 12 points higher from noon on the third
    day: every hourly median of the window moved about 5 noise units (and beyond the
    levels of earlier days by more than 4), which noise alone does not do; the same asset
    without the move raises no level shift."""

    def noisy(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        c["memory"] = 50.0 + np.random.default_rng(3).normal(0.0, 2.0, t.size)

    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        noisy(t, c)
        c["memory"][t >= at(24 + 12)] += 12.0

    day3 = DAY2 + timedelta(days=1)
    flags = only(flag_anomalies(frames_of(asset_docs(days=3, edit=edit)), options=FlagOptions(day=day3)), "level_shift")
    assert flags.get_column("metric").to_list() == ["memory.usagePercent"]
    assert T0 + timedelta(seconds=at(24 + 12)) < flags.item(0, "start") <= T0 + timedelta(seconds=at(24 + 15))
    quiet = flag_anomalies(frames_of(asset_docs(days=3, edit=noisy)), options=FlagOptions(day=day3))
    assert only(quiet, "level_shift").is_empty()


def test_a_service_that_bursts_for_hours_at_a_time_is_no_level_shift() -> None:
    """Busy for two hours, idle for one, busy again: the median of three hours jumps with
    every busy pair, but no level was held through the window, so nothing shifted."""

    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        hour = (t - at(24)) // 3600
        busy = (hour >= 8) & (hour < 20) & (np.mod(hour - 8, 3) != 2)
        c["cpu"][busy] += 45.0

    day3 = DAY2 + timedelta(days=1)
    flags = flag_anomalies(frames_of(asset_docs(days=3, edit=edit)), options=FlagOptions(day=day3))
    assert only(flags, "level_shift").is_empty(), only(flags, "level_shift").get_column("message").to_list()


def test_with_level_idle_any_hour_an_idle_host_busy_at_a_new_hour_like_earlier_is_no_level_shift() -> None:
    """A host idle at 0.1% ran a four-hour job at 60% one night; three days later a job
    at 55% runs in the afternoon. The afternoon never saw it, but the host's work comes
    when it comes: it has run like that this week, so nothing new (with the setting on;
    by default the time of day decides). A job at 95% is new either way. A CPU with a
    daily rhythm keeps the time-of-day rule (the other level-shift tests)."""
    day4 = DAY2 + timedelta(days=2)
    any_hour = FlagOptions(day=day4, config=AnomalyConfig(level_idle_any_hour=True))
    like_before = idle_with_spells((24 + 1, 24 + 5, 60.0), (72 + 13, 72 + 17, 55.0))
    frames = frames_of(asset_docs(days=4, edit=like_before))
    flags = flag_anomalies(frames, options=any_hour)
    assert only(flags, "level_shift").is_empty(), only(flags, "level_shift").get_column("message").to_list()
    by_the_clock = FlagOptions(day=day4)  # the default
    assert only(flag_anomalies(frames, options=by_the_clock), "level_shift", "cpu.usage").height == 1
    busier = idle_with_spells((24 + 1, 24 + 5, 60.0), (72 + 13, 72 + 17, 95.0))
    flags = only(flag_anomalies(frames_of(asset_docs(days=4, edit=busier)), options=any_hour), "level_shift", "cpu.usage")
    assert flags.height == 1
    assert T0 + timedelta(hours=72 + 13) < flags.item(0, "start") <= T0 + timedelta(hours=72 + 16)


RECV = "network.interfaces[eth0].bytesRecvPerSec"


def spells_of(column: str, floor: float, jitter: float, *spells: tuple[float, float, float]) -> Edit:
    """`column` at `floor` (times a jitter of a few per cent, or plus `jitter` for a
    percentage) that works in spells: (from hour, to hour, level) since T0."""

    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        rng = np.random.default_rng(9)
        if column == "recv":
            c[column] = floor * np.exp(rng.normal(0.0, jitter, t.size))
        else:
            c[column] = floor + rng.normal(0.0, jitter, t.size)
        for lo, hi, level in spells:
            spell = (t >= lo * 3600) & (t < hi * 3600)
            c[column][spell] = level * np.exp(rng.normal(0.0, 0.05, int(spell.sum())))

    return edit


@pytest.mark.parametrize("per", [1, 300], ids=["a-second", "per-5-minutes"])
def test_a_small_rate_busy_all_day_is_no_idle_series_whatever_its_unit(per: int) -> None:
    """Requests counted at 0.1-0.3 a second with a daily rhythm (Poisson counts of 5
    minutes) are busy at every hour, whatever unit they are counted in: an evening surge
    to 4 a second does not make a night at 4 a second any less new at night, with
    `level_idle_any_hour` on too. Judged against zero on the log scale with a noise
    floor in fixed units, the same series counted per second looked idle (its usual
    level below log1p(x) = 0.4) and its night surge was dropped; counted per 5 minutes,
    it did not."""

    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        rng = np.random.default_rng(3)
        rate = 0.2 + 0.1 * np.sin(2 * np.pi * (t / 86400 - 0.5))
        for lo, hi in ((24 + 18, 24 + 22), (72 + 1, 72 + 5)):
            rate[(t >= lo * 3600) & (t < hi * 3600)] = 4.0
        c["recv"] = rng.poisson(rate * 300).astype(np.float64) / 300 * per

    day4 = DAY2 + timedelta(days=2)
    frames = frames_of(asset_docs(days=4, edit=edit))
    for config in (AnomalyConfig(), AnomalyConfig(level_idle_any_hour=True)):
        flags = only(flag_anomalies(frames, options=FlagOptions(day=day4, config=config)), "level_shift", RECV)
        assert flags.height == 1, (config.level_idle_any_hour, flags.get_column("message").to_list())
        assert T0 + timedelta(hours=72 + 1) < flags.item(0, "start") <= T0 + timedelta(hours=72 + 4)


def test_a_batch_host_idle_at_its_own_floor_between_spells_is_idle() -> None:
    """A batch host's interface idles at 2 KB/s of background traffic and its CPU at 2%
    (the system's own work), both far from zero in their units; its jobs move 50 MB/s
    and take the CPU to 95%. Idle is the series' own floor, not zero: with
    `level_idle_any_hour`, an afternoon transfer like a night's earlier in the week is
    no level shift (one three times faster is), and by default a job holding the CPU at
    95% like an earlier spell is no threshold flag. Judged against zero, neither was
    idle (log1p of 2 KB/s is 7.6; 2% is 7 noise units) and both were flagged."""
    day4 = DAY2 + timedelta(days=2)

    def host(transfer: float) -> Edit:
        net = spells_of("recv", 2000.0, 0.05, (24 + 1, 24 + 5, 5e7), (72 + 13, 72 + 17, transfer))
        cpu = spells_of("cpu", 2.0, 0.3, (24 + 1, 24 + 5, 60.0), (72 + 13, 72 + 15, 40.0))

        def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
            net(t, c)
            cpu(t, c)
            c["cpu"][(t >= (24 + 2) * 3600) & (t < (24 + 2) * 3600 + 300)] = 95.0
            c["cpu"][(t >= (72 + 14) * 3600) & (t < (72 + 14.5) * 3600)] = 95.0

        return edit

    frames = frames_of(asset_docs(days=4, edit=host(4.5e7)))
    any_hour = FlagOptions(day=day4, config=AnomalyConfig(level_idle_any_hour=True))
    flags = flag_anomalies(frames, options=any_hour)
    assert only(flags, "level_shift", RECV).is_empty(), only(flags, "level_shift").get_column("message").to_list()
    assert only(flags, "threshold").is_empty(), only(flags, "threshold").get_column("message").to_list()
    by_the_clock = flag_anomalies(frames, options=FlagOptions(day=day4))
    assert only(by_the_clock, "level_shift", RECV).height == 1
    assert only(by_the_clock, "threshold").is_empty()
    plain = FlagOptions(day=day4, config=AnomalyConfig(threshold_idle_spells=False))
    assert only(flag_anomalies(frames, options=plain), "threshold", "cpu.usage").height == 1
    faster = flag_anomalies(frames_of(asset_docs(days=4, edit=host(1.5e8))), options=any_hour)
    assert only(faster, "level_shift", RECV).height == 1


def test_memory_is_never_an_idle_series() -> None:
    """Memory is a capacity held, not work done: memory at 5% whose week held 60% for
    four hours one night is no idle series, so 60% held on an afternoon is still a new
    level for the afternoon with `level_idle_any_hour` on (and an idle CPU beside it
    changes nothing). Low and flat between spells an order of magnitude higher, it would
    pass both of the idle tests of a work metric."""
    day4 = DAY2 + timedelta(days=2)
    memory = spells_of("memory", 5.0, 0.05, (24 + 1, 24 + 5, 60.0), (72 + 13, 72 + 17, 60.0))
    cpu = idle_with_spells((24 + 1, 24 + 5, 60.0))

    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        memory(t, c)
        cpu(t, c)

    frames = frames_of(asset_docs(days=4, edit=edit))
    any_hour = FlagOptions(day=day4, config=AnomalyConfig(level_idle_any_hour=True))
    flags = only(flag_anomalies(frames, options=any_hour), "level_shift")
    assert flags.get_column("metric").to_list() == ["memory.usagePercent"]
    assert T0 + timedelta(hours=72 + 13) < flags.item(0, "start") <= T0 + timedelta(hours=72 + 16)


def test_a_spike_shorter_than_the_recent_window_is_no_level_shift() -> None:
    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        c["memory"][(t >= at(24 + 12)) & (t < at(24 + 13))] += 25.0

    assert only(flag_anomalies(frames_of(asset_docs(days=3, edit=edit))), "level_shift").is_empty()


def test_metrics_that_move_together_each_too_little_for_its_own_flag_are_one_joint_episode() -> None:
    """Memory, temperature and received bytes each about three spreads up for two hours."""
    # 3.5 spreads of the third day's time-of-day baseline, whose spread is sqrt(1 + 1/2)
    # times the samples' (a centre drawn from two days).
    lift = 3.5 * np.sqrt(1.5)

    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        hours = (t >= at(24 + 14)) & (t < at(24 + 16))
        c["memory"][hours] += lift
        c["temp"][hours] += lift
        c["recv"][hours] *= np.exp(0.3 * lift)

    flags = flag_anomalies(frames_of(asset_docs(days=3, edit=edit)), options=FlagOptions(day=DAY2 + timedelta(days=1)))
    assert flags.get_column("detector").to_list() == ["joint"]
    row = flags.row(0, named=True)
    assert row["metric"] == "*"
    assert T0 + timedelta(seconds=at(24 + 14)) <= row["start"] <= T0 + timedelta(seconds=at(24 + 15))
    assert row["message"].startswith("Several metrics moved together as they usually do not: ")
    for metric in ("memory.usagePercent", "cpu.temperature", "network.interfaces[eth0].bytesRecvPerSec"):
        assert metric in row["message"]
    assert flag_anomalies(frames_of(asset_docs(days=3)), options=FlagOptions(day=DAY2 + timedelta(days=1))).is_empty()


def test_a_stuck_cpu_is_a_flatline_but_a_metric_that_never_moves_is_not() -> None:
    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        c["cpu"][(t >= at(9)) & (t < at(12))] = 31.25
        c["temp"][:] = 45.0

    flags = only(flag_anomalies(frames_of(asset_docs(edit=edit))), "flatline")
    assert flags.get_column("metric").to_list() == ["cpu.usage"]
    assert flags.item(0, "message").startswith("CPU stuck at exactly 31.25% for 1")


# ---- disks ----------------------------------------------------------------------------


def test_a_disk_filling_five_points_a_day_from_70_is_forecast_full_within_a_week() -> None:
    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        c["disk"][:] = 70 + 5 * t / 86400

    flags = only(flag_anomalies(frames_of(asset_docs(edit=edit))), "disk_forecast")
    assert flags.get_column("metric").to_list() == ["disk[C:].usagePercent"]
    assert "would reach 100% in" in flags.item(0, "message")


def test_a_disk_filling_slowly_has_no_forecast_flag() -> None:
    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        c["disk"][:] = 70 + 1 * t / 86400

    assert only(flag_anomalies(frames_of(asset_docs(edit=edit))), "disk_forecast").is_empty()


def test_a_disk_above_90_is_flagged_per_disk() -> None:
    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        c["disk"][t >= at(0)] = 93.0

    flags = only(flag_anomalies(frames_of(asset_docs(edit=edit, disks=("C:",)))), "threshold")
    assert flags.get_column("metric").to_list() == ["disk[C:].usagePercent"]
    assert flags.item(0, "message").startswith("Disk C: usage above 90% for ")


# ---- agent level ----------------------------------------------------------------------


def test_an_hour_without_snapshots_is_a_gap_and_two_missing_samples_are_not() -> None:
    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        c["keep"][(t >= at(5)) & (t < at(6))] = False
        c["keep"][(t >= at(15)) & (t < at(15) + 600)] = False

    flags = only(flag_anomalies(frames_of(asset_docs(edit=edit))), "gap")
    assert flags.height == 1
    row = flags.row(0, named=True)
    assert row["metric"] == "*"
    assert row["start"] == T0 + timedelta(seconds=at(5))
    assert row["end"] == T0 + timedelta(seconds=at(6) - 300)
    assert row["message"].startswith("No snapshot for 65 minutes from 2026-03-03 05:00 UTC")


def test_an_agent_silent_at_the_end_of_the_day_is_offline_unless_last_seen_is_recent() -> None:
    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        c["keep"][t >= at(20)] = False

    frames = frames_of(asset_docs(edit=edit))
    flags = only(flag_anomalies(frames, options=FlagOptions(day=DAY2)), "offline")
    assert flags.height == 1
    assert flags.item(0, "start") == T0 + timedelta(seconds=at(20))
    seen = pl.DataFrame({"orgId": ["org-a"], "assetId": ["asset-1"], "lastSeen": [T0 + timedelta(seconds=at(23.9))]})
    assert only(flag_anomalies(frames, options=FlagOptions(day=DAY2, last_seen=seen)), "offline").is_empty()


def test_uptime_going_down_is_a_reboot() -> None:
    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        later = t >= at(3)
        c["uptime"][later] = 120 + t[later] - at(3)

    flags = only(flag_anomalies(frames_of(asset_docs(edit=edit))), "reboot")
    assert flags.height == 1
    assert flags.item(0, "metric") == "system.uptime"
    assert flags.item(0, "message").startswith("Asset rebooted around 2026-03-03 02:58 UTC after 12.7 days up")


# ---- peers and tenants ----------------------------------------------------------------


def test_peers_compare_an_asset_only_with_its_own_org() -> None:
    def busy(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        c["memory"][:] = 92.0 + np.random.default_rng(1).normal(0, 1, len(t)).clip(-1.5, 1.5)

    org_a = [asset_docs(days=1, org="org-a", asset=f"a{i}", seed=i, edit=busy if i == 0 else None) for i in range(6)]
    # In org-b everyone runs memory high: nobody stands out there, and org-a's busy asset
    # must not make org-b's assets look low.
    org_b = [asset_docs(days=1, org="org-b", asset=f"b{i}", seed=10 + i, edit=busy) for i in range(6)]
    flags = flag_anomalies(frames_of(*org_a, *org_b))
    peers = only(flags, "peer")
    assert set(peers.get_column("assetId").to_list()) == {"a0"}
    assert (peers.get_column("orgId") == "org-a").all()
    org_of = {f"a{i}": "org-a" for i in range(6)} | {f"b{i}": "org-b" for i in range(6)}
    assert all(org_of[a] == o for o, a in flags.select("orgId", "assetId").iter_rows())
    assert "median of the org's other assets" in peers.item(0, "message")


# ---- episodes, causality, messages ----------------------------------------------------


def test_points_close_in_time_merge_into_one_episode_with_the_highest_severity_and_score() -> None:
    base = T0
    times = [base, base + timedelta(minutes=10), base + timedelta(minutes=20), base + timedelta(hours=5)]
    flags = pl.DataFrame(
        {
            "orgId": ["o"] * 4,
            "assetId": ["a"] * 4,
            "metric": ["cpu.usage"] * 4,
            "detector": ["outlier"] * 4,
            "timestamp": times,
            "end": times,
            "since": times,
            "value": [50.0, 70.0, 60.0, 55.0],
            "ref": [20.0] * 4,
            "score": [7.0, 13.0, 8.0, 6.5],
            "severity": [1, 2, 1, 1],
            "interval_s": [60.0] * 4,
            "note": [None] * 4,
        },
        schema=FLAG_SCHEMA,
    )
    episodes = merge_episodes(flags, AnomalyConfig(merge_gap_minutes=30))
    assert episodes.height == 2
    first = episodes.row(0, named=True)
    assert (first["start"], first["end"]) == (times[0], times[2])
    assert (first["severity"], first["score"]) == ("critical", 13.0)
    assert "reached 70%" in first["message"]


def test_a_days_flags_do_not_change_when_the_next_day_arrives() -> None:
    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        c["cpu"][t >= at(23.5)] = 96.0  # runs over midnight into day three
        c["recv"][(t >= at(30)) & (t < at(31))] = 1e7
        c["keep"][(t >= at(23.9))] &= t[t >= at(23.9)] >= at(24.5)

    docs = asset_docs(days=3, edit=edit)
    until_day2 = [d for d in docs if d["timestamp"] < T0 + timedelta(days=2)]
    alone = flag_anomalies(frames_of(until_day2), options=FlagOptions(day=DAY2))
    with_next = flag_anomalies(frames_of(docs), options=FlagOptions(day=DAY2))
    assert not alone.is_empty()
    assert alone.equals(with_next)
    day3 = flag_anomalies(frames_of(docs), options=FlagOptions(day="2026-03-04"))
    assert (day3.get_column("start") >= T0 + timedelta(days=2)).all()


def test_every_message_is_a_sentence_with_its_numbers() -> None:
    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        c["cpu"][(t >= at(34)) & (t < at(35))] = 97.0
        c["memory"][t >= at(38)] += 20.0
        c["recv"][(t >= at(40)) & (t < at(40.2))] = 1e7
        c["keep"][(t >= at(42)) & (t < at(43))] = False
        c["uptime"][t >= at(44)] = 300 + t[t >= at(44)] - at(44)

    flags = flag_anomalies(frames_of(asset_docs(days=3, edit=edit)), options=FlagOptions(day=DAY2 + timedelta(days=1)))
    assert set(flags.get_column("detector")) >= {"threshold", "level_shift", "outlier", "gap", "reboot"}
    for message in flags.get_column("message"):
        assert message[0].isupper() and message.endswith("."), message
        assert any(ch.isdigit() for ch in message), message
        assert "null" not in message, message


# ---- bad data -------------------------------------------------------------------------


def test_nan_and_impossible_values_are_ignored_not_flagged() -> None:
    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        c["cpu"][(t >= at(10)) & (t < at(11))] = np.nan
        c["memory"][(t >= at(12)) & (t < at(13))] = 250.0
        c["recv"][(t >= at(14)) & (t < at(15))] = -1.0
        c["temp"][(t >= at(15)) & (t < at(16))] = np.inf

    flags = flag_anomalies(frames_of(asset_docs(edit=edit)))
    assert flags.is_empty(), flags.get_column("message").to_list()


def test_values_that_cannot_be_readings_are_counted_per_series_and_reason_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A byte rate written where the memory percentage belongs is left out, but not silently."""

    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        c["memory"][(t >= at(12)) & (t < at(13))] = 52_000.0  # 12 samples
        c["cpu"][(t >= at(14)) & (t < at(14.5))] = np.nan  # 6 samples
        c["memory"][(t >= 3600) & (t < 7200)] = 250.0  # the day before: history, not reported again

    with caplog.at_level(logging.WARNING, logger="perf_analytics.anomalies"):
        found = flag_assets(frames_of(asset_docs(edit=edit)), options=FlagOptions(day=DAY2))
    assert found.episodes.is_empty()
    assert found.dropped.columns == list(DROPPED_COLUMNS)
    rows = found.dropped.select("metric", "reason", "count", "example").rows()
    assert rows == [
        ("cpu.usage", "not a finite number", 6, pytest.approx(float("nan"), nan_ok=True)),
        ("memory.usagePercent", "outside 0-100 for a percentage", 12, 52_000.0),
    ]
    assert found.dropped.item(1, "first") == T0 + timedelta(seconds=at(12))
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "18 values are no possible reading" in warning
    assert "org-a/asset-1 memory.usagePercent: 12 outside 0-100 for a percentage (e.g. 52000)" in warning


def test_a_clean_day_drops_nothing_and_logs_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="perf_analytics.anomalies"):
        found = flag_assets(frames_of(asset_docs()), options=FlagOptions(day=DAY2))
    assert found.dropped.is_empty()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_single_snapshot_gives_no_flags() -> None:
    flags = flag_anomalies(frames_of(asset_docs()[:1]))
    assert flags.is_empty()
    assert flags.columns == list(EPISODE_COLUMNS)


def test_empty_frames_give_an_empty_result() -> None:
    assert flag_anomalies(frames_of([]), options=FlagOptions(day=DAY2)).is_empty()


def test_duplicate_timestamps_count_once() -> None:
    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        c["cpu"][(t >= at(10)) & (t < at(10.5))] = 95.0

    docs = asset_docs(edit=edit)
    flags = flag_anomalies(frames_of(docs, docs[100:300]))
    assert flags.equals(flag_anomalies(frames_of(docs)))
    assert only(flags, "threshold").height == 1


def test_an_asset_that_slows_its_reporting_interval_has_no_gaps() -> None:
    fast = asset_docs(days=1, interval=60)
    slow = [d for d in asset_docs(days=2, interval=300) if d["timestamp"] >= T0 + timedelta(days=1)]
    flags = flag_anomalies(frames_of(fast, slow))
    assert only(flags, "gap").is_empty()


def test_an_agent_that_reports_at_irregular_times_gets_gaps_only_for_a_real_silence() -> None:
    """An agent due every minute that sends about one snapshot in five, at random.

    Pauses of 15 or 20 minutes are how it reports (its 1-minute `timeWindow` says
    otherwise): only the three silent hours are unusual for it, and one quiet spell at the
    end of the day is no reason to call it offline.
    """
    rng = np.random.default_rng(3)

    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        c["keep"][:] = rng.random(t.size) < 0.2
        c["keep"][(t >= at(10)) & (t < at(13))] = False

    frames = frames_of(asset_docs(interval=60, edit=edit))
    flags = flag_anomalies(frames, options=FlagOptions(day=DAY2))
    assert only(flags, "offline").is_empty()
    gaps = only(flags, "gap")
    assert gaps.height == 1, gaps.select("start", "message").rows()
    assert T0 + timedelta(seconds=at(9.5)) <= gaps.item(0, "start") <= T0 + timedelta(seconds=at(10.5))
    assert gaps.item(0, "end") >= T0 + timedelta(seconds=at(12.5))


def test_an_agent_that_reports_at_irregular_times_and_then_stops_is_offline() -> None:
    rng = np.random.default_rng(4)

    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        c["keep"][:] = (rng.random(t.size) < 0.2) & (t < at(21))

    flags = flag_anomalies(frames_of(asset_docs(interval=60, edit=edit)), options=FlagOptions(day=DAY2))
    offline = only(flags, "offline")
    assert offline.height == 1
    assert T0 + timedelta(seconds=at(20.5)) <= offline.item(0, "start") <= T0 + timedelta(seconds=at(22))


def test_an_agent_with_quiet_and_busy_reporting_days_is_judged_by_its_week() -> None:
    """Due every 5 minutes; on the first day it paused 55 minutes every hour, on the second
    it reported like a clock. A 90-minute pause on the third day is within what it does:
    judged by the second day alone (`gap_pattern_days=1`), it would be a gap."""

    def edit(t: np.ndarray, c: dict[str, np.ndarray]) -> None:
        first_day = t < 86400
        c["keep"][first_day & (t % 3600 >= 300)] = False
        c["keep"][(t >= at(24 + 3)) & (t < at(24 + 4.5))] = False

    frames = frames_of(asset_docs(days=3, edit=edit))
    flags = flag_anomalies(frames, options=FlagOptions(day=DAY3))
    assert only(flags, "gap").is_empty(), only(flags, "gap").select("start", "message").rows()
    one_day = flag_anomalies(frames, options=FlagOptions(day=DAY3, config=AnomalyConfig(gap_pattern_days=1.0)))
    assert only(one_day, "gap").height == 1


def test_disks_and_interfaces_that_come_and_go_and_missing_sections_do_not_break_the_run() -> None:
    docs = asset_docs(disks=("C:", "D:"))
    for i, doc in enumerate(docs):
        perf = doc["performanceData"]
        if i > len(docs) // 2:
            perf["disk"] = perf["disk"][:1]  # D: is unplugged
        if i % 7 == 0:
            del perf["network"]
        if i % 11 == 0:
            del perf["system"]
            perf["cpu"].pop("temperature")
    flags = flag_anomalies(frames_of(docs))
    assert only(flags, "gap").is_empty()
    assert only(flags, "reboot").is_empty()


def test_frames_of_the_wrong_shape_raise_a_clear_error() -> None:
    bad = Frames(pl.DataFrame({"x": [1]}), pl.DataFrame(), pl.DataFrame())
    with pytest.raises(AnomalyInputError, match="lacks the column"):
        flag_anomalies(bad)
    with pytest.raises(AnomalyInputError, match="not a date"):
        flag_anomalies(frames_of(asset_docs(days=0.1)), options=FlagOptions(day="yesterday"))


def test_a_negative_threshold_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cpu_threshold"):
        AnomalyConfig(cpu_threshold=-1.0)
    assert replace(AnomalyConfig(), cpu_threshold=80.0).cpu_threshold == 80.0


def test_a_reporting_pattern_longer_than_the_baseline_days_is_a_config_error() -> None:
    """The pattern is read from the baseline days' state: no state is kept beyond them."""
    with pytest.raises(ConfigError, match="gap_pattern_days"):
        AnomalyConfig(gap_pattern_days=8.0)
    assert AnomalyConfig(gap_pattern_days=3.0, baseline_days=3.0).gap_pattern_days == 3.0
