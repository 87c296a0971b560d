"""Rollups and availability against independent references: DuckDB SQL and a plain loop.

The references work on integer epoch milliseconds and do their own de-duplication and
bad-value cleaning, so they share no code with `rollups.py`. Counts, min, max, last,
coverage, gaps and intervals compare exactly (the same arithmetic on the same values);
means and sums compare to 1e-9 relative, because DuckDB and Polars add in a different
order (float addition is not associative); p95 compares to 1e-12 relative: both
interpolate linearly between the same two ranks at the same fraction, but write the
interpolation differently (lo + (hi - lo) * f against a weighted sum), which can differ in
the last bit.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from functools import cache
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pytest

from perf_analytics.errors import InvalidArgument, RollupError
from perf_analytics.frames import Frames, column_name, empty_frames, frames_from_documents
from perf_analytics.rollups import (
    ASSET_METRICS,
    SKETCH_ALPHA,
    WINDOW_SECONDS,
    WINDOWS,
    coarsen_rollups,
    compute_availability,
    compute_rollups,
    mergeable_rollups,
    upsert_rollups,
)
from perf_analytics.schema import LIMITS, TABLES, validate_snapshot
from perf_analytics.store import Db
from perf_analytics.synth import FleetSpec, fleet_labels, generate_fleet

T0 = datetime(2026, 3, 1, tzinfo=UTC)
SNAPSHOT_SCHEMA = empty_frames().snapshots.schema
DISK_SCHEMA = empty_frames().disks.schema
INTERFACE_SCHEMA = empty_frames().interfaces.schema
FLEET = {"orgs": 2, "assets": 2, "days": 2, "interval_s": 120, "seed": 4}  # has reboots and an outage
TOLERANT = ("_mean", "_total")  # columns summed in a different order by the reference


@cache
def fleet_frames() -> Frames:
    return frames_from_documents(validate_snapshot(p) for p in generate_fleet(FleetSpec(**FLEET)))


def fleet_flags() -> pl.DataFrame:
    labels = fleet_labels(FleetSpec(**FLEET))
    return pl.DataFrame(
        {
            "orgId": [x["orgId"] for x in labels],
            "assetId": [x["assetId"] for x in labels],
            "start": [datetime.fromisoformat(x["start"]) for x in labels],
        },
        schema={"orgId": pl.String, "assetId": pl.String, "start": pl.Datetime("ms", "UTC")},
    )


# ---- hand-made frames ---------------------------------------------------------------------


def frame(rows: Sequence[dict[str, Any]], schema: pl.Schema) -> pl.DataFrame:
    """Rows with some columns given: the rest null, everything in the frames' types."""
    data = {name: [row.get(name) for row in rows] for name in schema}
    return pl.DataFrame(data, schema=schema)


def snap(minute: float, **values: Any) -> dict[str, Any]:
    row = {
        "orgId": "org-a",
        "assetId": "asset-1",
        "timeWindow": "1min",
        "timestamp": T0 + timedelta(minutes=minute),
        "cpu_usage": 10.0,
        "memory_usage_percent": 50.0,
        "system_process_count": 100,
        "system_thread_count": 1000,
        "system_uptime": 100_000.0 + minute * 60,
    }
    row.update(values)
    return row


def frames_of(
    snaps: Sequence[dict[str, Any]],
    disks: Sequence[dict[str, Any]] = (),
    interfaces: Sequence[dict[str, Any]] = (),
) -> Frames:
    return Frames(frame(snaps, SNAPSHOT_SCHEMA), frame(disks, DISK_SCHEMA), frame(interfaces, INTERFACE_SCHEMA))


def messy_frames() -> Frames:
    """Gaps, duplicates, NaN, impossible values, one-sample assets, a changed interval,
    disks and interfaces that come and go, missing optional fields, two days."""
    snaps = [
        # asset-1: every minute with a gap, a duplicate, NaN, a negative and an impossible value
        *(snap(m, cpu_usage=float(m % 17)) for m in range(0, 30)),
        snap(5, cpu_usage=99.0),  # duplicate of minute 5: the first row wins
        snap(31, cpu_usage=float("nan")),
        snap(32, cpu_usage=150.0, memory_swap_used=-1.0),
        snap(33, system_process_count=-5, memory_swap_used=2048.0),
        *(snap(m, cpu_usage=20.0 + m % 7) for m in range(47, 75)),  # a 14-minute outage
        snap(24 * 60 - 1, cpu_usage=3.0),  # 23:59, then the next day
        snap(24 * 60 + 0.5, cpu_usage=4.0),
        # asset-2: one sample only, no system section
        snap(7.25, assetId="asset-2", timeWindow="5min", system_process_count=None,
             system_thread_count=None, system_uptime=None),
        # asset-3: every minute, then every 5 minutes (changes interval), in another org
        *(snap(m, orgId="org-b", assetId="asset-3") for m in range(0, 20)),
        *(snap(m, orgId="org-b", assetId="asset-3") for m in range(20, 120, 5)),
        *(snap(24 * 60 + m, orgId="org-b", assetId="asset-3") for m in range(0, 60, 5)),
        # asset-4: every 40 s, so 1-minute buckets hold one or two samples
        *(snap(m * 40 / 60, orgId="org-b", assetId="asset-4", cpu_usage=float(m % 5),
               memory_swap_used=None if m % 3 else 1.0) for m in range(45)),
    ]
    disks = [
        *({"orgId": "org-a", "assetId": "asset-1", "timestamp": T0 + timedelta(minutes=m), "disk": "C:",
           "usage_percent": 40.0 + m, "used_bytes": 1e9 + m, "free_bytes": 2e9 - m,
           "read_bytes_per_sec": float(m * 10), "write_bytes_per_sec": None,
           "read_ops_per_sec": 1.5, "write_ops_per_sec": float("nan")} for m in range(0, 30)),
        # D: appears at minute 10 and vanishes at 20
        *({"orgId": "org-a", "assetId": "asset-1", "timestamp": T0 + timedelta(minutes=m), "disk": "D:",
           "usage_percent": 101.0 if m == 12 else 5.0, "used_bytes": 3.0, "free_bytes": -1.0 if m == 13 else 7.0,
           "read_bytes_per_sec": 0.0, "write_bytes_per_sec": 8.0} for m in range(10, 20)),
        {"orgId": "org-a", "assetId": "asset-1", "timestamp": T0 + timedelta(minutes=10), "disk": "D:",
         "usage_percent": 77.0},  # duplicate disk row
    ]
    interfaces = [
        *({"orgId": "org-a", "assetId": "asset-1", "timestamp": T0 + timedelta(minutes=m), "interface": "eth0",
           "bytes_recv_per_sec": 1000.0 + m, "bytes_sent_per_sec": 10.0 * m,
           "packets_recv_per_sec": 3.0, "packets_sent_per_sec": float("nan") if m == 3 else 2.0}
          for m in range(0, 30)),
        *({"orgId": "org-b", "assetId": "asset-3", "timestamp": T0 + timedelta(minutes=m), "interface": "wlan0",
           "bytes_recv_per_sec": 5.0, "bytes_sent_per_sec": 6.0,
           "packets_recv_per_sec": 1.0, "packets_sent_per_sec": 1.0} for m in range(0, 120, 5)),
        *({"orgId": "org-b", "assetId": "asset-4", "timestamp": T0 + timedelta(seconds=40 * m), "interface": "eth1",
           "bytes_recv_per_sec": float(m), "bytes_sent_per_sec": None if m % 4 else 2.0,
           "packets_recv_per_sec": 1.0, "packets_sent_per_sec": 1.0} for m in range(45)),
    ]
    return frames_of(snaps, disks, interfaces)


