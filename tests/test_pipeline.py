"""One org's day end to end: the real server synced into a real lake, flagged and rolled up from it, read by DuckDB."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import bson
import polars as pl
import pytest
from bson import ObjectId
from pymongo import MongoClient, monitoring

from perf_analytics.anomalies import AnomalyConfig, FlagOptions, flag_anomalies
from perf_analytics.config import Settings
from perf_analytics.errors import ExtractError, InvalidArgument, NotSynced
from perf_analytics.extract import extract_window
from perf_analytics.lake import connect_lake
from perf_analytics.pipeline import ANOMALY_FLAGS, ServerSnapshots, run_day
from perf_analytics.plots import asset_figure
from perf_analytics.schema import SNAPSHOTS, validate_snapshot
from perf_analytics.store import Db
from perf_analytics.sync import sync_snapshots, sync_snapshots_all_orgs
from perf_analytics.synth import DEFAULT_START, FleetSpec, generate_fleet
from tests.conftest import Cli

DAY1 = DEFAULT_START.date()
DAY2 = DAY1 + timedelta(days=1)


def _load(db: Db, *, days: int, orgs: int = 2, until: date | None = None, lake: Path | None = None) -> int:
    """Insert a generated fleet; with `lake`, sync it there (as the nightly run does first)."""
    docs = [{"_id": ObjectId(), **validate_snapshot(p)}
            for p in generate_fleet(FleetSpec(orgs=orgs, assets=2, days=days, interval_s=300, seed=3))]
    if until is not None:
        docs = [d for d in docs if d["timestamp"].date() < until]
    db[SNAPSHOTS].insert_many(docs)
    if lake is not None:
        sync_snapshots_all_orgs(db, lake)
    return len(docs)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def _derived(root: Path) -> dict[str, bytes]:
    """The partitions run_day writes (rollups, availability, anomalies), not the snapshot
    mirror nor the flags' baseline state (kept only when the lake is the source)."""
    return {k: v for k, v in _files(root).items() if not k.startswith(("snapshots/", "anomaly_state/"))}


