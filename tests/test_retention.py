"""Retention against the real server and real files: delete only what the lake holds, restore exactly."""

from __future__ import annotations

import fcntl
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bson
import pyarrow.parquet as pq
import pytest
from bson import ObjectId
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient, monitoring

from perf_analytics.cli import app
from perf_analytics.config import Settings
from perf_analytics.errors import InvalidArgument, NotFound, RetentionError
from perf_analytics.retention import (
    cutoff_of,
    export_snapshots,
    export_snapshots_all_orgs,
    restore_snapshots,
    retention_status,
    retention_status_all_orgs,
)
from perf_analytics.schema import SNAPSHOTS, validate_snapshot
from perf_analytics.store import Db, connect_uri, ensure_indexes, probe_capabilities
from perf_analytics.sync import (
    MARKS,
    ids_sha256,
    listed_snapshot_files,
    sync_snapshots,
    sync_snapshots_all_orgs,
)
from tests.conftest import Cli
from tests.factories import T0, series, snapshot
from tests.test_sync import insert, mirrored, old_id, server_documents

DAY = timedelta(days=1)
NOW = datetime(2026, 4, 10, 9, 30, tzinfo=UTC)  # with 30 days: every day before 2026-03-11 is old
CUTOFF = datetime(2026, 3, 11, tzinfo=UTC)
RECENT = datetime(2026, 4, 5, 8, 0, tzinfo=UTC)
ORGS = ["org-a", "org-b"]


def fleet(db: Db) -> None:
    """Two orgs: org-a with two old days and a recent one, org-b across an old midnight and recent."""
    insert(db, series(40, org="org-a", asset="a1"))
    insert(db, series(30, org="org-a", asset="a2", start=T0 + DAY))
    insert(db, series(5, org="org-a", asset="a3", start=RECENT))
    insert(db, series(20, org="org-b", asset="b1", start=T0.replace(hour=23, minute=50)))
    insert(db, series(3, org="org-b", asset="b2", start=RECENT))


def recent_only(docs: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """The documents an export with NOW and 30 days must leave in the database."""
    out = {}
    for key, raw in docs.items():
        if RawBSONDocument(raw, codec_options=CodecOptions(document_class=RawBSONDocument, tz_aware=True))[
            "timestamp"
        ] >= CUTOFF:
            out[key] = raw
    return out


def lake_files(lake: str | Path) -> dict[str, bytes]:
    root = Path(lake)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()} if root.exists() else {}


def records(lake: str | Path, org: str) -> dict[str, Any]:
    path = Path(lake, "_manifests/retention", f"orgId={org}.json")
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["orgId"] == org
    days: dict[str, Any] = data["days"]
    return days


def states(rows: list[Any]) -> list[tuple[str, str, str, int, int]]:
    return [(r.org_id, r.date, r.state, r.database_rows, r.lake_rows) for r in rows]


# ---- export ------------------------------------------------------------------------------


@pytest.mark.slow
def test_export_syncs_then_deletes_exactly_the_old_days_the_lake_holds(db: Db, settings: Settings) -> None:
    fleet(db)
    before = server_documents(db)
    report = export_snapshots_all_orgs(db, settings.lake, now=NOW)
    assert report.cutoff == CUTOFF and report.sync is not None and report.sync.new == 98
    assert [(d.org_id, d.date, d.outcome, d.deleted) for d in report.days] == [
        ("org-a", "2026-03-01", "deleted", 40), ("org-a", "2026-03-02", "deleted", 30),
        ("org-b", "2026-03-01", "deleted", 10), ("org-b", "2026-03-02", "deleted", 10),
    ]
    assert report.deleted == 90 and report.kept == []
    assert server_documents(db) == recent_only(before)
    assert mirrored(settings.lake, ORGS)[0] == before  # every deleted snapshot is in the lake, exactly
    day = records(settings.lake, "org-a")["2026-03-01"]
    docs = [RawBSONDocument(raw, codec_options=CodecOptions(document_class=RawBSONDocument, tz_aware=True))
            for raw in before.values()]
    a1 = [d["_id"].binary for d in docs if d["orgId"] == "org-a" and d["timestamp"].date().isoformat() == "2026-03-01"]
    assert (day["state"], day["deleted"], day["database_rows"], day["lake_rows"]) == ("deleted", 40, 40, 40)
    assert day["database_sha256"] == day["lake_sha256"] == ids_sha256(a1)
    again = export_snapshots_all_orgs(db, settings.lake, now=NOW)
    assert (again.deleted, again.days) == (0, [])