# ---- the DuckDB reference -----------------------------------------------------------------

_CLEAN_SNAPSHOTS = """
    SELECT orgId, assetId, ts_ms, timeWindow,
        CASE WHEN cpu_usage BETWEEN 0 AND 100 THEN cpu_usage END AS cpu_usage,
        CASE WHEN memory_usage_percent BETWEEN 0 AND 100 THEN memory_usage_percent END AS memory_usage_percent,
        CASE WHEN memory_swap_used >= 0 AND NOT isnan(memory_swap_used) THEN memory_swap_used END AS memory_swap_used,
        CASE WHEN system_process_count >= 0 THEN system_process_count END AS system_process_count,
        CASE WHEN system_thread_count >= 0 THEN system_thread_count END AS system_thread_count
    FROM (SELECT *, epoch_ms(timestamp) AS ts_ms FROM snaps_in)
    QUALIFY row_number() OVER (PARTITION BY orgId, assetId, ts_ms ORDER BY row_no) = 1
"""

_INTERVALS = """
    SELECT orgId, assetId, day_ms,
        coalesce(median(step_ms) / 1000.0,
                 CASE arg_min(timeWindow, ts_ms) WHEN '1min' THEN 60.0 WHEN '5min' THEN 300.0
                     WHEN '15min' THEN 900.0 WHEN '1hour' THEN 3600.0 WHEN '1day' THEN 86400.0 END) AS interval_s
    FROM (SELECT *, ts_ms - lag(ts_ms) OVER (PARTITION BY orgId, assetId, day_ms ORDER BY ts_ms) AS step_ms
          FROM (SELECT *, ts_ms - ts_ms % 86400000 AS day_ms FROM snaps))
    GROUP BY ALL
"""


def _clean(column: str, kind: str) -> str:
    if kind == "percent":
        return f"CASE WHEN {column} BETWEEN 0 AND 100 THEN {column} END AS {column}"
    return f"CASE WHEN {column} >= 0 AND NOT isnan({column}) THEN {column} END AS {column}"


def _last(column: str) -> str:
    return f"arg_max({column}, ts_ms) FILTER (WHERE {column} IS NOT NULL) AS {column}_last"