@pytest.mark.slow
def test_a_day_lands_in_the_lake_and_duckdb_reads_only_that_org(db: Db, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    _load(db, days=2, lake=lake)
    result = run_day(lake, "org-01", DAY2)
    start = DEFAULT_START + timedelta(days=1)
    expected = db[SNAPSHOTS].count_documents({"orgId": "org-01", "timestamp": {"$gte": start, "$lt": start + timedelta(days=1)}})
    assert result.snapshots == expected > 0
    assert result.rollup_rows["1day"] == 2
    run_day(lake, "org-02", DAY2)
    con = connect_lake(lake, org_id="org-01")
    orgs = con.execute("select distinct orgId from rollups").fetchall()
    assert orgs == [("org-01",)]
    assert con.execute("select count(*) from rollups where \"window\" = '1hour'").fetchone() == (48,)
    assert con.execute("select count(*), min(availability) > 0.5 from availability").fetchone() == (2, True)
    flags = con.execute("select count(*) from anomalies").fetchone()
    assert flags == (result.flags.height,)


@pytest.mark.slow
def test_the_lake_and_the_server_give_the_same_flags_rollups_and_partitions(db: Db, tmp_path: Path) -> None:
    docs = [{"_id": ObjectId(), **validate_snapshot(p)}
            for p in generate_fleet(FleetSpec(orgs=2, assets=4, days=3, interval_s=300, seed=5))]
    db[SNAPSHOTS].insert_many(docs)
    # Off-type documents: one extraction reads (an integer metric), one it skips and reports.
    odd = {**docs[0], "_id": ObjectId(), "timestamp": docs[0]["timestamp"] + timedelta(days=2, seconds=7)}
    odd["performanceData"] = {**odd["performanceData"], "cpu": {**odd["performanceData"]["cpu"], "usage": 12}}
    skipped = {**odd, "_id": ObjectId(), "timestamp": odd["timestamp"] + timedelta(seconds=1)}
    skipped["performanceData"] = {**odd["performanceData"], "memory": {**odd["performanceData"]["memory"], "usagePercent": "50"}}
    db[SNAPSHOTS].insert_many([odd, skipped])
    day = DAY1 + timedelta(days=2)
    cfg = AnomalyConfig(peer_min_assets=2, peer_z=1.0, peer_min_percent_points=1.0)
    sync_snapshots_all_orgs(db, tmp_path / "lake")
    reported = {}
    for org in ("org-01", "org-02"):
        from_lake = run_day(tmp_path / "lake", org, day, config=cfg, asset_batch=3)
        from_server = run_day(tmp_path / "server", org, day, config=cfg, asset_batch=3, source=ServerSnapshots(db))
        assert from_lake.flags.equals(from_server.flags) and from_lake.flags.height > 0
        assert from_lake.snapshots == from_server.snapshots > 0
        assert [(p.id, p.reason) for p in from_lake.skipped] == [(p.id, p.reason) for p in from_server.skipped]
        assert from_lake.skipped_count == from_server.skipped_count
        reported[org] = [p.id for p in from_lake.skipped]
    assert reported == {docs[0]["orgId"]: [skipped["_id"]], "org-02" if docs[0]["orgId"] == "org-01" else "org-01": []}
    assert _derived(tmp_path / "lake") == _derived(tmp_path / "server") != {}


class _Replies(monitoring.CommandListener):
    """Counts the snapshot documents in the server's replies (find, getMore, aggregate cursors)."""

    def __init__(self) -> None:
        self.documents = 0
        self.commands: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.commands.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        cursor = event.reply.get("cursor")
        if isinstance(cursor, Mapping) and str(cursor.get("ns", "")).endswith(f".{SNAPSHOTS}"):
            for item in cursor.get("firstBatch", cursor.get("nextBatch", [])):
                # A raw batch cursor's reply holds its documents as one BSON stream.
                self.documents += len(bson.decode_all(item)) if isinstance(item, bytes) else 1

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.mark.slow
def test_flagging_and_rolling_up_a_synced_day_reads_no_synced_snapshot_from_the_server(
    db: Db, settings: Settings, server_uri: str
) -> None:
    # Loaded from an archive with its _ids, older than any sync's margin: a sync that
    # finds nothing new reads nothing (fresh _ids would be re-read within the margin).
    docs = [{"_id": ObjectId(ObjectId.from_datetime(p_ts).binary[:4] + os.urandom(8)), **p}
            for p in (validate_snapshot(p) for p in generate_fleet(FleetSpec(orgs=2, assets=2, days=2, interval_s=300, seed=3)))
            for p_ts in [p["timestamp"]]]
    db[SNAPSHOTS].insert_many(docs)
    sync_snapshots_all_orgs(db, settings.lake)
    listener = _Replies()
    client: MongoClient[dict[str, Any]] = MongoClient(server_uri, event_listeners=[listener], tz_aware=True)
    watched = client[settings.db]
    try:
        # What `rollup`, `anomalies` and `plot --asset` do: sync the org (one query, nothing
        # new), then read the day and its history from the lake; the sinks get the results.
        for rollups in (True, False):
            assert sync_snapshots(watched, settings.lake, org_id="org-01").new == 0
            result = run_day(settings.lake, "org-01", DAY2, rollups=rollups, windows=["1day"], sink=watched)
            assert result.snapshots > 0 and (result.sink_writes > 0 or not rollups)
        assert sync_snapshots(watched, settings.lake, org_id="org-01").new == 0
        asset_figure(settings.lake, "org-01", docs[0]["assetId"], DAY2)
        assert listener.commands.count("find") >= 3  # the syncs asked, and were answered
        assert listener.documents == 0
        # The count sees documents, in decoded and in raw batches (as sync reads them).
        list(watched[SNAPSHOTS].find({"orgId": "org-01"}, limit=3))
        list(watched[SNAPSHOTS].find_raw_batches({"orgId": "org-01"}, limit=2))
        assert listener.documents == 5
    finally:
        client.close()


@pytest.mark.slow
def test_rerunning_a_day_rewrites_identical_partitions(db: Db, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    _load(db, days=2, orgs=1, lake=lake)
    run_day(lake, "org-01", DAY2)
    first = _files(lake)
    run_day(lake, "org-01", DAY2)
    assert _files(lake) == first


@pytest.mark.slow
def test_reading_the_fleet_in_batches_of_assets_gives_the_same_lake_and_flags(db: Db, tmp_path: Path) -> None:
    docs = [{"_id": ObjectId(), **validate_snapshot(p)}
            for p in generate_fleet(FleetSpec(orgs=2, assets=5, days=2, interval_s=300, seed=8))]
    db[SNAPSHOTS].insert_many(docs)
    for name in ("whole", "batched"):
        sync_snapshots_all_orgs(db, tmp_path / name)
    # Peers compared loosely, so that the one comparison across assets has work to do.
    cfg = AnomalyConfig(peer_min_assets=2, peer_z=1.0, peer_min_percent_points=1.0)
    calls: list[tuple[int, int]] = []
    whole = run_day(tmp_path / "whole", "org-01", DAY2, config=cfg, asset_batch=5)
    batched = run_day(tmp_path / "batched", "org-01", DAY2, config=cfg, asset_batch=2,
                      progress=lambda done, total: calls.append((done, total)))
    assert calls == [(2, 5), (4, 5), (5, 5)]
    assert (batched.flags["detector"] == "peer").sum() > 0
    assert batched.flags.equals(whole.flags)
    assert batched.snapshots == whole.snapshots > 0
    # And both equal flagging the org read whole from the server, without any assetId filter.
    start = DEFAULT_START + timedelta(days=1)
    read_whole = extract_window(db, "org-01", start - timedelta(days=cfg.history_days), start + timedelta(days=1))
    assert flag_anomalies(read_whole.frames, options=FlagOptions(day=DAY2, config=cfg)).equals(whole.flags)
    assert _derived(tmp_path / "batched") == _derived(tmp_path / "whole")
    assert not batched.flags.filter(pl.col("orgId") != "org-01").height


@pytest.mark.slow
def test_an_asset_id_stored_as_an_objectid_fails_the_day_loudly_as_a_whole_org_read_does(
    db: Db, tmp_path: Path
) -> None:
    _load(db, days=2, orgs=1)
    victim = sorted(db[SNAPSHOTS].distinct("assetId"))[0]
    db[SNAPSHOTS].update_one({"assetId": victim}, {"$set": {"assetId": ObjectId(victim)}})
    sync_snapshots_all_orgs(db, tmp_path)
    for batch in (100, 1):
        with pytest.raises(ExtractError):
            run_day(tmp_path, "org-01", DAY2, asset_batch=batch)


@pytest.mark.slow
def test_a_day_whose_mirror_holds_no_snapshots_replaces_every_partition_with_an_empty_one(
    db: Db, tmp_path: Path
) -> None:
    _load(db, days=2, orgs=1, lake=tmp_path)
    run_day(tmp_path, "org-01", DAY2)
    # The same lake with its mirror rebuilt from a server that no longer holds the day.
    shutil.rmtree(tmp_path / "snapshots")
    shutil.rmtree(tmp_path / "_manifests")
    db[SNAPSHOTS].delete_many({})
    sync_snapshots_all_orgs(db, tmp_path)
    run_day(tmp_path, "org-01", DAY2)
    con = connect_lake(tmp_path, org_id="org-01")
    for view in ("rollups", "rollups_disks", "rollups_interfaces", "availability", "anomalies"):
        assert con.execute(f"select count(*) from {view}").fetchall() == [(0,)], view
    con.close()
    assert len(list((tmp_path / "rollups").rglob("part-0.parquet"))) == 5


@pytest.mark.slow
def test_an_org_the_lake_never_mirrored_is_an_error_and_nothing_is_written(db: Db, tmp_path: Path) -> None:
    _load(db, days=2, orgs=1)
    with pytest.raises(NotSynced, match="run `perf-analytics sync --org org-01` first"):
        run_day(tmp_path, "org-01", DAY2)
    assert _files(tmp_path) == {}


def test_a_batch_size_below_one_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="asset_batch must be at least 1, got 0"):
        run_day(tmp_path, "org-01", DAY2, asset_batch=0)


@pytest.mark.slow
def test_a_days_flags_do_not_change_when_the_next_day_arrives(db: Db, tmp_path: Path) -> None:
    docs = [{"_id": ObjectId(), **validate_snapshot(p)}
            for p in generate_fleet(FleetSpec(orgs=1, assets=2, days=3, interval_s=300, seed=3))]
    later = DAY2 + timedelta(days=1)
    db[SNAPSHOTS].insert_many([d for d in docs if d["timestamp"].date() < later])
    sync_snapshots_all_orgs(db, tmp_path)
    before = run_day(tmp_path, "org-01", DAY2).flags
    db[SNAPSHOTS].insert_many([d for d in docs if d["timestamp"].date() >= later])
    assert sync_snapshots_all_orgs(db, tmp_path).new == sum(d["timestamp"].date() >= later for d in docs)
    after = run_day(tmp_path, "org-01", DAY2).flags
    assert run_day(tmp_path, "org-01", later).snapshots > 0
    assert before.equals(after)


@pytest.mark.slow
def test_the_mongo_sink_holds_exactly_the_days_flags_after_reruns(db: Db, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    _load(db, days=2, orgs=1, lake=lake)
    result = run_day(lake, "org-01", DAY2, sink=db, rollups=False)
    run_day(lake, "org-01", DAY2, sink=db, rollups=False)
    assert db[ANOMALY_FLAGS].count_documents({"orgId": "org-01"}) == result.flags.height
    stale: dict[str, Any] = {"_id": "stale", "orgId": "org-01", "start": result.flags["start"][0]
                             if result.flags.height else DEFAULT_START + timedelta(days=1, hours=1)}
    db[ANOMALY_FLAGS].insert_one(stale)
    run_day(lake, "org-01", DAY2, sink=db, rollups=False)
    assert db[ANOMALY_FLAGS].find_one({"_id": "stale"}) is None


@pytest.mark.slow
def test_cli_rollup_anomalies_and_query(cli: Cli, db: Db, settings: Settings) -> None:
    _load(db, days=2, orgs=1)
    r = cli("anomalies", "--org", "org-01", "--date", DAY2.isoformat(), "--no-sync")
    assert (r.exit_code, r.stderr) == (
        1, f"Error: the lake at {settings.lake} holds no snapshots of org org-01 yet: run `perf-analytics sync --org org-01` first\n")
    r = cli("rollup", "--org", "org-01", "--date", DAY2.isoformat(), "--windows", "1hour,1day")
    assert r.exit_code == 0, r.output
    assert r.stderr == f"sync org-01: {db[SNAPSHOTS].count_documents({}):,} new snapshot(s) into the lake\n"
    assert r.stdout.startswith(f"org-01 {DAY2}: ")
    assert "1hour 48, 1day 2" in r.stdout
    r = cli("anomalies", "--org", "org-01", "--date", DAY2.isoformat(), "--no-sync")
    assert (r.exit_code, r.stderr) == (0, "")
    r = cli("query", "--org", "org-01", "--format", "json", "select count(*) as n from rollups where \"window\" = '1day'")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == [{"n": 2}]
    r = cli("query", "--org", "org-01", "select * from nowhere")
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: Catalog Error")
    r = cli("rollup", "--org", "org-01", "--date", "yesterday")
    assert (r.exit_code, r.stderr) == (1, "Error: --date: not a date (YYYY-MM-DD): 'yesterday'\n")


@pytest.mark.slow
def test_a_days_values_that_cannot_be_readings_are_in_the_result_per_series_and_reason(
    db: Db, tmp_path: Path
) -> None:
    """A byte rate written into memory.usagePercent by another application is counted, not lost in silence."""
    docs = [{"_id": ObjectId(), **validate_snapshot(p)}
            for p in generate_fleet(FleetSpec(orgs=1, assets=2, days=2, interval_s=300, seed=3))]
    start = DEFAULT_START + timedelta(days=1)
    victim = docs[0]["assetId"]
    bad = [d for d in docs if d["assetId"] == victim and d["timestamp"] >= start][:4]
    for doc in bad:
        doc["performanceData"]["memory"]["usagePercent"] = 52_000.0
    # Out of range on the day before too: that is history, reported by its own day's run.
    earlier = next(d for d in docs if d["assetId"] == victim and d["timestamp"] < start)
    earlier["performanceData"]["memory"]["usagePercent"] = 250.0
    db[SNAPSHOTS].insert_many(docs)
    sync_snapshots_all_orgs(db, tmp_path)
    for batch in (100, 1):
        result = run_day(tmp_path, "org-01", DAY2, asset_batch=batch, rollups=False)
        rows = result.dropped.select("assetId", "metric", "reason", "count", "example", "first").rows()
        assert rows == [(victim, "memory.usagePercent", "outside 0-100 for a percentage", 4, 52_000.0,
                         bad[0]["timestamp"])]
