"""Anomaly flags: per asset and metric episodes from the snapshot frames.

`flag_anomalies(frames, day=...)` runs every detector over the frames and returns one
row per episode (`EPISODE_COLUMNS`). With `day`, only data up to the end of that UTC day
is read and only episodes starting that day are returned, so a day's flags never change
when later days arrive; the frames may (and should) include the days before it as
history. `AnomalyConfig` holds every threshold.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import polars as pl

from perf_analytics.anomalies.config import AnomalyConfig
from perf_analytics.anomalies.detectors import (
    DETECTORS,
    SEVERITIES,
    detect_disk_forecasts,
    detect_flatlines,
    detect_gaps,
    detect_joint_moves,
    detect_level_shifts,
    detect_offline,
    detect_outliers,
    detect_peers_in,
    detect_reboots,
    detect_thresholds,
    peer_buckets,
    score_points,
)
from perf_analytics.anomalies.episodes import (
    EPISODE_COLUMNS,
    EPISODE_SCHEMA,
    empty_episodes,
    merge_episodes,
)
from perf_analytics.anomalies.series import (
    DROPPED_SCHEMA,
    SERIES,
    agent_frame,
    empty_dropped,
    read_points,
)
from perf_analytics.errors import AnomalyInputError
from perf_analytics.frames import Frames

__all__ = [
    "DETECTORS",
    "DROPPED_COLUMNS",
    "EPISODE_COLUMNS",
    "EPISODE_SCHEMA",
    "SEVERITIES",
    "AnomalyConfig",
    "AnomalyInputError",
    "AssetFlags",
    "combine_dropped",
    "combine_episodes",
    "flag_anomalies",
    "flag_assets",
    "flag_peers",
]

log = logging.getLogger(__name__)

_REQUIRED = ("orgId", "assetId", "timestamp")
DROPPED_COLUMNS = tuple(DROPPED_SCHEMA)
_LOGGED_DROPS = 5  # series named in the warning about dropped values; the frame has them all


def _as_day(day: date | datetime | str) -> date:
    if isinstance(day, datetime):
        return day.astimezone(UTC).date() if day.tzinfo else day.date()
    if isinstance(day, date):
        return day
    try:
        return date.fromisoformat(str(day))
    except ValueError:
        raise AnomalyInputError(f"day {day!r} is not a date (YYYY-MM-DD)") from None


def _check(frames: Frames) -> None:
    for name in ("snapshots", "disks", "interfaces"):
        frame = getattr(frames, name, None)
        if not isinstance(frame, pl.DataFrame):
            raise AnomalyInputError(f"frames.{name} must be a polars DataFrame, got {type(frame).__name__}")
        missing = [c for c in _REQUIRED if c not in frame.columns and (frame.height or frame.columns)]
        if missing:
            raise AnomalyInputError(f"frames.{name} lacks the column(s) {', '.join(missing)}")


def _combine(history: Frames | None, frames: Frames) -> Frames:
    """History and current frames as one (duplicates are dropped later, keeping the current)."""
    if history is None:
        return frames
    _check(history)
    return Frames(
        *(
            pl.concat([getattr(history, name), getattr(frames, name)], how="diagonal_relaxed")
            for name in ("snapshots", "disks", "interfaces")
        )
    )


def _window(frames: Frames, lo: datetime, hi: datetime) -> Frames:
    """Rows with lo <= timestamp < hi, in each frame."""
    ts = pl.col("timestamp")
    return Frames(
        *(
            getattr(frames, name).filter((ts >= lo) & (ts < hi))
            for name in ("snapshots", "disks", "interfaces")
        )
    )


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class AssetFlags:
    """What `flag_assets` found: its assets' episodes, and their inputs to the peer comparison."""

    episodes: pl.DataFrame  # every detector but peers (EPISODE_COLUMNS)
    peer_buckets: pl.DataFrame  # per asset, metric and bucket: for `flag_peers` over the whole org
    # Values that cannot be readings of their metric (DROPPED_COLUMNS: per series and reason,
    # count, first, last, example), from the day flagged (or all the frames without a day).
    dropped: pl.DataFrame = field(default_factory=empty_dropped)


def _warn_dropped(dropped: pl.DataFrame) -> None:
    """One warning naming the series whose values were dropped, worst first."""
    if dropped.is_empty():
        return
    worst = dropped.sort("count", descending=True).head(_LOGGED_DROPS)
    named = "; ".join(
        f"{r['orgId']}/{r['assetId']} {r['metric']}: {r['count']} {r['reason']} (e.g. {r['example']:g})"
        for r in worst.iter_rows(named=True)
    )
    more = f" and {dropped.height - worst.height} more series" if dropped.height > worst.height else ""
    log.warning("anomaly flags: %d values are no possible reading and were left out: %s%s",
                dropped.get_column("count").sum(), named, more)


def _day_start(day: date | datetime | str | None) -> datetime | None:
    if day is None:
        return None
    d = _as_day(day)
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def _starting_on(episodes: pl.DataFrame, day_start: datetime | None) -> pl.DataFrame:
    if day_start is None:
        return episodes
    day_end = day_start + timedelta(days=1)
    return episodes.filter((pl.col("start") >= day_start) & (pl.col("start") < day_end))