def reference_rollups(frames: Frames, window: str, flags: pl.DataFrame | None) -> dict[str, pl.DataFrame]:
    """The rollups of `window` by DuckDB SQL, buckets as epoch ms (`bucket_ms`)."""
    ms = WINDOW_SECONDS[window] * 1000
    con = duckdb.connect()
    con.register("snaps_in", frames.snapshots.with_row_index("row_no").to_arrow())
    con.register("disks_in", frames.disks.with_row_index("row_no").to_arrow())
    con.register("ifaces_in", frames.interfaces.with_row_index("row_no").to_arrow())
    flag_rows = flags if flags is not None else pl.DataFrame(
        schema={"orgId": pl.String, "assetId": pl.String, "start": pl.Datetime("ms", "UTC")}
    )
    con.register("flags_in", flag_rows.to_arrow())
    con.execute(f"CREATE TEMP TABLE snaps AS {_CLEAN_SNAPSHOTS}")
    con.execute(f"CREATE TEMP TABLE intervals AS {_INTERVALS}")
    stats = []
    for m in ASSET_METRICS:
        stats += [f"avg({m}) AS {m}_mean", f"min({m}) AS {m}_min", f"max({m}) AS {m}_max",
                  f"quantile_cont({m}::DOUBLE, 0.95) AS {m}_p95", _last(m)]
    assets = con.sql(f"""
        WITH b AS (
            SELECT *, ts_ms - ts_ms % {ms} AS bucket_ms, ts_ms - ts_ms % 86400000 AS day_ms,
                ts_ms - lag(ts_ms) OVER (PARTITION BY orgId, assetId, ts_ms - ts_ms % {ms} ORDER BY ts_ms) AS step_ms
            FROM snaps),
        f AS (SELECT orgId, assetId, epoch_ms(start) - epoch_ms(start) % {ms} AS bucket_ms, count(*) AS n
              FROM flags_in GROUP BY ALL),
        g AS (
            SELECT orgId, assetId, bucket_ms, day_ms, count(*) AS samples,
                greatest(min(ts_ms) - bucket_ms, max(step_ms), bucket_ms + {ms} - max(ts_ms)) / 1000.0 AS longest_gap_s,
                {", ".join(stats)}
            FROM b GROUP BY orgId, assetId, bucket_ms, day_ms)
        SELECT g.* EXCLUDE (day_ms), i.interval_s,
            least(1.0, g.samples / ({float(WINDOW_SECONDS[window])}::DOUBLE / i.interval_s)) AS coverage,
            coalesce(f.n, 0) AS anomaly_flags
        FROM g LEFT JOIN intervals i USING (orgId, assetId, day_ms)
        LEFT JOIN f USING (orgId, assetId, bucket_ms)
    """).pl()
    disk_clean = ", ".join(
        _clean(c, "percent" if c == "usage_percent" else "bytes")
        for c in ("usage_percent", "used_bytes", "free_bytes", "read_bytes_per_sec", "write_bytes_per_sec",
                  "read_ops_per_sec", "write_ops_per_sec")
    )
    rates = ("read_bytes_per_sec", "write_bytes_per_sec", "read_ops_per_sec", "write_ops_per_sec")
    disks = con.sql(f"""
        WITH d AS (
            SELECT orgId, assetId, disk, ts_ms, ts_ms - ts_ms % {ms} AS bucket_ms, {disk_clean}
            FROM (SELECT *, epoch_ms(timestamp) AS ts_ms FROM disks_in)
            QUALIFY row_number() OVER (PARTITION BY orgId, assetId, ts_ms, disk ORDER BY row_no) = 1)
        SELECT orgId, assetId, disk, bucket_ms, count(*) AS samples,
            max(usage_percent) AS usage_percent_max, {_last("usage_percent")},
            {_last("used_bytes")}, {_last("free_bytes")},
            {", ".join(f"avg({r}) AS {r}_mean, max({r}) AS {r}_max" for r in rates)}
        FROM d GROUP BY ALL
    """).pl()
    iface_rates = ("bytes_recv_per_sec", "bytes_sent_per_sec", "packets_recv_per_sec", "packets_sent_per_sec")
    interfaces = con.sql(f"""
        WITH d AS (
            SELECT orgId, assetId, interface, ts_ms, ts_ms - ts_ms % {ms} AS bucket_ms,
                ts_ms - ts_ms % 86400000 AS day_ms, {", ".join(_clean(r, "rate") for r in iface_rates)}
            FROM (SELECT *, epoch_ms(timestamp) AS ts_ms FROM ifaces_in)
            QUALIFY row_number() OVER (PARTITION BY orgId, assetId, ts_ms, interface ORDER BY row_no) = 1),
        g AS (
            SELECT orgId, assetId, interface, bucket_ms, day_ms, count(*) AS samples,
                {", ".join(f"avg({r}) AS {r}_mean, max({r}) AS {r}_max" for r in iface_rates)},
                sum(bytes_recv_per_sec) AS recv, sum(bytes_sent_per_sec) AS sent
            FROM d GROUP BY ALL)
        SELECT g.* EXCLUDE (day_ms, recv, sent), recv * i.interval_s AS bytes_recv_total,
            sent * i.interval_s AS bytes_sent_total, recv * i.interval_s + sent * i.interval_s AS bytes_total
        FROM g LEFT JOIN intervals i USING (orgId, assetId, day_ms)
    """).pl()
    con.close()
    return {"assets": assets, "disks": disks, "interfaces": interfaces}


def assert_same(ours: pl.DataFrame, ref: pl.DataFrame, keys: list[str]) -> None:
    """Every column of `ours` equals the reference row for row (see module docstring)."""
    mine = ours.with_columns(pl.col("bucket").dt.epoch("ms").alias("bucket_ms")).drop("bucket")
    assert mine.height == ref.height
    joined = mine.join(ref, on=keys, how="full", suffix="_ref", nulls_equal=True)
    assert joined.height == mine.height, "buckets differ from the reference"
    for column in mine.columns:
        if column in keys:
            continue
        got, want = joined[column].to_list(), joined[f"{column}_ref"].to_list()
        for g, w, key in zip(got, want, joined.select(keys).rows(), strict=True):
            if w is None or g is None:
                assert g is None and w is None, (column, key, g, w)
            elif column.endswith("_p95"):
                assert math.isclose(g, w, rel_tol=1e-12), (column, key, g, w)
            elif column.endswith(TOLERANT):
                assert math.isclose(g, w, rel_tol=1e-9, abs_tol=1e-12), (column, key, g, w)
            else:
                assert g == w, (column, key, g, w)


def check_against_reference(frames: Frames, flags: pl.DataFrame | None = None) -> None:
    ours = compute_rollups(frames, flags=flags)
    assert list(ours) == list(WINDOWS)
    for window, r in ours.items():
        ref = reference_rollups(frames, window, flags)
        assert_same(r.assets, ref["assets"], ["orgId", "assetId", "bucket_ms"])
        assert_same(r.disks, ref["disks"], ["orgId", "assetId", "disk", "bucket_ms"])
        assert_same(r.interfaces, ref["interfaces"], ["orgId", "assetId", "interface", "bucket_ms"])


# ---- rollups against the reference --------------------------------------------------------


@pytest.mark.slow
def test_rollups_of_a_generated_fleet_equal_the_duckdb_reference() -> None:
    flags = fleet_flags()
    assert flags.height > 0
    check_against_reference(fleet_frames(), flags)


