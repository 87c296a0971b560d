"""The anomaly flags' baseline state: kept in the lake or rebuilt from raw snapshots, the
same episodes; stale state (late data, a killed write, a damaged file) is rebuilt."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from bson import ObjectId

from perf_analytics.anomalies import AnomalyConfig, FlagOptions, flag_assets, summarize_days
from perf_analytics.anomalies.state import day_frames
from perf_analytics.anomaly_state import day_fingerprint, read_state, state_files, state_path
from perf_analytics.frames import Frames, frames_from_documents
from perf_analytics.pipeline import ServerSnapshots, run_day
from perf_analytics.schema import SNAPSHOTS, validate_snapshot
from perf_analytics.store import Db
from perf_analytics.sync import sync_snapshots_all_orgs
from perf_analytics.synth import DEFAULT_START, FleetSpec, generate_fleet

DAY1 = DEFAULT_START.date()
ORG = "org-01"


def _docs(days: int, assets: int = 2, interval_s: int = 300) -> list[dict[str, Any]]:
    return [{"_id": ObjectId(), **validate_snapshot(p)}
            for p in generate_fleet(FleetSpec(orgs=1, assets=assets, days=days, interval_s=interval_s, seed=7))]


def _frames(docs: list[dict[str, Any]]) -> Frames:
    return frames_from_documents([{k: v for k, v in d.items() if k != "_id"} for d in docs])


@pytest.mark.slow
def test_each_days_flags_with_the_kept_state_equal_those_rebuilt_from_the_raw_history() -> None:
    """Day by day over nine days: the state each day returns, carried forward, gives the
    episodes that re-reading the eight days of history gives, and equals a rebuild."""
    frames = _frames(_docs(days=9, assets=3))
    config = AnomalyConfig()
    kept: dict[date, pl.DataFrame] = {}
    found = 0
    for i in range(9):
        day = DAY1 + timedelta(days=i)
        prior = [kept[day - timedelta(days=k)] for k in range(7, 0, -1) if day - timedelta(days=k) in kept]
        state = pl.concat(prior) if prior else None
        with_state = flag_assets(day_frames(frames, day), options=FlagOptions(day=day, config=config), state=state)
        rebuilt = flag_assets(frames, options=FlagOptions(day=day, config=config))
        assert with_state.episodes.equals(rebuilt.episodes), day
        assert with_state.state.equals(summarize_days(frames, [day], config))
        kept[day] = with_state.state
        found += with_state.episodes.height
    assert found > 20  # the generator's events and routine reboots are there to be found


def _sync(db: Db, lake: Path, docs: list[dict[str, Any]]) -> None:
    db[SNAPSHOTS].insert_many(docs)
    sync_snapshots_all_orgs(db, lake)


def _run_days(lake: Path, days: list[date]) -> dict[date, pl.DataFrame]:
    return {d: run_day(lake, ORG, d, rollups=False).flags for d in days}


@pytest.mark.slow
def test_the_lake_state_gives_the_episodes_of_a_rebuild_and_late_data_rebuilds_its_day(db: Db, tmp_path: Path) -> None:
    lake, fresh = tmp_path / "lake", tmp_path / "fresh"
    docs = _docs(days=5)
    day3 = DAY1 + timedelta(days=2)
    late = [d for d in docs if d["timestamp"].date() == day3 and d["assetId"] == docs[0]["assetId"]][::2]
    late_ids = {d["_id"] for d in late}
    _sync(db, lake, [d for d in docs if d["_id"] not in late_ids])
    days = [DAY1 + timedelta(days=i) for i in range(5)]
    first = _run_days(lake, days)
    # Every day flagged keeps its state (and so do the baseline days before the data: empty).
    assert {d.isoformat() for d in days} <= set(state_files(lake, ORG))
    kept_day3 = state_path(lake, ORG, day3).read_bytes()

    # The state removed: every day's flags rebuilt from the raw history are the same.
    shutil.rmtree(lake / "anomaly_state")
    assert _run_days(lake, days[-1:])[days[-1]].equals(first[days[-1]])
    assert state_path(lake, ORG, day3).read_bytes() == kept_day3  # rebuilt, byte for byte

    # Late snapshots of day 3: its kept state is stale and rebuilt when day 5 is flagged,
    # and day 5's flags are those of a lake that never kept any state, and of the server.
    db[SNAPSHOTS].insert_many(late)
    sync_snapshots_all_orgs(db, lake)
    stale = day_fingerprint(lake, ORG, day3, AnomalyConfig())
    assert read_state(lake, ORG, day3, stale) is None
    after = run_day(lake, ORG, days[-1], rollups=False).flags
    assert read_state(lake, ORG, day3, stale) is not None
    assert state_path(lake, ORG, day3).read_bytes() != kept_day3
    sync_snapshots_all_orgs(db, fresh)
    assert after.equals(run_day(fresh, ORG, days[-1], rollups=False).flags)
    assert after.equals(run_day(fresh, ORG, days[-1], rollups=False, source=ServerSnapshots(db)).flags)
    assert after.height > 0


# A child that overwrites day 3's state with different numbers under a file-size limit far
# below the file's size: the kernel kills it (SIGXFSZ, which Python ignores unless told
# otherwise) in the middle of writing.
_KILLED_WRITE = """
import resource, signal, sys
from datetime import date
import polars as pl
from perf_analytics.anomaly_state import read_state, write_state
lake, org, day, fingerprint = sys.argv[1], sys.argv[2], date.fromisoformat(sys.argv[3]), sys.argv[4]
state = read_state(lake, org, day, fingerprint)
changed = state.with_columns(pl.col("q50") + 50.0, pl.col("hi") + 50.0)
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))
write_state(lake, org, day, changed, fingerprint)
"""


@pytest.mark.slow
def test_a_write_killed_midway_or_a_damaged_state_file_does_not_change_the_episodes(db: Db, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    docs = _docs(days=4)
    _sync(db, lake, docs)
    days = [DAY1 + timedelta(days=i) for i in range(4)]
    expected = _run_days(lake, days)[days[-1]]
    day3 = days[2]
    path = state_path(lake, ORG, day3)
    kept = path.read_bytes()
    fingerprint = day_fingerprint(lake, ORG, day3, AnomalyConfig())

    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    child = subprocess.run([sys.executable, "-c", _KILLED_WRITE, str(lake), ORG, day3.isoformat(), fingerprint],
                           env=env, capture_output=True, text=True)
    assert child.returncode == -signal.SIGXFSZ, child.stderr
    assert path.read_bytes() == kept  # the old file, whole
    assert run_day(lake, ORG, days[-1], rollups=False).flags.equals(expected)

    # A file cut short (as a writer without the rename would leave it) is rebuilt.
    path.write_bytes(kept[: len(kept) // 2])
    assert read_state(lake, ORG, day3, fingerprint) is None
    assert run_day(lake, ORG, days[-1], rollups=False).flags.equals(expected)
    assert path.read_bytes() == kept
    assert expected.height > 0


def test_a_state_with_another_fingerprint_is_not_read(tmp_path: Path) -> None:
    frames = _frames(_docs(days=1))
    state = summarize_days(frames, [DAY1], AnomalyConfig())
    from perf_analytics.anomaly_state import write_state

    write_state(tmp_path, ORG, DAY1, state, "a" * 64)
    assert read_state(tmp_path, ORG, DAY1, "b" * 64) is None
    got = read_state(tmp_path, ORG, DAY1, "a" * 64)
    assert got is not None and got.equals(state)
    assert datetime.now(UTC) > DEFAULT_START  # the generator's days are in the past