class _Deletes(monitoring.CommandListener):
    def __init__(self) -> None:
        self.deletes: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "delete":
            self.deletes += [dict(d["q"]) for d in event.command["deletes"]]

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.mark.slow
def test_verified_days_are_deleted_in_few_large_deletes_each_id_scoped_by_its_org(
    db: Db, settings: Settings, server_uri: str
) -> None:
    fleet(db)
    listener = _Deletes()
    client: MongoClient[dict[str, Any]] = MongoClient(server_uri, tz_aware=True, event_listeners=[listener])
    try:
        report = export_snapshots_all_orgs(client[db.name], settings.lake, now=NOW)
    finally:
        client.close()
    assert report.deleted == 90
    assert len(listener.deletes) == 1  # four (org, day)s, one delete: FerretDB scans once per delete
    clauses = listener.deletes[0]["$or"]
    assert [(c["orgId"], len(c["_id"]["$in"])) for c in clauses] == [("org-a", 70), ("org-b", 20)]
    listener.deletes.clear()
    insert(db, series(30, org="org-b", asset="b3", start=T0 + 2 * DAY))
    client = MongoClient(server_uri, tz_aware=True, event_listeners=[listener])
    try:
        export_snapshots(client[db.name], settings.lake, org_id="org-b", now=NOW, delete_chunk=12)
    finally:
        client.close()
    assert [(q["orgId"], len(q["_id"]["$in"])) for q in listener.deletes] == [("org-b", 12), ("org-b", 12), ("org-b", 6)]


def test_the_cutoff_is_the_start_of_the_utc_day_n_days_back() -> None:
    assert cutoff_of(NOW, 30) == CUTOFF
    assert cutoff_of(datetime(2026, 4, 10, 23, 59, tzinfo=UTC), 1) == datetime(2026, 4, 9, tzinfo=UTC)
    with pytest.raises(InvalidArgument, match="at least 1"):
        cutoff_of(NOW, 0)
    with pytest.raises(InvalidArgument, match="timezone-aware"):
        cutoff_of(datetime(2026, 4, 10), 30)


@pytest.mark.slow
def test_a_day_whose_database_holds_a_snapshot_the_lake_lacks_is_kept_and_reported(db: Db, settings: Settings) -> None:
    fleet(db)
    sync_snapshots_all_orgs(db, settings.lake)
    # Inserted with an old _id and never marked: an incremental sync cannot find it.
    insert(db, series(1, org="org-a", asset="unmarked", start=T0 + DAY), _id=old_id(T0 - 90 * DAY))
    report = export_snapshots(db, settings.lake, org_id="org-a", now=NOW)
    assert [(d.date, d.outcome) for d in report.days] == [("2026-03-01", "deleted"), ("2026-03-02", "kept")]
    kept = report.kept[0]
    assert (kept.database_rows, kept.lake_rows) == (31, 30)
    assert kept.reason.startswith("1 snapshot(s) in the database are not in the lake")
    assert db[SNAPSHOTS].count_documents({"orgId": "org-a", "timestamp": {"$gte": T0 + DAY, "$lt": T0 + 2 * DAY}}) == 31
    assert "2026-03-02" not in records(settings.lake, "org-a")
    sync_snapshots(db, settings.lake, org_id="org-a", full=True)
    assert export_snapshots(db, settings.lake, org_id="org-a", now=NOW).deleted == 31


@pytest.mark.slow
def test_a_snapshot_written_into_a_day_after_its_verification_is_not_deleted(db: Db, settings: Settings) -> None:
    fleet(db)
    late = {"_id": ObjectId(), **validate_snapshot(snapshot(orgId="org-a", assetId="late", timestamp="2026-03-01T15:00:00Z"))}

    def write_late(stage: str, count: int) -> None:
        if stage == "verified" and count == 1:
            db[SNAPSHOTS].insert_one(late)

    report = export_snapshots(db, settings.lake, org_id="org-a", now=NOW, progress=write_late)
    assert report.deleted == 70
    assert [d["assetId"] for d in db[SNAPSHOTS].find({"timestamp": {"$lt": CUTOFF}, "orgId": "org-a"})] == ["late"]
    assert ("org-a", "2026-03-01", "unverified", 1, 40) in states(retention_status(db, settings.lake, org_id="org-a"))
    follow = export_snapshots(db, settings.lake, org_id="org-a", now=NOW)  # syncs it, then it verifies
    assert (follow.sync is not None and follow.sync.new, follow.deleted) == (1, 1)
    assert db[SNAPSHOTS].count_documents({"orgId": "org-a", "timestamp": {"$lt": CUTOFF}}) == 0