@pytest.mark.slow
def test_rollups_of_messy_frames_equal_the_duckdb_reference() -> None:
    check_against_reference(messy_frames())


@pytest.mark.slow
def test_every_window_has_one_row_per_asset_and_bucket_with_samples() -> None:
    frames = fleet_frames()
    rollups = compute_rollups(frames)
    per_asset = frames.snapshots.group_by("assetId").len()
    for window, r in rollups.items():
        assert r.assets["samples"].sum() == frames.snapshots.height, window
        assert r.assets.select("orgId", "assetId", "bucket").is_unique().all()
        assert r.assets.group_by("assetId").agg(pl.col("samples").sum()).sort("assetId")["samples"].to_list() == \
            per_asset.sort("assetId")["len"].to_list()
    assert rollups["1day"].assets.height == 2 * 2 * 2  # orgs x assets x days


@pytest.mark.slow
def test_groups_of_very_unequal_sizes_equal_the_duckdb_reference() -> None:
    # One asset every second beside ten that sent one snapshot each: most groups are one
    # row and one is hundreds, too unequal for a single grid of `_aggregate` past 1 minute.
    busy = [snap(s / 60, assetId="busy", cpu_usage=float(s % 97), memory_swap_used=float(s)) for s in range(600)]
    quiet = [snap(m, assetId=f"quiet-{m}", cpu_usage=float(m)) for m in range(10)]
    check_against_reference(frames_of(busy + quiet))


@pytest.mark.slow
def test_an_assets_rollups_do_not_depend_on_the_other_assets_nor_the_windows_asked_for() -> None:
    frames = fleet_frames()
    asset = frames.snapshots.get_column("assetId")[0]
    alone = Frames(*(f.filter(pl.col("assetId") == asset) for f in (frames.snapshots, frames.disks, frames.interfaces)))
    together = compute_rollups(frames)
    for window in WINDOWS:
        by_itself = compute_rollups(alone, windows=[window])[window]
        assert by_itself.assets.height > 0
        for level in ("assets", "disks", "interfaces"):
            mine = getattr(together[window], level).filter(pl.col("assetId") == asset)
            assert mine.equals(getattr(by_itself, level)), (window, level)
    # Beside an asset that reports every second, whose groups are far larger.
    rng = np.random.default_rng(5)
    steady = [snap(m, cpu_usage=float(rng.uniform(0, 100)), memory_swap_used=float(rng.lognormal(10, 3)))
              for m in range(1440)]
    busy = [snap(s / 60, assetId="busy", cpu_usage=float(s % 97)) for s in range(3000)]
    crowded, quiet = compute_rollups(frames_of(busy + steady)), compute_rollups(frames_of(steady))
    for window in WINDOWS:
        assert crowded[window].assets.filter(pl.col("assetId") == "asset-1").equals(quiet[window].assets), window


@pytest.mark.slow
def test_row_order_of_the_input_does_not_change_the_rollups() -> None:
    frames = fleet_frames()  # in the frames' own order: the fast path that skips the string sort
    shuffled = Frames(*(f.sample(fraction=1.0, shuffle=True, seed=3) for f in (frames.snapshots, frames.disks,
                                                                              frames.interfaces)))
    assert not shuffled.disks.equals(frames.disks)
    ordered, scrambled = compute_rollups(frames), compute_rollups(shuffled)
    for window in WINDOWS:
        for level in ("assets", "disks", "interfaces"):
            assert getattr(scrambled[window], level).equals(getattr(ordered[window], level), null_equal=True)


# ---- definitions, one by one --------------------------------------------------------------


def test_duplicate_timestamps_count_once_and_keep_the_first_row() -> None:
    frames = frames_of([snap(0, cpu_usage=1.0), snap(0, cpu_usage=99.0), snap(1, cpu_usage=3.0)])
    row = compute_rollups(frames, windows=["5min"])["5min"].assets.row(0, named=True)
    assert row["samples"] == 2
    assert row["cpu_usage_max"] == 3.0
    assert row["cpu_usage_mean"] == 2.0


def test_nan_and_impossible_values_are_ignored_by_the_aggregates() -> None:
    frames = frames_of([
        snap(0, cpu_usage=float("nan"), memory_swap_used=-3.0),
        snap(1, cpu_usage=150.0, system_thread_count=-1),
        snap(2, cpu_usage=20.0),
    ])
    row = compute_rollups(frames, windows=["1hour"])["1hour"].assets.row(0, named=True)
    assert row["samples"] == 3
    assert (row["cpu_usage_min"], row["cpu_usage_max"], row["cpu_usage_mean"]) == (20.0, 20.0, 20.0)
    assert row["memory_swap_used_max"] is None
    assert row["system_thread_count_min"] == 1000


def test_a_value_outside_the_contracts_limits_is_null_in_every_checked_column() -> None:
    # The rollups' value checks are the contract's (schema.LIMITS): each snapshot column
    # whose field has a minimum or maximum gets a value just outside it in one sample and
    # the limit itself in another; only the limit may reach the aggregates.
    # Derived from the contract itself, not from the rollups' own map of it.
    checked = {
        column_name(table, name): LIMITS[kind]
        for table in TABLES
        if not table.repeated
        for name, kind, _ in table.fields
        if kind in LIMITS and column_name(table, name) in SNAPSHOT_SCHEMA
    }
    assert {"cpu_usage", "memory_usage_percent", "memory_swap_used", "system_uptime", "system_thread_count"} <= set(checked)
    aggregated = 0
    for column, limits in checked.items():
        edge = limits.minimum if math.isfinite(limits.minimum) else limits.maximum
        outside = edge - 1 if math.isfinite(limits.minimum) else edge + 1
        if limits.whole:
            edge, outside = int(edge), int(outside)
        frames = frames_of([snap(0, **{column: outside}), snap(1, **{column: edge})])
        row = compute_rollups(frames, windows=["1hour"])["1hour"].assets.row(0, named=True)
        kept = [v for name, v in row.items() if name.startswith(f"{column}_")]
        assert all(v == edge for v in kept), (column, row)
        aggregated += bool(kept)
    assert aggregated >= 4  # uptime feeds availability, not the asset rollups


