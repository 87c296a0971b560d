"""`doctor`: what it finds, what --fix repairs, and that it stays inside one org."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import Int64, ObjectId
from pymongo import MongoClient, monitoring

from perf_analytics import doctor
from perf_analytics.doctor import (
    REPAIR_JOURNAL,
    REPAIR_PENDING,
    diagnose,
    diagnose_all_orgs,
)
from perf_analytics.errors import ValidationError
from perf_analytics.extract import extract_window
from perf_analytics.schema import (
    ASSETS,
    COUNT,
    COUNT_STRING,
    CPU_FIELDS,
    DISK_FIELDS,
    ID_NOT_OBJECTID,
    INTERFACE_FIELDS,
    MEMORY_FIELDS,
    METRIC_INTEGER,
    METRIC_STRING,
    NETWORK_FIELDS,
    ORIGINAL_ID,
    SNAPSHOTS,
    SYSTEM_FIELDS,
    TIMESTAMP_NOT_DATE,
    count_paths,
    metric_paths,
    repaired_id,
    validate_snapshot,
)
from perf_analytics.store import (
    INDEXES,
    Db,
    connect_uri,
    ensure_indexes,
    missing_indexes,
    probe_capabilities,
)
from tests.conftest import Cli
from tests.factories import T0, set_path, snapshot

OLD = datetime(2020, 1, 1, tzinfo=UTC)


def stored(org: str = "org-a", asset: str = "asset-1", minute: int = 0) -> dict[str, Any]:
    """A snapshot as the toolkit stores it: normalised, with an ObjectId _id."""
    doc = validate_snapshot(snapshot(orgId=org, assetId=asset, timestamp=(T0 + timedelta(minutes=minute)).isoformat()))
    doc["_id"] = ObjectId()
    return doc


def off_type(org: str = "org-a", asset: str = "asset-1") -> dict[str, dict[str, Any]]:
    """One snapshot per kind of off-type value other code wrote."""
    return {
        TIMESTAMP_NOT_DATE: {**stored(org, asset, 1), "timestamp": (T0 + timedelta(minutes=1)).isoformat()},
        METRIC_STRING: set_path(stored(org, asset, 2), "performanceData.cpu.usage", "45.2"),
        METRIC_INTEGER: set_path(stored(org, asset, 3), "performanceData.memory.usedBytes", Int64(4_000_000_000)),
        COUNT_STRING: set_path(stored(org, asset, 4), "performanceData.system.processCount", "120"),
    }


def get(db: Db, collection: str, doc_id: Any) -> dict[str, Any]:
    doc = db[collection].find_one({"_id": doc_id})
    assert doc is not None, f"{doc_id!r} is not in {collection}"
    return doc


def asset(org: str, asset_id: Any, last_seen: Any = T0 + timedelta(days=1)) -> dict[str, Any]:
    doc: dict[str, Any] = {"_id": asset_id, "orgId": org}
    if last_seen is not None:
        doc["lastSeen"] = last_seen
    return doc


def org_docs(db: Db, org: str) -> dict[str, list[dict[str, Any]]]:
    return {
        name: sorted(db[name].find({"orgId": org}), key=lambda d: repr(d["_id"])) for name in (ASSETS, SNAPSHOTS)
    }


# -- validate_snapshot(coerce=True) ---------------------------------------------------


def test_coerce_turns_numeric_strings_into_numbers_everywhere_and_is_off_by_default() -> None:
    payload = snapshot()
    payload = set_path(payload, "performanceData.cpu.usage", " 45.2 ")
    payload = set_path(payload, "performanceData.cpu.perCore.1", "50")
    payload = set_path(payload, "performanceData.disk.0.freeBytes", "3e11")
    payload = set_path(payload, "performanceData.network.totalUsage", "1500")
    payload = set_path(payload, "performanceData.network.interfaces.0.bytesSentPerSec", "500")
    payload = set_path(payload, "performanceData.system.processCount", "120")

    doc = validate_snapshot(payload, coerce=True)

    perf = doc["performanceData"]
    assert perf["cpu"]["usage"] == 45.2
    assert perf["cpu"]["perCore"] == [30.0, 50.0]
    assert perf["disk"][0]["freeBytes"] == 3e11
    assert perf["network"]["totalUsage"] == 1500.0
    assert perf["network"]["interfaces"][0]["bytesSentPerSec"] == 500.0
    assert perf["system"]["processCount"] == 120 and type(perf["system"]["processCount"]) is int
    assert validate_snapshot(snapshot(), coerce=True) == validate_snapshot(snapshot())
    with pytest.raises(ValidationError, match=r"performanceData\.cpu\.usage: expected a number, got string"):
        validate_snapshot(payload)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("performanceData.cpu.usage", "lots", "performanceData.cpu.usage: expected a number, got string 'lots'"),
        ("performanceData.cpu.usage", "150", "performanceData.cpu.usage: percentage 150 is outside [0, 100]"),
        ("performanceData.cpu.perCore.0", "nan", "performanceData.cpu.perCore[0]: expected a finite number"),
        ("performanceData.system.threadCount", "1.5", "performanceData.system.threadCount: expected a whole number"),
    ],
)
def test_coerce_still_rejects_strings_that_are_not_valid_numbers(path: str, value: str, message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        validate_snapshot(set_path(snapshot(), path, value), coerce=True)


# -- checks and repairs -----------------------------------------------------------------


def test_a_healthy_org_reports_no_problems(db: Db) -> None:
    db[ASSETS].insert_one(asset("org-a", "asset-1", last_seen=T0 + timedelta(minutes=1)))
    db[SNAPSHOTS].insert_many([stored(minute=0), stored(minute=1)])

    report = diagnose(db, "org-a")

    assert report.healthy
    assert [check.found for check in report.checks] == [0, 0, 0, 0, 0, 0]


def test_each_kind_of_off_type_snapshot_is_counted_with_example_ids(db: Db) -> None:
    bad = off_type()
    db[ASSETS].insert_one(asset("org-a", "asset-1"))
    db[SNAPSHOTS].insert_many([stored(minute=0), *bad.values()])

    report = diagnose(db, "org-a")

    assert not report.healthy
    assert report.off_type.found == 4
    assert {kind.label: (kind.count, kind.examples) for kind in report.off_type.kinds} == {
        label: (1, [str(doc["_id"])]) for label, doc in bad.items()
    }
    assert db[SNAPSHOTS].count_documents({"timestamp": {"$type": "string"}}) == 1  # nothing changed


def _every_numeric_field_off_type() -> list[tuple[str, dict[str, Any]]]:
    """One stored snapshot per metric or count field of the contract, that field off-type.

    Fields inside arrays are spoiled in the second element only, so the server-side check
    must look into every element, not the first one.
    """
    out = []
    for minute, path in enumerate(metric_paths() + count_paths()):
        doc = stored(minute=minute)
        perf = doc["performanceData"]
        perf["disk"].append({**copy.deepcopy(perf["disk"][0]), "name": "D:"})
        perf["network"]["interfaces"].append({**copy.deepcopy(perf["network"]["interfaces"][0]), "name": "eth1"})
        section, _, name = path.removeprefix("performanceData.").rpartition(".")
        if path.endswith("perCore"):
            target: Any = perf["cpu"]["perCore"]
            key: Any = 1
        elif section in ("disk", "network.interfaces"):
            target = perf["disk"][1] if section == "disk" else perf["network"]["interfaces"][1]
            key = name
        else:
            target = perf
            for part in section.split("."):
                target = target[part]
            key = name
        value = target[key]
        target[key] = str(value) if path in count_paths() else int(value)
        out.append((path, doc))
    return out


def test_every_metric_and_count_field_of_the_contract_is_checked_and_repaired(db: Db) -> None:
    tables = {
        "cpu": CPU_FIELDS, "memory": MEMORY_FIELDS, "disk": DISK_FIELDS, "network": NETWORK_FIELDS,
        "network.interfaces": INTERFACE_FIELDS, "system": SYSTEM_FIELDS,
    }  # fmt: skip
    from_tables = {f"performanceData.{s}.{name}" for s, spec in tables.items() for name, _, _ in spec}
    assert from_tables == set(metric_paths()) | set(count_paths())
    assert {p.rpartition(".")[2] for p in count_paths()} == {n for spec in tables.values() for n, k, _ in spec if k == COUNT}
    spoiled = _every_numeric_field_off_type()
    db[SNAPSHOTS].insert_many([doc for _, doc in spoiled])

    report = diagnose(db, "org-a", fix=True)

    assert (report.off_type.found, report.off_type.fixed) == (len(spoiled), len(spoiled))
    assert {kind.label: kind.count for kind in report.off_type.kinds} == {
        METRIC_INTEGER: len(metric_paths()),
        COUNT_STRING: len(count_paths()),
    }
    repaired = {d["_id"]: d for d in db[SNAPSHOTS].find()}
    for _, doc in spoiled:
        assert repaired[doc["_id"]] == validate_snapshot(doc, coerce=True)
    assert diagnose(db, "org-a").off_type.found == 0


def test_fix_repairs_types_and_last_seen_and_a_second_run_finds_nothing_to_fix(db: Db) -> None:
    bad = off_type()
    db[ASSETS].insert_one(asset("org-a", "asset-1", last_seen=OLD))
    db[SNAPSHOTS].insert_many([stored(minute=0), *bad.values()])

    report = diagnose(db, "org-a", fix=True)

    assert (report.off_type.found, report.off_type.fixed) == (4, 4)
    assert (report.stale_last_seen.found, report.stale_last_seen.fixed) == (1, 1)
    assert report.healthy
    fixed = get(db, SNAPSHOTS, bad[TIMESTAMP_NOT_DATE]["_id"])
    assert fixed["timestamp"] == T0 + timedelta(minutes=1)
    fixed = get(db, SNAPSHOTS, bad[COUNT_STRING]["_id"])
    assert fixed["performanceData"]["system"]["processCount"] == 120
    assert get(db, ASSETS, "asset-1")["lastSeen"] == T0 + timedelta(minutes=4)

    again = diagnose(db, "org-a")

    assert again.healthy
    assert [check.found for check in again.checks] == [0, 0, 0, 0, 0, 0]


def test_unrepairable_snapshots_are_listed_with_a_reason_and_left_untouched(db: Db) -> None:
    hopeless = set_path(stored(minute=0), "performanceData.cpu.usage", "very busy")
    clash = {**stored(minute=1), "timestamp": T0.isoformat()}  # repairs to minute 0's key
    held = stored(minute=0)
    db[SNAPSHOTS].insert_many([held, hopeless | {"timestamp": (T0 + timedelta(minutes=2)).isoformat()}, clash])
    before = {d["_id"]: d for d in db[SNAPSHOTS].find()}

    report = diagnose(db, "org-a", fix=True)

    assert (report.off_type.found, report.off_type.fixed) == (2, 0)
    assert {item.id: item.reason for item in report.unrepairable} == {
        hopeless["_id"]: "invalid: performanceData.cpu.usage: expected a number, got string 'very busy'",
        clash["_id"]: "another snapshot has the same (orgId, assetId, timestamp)",
    }
    assert {d["_id"]: d for d in db[SNAPSHOTS].find()} == before
    assert not report.healthy


def test_without_the_unique_index_a_repair_never_duplicates_a_snapshot_key(raw_db: Db) -> None:
    twin = stored(minute=0)
    # Two copies of one snapshot keep the unique index from being created.
    raw_db[SNAPSHOTS].insert_many([twin, {**twin, "_id": ObjectId()}])
    clash = {**stored(minute=1), "timestamp": T0.isoformat()}
    raw_db[SNAPSHOTS].insert_one(clash)

    report = diagnose(raw_db, "org-a", fix=True)

    assert report.indexes.fixed == 0 and "duplicate" in report.indexes.hint
    assert [(item.id, item.reason) for item in report.unrepairable] == [
        (clash["_id"], "another snapshot has the same (orgId, assetId, timestamp)")
    ]
    assert get(raw_db, SNAPSHOTS, clash["_id"])["timestamp"] == T0.isoformat()


def test_legacy_snapshots_in_assets_are_counted_and_left_for_migrate(db: Db) -> None:
    legacy = {**snapshot(), "_id": ObjectId()}
    db[ASSETS].insert_many([asset("org-a", "asset-1"), legacy])

    report = diagnose(db, "org-a", fix=True)

    assert (report.legacy.found, report.legacy.examples) == (1, [str(legacy["_id"])])
    assert "perf-analytics migrate --org org-a" in report.legacy.hint
    assert db[ASSETS].count_documents({"_id": legacy["_id"]}) == 1
    assert not report.healthy


def test_orphaned_snapshots_are_counted_per_unknown_asset_within_the_org(db: Db) -> None:
    known = ObjectId()
    db[ASSETS].insert_many([asset("org-a", known), asset("org-a", "asset-1"), asset("org-b", "ghost-b")])
    db[SNAPSHOTS].insert_many(
        [
            stored(asset=str(known)),  # a 24-hex assetId names the ObjectId asset
            stored(asset="asset-1"),
            stored(asset="ghost-a", minute=0),
            stored(asset="ghost-a", minute=1),
            stored(asset="ghost-b"),  # org-b has this asset; org-a does not
        ]
    )

    report = diagnose(db, "org-a")

    assert report.orphaned.found == 3
    assert [(kind.label, kind.count) for kind in report.orphaned.kinds] == [("ghost-a", 2), ("ghost-b", 1)]
    assert not report.healthy


def test_stale_or_missing_last_seen_is_reported_and_fix_only_moves_it_forward(db: Db) -> None:
    newest = T0 + timedelta(minutes=1)
    db[ASSETS].insert_many(
        [
            asset("org-a", "behind", last_seen=OLD),
            asset("org-a", "missing", last_seen=None),
            asset("org-a", "text", last_seen="2026-03-01"),
            asset("org-a", "ahead", last_seen=T0 + timedelta(days=3)),
        ]
    )
    db[SNAPSHOTS].insert_many(
        [stored(asset=a, minute=m) for a in ("behind", "missing", "text", "ahead") for m in (0, 1)]
    )

    report = diagnose(db, "org-a", fix=True)

    assert report.stale_last_seen.found == 3
    assert report.stale_last_seen.examples == ["behind", "missing", "text"]
    assert report.stale_last_seen.fixed == 3
    last_seen = {d["_id"]: d["lastSeen"] for d in db[ASSETS].find()}
    assert last_seen == {"behind": newest, "missing": newest, "text": newest, "ahead": T0 + timedelta(days=3)}


def test_missing_indexes_are_reported_and_created_by_fix(raw_db: Db) -> None:
    raw_db[SNAPSHOTS].insert_one(stored())
    raw_db[ASSETS].insert_one(asset("org-a", "asset-1"))

    report = diagnose(raw_db, "org-a")
    assert (report.indexes.found, report.healthy) == (len(INDEXES), False)

    fixed = diagnose(raw_db, "org-a", fix=True)
    assert fixed.indexes.fixed == len(INDEXES)
    assert missing_indexes(raw_db) == []
    assert diagnose(raw_db, "org-a").healthy


def test_diagnosing_one_org_neither_counts_nor_changes_another_org(db: Db) -> None:
    db[ASSETS].insert_many(
        [
            asset("org-a", "asset-1", last_seen=OLD),
            asset("org-b", "asset-b", last_seen=OLD),
            {**snapshot(orgId="org-b", assetId="asset-b"), "_id": ObjectId()},
        ]
    )
    db[SNAPSHOTS].insert_many(
        [
            *off_type("org-a", "asset-1").values(),
            *off_type("org-b", "asset-b").values(),
            stored("org-b", "ghost"),
        ]
    )
    org_b_before = org_docs(db, "org-b")

    report = diagnose(db, "org-a", fix=True)

    assert report.off_type.found == 4
    assert (report.legacy.found, report.orphaned.found, report.stale_last_seen.found) == (0, 0, 1)
    assert report.healthy
    assert org_docs(db, "org-b") == org_b_before
    b = diagnose(db, "org-b")
    assert (b.off_type.found, b.legacy.found, b.orphaned.found, b.stale_last_seen.found) == (4, 1, 1, 1)


def test_diagnose_all_orgs_reports_every_org_and_indexes_once_even_when_empty(raw_db: Db) -> None:
    empty = diagnose_all_orgs(raw_db)
    assert (empty.orgs, empty.indexes.found, empty.healthy) == ([], len(INDEXES), False)

    raw_db[SNAPSHOTS].insert_one(stored("org-a"))
    raw_db[ASSETS].insert_many([asset("org-a", "asset-1"), {**snapshot(orgId="org-c"), "_id": ObjectId()}])
    fleet = diagnose_all_orgs(raw_db, fix=True)

    assert [(r.org_id, r.healthy) for r in fleet.orgs] == [("org-a", True), ("org-c", False)]
    assert fleet.indexes.fixed == len(INDEXES)


# -- _id that is no ObjectId, ids outside the rule ------------------------------------------

HEX = "65a0f0f0f0f0f0f0f0f0f0f0"
DAY = (T0.replace(hour=0), T0.replace(hour=0) + timedelta(days=1))


def test_string_ids_are_found_skipped_by_extraction_and_fixed_under_objectids(db: Db) -> None:
    db[ASSETS].insert_one(asset("org-a", "asset-1"))
    good = stored(minute=0)
    hex_id = {**stored(minute=1), "_id": HEX}
    named = {**stored(minute=2), "_id": "snap-2"}
    db[SNAPSHOTS].insert_many([good, hex_id, named])
    other_org = {**stored("org-b", minute=3), "_id": "snap-b"}
    db[SNAPSHOTS].insert_one(other_org)

    read = extract_window(db, "org-a", *DAY)  # older code stored these; reading must not fail

    assert read.frames.snapshots.height == 1
    assert sorted((p.id, p.reason) for p in read.skipped) == [(HEX, ID_NOT_OBJECTID), ("snap-2", ID_NOT_OBJECTID)]
    report = diagnose(db, "org-a")
    assert [(k.label, k.count) for k in report.off_type.kinds] == [(ID_NOT_OBJECTID, 2)]

    fixed = diagnose(db, "org-a", fix=True)

    assert (fixed.off_type.found, fixed.off_type.fixed) == (2, 2)
    assert fixed.healthy
    assert get(db, SNAPSHOTS, ObjectId(HEX)) == {**hex_id, "_id": ObjectId(HEX)}
    [renamed] = db[SNAPSHOTS].find({ORIGINAL_ID: "snap-2", "orgId": "org-a"})
    assert isinstance(renamed["_id"], ObjectId)
    assert {k: v for k, v in renamed.items() if k not in ("_id", ORIGINAL_ID)} == {
        k: v for k, v in named.items() if k != "_id"
    }
    assert db[SNAPSHOTS].count_documents({"orgId": "org-a", "_id": {"$type": "string"}}) == 0
    assert extract_window(db, "org-a", *DAY).frames.snapshots.height == 3
    assert get(db, SNAPSHOTS, "snap-b") == other_org  # another org's documents are not touched
    assert db[REPAIR_JOURNAL].count_documents({}) == 0
    assert diagnose(db, "org-a", fix=True).off_type.found == 0


def test_an_interrupted_id_repair_is_reported_and_finished_by_the_next_fix(db: Db) -> None:
    db[ASSETS].insert_one(asset("org-a", "asset-1"))
    doc = {**stored(minute=1), "_id": "snap-1"}
    db[SNAPSHOTS].insert_one(doc)
    fixed = validate_snapshot({k: v for k, v in doc.items() if k != "_id"}, org_id="org-a")
    # What a crash after the journal write and the delete leaves: the snapshot only in the journal.
    db[REPAIR_JOURNAL].insert_one({"_id": ObjectId(), "orgId": "org-b", "oldId": "x", "doc": {}})  # org-b's
    entry_id = ObjectId()
    db[REPAIR_JOURNAL].insert_one(
        {"_id": entry_id, "orgId": "org-a", "oldId": "snap-1", "doc": {"_id": entry_id, **fixed, ORIGINAL_ID: "snap-1"}}
    )
    db[SNAPSHOTS].delete_one({"_id": "snap-1"})

    seen = diagnose(db, "org-a")
    assert [(k.label, k.count) for k in seen.off_type.kinds] == [(REPAIR_PENDING, 1)]
    assert not seen.healthy

    report = diagnose(db, "org-a", fix=True)

    assert (report.off_type.found, report.off_type.fixed) == (1, 1)
    assert get(db, SNAPSHOTS, entry_id) == {"_id": entry_id, **fixed, ORIGINAL_ID: "snap-1"}
    assert db[REPAIR_JOURNAL].count_documents({"orgId": "org-a"}) == 0
    assert db[REPAIR_JOURNAL].count_documents({"orgId": "org-b"}) == 1


def test_an_id_repair_never_takes_an_id_another_snapshot_holds(db: Db) -> None:
    doc = {**stored(minute=1), "_id": "snap-1"}
    taken = {**stored(minute=2), "_id": repaired_id("org-a", "snap-1")[0]}
    db[SNAPSHOTS].insert_many([doc, taken])

    report = diagnose(db, "org-a", fix=True)

    assert [(p.id, p.reason) for p in report.unrepairable] == [
        ("snap-1", f"its new _id {taken['_id']} is already another snapshot's")
    ]
    assert get(db, SNAPSHOTS, "snap-1") == doc and get(db, SNAPSHOTS, taken["_id"]) == taken
    assert db[REPAIR_JOURNAL].count_documents({}) == 0


def test_ids_outside_the_rule_are_reported_and_never_rewritten(db: Db) -> None:
    db[SNAPSHOTS].insert_many(
        [
            stored(),
            {**stored(minute=1), "assetId": "p|q"},
            {**stored(minute=2), "agentId": "agent 2"},
            {**stored(minute=3), "orgId": "*"},
        ]
    )
    db[ASSETS].insert_many([asset("org-a", "asset-1"), asset("org-a", "p|q")])

    report = diagnose(db, "org-a", fix=True)

    assert (report.invalid_ids.found, report.invalid_ids.fixed) == (2, 0)
    assert [(k.label, k.count, k.examples) for k in report.invalid_ids.kinds] == [
        ("assetId", 1, ["'p|q'"]),
        ("agentId", 1, ["'agent 2'"]),
    ]
    assert "letters, digits" in report.invalid_ids.hint
    assert not report.healthy
    assert db[SNAPSHOTS].count_documents({"assetId": "p|q"}) == 1
    fleet = diagnose_all_orgs(db)
    star = next(r for r in fleet.orgs if r.org_id == "*")
    assert (star.invalid_ids.found, star.invalid_ids.kinds[0].label) == (1, "orgId")


# -- CLI ------------------------------------------------------------------------------


def test_cli_exits_1_with_problems_then_0_after_fix(cli: Cli, db: Db) -> None:
    bad = off_type()
    db[ASSETS].insert_one(asset("org-a", "asset-1", last_seen=OLD))
    db[SNAPSHOTS].insert_many(bad.values())

    first = cli("doctor")

    assert first.exit_code == 1, first.output
    lines = first.output.splitlines()
    assert lines[:3] == [
        "all orgs (admin run across tenants): 1 org(s): org-a",
        "missing indexes                     ok",
        "org org-a",
    ]
    assert "  off-type snapshots                4 found  (run `perf-analytics doctor --fix`)" in lines
    assert f"    metric stored as string         1  e.g. {bad[METRIC_STRING]['_id']}" in lines
    assert "  stale lastSeen                    1 found  e.g. asset-1  (run `perf-analytics doctor --fix`)" in lines
    assert lines[-1] == "2 problem(s) remain"

    fixed = cli("doctor", "--org", "org-a", "--fix")
    assert fixed.exit_code == 0, fixed.output
    assert "  off-type snapshots                4 found, 4 fixed" in fixed.output.splitlines()
    assert fixed.output.splitlines()[-1] == "healthy after repairs"

    again = cli("doctor", "--org", "org-a")
    assert again.exit_code == 0, again.output
    assert again.output.splitlines()[-1] == "healthy"


def test_cli_json_report_for_scripts(cli: Cli, db: Db) -> None:
    db[ASSETS].insert_one(asset("org-a", "asset-1"))
    db[SNAPSHOTS].insert_one(stored(asset="nowhere"))

    result = cli("doctor", "--org", "org-a", "--json")

    assert result.exit_code == 1, result.output
    payload = json.loads(result.output)
    assert (payload["scope"], payload["healthy"]) == ("orgs", False)
    [org] = payload["orgs"]
    assert (org["org_id"], org["orphaned"]["found"], org["orphaned"]["kinds"][0]["label"]) == ("org-a", 1, "nowhere")


# -- how doctor reads the server --------------------------------------------------------


class _SnapshotReads(monitoring.CommandListener):
    """The commands that read `performance_snapshots` (find, aggregate, distinct, count), and
    the snapshot documents the server returned in find/getMore replies."""

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.returned = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        name = event.command_name
        if name in ("find", "aggregate", "distinct", "count") and event.command.get(name) == SNAPSHOTS:
            self.commands.append(name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        cursor = event.reply.get("cursor")
        if event.command_name not in ("find", "getMore") or not isinstance(cursor, Mapping):
            return  # listIndexes replies with a cursor too
        if str(cursor.get("ns", "")).endswith(f".{SNAPSHOTS}"):
            self.returned += len(cursor.get("firstBatch", cursor.get("nextBatch", [])))

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def _healthy_fleet(db: Db) -> int:
    """Two orgs' healthy snapshots (three assets each, 20 minutes); how many are org-a's."""
    assets = [(org, f"{org}-asset-{a}") for org in ("org-a", "org-b") for a in (1, 2, 3)]
    docs = [stored(org, asset_id, minute) for org, asset_id in assets for minute in range(20)]
    db[SNAPSHOTS].insert_many(docs)
    db[ASSETS].insert_many([asset(org, asset_id, T0 + timedelta(minutes=19)) for org, asset_id in assets])
    return sum(1 for doc in docs if doc["orgId"] == "org-a")


def test_a_diagnosis_reads_the_snapshots_once_where_each_query_scans_and_only_bad_ones_elsewhere(
    db: Db, server_uri: str
) -> None:
    held = _healthy_fleet(db)
    listener = _SnapshotReads()
    client: MongoClient[dict[str, Any]] = MongoClient(server_uri, event_listeners=[listener], tz_aware=True)
    try:
        watched = client[db.name]
        report = diagnose(watched, "org-a")
        scans = probe_capabilities(watched).server.startswith("FerretDB")
    finally:
        client.close()

    assert report == diagnose(db, "org-a") and report.healthy
    if scans:  # one find over org-a's snapshots answers every check
        assert (listener.commands, listener.returned) == (["find"], held)
    else:  # the filters run on the server, which returns no healthy snapshot
        assert listener.returned == 0


def _troubled_org() -> dict[str, list[dict[str, Any]]]:
    """org-a with a problem of every kind doctor knows, beside a healthy org-b (by collection)."""
    entry_id = ObjectId()
    pending = validate_snapshot(snapshot(orgId="org-a", assetId="asset-1", timestamp=(T0 + timedelta(minutes=9)).isoformat()))
    journal = {"_id": entry_id, "orgId": "org-a", "oldId": "snap-9", "doc": {"_id": entry_id, **pending, ORIGINAL_ID: "snap-9"}}
    snapshots = [
        stored(),
        *off_type().values(),
        {**stored(minute=5), "_id": HEX},
        {**stored(minute=6), "_id": "snap-6"},
        {**stored(minute=7), "assetId": "p|q"},
        {**stored(minute=8), "agentId": "agent 8"},
        stored(asset="ghost", minute=10),
        stored(asset="asset-2", minute=11),
        stored("org-b", "asset-b", 12),
    ]
    assets = [
        asset("org-a", "asset-1"),
        asset("org-a", "asset-2", last_seen=OLD),
        asset("org-a", "p|q"),
        asset("org-b", "asset-b", T0 + timedelta(minutes=12)),
        {**snapshot(orgId="org-a", assetId="asset-1"), "_id": ObjectId()},  # a legacy snapshot
    ]
    return {REPAIR_JOURNAL: [journal], SNAPSHOTS: snapshots, ASSETS: assets}


@pytest.mark.parametrize("fix", [False, True])
def test_the_one_pass_and_the_server_side_checks_give_equal_reports(
    db: Db, server_uri: str, db_name: str, fix: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    twin = connect_uri(server_uri, f"{db_name}_twin")
    try:
        ensure_indexes(twin)
        docs = _troubled_org()
        for target in (db, twin):  # the same documents, _ids included, in both databases
            for name, batch in docs.items():
                target[name].insert_many(copy.deepcopy(batch))

        monkeypatch.setattr(doctor, "_scans_per_query", lambda _db: True)
        one_pass = [diagnose(db, org, fix=fix) for org in ("org-a", "org-b")]
        monkeypatch.setattr(doctor, "_scans_per_query", lambda _db: False)
        server_side = [diagnose(twin, org, fix=fix) for org in ("org-a", "org-b")]

        assert one_pass == server_side
        assert not one_pass[0].healthy and one_pass[1].healthy
        assert all(check.found for check in one_pass[0].checks[1:])  # every per-org check found something
        def written(target: Db) -> dict[str, list[dict[str, Any]]]:  # but the wall-clock updatedAt
            return {name: [{k: v for k, v in doc.items() if k != "updatedAt"} for doc in docs]
                    for name, docs in org_docs(target, "org-a").items()}

        assert written(db) == written(twin)
    finally:
        twin.client.drop_database(twin.name)
        twin.client.close()