def test_a_lake_file_that_no_longer_matches_its_manifest_keeps_its_day(db: Db, settings: Settings) -> None:
    fleet(db)
    sync_snapshots(db, settings.lake, org_id="org-a")
    victim = next(f for f in listed_snapshot_files(settings.lake, org_id="org-a") if f.date == "2026-03-02")
    path = Path(settings.lake, victim.path)
    pq.write_table(pq.read_table(path).slice(1), path)  # a row lost behind the manifest's back
    report = export_snapshots(db, settings.lake, org_id="org-a", now=NOW)
    assert [(d.date, d.outcome) for d in report.days] == [("2026-03-01", "deleted"), ("2026-03-02", "kept")]
    assert report.kept[0].reason == f"listed file {victim.path} no longer holds the 30 snapshots its manifest lists"
    assert db[SNAPSHOTS].count_documents({"orgId": "org-a", "assetId": "a2"}) == 30


@pytest.mark.slow
def test_a_dry_run_says_what_would_go_and_writes_nothing(db: Db, settings: Settings) -> None:
    fleet(db)
    sync_snapshots(db, settings.lake, org_id="org-a")
    held, files = server_documents(db), lake_files(settings.lake)
    report = export_snapshots_all_orgs(db, settings.lake, now=NOW, dry_run=True)
    assert report.sync is None and report.deleted == 0
    assert [(d.org_id, d.date, d.outcome, d.database_rows) for d in report.days] == [
        ("org-a", "2026-03-01", "would delete", 40), ("org-a", "2026-03-02", "would delete", 30),
        ("org-b", "2026-03-01", "needs sync", 10), ("org-b", "2026-03-02", "needs sync", 10),
    ]
    assert report.days[-1].reason == "the lake lists no file of this day" and report.kept == []
    assert server_documents(db) == held and lake_files(settings.lake) == files


@pytest.mark.slow
def test_an_org_export_reads_and_deletes_only_that_org(db: Db, settings: Settings) -> None:
    fleet(db)
    report = export_snapshots(db, settings.lake, org_id="org-b", now=NOW)
    assert report.deleted == 20 and {d.org_id for d in report.days} == {"org-b"}
    assert db[SNAPSHOTS].count_documents({"orgId": "org-a"}) == 75
    assert not Path(settings.lake, "snapshots/orgId=org-a").exists()
    assert not Path(settings.lake, "_manifests/retention/orgId=org-a.json").exists()
    with pytest.raises(InvalidArgument, match="org id is required"):
        export_snapshots(db, settings.lake, org_id="", now=NOW)


