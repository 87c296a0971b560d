"""Anomaly flags: per asset and metric episodes from the snapshot frames.

`flag_anomalies(frames, options=FlagOptions(day=...))` runs every detector over the
frames and returns one row per episode (`EPISODE_COLUMNS`). With `day`, only data up to the end of that UTC day
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

from perf_analytics.anomalies.baselines import (
    Baselines,
    build,
    earlier_agents,
    earlier_boots,
    usual_spacing,
)
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
    ASSET,
    DROPPED_SCHEMA,
    SERIES,
    agent_frame,
    empty_dropped,
    read_points,
)
from perf_analytics.anomalies.state import (
    HOUR,
    STATE_COLUMNS,
    STATE_VERSION,
    baseline_dates,
    day_frames,
    empty_state,
    prepare,
    summarize,
    summarize_days,
)
from perf_analytics.errors import AnomalyInputError
from perf_analytics.frames import Frames

__all__ = [
    "DETECTORS",
    "DROPPED_COLUMNS",
    "EPISODE_COLUMNS",
    "EPISODE_SCHEMA",
    "SEVERITIES",
    "STATE_COLUMNS",
    "STATE_VERSION",
    "AnomalyConfig",
    "AnomalyInputError",
    "AssetFlags",
    "FlagOptions",
    "combine_dropped",
    "combine_episodes",
    "flag_anomalies",
    "flag_assets",
    "flag_peers",
    "summarize_days",
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


# eq=False: the fields hold frames, which have no truth value to compare by.
@dataclass(frozen=True, eq=False)
class FlagOptions:
    """What `flag_anomalies` and `flag_assets` read, up to when, and against which thresholds.

    - `day`: only episodes starting on this UTC day, computed from data up to the end of
      it (and `config.history_days` before it) whatever else the frames hold.
    - `history`: earlier frames to use as baseline only (a lake partition, say).
    - `config`: every threshold (default `AnomalyConfig()`).
    - `last_seen`: the assets' `lastSeen` (columns orgId, assetId, lastSeen) and `now`:
      with them (or with `day`, whose end is then `now`), assets silent for more than
      `config.gap_intervals` intervals get an `offline` flag.
    """

    day: date | datetime | str | None = None
    history: Frames | None = None
    config: AnomalyConfig = field(default_factory=AnomalyConfig)
    last_seen: pl.DataFrame | None = None
    now: datetime | None = None


@dataclass(frozen=True)
class AssetFlags:
    """What `flag_assets` found: its assets' episodes, and their inputs to the peer comparison."""

    episodes: pl.DataFrame  # every detector but peers (EPISODE_COLUMNS)
    peer_buckets: pl.DataFrame  # per asset, metric and bucket: for `flag_peers` over the whole org
    # Values that cannot be readings of their metric (DROPPED_COLUMNS: per series and reason,
    # count, first, last, example), from the day flagged (or all the frames without a day).
    dropped: pl.DataFrame = field(default_factory=empty_dropped)
    # The baseline state of the day flagged (of every day, without a day): what it
    # contributes to the baselines of the days after it (`state.STATE_SCHEMA`).
    state: pl.DataFrame = field(default_factory=empty_state)


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
    options: FlagOptions | None = None,
    state: pl.DataFrame | None = None,
) -> AssetFlags:
    """Every detector that looks at one asset at a time (all but peers), as episodes.

    `options` (default `FlagOptions()`) means what it means for `flag_anomalies`. Because
    nothing here compares assets, a fleet can be flagged in batches of assets, each batch's
    frames read on its own (bounded memory), with `flag_peers` run once over all the
    batches' peer buckets.

    With `options.day` and `state` (the baseline state of the days before it, as earlier
    calls returned it in `AssetFlags.state`, for these assets), only the day's own rows of
    the frames are read: the baselines come from the state. Without `state` they are
    rebuilt from the frames' earlier days, with the same result.

    Raises:
        AnomalyInputError: frames of the wrong shape, or a `day` that is not a date.
    """
    opts = options if options is not None else FlagOptions()
    day, history, config, last_seen, now = opts.day, opts.history, opts.config, opts.last_seen, opts.now
    _check(frames)
    frames = _combine(history, frames)
    day_start = _day_start(day)
    as_of: datetime | None = _utc(now) if now is not None else None
    if day_start is not None:
        day_end = day_start + timedelta(days=1)
        as_of = day_end if as_of is None else min(as_of, day_end)
    if as_of is not None:
        frames = _window(frames, datetime(1970, 1, 1, tzinfo=UTC), as_of)
    offline = as_of is not None and (day is not None or last_seen is not None)
    if day_start is not None:
        d = day_start.date()
        prior = state if state is not None else summarize_days(frames, baseline_dates(d, config), config)
        got = _flag_day(day_frames(frames, d), d, prior, config, as_of=as_of if offline else None, last_seen=last_seen)
        return AssetFlags(_starting_on(merge_episodes(got.flags, config), day_start), got.buckets, got.dropped, got.state)
    days = _frame_days(frames)
    states: dict[date, pl.DataFrame] = {}
    found: list[_Day] = []
    for i, d in enumerate(days):
        prior = _concat([states[p] for p in baseline_dates(d, config) if p in states], empty_state())
        last = i == len(days) - 1
        got = _flag_day(day_frames(frames, d), d, prior, config, as_of=as_of if offline and last else None,
                        last_seen=last_seen, report_all=True)
        states[d] = got.state
        found.append(got)
    flags = _concat([f.flags for f in found], pl.DataFrame())
    episodes = merge_episodes(flags, config) if flags.height else empty_episodes()
    return AssetFlags(
        episodes,
        _concat([f.buckets for f in found], peer_buckets(read_points(frames, agent_frame(frames))[0], config)),
        combine_dropped(f.dropped for f in found),
        _concat([f.state for f in found], empty_state()),
    )