def test_a_single_sample_gives_one_bucket_per_window_with_its_timewindow_as_interval() -> None:
    frames = frames_of([snap(7.25, timeWindow="5min")])
    rollups = compute_rollups(frames)
    for window, r in rollups.items():
        row = r.assets.row(0, named=True)
        assert (r.assets.height, row["samples"], row["interval_s"]) == (1, 1, 300.0), window
        assert row["cpu_usage_p95"] == row["cpu_usage_last"] == 10.0
    five = rollups["5min"].assets.row(0, named=True)
    assert five["bucket"] == T0 + timedelta(minutes=5)
    assert five["coverage"] == 1.0
    assert five["longest_gap_s"] == 165.0  # 07:15 to the bucket's end at 10:00


def test_longest_gap_includes_the_time_before_the_first_and_after_the_last_sample() -> None:
    frames = frames_of([snap(m) for m in (0.25, 1.0, 1.5, 4.0, 4.5)])
    rollups = compute_rollups(frames, windows=["1min", "5min"])
    assert rollups["5min"].assets["longest_gap_s"].to_list() == [150.0]  # 1:30 -> 4:00
    assert rollups["1min"].assets["longest_gap_s"].to_list() == [45.0, 30.0, 30.0]


def test_coverage_is_samples_over_expected_and_capped_at_one() -> None:
    every_minute = [snap(m) for m in range(60)]
    half = [snap(m) for m in range(0, 60, 2)] + [snap(m) for m in range(60, 120)]
    full = compute_rollups(frames_of(every_minute), windows=["1hour"])["1hour"].assets
    assert full["coverage"].to_list() == [1.0]
    # a gap in the first hour: interval stays 60 s (the median), coverage 30/60
    gappy = compute_rollups(frames_of(half), windows=["1hour"])["1hour"].assets
    assert gappy["interval_s"].to_list() == [60.0, 60.0]
    assert gappy["coverage"].to_list() == [0.5, 1.0]


def test_an_asset_that_changes_interval_is_measured_per_day() -> None:
    day_one = [snap(m) for m in range(0, 24 * 60, 1)]
    day_two = [snap(24 * 60 + m) for m in range(0, 24 * 60, 5)]
    assets = compute_rollups(frames_of(day_one + day_two), windows=["1day"])["1day"].assets
    assert assets["interval_s"].to_list() == [60.0, 300.0]
    assert assets["coverage"].to_list() == [1.0, 1.0]


def test_disks_that_appear_and_vanish_have_rows_only_while_present() -> None:
    disks = compute_rollups(messy_frames(), windows=["5min"])["5min"].disks
    d = disks.filter(pl.col("disk") == "D:")
    assert d["bucket"].to_list() == [T0 + timedelta(minutes=10), T0 + timedelta(minutes=15)]
    assert d["samples"].to_list() == [5, 5]
    assert d["usage_percent_max"].to_list() == [5.0, 5.0]  # the 101 % row is impossible, the 77 % a duplicate
    assert disks.filter(pl.col("disk") == "C:").height == 6


def test_anomaly_flags_count_in_the_bucket_where_they_start() -> None:
    frames = frames_of([snap(m) for m in range(0, 120)])
    flags = pl.DataFrame(
        {"orgId": ["org-a", "org-a", "org-a", "org-b"], "assetId": ["asset-1"] * 4,
         "start": [T0 + timedelta(minutes=5), T0 + timedelta(minutes=59, seconds=59),
                   T0 + timedelta(minutes=60), T0 + timedelta(minutes=5)]},
        schema_overrides={"start": pl.Datetime("ms", "UTC")},
    )
    hours = compute_rollups(frames, windows=["1hour"], flags=flags)["1hour"].assets
    assert hours["anomaly_flags"].to_list() == [2, 1]
    assert compute_rollups(frames, windows=["1hour"])["1hour"].assets["anomaly_flags"].to_list() == [0, 0]


def test_interface_total_bytes_is_the_rate_times_the_reporting_interval() -> None:
    snaps = [snap(m) for m in range(0, 10, 2)]
    ifaces = [{"orgId": "org-a", "assetId": "asset-1", "timestamp": T0 + timedelta(minutes=m), "interface": "eth0",
               "bytes_recv_per_sec": 100.0, "bytes_sent_per_sec": 10.0,
               "packets_recv_per_sec": 1.0, "packets_sent_per_sec": 1.0} for m in range(0, 10, 2)]
    row = compute_rollups(frames_of(snaps, interfaces=ifaces), windows=["15min"])["15min"].interfaces.row(
        0, named=True)
    assert row["bytes_recv_total"] == 5 * 100.0 * 120
    assert row["bytes_sent_total"] == 5 * 10.0 * 120
    assert row["bytes_total"] == 5 * 110.0 * 120


def test_last_is_the_latest_value_that_is_not_null() -> None:
    frames = frames_of([snap(0, memory_swap_used=5.0), snap(1, memory_swap_used=7.0), snap(2, cpu_usage=42.0)])
    row = compute_rollups(frames, windows=["5min"])["5min"].assets.row(0, named=True)
    assert row["memory_swap_used_last"] == 7.0
    assert row["cpu_usage_last"] == 42.0