def test_a_second_retention_run_on_the_same_lake_at_once_is_refused(db: Db, settings: Settings) -> None:
    lock = Path(settings.lake, "_manifests/.retention.lock")
    lock.parent.mkdir(parents=True)
    with lock.open("a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        with pytest.raises(RetentionError, match="another retention run is using the lake"):
            export_snapshots_all_orgs(db, settings.lake, now=NOW)


# ---- restore -----------------------------------------------------------------------------


@pytest.mark.slow
def test_restore_writes_back_the_exact_documents_and_never_twice(db: Db, settings: Settings) -> None:
    fleet(db)
    odd = {**validate_snapshot(snapshot(orgId="org-a", assetId="odd", timestamp="2026-03-02T06:00:00Z")),
           "_id": "legacy-string-id", "agentVersion": "2.1", "tags": ["x", {"deep": bson.Int64(7)}]}
    db[SNAPSHOTS].insert_one(odd)
    before = server_documents(db)
    export_snapshots_all_orgs(db, settings.lake, now=NOW)
    assert db[SNAPSHOTS].count_documents({"_id": "legacy-string-id"}) == 0  # a string _id is deleted too
    # One snapshot is back already, and another holds the (orgId, assetId, timestamp) of a second one.
    first = next(d for d in mirrored(settings.lake, ["org-a"])[0].values())
    db[SNAPSHOTS].insert_one(RawBSONDocument(first))
    clash = validate_snapshot(snapshot(orgId="org-a", assetId="a1", timestamp=(T0 + 5 * timedelta(minutes=1)).isoformat()))
    db[SNAPSHOTS].insert_one(clash)
    report = restore_snapshots(db, settings.lake, org_id="org-a", start="2026-03-01", end="2026-03-02")
    assert (report.days, report.read, report.inserted, report.already) == (["2026-03-01", "2026-03-02"], 71, 69, 2)
    db[SNAPSHOTS].delete_one({"_id": clash["_id"]})
    assert restore_snapshots(db, settings.lake, org_id="org-a", start="2026-03-01", end="2026-03-02").inserted == 1
    assert server_documents(db) == {
        k: v for k, v in before.items() if RawBSONDocument(v)["orgId"] == "org-a" or k in recent_only(before)
    }
    assert sorted((m["orgId"], m["date"]) for m in db[MARKS].find()) == [("org-a", "2026-03-01"), ("org-a", "2026-03-02")]
    assert records(settings.lake, "org-a")["2026-03-01"]["state"] == "restored"
    assert {s.state for s in retention_status(db, settings.lake, org_id="org-a")} == {"both"}
    assert sync_snapshots(db, settings.lake, org_id="org-a").new == 0  # the mirror holds them already


def test_restore_refuses_a_file_holding_another_orgs_snapshot_before_writing_anything(
    db: Db, settings: Settings
) -> None:
    fleet(db)
    export_snapshots_all_orgs(db, settings.lake, now=NOW)
    # A file of org-b's listed in org-a's partition (a hand-made or damaged lake).
    stray = next(f for f in listed_snapshot_files(settings.lake, org_id="org-b") if f.date == "2026-03-02")
    target = Path(settings.lake, "snapshots/orgId=org-a/date=2026-03-02", Path(stray.path).name)
    target.write_bytes(Path(settings.lake, stray.path).read_bytes())
    manifest = Path(settings.lake, "_manifests/snapshots/orgId=org-a.json")
    data = json.loads(manifest.read_text())
    data["files"].append({**vars(stray), "path": target.relative_to(settings.lake).as_posix()})
    manifest.write_text(json.dumps(data))
    held = server_documents(db)
    with pytest.raises(RetentionError, match=r"holds snapshot .* of orgId 'org-b', not 'org-a': nothing was restored"):
        restore_snapshots(db, settings.lake, org_id="org-a", start="2026-03-01", end="2026-03-02")
    assert server_documents(db) == held


@pytest.mark.slow
def test_restore_of_days_the_lake_does_not_hold_is_an_error(db: Db, settings: Settings) -> None:
    fleet(db)
    export_snapshots_all_orgs(db, settings.lake, now=NOW)
    with pytest.raises(NotFound, match="the lake holds no snapshots of org org-c from 2026-03-01 to 2026-03-02"):
        restore_snapshots(db, settings.lake, org_id="org-c", start="2026-03-01", end="2026-03-02")
    with pytest.raises(InvalidArgument, match="start 2026-03-02 is after end 2026-03-01"):
        restore_snapshots(db, settings.lake, org_id="org-a", start="2026-03-02", end="2026-03-01")
    with pytest.raises(InvalidArgument, match="not a YYYY-MM-DD date"):
        restore_snapshots(db, settings.lake, org_id="org-a", start="March", end="2026-03-01")


# ---- status ------------------------------------------------------------------------------


@pytest.mark.slow
def test_status_puts_each_day_of_each_org_in_one_state(db: Db, settings: Settings) -> None:
    fleet(db)
    export_snapshots_all_orgs(db, settings.lake, now=NOW)  # the old days: only in the lake
    insert(db, series(4, org="org-a", asset="new", start=RECENT + DAY))  # only in the database
    for payload in series(2, org="org-a", asset="unmarked", start=RECENT):
        insert(db, [payload], _id=old_id(T0))  # unmarked old _ids: the lake lacks them
    db[SNAPSHOTS].delete_many({"orgId": "org-b", "assetId": "b2"})  # gone without an export
    rows = retention_status_all_orgs(db, settings.lake)
    assert states(rows) == [
        ("org-a", "2026-03-01", "lake", 0, 40),
        ("org-a", "2026-03-02", "lake", 0, 30),
        ("org-a", "2026-04-05", "unverified", 7, 5),
        ("org-a", "2026-04-06", "database", 4, 0),
        ("org-b", "2026-03-01", "lake", 0, 10),
        ("org-b", "2026-03-02", "lake", 0, 10),
        ("org-b", "2026-04-05", "unverified", 0, 3),
    ]
    notes = {(r.org_id, r.date): r.note for r in rows}
    assert notes[("org-a", "2026-04-05")] == "2 snapshot(s) in the database are not in the lake"
    assert notes[("org-b", "2026-04-05")] == "the database copies went without a verified export"
    assert notes[("org-a", "2026-03-01")].startswith("deleted after verification 20")
    assert states(retention_status(db, settings.lake, org_id="org-b")) == [r for r in states(rows) if r[0] == "org-b"]


# ---- kill -9 -----------------------------------------------------------------------------

_KILLED_RUN = """
import os, signal, sys
from datetime import datetime
from perf_analytics.store import connect_uri
from perf_analytics.retention import export_snapshots_all_orgs
uri, name, lake, now, stage, at = sys.argv[1:7]
def progress(s, count):
    if s == stage and count >= int(at):
        os.kill(os.getpid(), signal.SIGKILL)
export_snapshots_all_orgs(connect_uri(uri, name), lake, now=datetime.fromisoformat(now), delete_chunk=10, progress=progress)
"""


@pytest.fixture
def clean_db(server_uri: str, db_name: str) -> Iterator[Db]:
    """A second database for the same data, to compare a clean run with an interrupted one."""
    db = connect_uri(server_uri, f"{db_name}_clean")
    ensure_indexes(db)
    try:
        yield db
    finally:
        db.client.drop_database(db.name)
        db.client.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stage", "at", "deleted_when_killed"),
    [
        ("verified", 1, 0),  # between the first day's verification and its delete
        ("deleted", 10, 10),  # after the first of the day's four deletes
        ("deleted", 40, 40),  # after the day's last delete, before its record says so
        ("deleted", 60, 60),  # in the second day
    ],
)
def test_kill_9_between_verify_and_delete_or_during_it_then_rerun_ends_like_a_clean_run(
    db: Db, clean_db: Db, settings: Settings, server_uri: str, tmp_path: Path, stage: str, at: int,
    deleted_when_killed: int,
) -> None:
    fleet(db)
    original = server_documents(db)
    clean_db[SNAPSHOTS].insert_many([RawBSONDocument(raw) for raw in original.values()])
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_RUN, server_uri, db.name, str(settings.lake), NOW.isoformat(), stage, str(at)],
        capture_output=True, text=True, check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(server_documents(db)) == len(original) - deleted_when_killed
    rerun = export_snapshots_all_orgs(db, settings.lake, now=NOW)
    assert rerun.finished == (1 if at == 40 else 0)

    clean_lake = tmp_path / "clean-lake"
    export_snapshots_all_orgs(clean_db, clean_lake, now=NOW)
    assert server_documents(db) == server_documents(clean_db) == recent_only(original)
    assert mirrored(settings.lake, ORGS) == mirrored(clean_lake, ORGS)
    assert mirrored(settings.lake, ORGS)[0] == original  # nothing lost, nothing twice
    assert states(retention_status_all_orgs(db, settings.lake)) == states(retention_status_all_orgs(clean_db, clean_lake))
    for org in ORGS:
        assert {d: r["state"] for d, r in records(settings.lake, org).items()} == {
            d: r["state"] for d, r in records(clean_lake, org).items()
        }


