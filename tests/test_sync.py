"""The snapshot mirror against the real server and real files: one pass, lossless, never twice."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import bson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from bson import Decimal128, Int64, ObjectId
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient, monitoring
from pymongo.errors import PyMongoError

from perf_analytics.cli import app
from perf_analytics.config import Settings
from perf_analytics.errors import InvalidArgument, LakeError, ManifestError, SyncError
from perf_analytics.extract import extract_window
from perf_analytics.frames import arrow_schema, frames_from_arrow
from perf_analytics.lake import connect_lake, connect_lake_all_orgs
from perf_analytics.schema import ID_RULE, SNAPSHOTS, validate_snapshot
from perf_analytics.store import Db, connect_uri
from perf_analytics.sync import (
    MARKS,
    ids_sha256,
    listed_snapshot_files,
    mark_documents_for_sync,
    mark_for_sync,
    mirror_documents_all_orgs,
    read_lake_documents,
    sync_snapshots,
    sync_snapshots_all_orgs,
)
from tests.conftest import Cli
from tests.factories import T0, series, set_path, snapshot

DAY = timedelta(days=1)


def insert(db: Db, payloads: list[dict[str, Any]], **fields: Any) -> list[Any]:
    """Validated snapshots inserted as an application would (fresh ObjectIds unless given)."""
    docs = [{**fields, **validate_snapshot(p)} for p in payloads]
    return list(db[SNAPSHOTS].insert_many(docs).inserted_ids)


def old_id(when: datetime) -> ObjectId:
    """An ObjectId from `when` (a loader keeping an archive's _id, or a writer's slow clock)."""
    return ObjectId(ObjectId.from_datetime(when).binary[:4] + os.urandom(8))


def server_documents(db: Db) -> dict[bytes, bytes]:
    """Every stored snapshot's exact encoding, by its encoded _id."""
    out: dict[bytes, bytes] = {}
    for batch in db[SNAPSHOTS].find_raw_batches({}):
        for doc in bson.decode_all(batch, codec_options=CodecOptions(document_class=RawBSONDocument)):
            out[bson.encode({"_id": doc["_id"]})] = doc.raw
    return out


def mirrored(lake: str | Path, orgs: list[str]) -> tuple[dict[bytes, bytes], Counter[tuple[str, str]]]:
    """The lake's documents by encoded _id (each at most once) and its rows per (org, date)."""
    docs: dict[bytes, bytes] = {}
    counts: Counter[tuple[str, str]] = Counter()
    for org in orgs:
        for f in listed_snapshot_files(lake, org_id=org):
            counts[(org, f.date)] += f.rows
        for doc in read_lake_documents(lake, org_id=org):
            key = bson.encode({"_id": doc["_id"]})
            assert key not in docs, f"{doc['_id']} is in the lake twice"
            docs[key] = doc.raw
    return docs, counts


def parts_on_disk(lake: str | Path) -> set[str]:
    return {p.relative_to(lake).as_posix() for p in Path(lake, "snapshots").rglob("*") if p.is_file()}


def listed(lake: str | Path, orgs: list[str]) -> set[str]:
    return {f.path for org in orgs for f in listed_snapshot_files(lake, org_id=org)}


def view_counts(lake: str | Path) -> list[tuple[Any, ...]]:
    """Rows per (org, date) in the lake's DuckDB `snapshots` view, and how many distinct _ids."""
    con = connect_lake_all_orgs(lake)
    try:
        return con.sql(
            "SELECT orgId, date, count(*), count(DISTINCT coalesce(hex(_id), _idOther)) FROM snapshots GROUP BY ALL ORDER BY ALL"
        ).fetchall()
    finally:
        con.close()


def fleet(db: Db) -> None:
    """Two orgs, three days, a day boundary crossed by one series."""
    insert(db, series(40, org="org-a", asset="a1"))
    insert(db, series(30, org="org-a", asset="a2", start=T0 + DAY))
    insert(db, series(20, org="org-b", asset="b1", start=T0.replace(hour=23, minute=50)))