def test_p95_interpolates_linearly_between_closest_ranks() -> None:
    values = [float(v) for v in (3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4)]
    frames = frames_of([snap(m, cpu_usage=v) for m, v in enumerate(values)])
    row = compute_rollups(frames, windows=["1hour"])["1hour"].assets.row(0, named=True)
    assert row["cpu_usage_p95"] == pytest.approx(float(np.percentile(values, 95)), rel=1e-12)
    assert row["cpu_usage_p95"] == 9.0 and float(np.percentile(values[:7], 95)) != max(values[:7])


@pytest.mark.slow
def test_p95_of_hours_and_days_with_nulls_and_outages_equals_the_duckdb_reference() -> None:
    # A 1-minute agent's hours hold up to 60 values (p95 from each bucket's sorted values),
    # its days 1,440 (p95 from Polars' selection of ranks); nulls, impossible values and an
    # outage make the buckets' counts differ, one metric is null for a whole hour.
    rng = np.random.default_rng(11)
    snaps = [
        snap(
            m,
            cpu_usage=float(rng.uniform(0, 100)) if m % 7 else None,
            memory_swap_used=float(rng.lognormal(10, 3)) if m % 13 else -1.0,
            system_thread_count=int(rng.integers(0, 5000)) if not 300 <= m < 360 else None,
        )
        for m in range(2 * 1440)
        if not 130 <= m < 172
    ]
    check_against_reference(frames_of(snaps))


def test_missing_optional_columns_give_null_statistics() -> None:
    frames = frames_of([snap(0), snap(1)])
    bare = Frames(frames.snapshots.drop("memory_swap_used", "system_uptime"), frames.disks.drop("write_ops_per_sec"),
                  frames.interfaces)
    row = compute_rollups(bare, windows=["5min"])["5min"].assets.row(0, named=True)
    assert row["memory_swap_used_max"] is None
    assert row["cpu_usage_mean"] == 10.0


def test_rollups_of_empty_frames_are_empty_with_the_same_columns() -> None:
    empty = compute_rollups(empty_frames())
    full = compute_rollups(fleet_frames(), windows=["1hour"])["1hour"]
    assert empty["1hour"].assets.height == 0
    assert empty["1hour"].assets.schema == full.assets.schema
    assert empty["1hour"].disks.schema == full.disks.schema
    assert empty["1hour"].interfaces.schema == full.interfaces.schema


def test_the_callers_frames_are_not_modified() -> None:
    frames = messy_frames()
    before = [f.clone() for f in (frames.snapshots, frames.disks, frames.interfaces)]
    compute_rollups(frames)
    compute_availability(frames)
    for b, after in zip(before, (frames.snapshots, frames.disks, frames.interfaces), strict=True):
        assert after.equals(b, null_equal=True)


def test_a_frame_without_a_key_column_raises_a_rollup_error_naming_it() -> None:
    frames = frames_of([snap(0)])
    with pytest.raises(RollupError, match=r"snapshots\.assetId: column is missing"):
        compute_rollups(Frames(frames.snapshots.drop("assetId"), frames.disks, frames.interfaces))
    with pytest.raises(RollupError, match=r"snapshots\.timestamp: expected a datetime"):
        compute_rollups(Frames(frames.snapshots.with_columns(pl.col("timestamp").cast(pl.String)),
                               frames.disks, frames.interfaces))
    with pytest.raises(InvalidArgument, match="unknown window"):
        compute_rollups(frames, windows=["2min"])


# ---- mergeable rollups ---------------------------------------------------------------------

EXACT_MERGED = ("min", "max", "last")


def assert_within_sketch_bound(estimate: Sequence[float | None], exact: Sequence[float | None]) -> int:
    """Every estimate within SKETCH_ALPHA relative of its exact value (nulls where it is
    null; 1e-12 relative slack for the float arithmetic of the bin boundaries); returns the
    values compared."""
    assert len(estimate) == len(exact)
    compared = 0
    for est, ref in zip(estimate, exact, strict=True):
        assert (est is None) == (ref is None), (est, ref)
        if ref is not None and est is not None:
            assert abs(est - ref) <= SKETCH_ALPHA * abs(ref) * (1 + 1e-12), (est, ref)
            compared += 1
    return compared


@pytest.mark.slow
def test_coarsened_rollups_equal_compute_rollups_and_p95_is_within_the_sketch_bound() -> None:
    frames = fleet_frames()
    minutes = mergeable_rollups(frames)
    exact = compute_rollups(frames)
    compared = 0
    for window in WINDOWS:
        ours = coarsen_rollups(minutes, window)
        ref = exact[window].assets
        assert ours.select("orgId", "assetId", "bucket", "samples").equals(
            ref.select("orgId", "assetId", "bucket", "samples")
        ), window
        for metric in ASSET_METRICS:
            for stat in EXACT_MERGED:
                assert ours[f"{metric}_{stat}"].to_list() == ref[f"{metric}_{stat}"].to_list(), (window, metric, stat)
            for a, b in zip(ours[f"{metric}_mean"].to_list(), ref[f"{metric}_mean"].to_list(), strict=True):
                assert (a is None and b is None) or a == pytest.approx(b, rel=1e-12)
            compared += assert_within_sketch_bound(ours[f"{metric}_p95"].to_list(), ref[f"{metric}_p95"].to_list())
    assert compared > 10_000


def test_p95_of_values_across_many_decades_stays_within_the_sketch_bound() -> None:
    rng = np.random.default_rng(3)
    minutes = np.arange(6 * 60)
    swap = rng.lognormal(10, 6, minutes.size)  # from about 1e-3 to 1e12
    swap[rng.random(minutes.size) < 0.1] = 0.0
    swap[::7] = swap[3]  # repeated values
    frames = frames_of([snap(int(m), memory_swap_used=float(v)) for m, v in zip(minutes, swap, strict=True)])
    for window in ("5min", "15min", "1hour", "1day"):
        ours = coarsen_rollups(mergeable_rollups(frames), window).sort("bucket")
        per_bucket = minutes // (WINDOW_SECONDS[window] // 60)
        exact = [float(np.percentile(swap[per_bucket == b], 95)) for b in np.unique(per_bucket)]
        assert assert_within_sketch_bound(ours["memory_swap_used_p95"].to_list(), exact) == len(exact)
    assert max(swap) / min(swap[swap > 0]) > 1e12