def flag_assets(
    frames: Frames,
    *,
    day: date | datetime | str | None = None,
    history: Frames | None = None,
    config: AnomalyConfig | None = None,
    last_seen: pl.DataFrame | None = None,
    now: datetime | None = None,
) -> AssetFlags:
    """Every detector that looks at one asset at a time (all but peers), as episodes.

    The arguments mean what they mean for `flag_anomalies`. Because nothing here compares
    assets, a fleet can be flagged in batches of assets, each batch's frames read on its
    own (bounded memory), with `flag_peers` run once over all the batches' peer buckets.
    """
    config = config if config is not None else AnomalyConfig()
    _check(frames)
    frames = _combine(history, frames)
    day_start = _day_start(day)
    as_of: datetime | None = _utc(now) if now is not None else None
    if day_start is not None:
        day_end = day_start + timedelta(days=1)
        as_of = day_end if as_of is None else min(as_of, day_end)
        frames = _window(frames, day_start - timedelta(days=config.history_days), as_of)
    elif as_of is not None:
        frames = _window(frames, datetime(1970, 1, 1, tzinfo=UTC), as_of + timedelta(microseconds=1))
    if frames.snapshots.is_empty() and frames.disks.is_empty() and frames.interfaces.is_empty() and last_seen is None:
        return AssetFlags(empty_episodes(), peer_buckets(read_points(frames, agent_frame(frames))[0], config))

    agents = agent_frame(frames)
    points, dropped = read_points(frames, agents, report_from=day_start)
    _warn_dropped(dropped)
    reboots = detect_reboots(agents, config)
    scored = score_points(points, config)
    parts = [
        reboots,
        detect_thresholds(points, config),
        detect_outliers(points, config, reboots, scored=scored),
        detect_joint_moves(scored, config, reboots),
        detect_level_shifts(points, config, reboots),
        detect_flatlines(points, config),
        detect_disk_forecasts(points, config),
        detect_gaps(agents, config),
    ]
    if as_of is not None and (day is not None or last_seen is not None):
        parts.append(detect_offline(agents, config, now=as_of, last_seen=last_seen))
    episodes = _starting_on(merge_episodes(pl.concat(parts), config), day_start)
    log.debug("flag_assets: %d points, %d episodes", points.height, episodes.height)
    return AssetFlags(episodes, peer_buckets(points, config), dropped)


def flag_peers(
    buckets: pl.DataFrame | Iterable[pl.DataFrame],
    *,
    day: date | datetime | str | None = None,
    config: AnomalyConfig | None = None,
) -> pl.DataFrame:
    """Peer episodes from the `peer_buckets` of `flag_assets` (one frame, or one per batch).

    Pass the buckets of a whole org: an asset is compared with the rest of its org's fleet.
    """
    config = config if config is not None else AnomalyConfig()
    frames = [buckets] if isinstance(buckets, pl.DataFrame) else list(buckets)
    frames = [f for f in frames if not f.is_empty()]
    if not frames:
        return empty_episodes()
    flags = detect_peers_in(pl.concat(frames), config)
    return _starting_on(merge_episodes(flags, config), _day_start(day))


def combine_episodes(parts: Iterable[pl.DataFrame]) -> pl.DataFrame:
    """Episode frames of several batches or detectors as one, in the usual order."""
    frames = [p for p in parts if not p.is_empty()]
    if not frames:
        return empty_episodes()
    return pl.concat(frames).sort(["orgId", "assetId", "start", "metric", "detector"])


def combine_dropped(parts: Iterable[pl.DataFrame]) -> pl.DataFrame:
    """The `dropped` frames of several batches as one (`DROPPED_COLUMNS`), in series order."""
    frames = [p for p in parts if not p.is_empty()]
    if not frames:
        return empty_dropped()
    return pl.concat(frames).sort([*SERIES, "reason"])


def flag_anomalies(
    frames: Frames,
    *,
    day: date | datetime | str | None = None,
    history: Frames | None = None,
    config: AnomalyConfig | None = None,
    last_seen: pl.DataFrame | None = None,
    now: datetime | None = None,
) -> pl.DataFrame:
    """The anomaly episodes in the frames, one row each (columns `EPISODE_COLUMNS`).

    - `day`: return only episodes starting on this UTC day, computed from data up to the
      end of it (and `config.history_days` before it) whatever else the frames hold.
    - `history`: earlier frames to use as baseline only (a lake partition, say).
    - `last_seen`: the assets' `lastSeen` (columns orgId, assetId, lastSeen) and `now`:
      with them (or with `day`, whose end is then `now`), assets silent for more than
      `config.gap_intervals` intervals get an `offline` flag.

    Bad values (NaN, out of range, duplicate timestamps) are dropped before detection;
    the out-of-range and non-finite ones are counted and logged as a warning naming the
    series (`flag_assets(...).dropped` has the counts as a frame); a frame of the wrong
    shape raises `AnomalyInputError`. For a fleet too large to hold
    at once, `flag_assets` per batch of assets plus one `flag_peers` give the same result.
    """
    got = flag_assets(frames, day=day, history=history, config=config, last_seen=last_seen, now=now)
    return combine_episodes([got.episodes, flag_peers(got.peer_buckets, day=day, config=config)])