class _Finds(monitoring.CommandListener):
    def __init__(self) -> None:
        self.finds: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find" and event.command.get("find") == SNAPSHOTS:
            self.finds.append(dict(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def test_a_sync_mirrors_every_org_and_day_with_one_query_to_the_server(
    db: Db, settings: Settings, server_uri: str
) -> None:
    fleet(db)
    listener = _Finds()
    client: MongoClient[dict[str, Any]] = MongoClient(server_uri, tz_aware=True, event_listeners=[listener])
    try:
        report = sync_snapshots_all_orgs(client[db.name], settings.lake, chunk_rows=25)
    finally:
        client.close()
    assert len(listener.finds) == 1 and "sort" not in listener.finds[0]
    assert (report.read, report.new, report.already, report.unplaced_count) == (90, 90, 0, 0)
    docs, counts = mirrored(settings.lake, ["org-a", "org-b"])
    assert docs == server_documents(db)
    assert counts == {("org-a", "2026-03-01"): 40, ("org-a", "2026-03-02"): 30,
                      ("org-b", "2026-03-01"): 10, ("org-b", "2026-03-02"): 10}
    assert parts_on_disk(settings.lake) == listed(settings.lake, ["org-a", "org-b"])
    con = connect_lake(settings.lake, org_id="org-a")
    assert con.sql("SELECT count(*), count(DISTINCT _id) FROM snapshots").fetchall() == [(70, 70)]
    con.close()
    manifest = json.loads(Path(settings.lake, "_manifests/snapshots/orgId=org-a.json").read_text())
    assert manifest["version"] == 1
    for entry in manifest["files"]:
        path = Path(settings.lake, entry["path"])
        table = pq.read_table(path)
        assert table.num_rows == entry["rows"]
        assert entry["ids_sha256"] == ids_sha256(table.column("_id").to_pylist())
        assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"
        assert "orgId" not in table.column_names and {"_id", "bson", "performanceData"} <= set(table.column_names)


def test_the_typed_columns_give_the_frames_that_extraction_gives(db: Db, settings: Settings) -> None:
    fleet(db)
    sync_snapshots_all_orgs(db, settings.lake)
    parts = [pq.read_table(Path(settings.lake, f.path)) for f in listed_snapshot_files(settings.lake, org_id="org-a")]
    table = pa.concat_tables(parts).filter(pc.field("typed"))
    table = table.append_column("orgId", pa.array(["org-a"] * table.num_rows, pa.string()))
    from_lake = frames_from_arrow(table.select(arrow_schema().names).cast(arrow_schema()))
    from_server = extract_window(db, "org-a", T0 - DAY, T0 + 3 * DAY).frames
    for got, want in zip((from_lake.snapshots, from_lake.disks, from_lake.interfaces),
                         (from_server.snapshots, from_server.disks, from_server.interfaces), strict=True):
        assert got.equals(want) and got.height > 0


def _decimal_accepted(db: Db) -> bool:
    """FerretDB 1.24 cannot store Decimal128 (it drops the connection); MongoDB can."""
    try:
        db["decimal_probe"].insert_one({"d": Decimal128("1.5")})
    except PyMongoError:
        return False
    return True


def test_documents_come_back_from_the_lake_exactly_as_the_server_held_them(db: Db, settings: Settings) -> None:
    base = validate_snapshot(snapshot())
    odd: list[dict[str, Any]] = [
        {**base, "assetId": "unknown-fields", "tags": ["x", {"deep": Int64(7)}], "agentVersion": "2.1",
         "performanceData": {**base["performanceData"], "gpu": {"usage": 12.5, "name": "rtx"}}},
        set_path({**base, "assetId": "int-metric"}, "performanceData.cpu.usage", 37),
        set_path({**base, "assetId": "string-metric"}, "performanceData.memory.usagePercent", "50.5"),
        {**base, "_id": "legacy-string-id", "assetId": "string-id"},
        {**base, "_id": 42, "assetId": "int-id"},
        {**base, "assetId": "string-timestamp", "timestamp": "2026-03-01T12:00:00Z"},
        {"assetId": "key-order", "orgId": "org-a", "timestamp": T0 + timedelta(seconds=1), "performanceData": None},
    ]
    if _decimal_accepted(db):
        odd.append(set_path({**base, "assetId": "decimal"}, "performanceData.cpu.usage", Decimal128("37.5")))
    db[SNAPSHOTS].insert_many(odd)
    held = server_documents(db)
    report = sync_snapshots(db, settings.lake, org_id="org-a")
    assert report.new == len(odd)
    docs, counts = mirrored(settings.lake, ["org-a"])
    assert docs == held  # the same bytes: every field, type and key order
    assert counts == {("org-a", "2026-03-01"): len(odd)}
    back = {d["assetId"]: d for d in read_lake_documents(settings.lake, org_id="org-a")}
    assert type(back["int-metric"]["performanceData"]["cpu"]["usage"]) is int
    assert back["string-id"]["_id"] == "legacy-string-id" and back["int-id"]["_id"] == 42
    # The typed columns are there for analytics where the contract's types hold.
    table = pq.read_table(Path(settings.lake, listed_snapshot_files(settings.lake, org_id="org-a")[0].path))
    typed = {r["assetId"]: r for r in table.select(["assetId", "timestamp", "typed", "performanceData"]).to_pylist()}
    assert typed["int-metric"]["performanceData"]["cpu"]["usage"] == 37.0 and typed["int-metric"]["typed"]
    refused = typed["string-metric"]  # off the contract's types: flat fields and the exact bson only
    assert (refused["typed"], refused["timestamp"], refused["performanceData"]) == (False, T0, None)
    assert typed["string-timestamp"]["typed"] is False and typed["string-id"]["typed"] is True


def test_a_second_sync_adds_nothing_and_late_data_becomes_a_new_part(db: Db, settings: Settings) -> None:
    fleet(db)
    sync_snapshots_all_orgs(db, settings.lake)
    before = parts_on_disk(settings.lake)
    again = sync_snapshots_all_orgs(db, settings.lake)
    assert (again.new, again.files, again.already) == (0, 0, again.read)
    assert parts_on_disk(settings.lake) == before
    insert(db, series(5, org="org-a", asset="late", start=T0))  # a day synced already
    late = sync_snapshots_all_orgs(db, settings.lake)
    assert (late.new, late.files, late.partitions) == (5, 1, 1)
    docs, counts = mirrored(settings.lake, ["org-a", "org-b"])
    assert docs == server_documents(db)
    assert counts[("org-a", "2026-03-01")] == 45
    assert len([p for p in parts_on_disk(settings.lake) if "org-a/date=2026-03-01" in p]) == 2


@pytest.mark.slow
def test_documents_written_without_a_server_are_the_lake_a_sync_of_them_leaves(
    db: Db, settings: Settings, tmp_path: Path
) -> None:
    fleet(db)
    held = server_documents(db)
    sync_snapshots_all_orgs(db, settings.lake)
    batches = list(db[SNAPSHOTS].find_raw_batches({}, batch_size=7))  # several documents an item
    lake = tmp_path / "written"
    report = mirror_documents_all_orgs(lake, batches, chunk_rows=25)
    assert (report.read, report.new, report.already, report.partitions) == (90, 90, 0, 4)
    orgs = ["org-a", "org-b"]
    assert mirrored(lake, orgs) == mirrored(settings.lake, orgs)
    assert mirrored(lake, orgs)[0] == held
    assert view_counts(lake) == view_counts(settings.lake)
    assert not Path(lake, "_manifests", "snapshots.running.json").exists()
    # Written again, one document at a time: nothing twice. No mark moved, so a sync of
    # the server reads everything and finds it all in the lake.
    again = mirror_documents_all_orgs(lake, list(held.values()))
    assert (again.read, again.new, again.already) == (90, 0, 90)
    synced = sync_snapshots_all_orgs(db, lake)
    assert (synced.since, synced.read, synced.new) == (None, 90, 0)
    assert mirrored(lake, orgs)[0] == held


def test_snapshots_loaded_with_old_ids_are_found_through_day_marks(db: Db, settings: Settings) -> None:
    insert(db, series(3, org="org-a"))
    sync_snapshots_all_orgs(db, settings.lake)
    restored = series(4, org="org-a", asset="restored", start=T0 + DAY)
    for payload in restored:
        insert(db, [payload], _id=old_id(T0))
    unmarked = sync_snapshots_all_orgs(db, settings.lake)
    assert unmarked.new == 0  # an old _id is below the range: only a mark finds it
    assert mark_for_sync(db, "org-a", [T0 + DAY, "2026-03-02"]) == 1
    marked = sync_snapshots_all_orgs(db, settings.lake)
    assert (marked.marks_read, marked.new) == (1, 4)
    assert db[MARKS].count_documents({}) == 0
    assert mirrored(settings.lake, ["org-a"])[0] == server_documents(db)


def test_a_day_marked_while_a_sync_reads_is_kept_for_the_next_run(db: Db, settings: Settings) -> None:
    insert(db, series(3, org="org-a"))
    mark_for_sync(db, "org-a", ["2026-03-01"])
    db[MARKS].insert_one({"orgId": "org-a", "date": "not a date"})  # not ours: ignored

    def remark(stage: str, count: int) -> None:
        if stage == "read":
            mark_for_sync(db, "org-a", ["2026-03-01", "2026-03-07"])

    report = sync_snapshots_all_orgs(db, settings.lake, progress=remark)
    assert report.marks_read == 2
    assert sorted(m["date"] for m in db[MARKS].find()) == ["2026-03-01", "2026-03-07"]
    sync_snapshots_all_orgs(db, settings.lake)
    assert db[MARKS].count_documents({}) == 0


def test_a_loaders_batch_marks_each_org_and_day_it_holds(db: Db, settings: Settings) -> None:
    batch = [validate_snapshot(p) for p in [*series(2, org="org-a", start=T0 + DAY), *series(2, org="org-b")]]
    for doc in batch:
        doc["_id"] = old_id(T0 - 400 * DAY)  # an archive's own _ids
    db[SNAPSHOTS].insert_many(batch)
    assert mark_documents_for_sync(db, batch) == 2
    assert sorted((m["orgId"], m["date"]) for m in db[MARKS].find()) == [("org-a", "2026-03-02"), ("org-b", "2026-03-01")]
    assert sync_snapshots(db, settings.lake, org_id="org-a", full=False).new == 2  # first run reads all of org-a
    assert [m["orgId"] for m in db[MARKS].find()] == ["org-b"]  # another org's mark is not an org run's to clear
    sync_snapshots_all_orgs(db, settings.lake)
    insert(db, series(1, org="org-b", asset="again"), _id=old_id(T0 - 400 * DAY))
    mark_documents_for_sync(db, db[SNAPSHOTS].find({"assetId": "again"}))
    assert sync_snapshots_all_orgs(db, settings.lake).new == 1
    with pytest.raises(InvalidArgument, match="no string orgId and date timestamp"):
        mark_documents_for_sync(db, [{"_id": 1, "orgId": "org-a", "timestamp": "2026-03-01"}])


def test_a_mark_needs_an_org_and_real_dates(db: Db) -> None:
    with pytest.raises(InvalidArgument, match="not a YYYY-MM-DD date"):
        mark_for_sync(db, "org-a", ["yesterday"])
    with pytest.raises(InvalidArgument, match="org id is required"):
        mark_for_sync(db, "", ["2026-03-01"])
    with pytest.raises(InvalidArgument, match="timezone-aware"):
        mark_for_sync(db, "org-a", [datetime(2026, 3, 1)])


def test_a_writer_whose_clock_is_behind_by_less_than_the_margin_is_not_missed(db: Db, settings: Settings) -> None:
    insert(db, series(2, org="org-a"))
    first = sync_snapshots_all_orgs(db, settings.lake)
    assert first.mark is not None
    insert(db, series(1, org="org-a", asset="slow-clock"), _id=old_id(first.mark - timedelta(minutes=8)))
    insert(db, series(1, org="org-a", asset="too-slow"), _id=old_id(first.mark - timedelta(minutes=12)))
    second = sync_snapshots_all_orgs(db, settings.lake, skew=timedelta(minutes=10))
    assert second.since == first.mark - timedelta(minutes=10)
    assert {d["assetId"] for d in read_lake_documents(settings.lake, org_id="org-a")} == {"asset-1", "slow-clock"}
    assert sync_snapshots_all_orgs(db, settings.lake, full=True).new == 1  # --full finds what the margin missed


def test_ids_that_are_not_objectids_are_found_on_every_run_and_kept_once(db: Db, settings: Settings) -> None:
    insert(db, series(2, org="org-a"))
    sync_snapshots_all_orgs(db, settings.lake)
    insert(db, series(1, org="org-a", asset="legacy"), _id="legacy-1")
    second = sync_snapshots_all_orgs(db, settings.lake)
    third = sync_snapshots_all_orgs(db, settings.lake)
    assert (second.new, third.new, third.already) == (1, 0, third.read)
    assert mirrored(settings.lake, ["org-a"])[0] == server_documents(db)


def test_an_org_sync_reads_and_writes_only_that_org(db: Db, settings: Settings) -> None:
    fleet(db)
    report = sync_snapshots(db, settings.lake, org_id="org-b")
    assert (report.read, report.new) == (20, 20)
    assert not Path(settings.lake, "snapshots/orgId=org-a").exists()
    assert not Path(settings.lake, "_manifests/snapshots/orgId=org-a.json").exists()
    everyone = sync_snapshots_all_orgs(db, settings.lake)
    assert (everyone.new, everyone.already) == (70, 20)
    assert mirrored(settings.lake, ["org-a", "org-b"])[0] == server_documents(db)


def test_snapshots_without_a_tenant_are_reported_not_mirrored(db: Db, settings: Settings) -> None:
    base = validate_snapshot(snapshot())
    db[SNAPSHOTS].insert_many([{**base, "orgId": None}, {**base, "orgId": "a/b", "assetId": "x"}, base])
    report = sync_snapshots_all_orgs(db, settings.lake)
    assert (report.new, report.unplaced_count) == (1, 2)
    reasons = sorted(u.reason for u in report.unplaced)
    assert reasons[0].startswith("orgId is NoneType") and "cannot be a partition path segment" in reasons[1]


def test_an_org_id_that_cannot_be_a_path_segment_is_refused(db: Db, settings: Settings) -> None:
    for bad in ("..", "a/b", "x=y"):
        with pytest.raises(LakeError, match="cannot be a partition path segment"):
            sync_snapshots(db, settings.lake, org_id=bad)
    assert not Path(settings.lake).exists()


def test_a_manifest_of_an_unknown_version_is_refused(db: Db, settings: Settings) -> None:
    insert(db, series(2, org="org-a"))
    sync_snapshots(db, settings.lake, org_id="org-a")
    path = Path(settings.lake, "_manifests/snapshots/orgId=org-a.json")
    path.write_text(json.dumps({**json.loads(path.read_text()), "version": 2}))
    with pytest.raises(ManifestError, match="has version 2; this perf_analytics reads version 1"):
        sync_snapshots(db, settings.lake, org_id="org-a")


def test_a_second_sync_of_the_same_lake_at_once_is_refused(db: Db, settings: Settings) -> None:
    lock = Path(settings.lake, "_manifests/.snapshots.lock")
    lock.parent.mkdir(parents=True)
    with lock.open("a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        with pytest.raises(SyncError, match="another sync is using the lake"):
            sync_snapshots_all_orgs(db, settings.lake)


class _Stop(Exception):
    pass


def test_parts_left_unlisted_by_a_crash_are_adopted_when_they_verify_and_removed_when_not(
    db: Db, settings: Settings
) -> None:
    fleet(db)

    def crash(stage: str, count: int) -> None:
        if stage == "part" and count == 3:
            raise _Stop

    with pytest.raises(_Stop):
        sync_snapshots_all_orgs(db, settings.lake, progress=crash)
    orphans = sorted(parts_on_disk(settings.lake))
    assert len(orphans) == 3 and not listed(settings.lake, ["org-a", "org-b"])
    journal = Path(settings.lake, "_manifests/snapshots.running.json")
    assert journal.exists()  # the next run knows this one did not finish
    Path(settings.lake, orphans[0]).write_bytes(b"not parquet")  # damaged: must go
    report = sync_snapshots_all_orgs(db, settings.lake)
    assert (report.adopted, report.removed) == (2, 1)
    kept = [f for org in ("org-a", "org-b") for f in listed_snapshot_files(settings.lake, org_id=org)
            if f.path in orphans[1:]]
    assert len(kept) == 2 and report.new == 90 - sum(f.rows for f in kept)
    docs, counts = mirrored(settings.lake, ["org-a", "org-b"])
    assert docs == server_documents(db) and sum(counts.values()) == 90
    assert parts_on_disk(settings.lake) == listed(settings.lake, ["org-a", "org-b"])
    assert not journal.exists()


# ---- kill -9 -----------------------------------------------------------------------------

_KILLED_RUN = """
import os, signal, sys
from perf_analytics.store import connect_uri
from perf_analytics.sync import sync_snapshots_all_orgs
uri, name, lake, stage, at = sys.argv[1:6]
def progress(s, count):
    if s == stage and count >= int(at):
        os.kill(os.getpid(), signal.SIGKILL)
sync_snapshots_all_orgs(connect_uri(uri, name), lake, chunk_rows=15, progress=progress)
"""


def _late_data(db: Db) -> None:
    """What arrives after a first sync: late data for a synced day, a restore with old _ids
    (marked, as the loaders do), a legacy string _id, a new org."""
    insert(db, series(12, org="org-a", asset="late", start=T0))
    restored = series(10, org="org-b", asset="restored", start=T0 + 3 * DAY)
    for p in restored:
        insert(db, [p], _id=old_id(T0 - 30 * DAY))
    mark_for_sync(db, "org-b", [T0 + 3 * DAY])
    insert(db, series(1, org="org-a", asset="legacy", start=T0 + 2 * DAY), _id="legacy-1")
    insert(db, series(25, org="org-c", asset="c1", start=T0 + 2 * DAY))


ORGS = ["org-a", "org-b", "org-c"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("first_run_killed", "stage", "at"),
    [
        (True, "read", 15),
        (True, "part", 2),
        (False, "part", 1),
        (False, "part", 4),
        (False, "manifest", 1),
        (False, "mark", 0),
    ],
)
def test_kill_9_at_any_point_then_rerun_ends_like_one_clean_run(
    db: Db, settings: Settings, server_uri: str, tmp_path: Path, first_run_killed: bool, stage: str, at: int
) -> None:
    fleet(db)
    if not first_run_killed:
        sync_snapshots_all_orgs(db, settings.lake)
        _late_data(db)
    killed = subprocess.run([sys.executable, "-c", _KILLED_RUN, server_uri, db.name, str(settings.lake), stage, str(at)],
                            capture_output=True, text=True, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    if parts_on_disk(settings.lake):  # unlisted parts of the killed run never repeat a listed row
        assert all(rows == ids for _, _, rows, ids in view_counts(settings.lake))
    if first_run_killed:
        _late_data(db)
    sync_snapshots_all_orgs(db, settings.lake)

    clean = tmp_path / "clean-lake"
    sync_snapshots_all_orgs(db, clean)
    assert mirrored(settings.lake, ORGS) == mirrored(clean, ORGS)
    assert view_counts(settings.lake) == view_counts(clean)
    assert mirrored(settings.lake, ORGS)[0] == server_documents(db)
    assert parts_on_disk(settings.lake) == listed(settings.lake, ORGS)  # nothing unlisted left for a glob to see
    assert db[MARKS].count_documents({}) == 0


@pytest.mark.slow
def test_kill_9_of_the_cli_while_it_writes_parts_then_rerun_ends_like_one_clean_run(
    db: Db, settings: Settings, server_uri: str, tmp_path: Path
) -> None:
    for org in ("org-a", "org-b"):
        for asset in ("a1", "a2", "a3"):
            insert(db, series(600, org=org, asset=asset, step=timedelta(minutes=5)))
    cmd = [sys.executable, "-m", "perf_analytics.cli", "--uri", server_uri, "--db", db.name, "--lake",
           str(settings.lake), "sync", "--chunk-rows", "200"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(Path(settings.lake).rglob("part-*.parquet")):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the sync finished before it could be killed; give it more snapshots"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    orgs = ["org-a", "org-b"]
    assert len(parts_on_disk(settings.lake)) > 0 and not listed(settings.lake, orgs)

    rerun = subprocess.run([*cmd, "--json"], capture_output=True, text=True, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["adopted"] >= 1
    clean = tmp_path / "clean-lake"
    sync_snapshots_all_orgs(db, clean)
    assert mirrored(settings.lake, orgs) == mirrored(clean, orgs)
    assert view_counts(settings.lake) == view_counts(clean)
    assert sum(mirrored(clean, orgs)[1].values()) == 3600


# ---- the command -------------------------------------------------------------------------


def test_cli_sync_prints_a_summary_and_json(cli: Cli, db: Db) -> None:
    fleet(db)
    result = cli("sync", "--org", "org-b")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("org org-b: read 20, new 20, already in lake 0, partitions written 2, ")
    result = cli("sync", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["scope"], data["read"], data["new"], data["already"], data["partitions"]) == ("all-orgs", 90, 70, 20, 2)


def test_cli_sync_of_a_bad_org_is_one_error_line(cli: Cli) -> None:
    result = cli("sync", "--org", "../x")
    assert result.exit_code == 1
    assert result.stderr == f"Error: value of orgId '../x' cannot be a partition path segment: use {ID_RULE}\n"


def test_cli_sync_help_has_examples_that_run(cli: Cli, db: Db) -> None:
    insert(db, series(2, org="acme"))
    result = cli.invoke(app, ["sync", "--help"])
    assert result.exit_code == 0
    examples = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("perf-analytics sync")]
    assert len(examples) == 3
    for example in examples:
        args = example.split()[1:]
        run = cli(*args)
        assert run.exit_code == 0, (example, run.output)


def test_an_archive_loaded_with_its_own_old_ids_reaches_the_lake_at_the_next_sync(
    db: Db, settings: Settings, tmp_path: Path
) -> None:
    from perf_analytics.ingest import LoadOptions, ingest_archives_all_orgs

    insert(db, series(3, org="org-a"))
    sync_snapshots_all_orgs(db, settings.lake)
    dump = [{"_id": old_id(T0 - 400 * DAY), **validate_snapshot(p)} for p in series(6, org="org-b", start=T0 + DAY)]
    archive = tmp_path / "performance_snapshots.bson"
    archive.write_bytes(b"".join(bson.encode(doc) for doc in dump))
    fresh = tmp_path / "fresh.ndjson"  # records without _id get new ObjectIds: no mark needed
    fresh.write_text("\n".join(json.dumps(p) for p in series(2, org="org-c")) + "\n")
    summary = ingest_archives_all_orgs(
        db, [archive, fresh], options=LoadOptions(checkpoint_dir=tmp_path / "cp", batch_size=4)
    )
    assert summary.inserted == 8
    assert sorted((m["orgId"], m["date"]) for m in db[MARKS].find()) == [("org-b", "2026-03-02")]
    report = sync_snapshots_all_orgs(db, settings.lake)
    assert report.new == 8
    assert mirrored(settings.lake, ["org-a", "org-b", "org-c"])[0] == server_documents(db)


def test_legacy_snapshots_moved_by_migrate_reach_the_lake_at_the_next_sync(db: Db, settings: Settings) -> None:
    from perf_analytics.migrate import migrate_legacy_snapshots
    from perf_analytics.schema import ASSETS

    insert(db, series(3, org="org-a"))
    sync_snapshots_all_orgs(db, settings.lake)
    legacy = [{"_id": old_id(T0 - 400 * DAY), **validate_snapshot(p)} for p in series(5, org="org-a", asset="old", start=T0 - DAY)]
    db[ASSETS].insert_many(legacy)
    assert migrate_legacy_snapshots(db, "org-a").moved == 5
    assert sync_snapshots_all_orgs(db, settings.lake).new == 5
    assert mirrored(settings.lake, ["org-a"])[0] == server_documents(db)


def test_two_writers_marking_the_same_days_at_once_leave_one_mark_a_day(db: Db, server_uri: str) -> None:
    # An upsert finds, then inserts: two loaders (the ingest writer threads, or ingest and a
    # restore) marking one day at once both found nothing and both inserted, before marks
    # were keyed by (org, day). Each round starts both writers together on fresh days.
    writers = [connect_uri(server_uri, db.name) for _ in range(2)]
    try:
        for round_ in range(10):
            days = [T0.date() + (round_ * 20 + i) * DAY for i in range(20)]
            start = threading.Barrier(len(writers))

            def mark(writer: Db, days: list[date] = days, start: threading.Barrier = start) -> int:
                start.wait()
                return mark_for_sync(writer, "org-a", days)

            with ThreadPoolExecutor(len(writers)) as pool:
                assert [f.result() for f in [pool.submit(mark, w) for w in writers]] == [20, 20]
            marks = Counter(m["date"] for m in db[MARKS].find({"orgId": "org-a", "date": {"$in": [d.isoformat() for d in days]}}))
            assert marks == Counter(d.isoformat() for d in days), f"round {round_}"
    finally:
        for writer in writers:
            writer.client.close()


def test_a_mark_written_before_marks_had_keys_is_marked_again_not_doubled(db: Db) -> None:
    db[MARKS].insert_one({"orgId": "org-a", "date": "2026-03-01", "token": ObjectId()})
    assert mark_for_sync(db, "org-a", ["2026-03-01", "2026-03-02"]) == 2
    assert sorted(m["date"] for m in db[MARKS].find({"orgId": "org-a"})) == ["2026-03-01", "2026-03-02"]


@pytest.mark.slow
def test_marking_more_days_than_one_update_command_holds_marks_them_all(db: Db) -> None:
    # FerretDB 1.24 never answers an update command of more than 100 statements.
    days = [T0.date() + i * DAY for i in range(150)]
    assert mark_for_sync(db, "org-a", days) == 150
    assert db[MARKS].count_documents({"orgId": "org-a"}) == 150