def test_rollups_of_separate_days_merge_into_a_week_without_the_raw_data() -> None:
    frames = fleet_frames()
    day = pl.col("timestamp").dt.date()
    dates = frames.snapshots.select(day.unique().sort()).to_series().to_list()
    assert len(dates) >= 2
    # Each day rolled up on its own, as nightly runs do; only the 1-minute rollups are kept.
    per_day = [
        mergeable_rollups(Frames(frames.snapshots.filter(day == d), frames.disks, frames.interfaces)) for d in dates
    ]
    week = coarsen_rollups(pl.concat(per_day), "1week")
    raw = frames.snapshots.with_columns(pl.col("timestamp").dt.truncate("1w").alias("bucket"))
    compared = 0
    for (org, asset, bucket), group in raw.group_by("orgId", "assetId", "bucket"):
        row = week.filter((pl.col("orgId") == org) & (pl.col("assetId") == asset) & (pl.col("bucket") == bucket))
        assert row.height == 1
        assert row["samples"].item() == group.height
        for metric in ASSET_METRICS:
            values = group[metric].drop_nulls().to_numpy().astype(float)
            assert row[f"{metric}_count"].item() == values.size
            assert row[f"{metric}_max"].item() == values.max()
            compared += assert_within_sketch_bound([row[f"{metric}_p95"].item()], [float(np.percentile(values, 95))])
    assert compared == len(ASSET_METRICS) * week.height > 0


def test_coarsening_in_steps_gives_the_same_rollups_as_at_once() -> None:
    minutes = mergeable_rollups(fleet_frames())
    stepwise = coarsen_rollups(coarsen_rollups(coarsen_rollups(minutes, "15min"), "1hour"), "1day")
    at_once = coarsen_rollups(minutes, "1day")
    # Sums (and means) are added up in another order, so they may differ in the last bits.
    summed = [c for c in at_once.columns if c.endswith(("_mean", "_sum"))]
    assert stepwise.drop(summed).equals(at_once.drop(summed))
    for column in summed:
        assert np.allclose(stepwise[column].to_numpy(), at_once[column].to_numpy(), rtol=1e-12, atol=0)
    assert stepwise["cpu_usage_sketch"].list.len().sum() > stepwise.height  # bins were merged, not kept apart


def test_mergeable_rollups_ignore_null_values_and_reject_what_they_cannot_merge() -> None:
    frames = frames_of([snap(0, memory_swap_used=None), snap(1, memory_swap_used=3.0), snap(2, cpu_usage=0.0)])
    row = coarsen_rollups(mergeable_rollups(frames), "1hour").row(0, named=True)
    assert (row["samples"], row["memory_swap_used_count"], row["memory_swap_used_p95"]) == (3, 1, 3.0)
    assert row["cpu_usage_min"] == 0.0 and row["cpu_usage_p95"] == pytest.approx(10.0, rel=SKETCH_ALPHA)
    empty = mergeable_rollups(frames_of([]))
    assert empty.height == 0 and empty.columns == coarsen_rollups(mergeable_rollups(frames), "1day").columns
    with pytest.raises(InvalidArgument, match="unknown window"):
        mergeable_rollups(frames, "2min")
    with pytest.raises(RollupError, match=r"rollups\.cpu_usage_count: column is missing"):
        coarsen_rollups(compute_rollups(frames, windows=["1min"])["1min"].assets, "1hour")


# ---- availability -------------------------------------------------------------------------


