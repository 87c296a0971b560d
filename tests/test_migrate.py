"""`migrate`: legacy snapshots move from assets to performance_snapshots, safely and once."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId

from perf_analytics.errors import ServerError
from perf_analytics.migrate import migrate_all_orgs, migrate_legacy_snapshots
from perf_analytics.schema import ASSETS, ORIGINAL_ID, SNAPSHOTS, validate_snapshot
from perf_analytics.store import KEY_INDEX, Db, missing_indexes
from tests.conftest import Cli
from tests.factories import T0, set_path, snapshot

OLD = datetime(2020, 1, 1, tzinfo=UTC)


def legacy(org: str = "org-a", asset: str = "asset-1", minute: int = 0, **overrides: Any) -> dict[str, Any]:
    """A snapshot the way older code wrote it into `assets`: ObjectId _id, string dates and numbers."""
    fields = {"orgId": org, "assetId": asset, "timestamp": (T0 + timedelta(minutes=minute)).isoformat()}
    doc = snapshot(**{**fields, **overrides})
    doc = set_path(doc, "performanceData.cpu.usage", "37.5")
    doc = set_path(doc, "performanceData.memory.usedBytes", "4000000000")
    doc["_id"] = ObjectId()
    return doc


def get(db: Db, collection: str, doc_id: Any) -> dict[str, Any]:
    doc = db[collection].find_one({"_id": doc_id})
    assert doc is not None, f"{doc_id!r} is not in {collection}"
    return doc


def asset(org: str, asset_id: Any, last_seen: datetime | None = OLD) -> dict[str, Any]:
    doc: dict[str, Any] = {"_id": asset_id, "orgId": org, "name": f"host {asset_id}"}
    if last_seen is not None:
        doc["lastSeen"] = last_seen
    return doc


def dump(db: Db) -> dict[str, list[dict[str, Any]]]:
    """Both collections, sorted, without updatedAt (a wall-clock stamp)."""
    out = {}
    for name in (ASSETS, SNAPSHOTS):
        docs = [{k: v for k, v in d.items() if k != "updatedAt"} for d in db[name].find()]
        out[name] = sorted(docs, key=lambda d: repr(d["_id"]))
    return out


def test_migration_moves_legacy_snapshots_with_their_ids_normalised_and_moves_last_seen(db: Db) -> None:
    docs = [legacy(minute=m) for m in range(3)]
    db[ASSETS].insert_many([asset("org-a", "asset-1"), *docs])

    report = migrate_legacy_snapshots(db, "org-a")

    assert (report.moved, report.already_present, report.left) == (3, 0, [])
    assert [d["_id"] for d in db[ASSETS].find()] == ["asset-1"]
    stored = {d["_id"]: d for d in db[SNAPSHOTS].find()}
    assert set(stored) == {d["_id"] for d in docs}
    one = stored[docs[0]["_id"]]
    assert one["timestamp"] == T0
    assert one["performanceData"]["cpu"]["usage"] == 37.5
    assert type(one["performanceData"]["memory"]["usedBytes"]) is float
    assert get(db, ASSETS, "asset-1")["lastSeen"] == T0 + timedelta(minutes=2)


def test_legacy_ids_that_are_no_objectid_become_objectids_and_a_rerun_moves_nothing(db: Db) -> None:
    hex_id = "65a0f0f0f0f0f0f0f0f0f0f0"
    docs = [{**legacy(minute=0), "_id": hex_id}, {**legacy(minute=1), "_id": "legacy-1"}]
    db[ASSETS].insert_many([asset("org-a", "asset-1"), *docs])

    report = migrate_legacy_snapshots(db, "org-a")

    assert (report.moved, report.left) == (2, [])
    assert db[ASSETS].count_documents({"performanceData": {"$exists": True}}) == 0
    moved = {d["timestamp"]: d for d in db[SNAPSHOTS].find()}
    assert moved[T0]["_id"] == ObjectId(hex_id) and ORIGINAL_ID not in moved[T0]
    renamed = moved[T0 + timedelta(minutes=1)]
    assert isinstance(renamed["_id"], ObjectId) and renamed[ORIGINAL_ID] == "legacy-1"
    assert migrate_legacy_snapshots(db, "org-a").moved == 0
    assert db[SNAPSHOTS].count_documents({}) == 2


def test_rerunning_after_a_successful_migration_moves_nothing(db: Db) -> None:
    db[ASSETS].insert_many([asset("org-a", "asset-1"), legacy(minute=0), legacy(minute=1)])
    migrate_legacy_snapshots(db, "org-a")
    before = dump(db)

    again = migrate_legacy_snapshots(db, "org-a")

    assert (again.moved, again.already_present, again.left) == (0, 0, [])
    assert dump(db) == before


def test_dry_run_reports_what_would_move_and_changes_nothing(db: Db) -> None:
    broken = legacy(minute=5, timeWindow="2min")
    already = legacy(minute=1)
    db[SNAPSHOTS].insert_one(validate_snapshot(already, coerce=True))
    db[ASSETS].insert_many([asset("org-a", "asset-1"), legacy(minute=0), already, broken])
    before = dump(db)

    report = migrate_legacy_snapshots(db, "org-a", dry_run=True)

    assert report.dry_run
    assert (report.moved, report.already_present) == (2, 1)
    assert [item.id for item in report.left] == [broken["_id"]]
    assert dump(db) == before


def test_invalid_legacy_documents_stay_in_assets_with_their_id_and_reason(db: Db) -> None:
    bad_metric = set_path(legacy(minute=0), "performanceData.cpu.usage", "lots")
    bad_date = legacy(minute=1, timestamp="yesterday")
    good = legacy(minute=2)
    db[ASSETS].insert_many([asset("org-a", "asset-1"), bad_metric, bad_date, good])

    report = migrate_legacy_snapshots(db, "org-a")

    assert report.moved == 1
    reasons = {item.id: item.reason for item in report.left}
    assert reasons == {
        bad_metric["_id"]: "invalid: performanceData.cpu.usage: expected a number, got string 'lots'",
        bad_date["_id"]: "invalid: timestamp: not an ISO-8601 date: 'yesterday'",
    }
    assert db[ASSETS].count_documents({"_id": {"$in": [bad_metric["_id"], bad_date["_id"]]}}) == 2
    assert db[SNAPSHOTS].count_documents({}) == 1


def test_a_crash_between_insert_and_delete_is_finished_by_the_rerun(db: Db) -> None:
    docs = [legacy(minute=m) for m in range(3)]
    db[ASSETS].insert_many([asset("org-a", "asset-1"), *docs])
    migrate_legacy_snapshots(db, "org-a")
    clean = dump(db)

    # The half-done state: the first snapshot was inserted (and lastSeen moved) but the
    # crash came before its delete from assets.
    db[ASSETS].delete_many({})
    db[SNAPSHOTS].delete_many({})
    db[ASSETS].insert_many([asset("org-a", "asset-1", last_seen=T0), *docs])
    db[SNAPSHOTS].insert_one(validate_snapshot(docs[0], coerce=True))

    report = migrate_legacy_snapshots(db, "org-a")

    assert (report.moved, report.already_present, report.left) == (3, 1, [])
    assert dump(db) == clean


def test_a_legacy_snapshot_already_stored_under_another_id_is_only_removed_from_assets(db: Db) -> None:
    doc = legacy(minute=0)
    stored = validate_snapshot({**doc, "_id": ObjectId()}, coerce=True)
    db[SNAPSHOTS].insert_one(stored)
    db[ASSETS].insert_many([asset("org-a", "asset-1"), doc])

    report = migrate_legacy_snapshots(db, "org-a")

    assert (report.moved, report.already_present) == (1, 1)
    assert [d["_id"] for d in db[SNAPSHOTS].find()] == [stored["_id"]]
    assert db[ASSETS].count_documents({"_id": doc["_id"]}) == 0


def test_a_legacy_document_whose_id_another_snapshot_holds_stays_in_assets(db: Db) -> None:
    doc = legacy(minute=0)
    other = validate_snapshot(snapshot(assetId="asset-9"))
    db[SNAPSHOTS].insert_one({**other, "_id": doc["_id"]})
    db[ASSETS].insert_many([asset("org-a", "asset-1"), doc])

    report = migrate_legacy_snapshots(db, "org-a")

    assert report.moved == 0
    assert [item.id for item in report.left] == [doc["_id"]]
    assert "its _id belongs to another snapshot" in report.left[0].reason
    assert db[ASSETS].count_documents({"_id": doc["_id"]}) == 1


def test_small_batches_move_everything_and_leave_only_the_invalid_behind(db: Db) -> None:
    docs = [legacy(minute=m) for m in range(7)]
    docs[2] = legacy(minute=2, timestamp="never")
    db[ASSETS].insert_many([asset("org-a", "asset-1"), *docs])

    report = migrate_legacy_snapshots(db, "org-a", batch_size=2)

    assert report.moved == 6
    assert [item.id for item in report.left] == [docs[2]["_id"]]
    assert db[SNAPSHOTS].count_documents({}) == 6


def test_migrating_one_org_neither_reads_nor_changes_another_orgs_documents(db: Db) -> None:
    db[ASSETS].insert_many(
        [
            asset("org-a", "a1"),
            asset("org-b", "b1"),
            legacy("org-a", "a1", 0),
            # org-a's old code also wrote a snapshot naming org-b's asset id: org-b's
            # asset must not see it.
            legacy("org-a", "b1", 1),
            legacy("org-b", "b1", 5),
            legacy("org-b", "b1", 6, timeWindow="bad"),
        ]
    )
    org_b_before = sorted(db[ASSETS].find({"orgId": "org-b"}), key=lambda d: repr(d["_id"]))

    report = migrate_legacy_snapshots(db, "org-a")

    assert (report.moved, report.left, report.unknown_assets) == (2, [], ["b1"])
    assert sorted(db[ASSETS].find({"orgId": "org-b"}), key=lambda d: repr(d["_id"])) == org_b_before
    assert db[SNAPSHOTS].distinct("orgId") == ["org-a"]
    assert get(db, ASSETS, "a1")["lastSeen"] == T0


def test_migrate_all_orgs_runs_each_org_that_has_legacy_documents(db: Db) -> None:
    db[ASSETS].insert_many(
        [asset("org-a", "a1"), asset("org-b", "b1"), asset("org-c", "c1"), legacy("org-a", "a1"), legacy("org-b", "b1")]
    )

    reports = migrate_all_orgs(db)

    assert [(r.org_id, r.moved) for r in reports] == [("org-a", 1), ("org-b", 1)]
    assert db[ASSETS].count_documents({"performanceData": {"$exists": True}}) == 0


def test_a_real_run_creates_the_unique_index_so_a_second_copy_is_not_inserted(raw_db: Db) -> None:
    doc = legacy(minute=0)
    raw_db[ASSETS].insert_many([asset("org-a", "asset-1"), doc])

    report = migrate_legacy_snapshots(raw_db, "org-a")

    assert KEY_INDEX in report.created_indexes
    assert missing_indexes(raw_db) == []


def test_a_real_run_without_init_stores_a_snapshot_already_there_only_once(raw_db: Db) -> None:
    doc = legacy(minute=0)
    raw_db[SNAPSHOTS].insert_one(validate_snapshot(doc, coerce=True) | {"_id": ObjectId()})
    raw_db[ASSETS].insert_many([asset("org-a", "asset-1"), doc])

    report = migrate_legacy_snapshots(raw_db, "org-a")

    assert (report.moved, report.already_present) == (1, 1)
    assert raw_db[SNAPSHOTS].count_documents({}) == 1


def test_a_real_run_where_duplicates_stop_the_key_index_says_what_to_do_and_moves_nothing(raw_db: Db) -> None:
    twice = validate_snapshot(legacy(minute=5), coerce=True)
    raw_db[SNAPSHOTS].insert_many([twice | {"_id": ObjectId()}, twice | {"_id": ObjectId()}])
    raw_db[ASSETS].insert_many([asset("org-a", "asset-1"), legacy(minute=0)])

    with pytest.raises(ServerError) as info:
        migrate_legacy_snapshots(raw_db, "org-a")

    assert str(info.value) == (
        f"cannot create unique index {KEY_INDEX}: duplicate snapshots exist "
        "(remove them first: see `doctor`, then run `perf-analytics init`)"
    )
    assert raw_db[ASSETS].count_documents({}) == 2
    assert raw_db[SNAPSHOTS].count_documents({}) == 2


def test_cli_dry_run_says_what_would_move(cli: Cli, db: Db) -> None:
    db[ASSETS].insert_many([asset("org-a", "asset-1"), legacy(minute=0), legacy(minute=1)])

    result = cli("migrate", "--org", "org-a", "--dry-run")

    assert result.exit_code == 0, result.output
    assert result.output == (
        "org-a: would move 2 legacy snapshots from assets to performance_snapshots "
        "(0 already present, 0 left in assets)\n"
    )
    assert db[ASSETS].count_documents({}) == 3


def test_cli_without_org_runs_every_org_says_so_and_exits_1_when_documents_stay(
    cli: Cli, db: Db
) -> None:
    bad = legacy("org-b", "b1", timestamp="soon")
    db[ASSETS].insert_many([asset("org-a", "a1"), asset("org-b", "b1"), legacy("org-a", "a1"), bad])

    result = cli("migrate")

    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[0] == "all orgs (admin run across tenants): 2 org(s) with legacy snapshots in assets"
    assert lines[1] == (
        "org-a: moved 1 legacy snapshot from assets to performance_snapshots (0 already present, 0 left in assets)"
    )
    assert lines[3] == f"  left in assets: {bad['_id']}: invalid: timestamp: not an ISO-8601 date: 'soon'"
    assert lines[-1].startswith("total: moved 1 legacy snapshot ")


def test_cli_json_report(cli: Cli, db: Db) -> None:
    db[ASSETS].insert_many([asset("org-a", "asset-1"), legacy(minute=0)])

    result = cli("migrate", "--org", "org-a", "--json")

    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["ok"] is True
    assert [(r["org_id"], r["moved"], r["left"]) for r in payload["orgs"]] == [("org-a", 1, [])]
