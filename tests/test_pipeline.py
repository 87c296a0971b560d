"""One org's day end to end against the real server and a real lake read by DuckDB."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from bson import ObjectId
from click.testing import CliRunner

from perf_analytics.cli import app
from perf_analytics.config import Settings
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