def reference_availability(frames: Frames) -> dict[tuple[str, str, date], tuple[int, int, float | None]]:
    """(samples, reboots, covered seconds) per asset and day, by a plain loop."""
    seen: dict[tuple[str, str, int], dict[str, Any]] = {}
    for row in frames.snapshots.iter_rows(named=True):
        ts_ms = int(row["timestamp"].timestamp() * 1000)
        seen.setdefault((row["orgId"], row["assetId"], ts_ms), row)
    by_asset: dict[tuple[str, str], list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for (org, asset, ts_ms), row in sorted(seen.items()):
        by_asset[(org, asset)].append((ts_ms, row))
    day_ms = 86_400_000
    out: dict[tuple[str, str, date], list[Any]] = {}
    for (org, asset), rows in by_asset.items():
        steps: dict[int, list[int]] = defaultdict(list)
        first_window: dict[int, str] = {}
        for i, (ts_ms, row) in enumerate(rows):
            day = ts_ms // day_ms
            first_window.setdefault(day, row["timeWindow"])
            if i and rows[i - 1][0] // day_ms == day:
                steps[day].append(ts_ms - rows[i - 1][0])
        interval = {d: (statistics.median(steps[d]) / 1000.0 if steps[d] else WINDOW_SECONDS[w])
                    for d, w in first_window.items()}
        covered: dict[int, float] = defaultdict(float)
        for i, (ts_ms, row) in enumerate(rows):
            day = ts_ms // day_ms
            key = (org, asset, datetime.fromtimestamp(day * 86_400, UTC).date())
            entry = out.setdefault(key, [0, 0, 0.0])
            entry[0] += 1
            uptime = row["system_uptime"]
            reach = [interval[day], 86_400.0]
            if i:
                reach.append((ts_ms - rows[i - 1][0]) / 1000.0)
                before = rows[i - 1][1]["system_uptime"]
                if uptime is not None and before is not None and uptime < before:
                    entry[1] += 1
            if uptime is not None:
                reach.append(uptime)
            cover = min(reach)
            today = min(cover, (ts_ms - day * day_ms) / 1000.0)
            covered[day] += today
            covered[day - 1] += cover - today
        for day in first_window:
            out[(org, asset, datetime.fromtimestamp(day * 86_400, UTC).date())][2] = covered[day]
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


def check_availability(frames: Frames) -> pl.DataFrame:
    ours = compute_availability(frames)
    ref = reference_availability(frames)
    assert len(ours) == len(ref)
    for row in ours.iter_rows(named=True):
        samples, reboots, covered = ref[(row["orgId"], row["assetId"], row["date"])]
        assert (row["samples"], row["reboots"]) == (samples, reboots)
        # covered seconds are sums of fractional uptimes: order of addition differs
        assert row["covered_s"] == pytest.approx(covered, rel=1e-12)
        assert row["availability"] == pytest.approx(covered / 86_400, rel=1e-12)
    return ours


@pytest.mark.slow
def test_availability_of_a_generated_fleet_equals_the_loop_reference() -> None:
    ours = check_availability(fleet_frames())
    assert ours["reboots"].sum() > 0  # the seed has a reboot
    assert ours["availability"].min() < 0.995  # and an outage
    assert ours["availability"].max() <= 1.0


def test_availability_of_messy_frames_equals_the_loop_reference() -> None:
    check_availability(messy_frames())


def test_a_reboot_makes_the_time_before_the_first_sample_after_boot_unavailable() -> None:
    steady = [snap(m, system_uptime=3600.0 + m * 60) for m in range(0, 24 * 60)]
    rebooted = [
        snap(m, system_uptime=(3600.0 + m * 60) if m < 600 else (m - 600) * 60 + 20.0) for m in range(0, 24 * 60)
    ]
    a = compute_availability(frames_of(steady)).row(0, named=True)
    b = compute_availability(frames_of(rebooted)).row(0, named=True)
    assert (a["reboots"], b["reboots"]) == (0, 1)
    assert a["covered_s"] == 86_400 - 60  # the last minute of the day is not covered yet
    assert b["covered_s"] == a["covered_s"] - 40  # booted 20 s before the 10:00 sample


def test_availability_counts_a_sample_after_midnight_toward_the_day_before() -> None:
    frames = frames_of([snap(24 * 60 - 1.5), snap(24 * 60 + 0.5)])
    rows = compute_availability(frames)
    assert rows["date"].to_list() == [date(2026, 3, 1), date(2026, 3, 2)]
    assert rows["covered_s"].to_list() == [60.0 + 30.0, 30.0]


# ---- the Mongo sink -----------------------------------------------------------------------


def test_upserting_rollups_twice_replaces_and_keeps_other_orgs_apart(db: Db) -> None:
    snaps = [snap(m, cpu_usage=float(m)) for m in range(0, 10)] + [snap(m, orgId="org-b") for m in range(3)]
    ifaces = [{"orgId": "org-a", "assetId": "asset-1", "timestamp": T0, "interface": "eth0",
               "bytes_recv_per_sec": 1.0, "bytes_sent_per_sec": 1.0,
               "packets_recv_per_sec": 1.0, "packets_sent_per_sec": 1.0}]
    disks = [{"orgId": "org-a", "assetId": "asset-1", "timestamp": T0, "disk": "C:", "usage_percent": 3.0}]
    frames = frames_of(snaps, disks, ifaces)
    rollups = compute_rollups(frames, windows=["5min", "1hour"])
    first = upsert_rollups(db, "org-a", rollups)
    coll = db["performance_rollups"]
    assert first == coll.count_documents({}) == 2 + 1 + 2 + 2  # assets 2+1, disks 2, interfaces 2
    assert coll.count_documents({"orgId": "org-b"}) == 0
    doc = coll.find_one({"window": "1hour", "kind": "asset"})
    assert doc is not None and doc["cpu_usage_max"] == 9.0 and doc["bucket"] == T0
    other_day = compute_rollups(frames_of([snap(24 * 60 + m) for m in range(3)]), windows=["1hour"])
    upsert_rollups(db, "org-a", other_day)
    assert coll.count_documents({}) == 8
    # a re-run of the first day without the disk: documents replaced, the disk's removed
    changed = compute_rollups(frames_of([snap(m, cpu_usage=1.0) for m in range(0, 10)], (), ifaces),
                              windows=["5min", "1hour"])
    upsert_rollups(db, "org-a", changed)
    assert coll.count_documents({"kind": "disk"}) == 0
    assert coll.count_documents({}) == 8 - 2
    doc = coll.find_one({"window": "1hour", "kind": "asset", "bucket": T0})
    assert doc is not None and doc["cpu_usage_max"] == 1.0


def test_rollup_ids_of_two_orgs_never_collide_whatever_their_ids_hold(db: Db) -> None:
    # Joined with "|", org "p|q" with asset "r" and org "p" with asset "q|r" had one _id.
    first = compute_rollups(frames_of([snap(m, orgId="p|q", assetId="r") for m in range(3)]), windows=["1hour"])
    second = compute_rollups(frames_of([snap(m, orgId="p", assetId="q|r") for m in range(3)]), windows=["1hour"])

    upsert_rollups(db, "p|q", first)
    upsert_rollups(db, "p", second)

    coll = db["performance_rollups"]
    assert sorted((d["orgId"], d["assetId"]) for d in coll.find({}, {"_id": 0, "orgId": 1, "assetId": 1})) == [
        ("p", "q|r"),
        ("p|q", "r"),
    ]
    assert all(len(d["_id"]) == 64 and "|" not in d["_id"] for d in coll.find({}, {"_id": 1}))