def _concat(frames: list[pl.DataFrame], empty: pl.DataFrame) -> pl.DataFrame:
    frames = [f for f in frames if not f.is_empty()]
    return pl.concat(frames) if frames else empty


def _frame_days(frames: Frames) -> list[date]:
    """Every UTC day from the first to the last row of the frames."""
    stamps = [getattr(frames, n).get_column("timestamp") for n in ("snapshots", "disks", "interfaces")
              if "timestamp" in getattr(frames, n).columns and getattr(frames, n).height]
    if not stamps:
        return []
    first = min(s.min() for s in stamps)
    last = max(s.max() for s in stamps)
    assert isinstance(first, datetime) and isinstance(last, datetime)
    a, b = _as_day(first), _as_day(last)
    return [a + timedelta(days=i) for i in range((b - a).days + 1)]


@dataclass(frozen=True)
class _Day:
    """What one day's detectors found, before flagged points are merged into episodes."""

    flags: pl.DataFrame
    buckets: pl.DataFrame
    dropped: pl.DataFrame
    state: pl.DataFrame


def _flag_day(
    today: Frames,
    day: date,
    prior: pl.DataFrame,
    config: AnomalyConfig,
    *,
    as_of: datetime | None,
    last_seen: pl.DataFrame | None,
    report_all: bool = False,
) -> _Day:
    """Every per-asset detector over one day's rows, with the baselines of `prior` state.

    With `as_of`, assets silent at that moment get an `offline` flag.
    """
    day_start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    agents = agent_frame(today)
    points, dropped = read_points(today, agents, report_from=None if report_all else day_start)
    _warn_dropped(dropped)
    prepared = prepare(points, config)
    own = summarize(prepared, agents, day) if not agents.is_empty() or not points.is_empty() else empty_state()
    base = build(prior, own.filter(pl.col("part") == HOUR), day, config)
    agents = _with_earlier(agents, base, config)
    reboots = detect_reboots(agents, config)
    boots = pl.concat([earlier_boots(base), reboots.select(*ASSET, "timestamp")])
    scored = score_points(prepared, base, config, boots)
    parts = [
        reboots,
        detect_thresholds(points, config, base),
        detect_outliers(scored, config, boots),
        detect_joint_moves(scored, base, config, boots),
        detect_level_shifts(base, config, boots),
        detect_flatlines(prepared, base, config),
        detect_disk_forecasts(points, base, config),
        detect_gaps(agents, config),
    ]
    if as_of is not None:
        parts.append(detect_offline(agents, config, now=as_of, last_seen=last_seen))
    flags = pl.concat(parts).filter(pl.col("timestamp") >= day_start)
    log.debug("flag_assets: %s, %d points, %d flagged", day, points.height, flags.height)
    return _Day(flags, peer_buckets(points, config), dropped, own)


def _with_earlier(agents: pl.DataFrame, base: Baselines, config: AnomalyConfig) -> pl.DataFrame:
    """The day's agent rows after each asset's latest earlier snapshot (from the state), each
    judged against the longer of its usual spacing so far and the earlier days' (`usual_spacing`)."""
    p95 = usual_spacing(base, config)
    today = agents.join(p95, on=ASSET, how="left").with_columns(
        pl.max_horizontal("usual_spacing_s", "_p95").alias("usual_spacing_s")
    ).drop("_p95")
    earlier = earlier_agents(base).select(today.columns).cast(dict(today.schema))  # type: ignore[arg-type]
    return pl.concat([earlier, today]).sort([*ASSET, "timestamp"])


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


def flag_anomalies(frames: Frames, *, options: FlagOptions | None = None) -> pl.DataFrame:
    """The anomaly episodes in the frames, one row each (columns `EPISODE_COLUMNS`).

    `options` (default `FlagOptions()`): the day to flag, the history to read as baseline
    only, the thresholds, and what tells an asset offline (see `FlagOptions`).

    Bad values (NaN, out of range, duplicate timestamps) are dropped before detection;
    the out-of-range and non-finite ones are counted and logged as a warning naming the
    series (`flag_assets(...).dropped` has the counts as a frame); a frame of the wrong
    shape raises `AnomalyInputError`. For a fleet too large to hold
    at once, `flag_assets` per batch of assets plus one `flag_peers` give the same result.
    """
    opts = options if options is not None else FlagOptions()
    got = flag_assets(frames, options=opts)
    return combine_episodes([got.episodes, flag_peers(got.peer_buckets, day=opts.day, config=opts.config)])
