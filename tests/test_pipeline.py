"""One org's day end to end against the real server and a real lake read by DuckDB."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from bson import ObjectId
from click.testing import CliRunner

from perf_analytics.anomalies import AnomalyConfig, flag_anomalies
from perf_analytics.cli import app
from perf_analytics.config import Settings
from perf_analytics.errors import ConfigError
from perf_analytics.extract import ExtractError, extract_window
from perf_analytics.generate import DEFAULT_START, generate_fleet
from perf_analytics.lake import connect_lake
from perf_analytics.pipeline import ANOMALY_FLAGS, run_day
from perf_analytics.schema import SNAPSHOTS, validate_snapshot
from perf_analytics.store import Db

DAY1 = DEFAULT_START.date()
DAY2 = DAY1 + timedelta(days=1)


def _load(db: Db, *, days: int, orgs: int = 2, until: date | None = None) -> int:
    docs = [{"_id": ObjectId(), **validate_snapshot(p)}
            for p in generate_fleet(orgs=orgs, assets=2, days=days, interval_s=300, seed=3)]
    if until is not None:
        docs = [d for d in docs if d["timestamp"].date() < until]
    db[SNAPSHOTS].insert_many(docs)
    return len(docs)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def test_a_day_lands_in_the_lake_and_duckdb_reads_only_that_org(db: Db, tmp_path: Path) -> None:
    _load(db, days=2)
    lake = tmp_path / "lake"
    result = run_day(db, "org-01", DAY2, lake=lake)
    start = DEFAULT_START + timedelta(days=1)
    expected = db[SNAPSHOTS].count_documents({"orgId": "org-01", "timestamp": {"$gte": start, "$lt": start + timedelta(days=1)}})
    assert result.snapshots == expected > 0
    assert result.rollup_rows["1day"] == 2
    run_day(db, "org-02", DAY2, lake=lake)
    con = connect_lake(lake, org_id="org-01")
    orgs = con.execute("select distinct orgId from rollups").fetchall()
    assert orgs == [("org-01",)]
    assert con.execute("select count(*) from rollups where \"window\" = '1hour'").fetchone() == (48,)
    assert con.execute("select count(*), min(availability) > 0.5 from availability").fetchone() == (2, True)
    flags = con.execute("select count(*) from anomalies").fetchone()
    assert flags == (result.flags.height,)


def test_rerunning_a_day_rewrites_identical_partitions(db: Db, tmp_path: Path) -> None:
    _load(db, days=2, orgs=1)
    lake = tmp_path / "lake"
    run_day(db, "org-01", DAY2, lake=lake)
    first = _files(lake)
    run_day(db, "org-01", DAY2, lake=lake)
    assert _files(lake) == first


def test_reading_the_fleet_in_batches_of_assets_gives_the_same_lake_and_flags(db: Db, tmp_path: Path) -> None:
    docs = [{"_id": ObjectId(), **validate_snapshot(p)}
            for p in generate_fleet(orgs=2, assets=5, days=2, interval_s=300, seed=8)]
    db[SNAPSHOTS].insert_many(docs)
    # Peers compared loosely, so that the one comparison across assets has work to do.
    cfg = AnomalyConfig(peer_min_assets=2, peer_z=1.0, peer_min_percent_points=1.0)
    calls: list[tuple[int, int]] = []
    whole = run_day(db, "org-01", DAY2, lake=tmp_path / "whole", config=cfg)
    batched = run_day(db, "org-01", DAY2, lake=tmp_path / "batched", config=cfg, asset_batch=2,
                      progress=lambda done, total: calls.append((done, total)))
    assert calls == [(2, 5), (4, 5), (5, 5)]
    assert (batched.flags["detector"] == "peer").sum() > 0
    assert batched.flags.equals(whole.flags)
    assert batched.snapshots == whole.snapshots > 0
    # And both equal flagging the org read whole, without any assetId filter.
    start = DEFAULT_START + timedelta(days=1)
    read_whole = extract_window(db, "org-01", start - timedelta(days=cfg.history_days), start + timedelta(days=1))
    assert flag_anomalies(read_whole.frames, day=DAY2, config=cfg).equals(whole.flags)
    assert _files(tmp_path / "batched") == _files(tmp_path / "whole")
    assert not batched.flags.filter(pl.col("orgId") != "org-01").height


def test_an_asset_id_stored_as_an_objectid_fails_the_day_loudly_as_a_whole_org_read_does(
    db: Db, tmp_path: Path
) -> None:
    _load(db, days=2, orgs=1)
    victim = sorted(db[SNAPSHOTS].distinct("assetId"))[0]
    db[SNAPSHOTS].update_one({"assetId": victim}, {"$set": {"assetId": ObjectId(victim)}})
    for batch in (None, 1):
        with pytest.raises(ExtractError):
            run_day(db, "org-01", DAY2, lake=tmp_path, asset_batch=batch)


def test_a_day_that_lost_its_snapshots_replaces_every_partition_with_an_empty_one(db: Db, tmp_path: Path) -> None:
    _load(db, days=2, orgs=1)
    run_day(db, "org-01", DAY2, lake=tmp_path)
    db[SNAPSHOTS].delete_many({})
    run_day(db, "org-01", DAY2, lake=tmp_path)
    con = connect_lake(tmp_path, org_id="org-01")
    for view in ("rollups", "rollups_disks", "rollups_interfaces", "availability", "anomalies"):
        assert con.execute(f"select count(*) from {view}").fetchall() == [(0,)], view
    con.close()
    assert len(list((tmp_path / "rollups").rglob("part-0.parquet"))) == 5


def test_a_batch_size_below_one_is_a_config_error(db: Db, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="asset_batch must be at least 1, got 0"):
        run_day(db, "org-01", DAY2, lake=tmp_path, asset_batch=0)


def test_a_days_flags_do_not_change_when_the_next_day_arrives(db: Db, tmp_path: Path) -> None:
    _load(db, days=3, orgs=1, until=DAY2 + timedelta(days=1))
    before = run_day(db, "org-01", DAY2, lake=tmp_path / "a").flags
    db[SNAPSHOTS].delete_many({})
    _load(db, days=3, orgs=1)
    after = run_day(db, "org-01", DAY2, lake=tmp_path / "b").flags
    assert before.equals(after)


def test_the_mongo_sink_holds_exactly_the_days_flags_after_reruns(db: Db, tmp_path: Path) -> None:
    _load(db, days=2, orgs=1)
    result = run_day(db, "org-01", DAY2, lake=tmp_path / "lake", to_mongo=True, rollups=False)
    run_day(db, "org-01", DAY2, lake=tmp_path / "lake", to_mongo=True, rollups=False)
    assert db[ANOMALY_FLAGS].count_documents({"orgId": "org-01"}) == result.flags.height
    stale: dict[str, Any] = {"_id": "stale", "orgId": "org-01", "start": result.flags["start"][0]
                             if result.flags.height else DEFAULT_START + timedelta(days=1, hours=1)}
    db[ANOMALY_FLAGS].insert_one(stale)
    run_day(db, "org-01", DAY2, lake=tmp_path / "lake", to_mongo=True, rollups=False)
    assert db[ANOMALY_FLAGS].find_one({"_id": "stale"}) is None


def test_cli_rollup_anomalies_and_query(db: Db, settings: Settings) -> None:
    _load(db, days=2, orgs=1)
    base = ["--uri", str(settings.uri), "--db", settings.db, "--lake", settings.lake]
    r = CliRunner().invoke(app, [*base, "rollup", "--org", "org-01", "--date", DAY2.isoformat(), "--windows", "1hour,1day"])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(f"org-01 {DAY2}: ")
    assert "1hour 48, 1day 2" in r.stdout
    r = CliRunner().invoke(app, [*base, "anomalies", "--org", "org-01", "--date", DAY2.isoformat()])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, [*base, "query", "--org", "org-01", "--format", "json",
                                 "select count(*) as n from rollups where \"window\" = '1day'"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == [{"n": 2}]
    r = CliRunner().invoke(app, [*base, "query", "--org", "org-01", "select * from nowhere"])
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: Catalog Error")
    r = CliRunner().invoke(app, [*base, "rollup", "--org", "org-01", "--date", "yesterday"])
    assert (r.exit_code, r.stderr) == (1, "Error: --date: not a date (YYYY-MM-DD): 'yesterday'\n")