# ---- the command -------------------------------------------------------------------------


def test_cli_export_status_and_restore_print_summaries(cli: Cli, db: Db) -> None:
    # The CLI's clock is today's: data 400 days old is old for any --older-than-days below that.
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    old = today - 400 * DAY
    insert(db, series(3, org="acme", asset="x", start=old))
    insert(db, series(2, org="acme", asset="y", start=today - DAY))
    old_day = old.date().isoformat()
    dry = cli("retention", "export", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.splitlines() == [
        f"all orgs (admin run across tenants), days before {(today - 30 * DAY).date().isoformat()}, dry run: would delete 0 "
        "snapshots of 0 verified day(s); 1 day(s) wait for the sync export runs first; 0 day(s) would be kept; nothing written",
        f"  needs sync acme {old_day} (3 snapshots): the lake lists no file of this day",
    ]
    result = cli("retention", "export", "--org", "acme")
    assert result.exit_code == 0, result.output
    cutoff = (today - 30 * DAY).date().isoformat()
    assert result.stdout.startswith(
        f"org acme, days before {cutoff}: synced 5 new; deleted 3 snapshots of 1 verified day(s); 0 day(s) kept; "
    )
    status = cli("retention", "status")
    assert status.exit_code == 0, status.output
    recent_day = (today - DAY).date().isoformat()
    assert status.stdout.splitlines() == [
        "acme",
        f"  in both                  1 day(s)  database         2  lake         2  {recent_day}",
        f"  only in the lake         1 day(s)  database         0  lake         3  {old_day}",
    ]
    as_json = json.loads(cli("retention", "status", "--org", "acme", "--json").stdout)
    assert [(d["date"], d["state"]) for d in as_json] == [(old_day, "lake"), (recent_day, "both")]
    back = cli("retention", "restore", "--org", "acme", "--from", old_day, "--to", old_day)
    assert back.exit_code == 0, back.output
    assert back.stdout.startswith(f"org acme, {old_day}..{old_day}: restored 3 snapshots, 0 already present, "
                                  "1 day(s) marked for sync; ")
    data = json.loads(cli("retention", "export", "--json").stdout)
    assert (data["scope"], data["deleted"], data["kept"], data["dry_run"]) == ("all-orgs", 3, 0, False)


def test_cli_restore_needs_an_org_and_reports_mistakes_in_one_line(cli: Cli, db: Db) -> None:
    missing = cli("retention", "restore", "--from", "2026-03-01", "--to", "2026-03-02")
    assert missing.exit_code == 2 and "Missing option '--org'" in missing.stderr
    nothing = cli("retention", "restore", "--org", "acme", "--from", "2026-03-01", "--to", "2026-03-02")
    assert nothing.exit_code == 1
    assert nothing.stderr == "Error: the lake holds no snapshots of org acme from 2026-03-01 to 2026-03-02\n"
    bad = cli("retention", "export", "--org", "../x")
    assert bad.exit_code == 1 and bad.stderr.startswith("Error: value of orgId '../x' cannot be a partition path segment")
    backwards = cli("retention", "restore", "--org", "acme", "--from", "2026-03-02", "--to", "2026-03-01")
    assert backwards.exit_code == 1 and backwards.stderr == "Error: --from 2026-03-02 is after --to 2026-03-01\n"
    not_a_day = cli("retention", "restore", "--org", "acme", "--from", "March", "--to", "2026-03-01")
    assert not_a_day.exit_code == 1 and not_a_day.stderr == "Error: --from: not a date (YYYY-MM-DD): 'March'\n"


def test_cli_retention_help_has_examples_that_run(cli: Cli, db: Db) -> None:
    insert(db, series(3, org="acme", start=datetime(2026, 1, 5, 12, tzinfo=UTC)))
    examples: list[str] = []
    for sub in ("export", "status", "restore"):  # restore last: it needs what export moved
        result = cli.invoke(app, ["retention", sub, "--help"])
        assert result.exit_code == 0
        found = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("perf-analytics retention")]
        assert found, sub
        examples += found
    group = cli.invoke(app, ["retention", "--help"])
    assert group.exit_code == 0 and "perf-analytics retention export --dry-run" in group.stdout
    for example in examples:
        args = example.split()[1:]
        run = cli(*args)
        assert run.exit_code == 0, (example, run.output)
    assert db[SNAPSHOTS].count_documents({"orgId": "acme"}) == 3  # restored by the last example


# ---- init --ttl-days ---------------------------------------------------------------------


def test_init_with_ttl_days_warns_that_ttl_deletes_without_an_archive(cli: Cli, raw_db: Db) -> None:
    result = cli("init", "--ttl-days", "30")
    caps = probe_capabilities(raw_db)
    warning = ("warning: a TTL index deletes snapshots without an archive; "
               "`perf-analytics retention export` deletes only what the lake verifiably holds")
    if caps.ttl_indexes:
        assert result.exit_code == 0, result.output
        assert result.stderr == warning + "\n"
    else:  # no TTL index is built, so there is nothing to warn of: the error points to retention
        assert result.exit_code == 1
        assert warning not in result.stderr and "expire old snapshots with `retention` instead" in result.stderr
    help_text = " ".join(cli.invoke(app, ["init", "--help"]).stdout.split())
    assert "Deletes without an archive: `retention export` is the safe default." in help_text
