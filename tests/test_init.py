"""ensure_indexes, probe_capabilities and `perf-analytics init` against a real server."""

from __future__ import annotations

import os
from typing import Any

import pytest
from bson import ObjectId
from pymongo.errors import DuplicateKeyError, OperationFailure

from perf_analytics import localdb
from perf_analytics.errors import InvalidArgument, ServerError
from perf_analytics.schema import SNAPSHOTS, validate_snapshot
from perf_analytics.store import (
    INDEXES,
    KEY_INDEX,
    TTL_INDEX,
    Db,
    ensure_indexes,
    missing_indexes,
    probe_capabilities,
)
from tests.conftest import Cli
from tests.factories import snapshot

EXPECTED = {
    "orgId_1_assetId_1_timestamp_-1": ([("orgId", 1), ("assetId", 1), ("timestamp", -1)], True),
    "assetId_1_timestamp_-1": ([("assetId", 1), ("timestamp", -1)], False),
    "orgId_1_timestamp_-1": ([("orgId", 1), ("timestamp", -1)], False),
}


def _indexes(db: Db) -> dict[str, Any]:
    return {ix["name"]: ix for ix in db[SNAPSHOTS].list_indexes() if ix["name"] != "_id_"}


def _shape(db: Db) -> dict[str, tuple[list[tuple[str, int]], bool]]:
    return {
        name: ([(k, int(v)) for k, v in ix["key"].items()], bool(ix.get("unique")))
        for name, ix in _indexes(db).items()
    }


def test_ensure_indexes_creates_the_three_snapshot_indexes(raw_db: Db) -> None:
    report = ensure_indexes(raw_db)
    assert report.created == list(EXPECTED)
    assert report.existing == [] and report.notes == []
    assert _shape(raw_db) == EXPECTED
    assert missing_indexes(raw_db) == []


def test_the_index_table_in_the_code_is_the_documented_one() -> None:
    assert {name: (list(keys), unique) for name, (keys, unique) in INDEXES.items()} == EXPECTED
    assert KEY_INDEX == "orgId_1_assetId_1_timestamp_-1"


def test_ensure_indexes_a_second_time_creates_nothing(raw_db: Db) -> None:
    ensure_indexes(raw_db)
    report = ensure_indexes(raw_db)
    assert report.created == []
    assert report.existing == list(EXPECTED)
    assert _shape(raw_db) == EXPECTED


def test_ensure_indexes_adds_only_the_missing_ones(raw_db: Db) -> None:
    raw_db[SNAPSHOTS].create_index([("assetId", 1), ("timestamp", -1)], name="assetId_1_timestamp_-1")
    assert missing_indexes(raw_db) == [KEY_INDEX, "orgId_1_timestamp_-1"]
    report = ensure_indexes(raw_db)
    assert report.created == [KEY_INDEX, "orgId_1_timestamp_-1"]
    assert report.existing == ["assetId_1_timestamp_-1"]


def test_a_key_index_that_is_not_unique_is_refused_with_advice(raw_db: Db) -> None:
    raw_db[SNAPSHOTS].create_index([("orgId", 1), ("assetId", 1), ("timestamp", -1)], name=KEY_INDEX)
    with pytest.raises(ServerError, match="exists but is not unique"):
        ensure_indexes(raw_db)


def test_the_unique_index_cannot_be_built_over_duplicate_snapshots(raw_db: Db) -> None:
    raw_db[SNAPSHOTS].insert_many([validate_snapshot(snapshot()), validate_snapshot(snapshot())])
    with pytest.raises(ServerError, match=f"cannot create unique index {KEY_INDEX}"):
        ensure_indexes(raw_db)


def test_the_unique_index_rejects_a_second_snapshot_with_the_same_key_even_with_another_id(db: Db) -> None:
    db[SNAPSHOTS].insert_one(validate_snapshot(snapshot(_id=ObjectId())))
    with pytest.raises(DuplicateKeyError):
        db[SNAPSHOTS].insert_one(validate_snapshot(snapshot(_id=ObjectId())))
    assert db[SNAPSHOTS].count_documents({}) == 1


def test_the_unique_index_accepts_the_same_timestamp_for_another_asset_or_org(db: Db) -> None:
    db[SNAPSHOTS].insert_one(validate_snapshot(snapshot()))
    db[SNAPSHOTS].insert_one(validate_snapshot(snapshot(assetId="asset-2")))
    db[SNAPSHOTS].insert_one(validate_snapshot(snapshot(orgId="org-b")))
    assert db[SNAPSHOTS].count_documents({}) == 3


@pytest.mark.parametrize("days", [0, -3])
def test_a_ttl_of_no_days_is_refused_before_anything_is_created(raw_db: Db, days: int) -> None:
    with pytest.raises(InvalidArgument, match="positive number of days"):
        ensure_indexes(raw_db, ttl_days=days)
    assert _indexes(raw_db) == {}


def test_probe_capabilities_tells_what_the_server_supports(db: Db) -> None:
    caps = probe_capabilities(db)
    info = db.client.admin.command("buildInfo")
    if not os.environ.get("MONGODB_URI") and localdb.find_server_binary()[0] == "ferretdb":
        assert "ferretdbVersion" in info  # conftest started FerretDB: the probe must say so
    if "ferretdbVersion" in info:
        assert caps.server == f"FerretDB {info['ferretdbVersion']}"
        assert caps.server.startswith("FerretDB v1.")
        assert not caps.time_series
        assert any("TTL indexes" in line for line in caps.missing())
    else:
        assert caps.server == f"MongoDB {info['version']}"
    # Whatever the probe says about TTL indexes, the server must agree.
    try:
        db["probe"].create_index("timestamp", name="ttl_probe", expireAfterSeconds=60)
    except OperationFailure as exc:
        assert not caps.ttl_indexes, f"probe claims TTL support but the server refused: {exc}"
    else:
        assert caps.ttl_indexes, "probe denies TTL support but the server built a TTL index"


def test_init_creates_the_indexes_and_says_so(cli: Cli, raw_db: Db) -> None:
    result = cli("init")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:3] == [f"created index {name}" for name in EXPECTED]
    caps = probe_capabilities(raw_db)
    assert lines[3:] == [f"note: {caps.server} lacks {missing}" for missing in caps.missing()]
    assert result.stderr == ""
    assert _shape(raw_db) == EXPECTED


def test_init_a_second_time_creates_nothing_and_says_already_present(
    cli: Cli, raw_db: Db
) -> None:
    assert cli("init").exit_code == 0
    result = cli("init")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:3] == [f"index {name} already present" for name in EXPECTED]
    assert not any(line.startswith("created") for line in lines)
    assert _shape(raw_db) == EXPECTED


def test_init_with_ttl_days_builds_a_ttl_index_only_where_the_server_has_them(
    cli: Cli, raw_db: Db
) -> None:
    result = cli("init", "--ttl-days", "30")
    caps = probe_capabilities(raw_db)
    if caps.ttl_indexes:
        assert result.exit_code == 0, result.output
        assert f"created index {TTL_INDEX}" in result.stdout.splitlines()
        assert _indexes(raw_db)[TTL_INDEX]["expireAfterSeconds"] == 30 * 86400
        again = cli("init", "--ttl-days", "30")
        assert f"index {TTL_INDEX} already present" in again.stdout.splitlines()
    else:
        assert result.exit_code == 1
        assert result.stderr.count("\n") == 1
        line = result.stderr.rstrip("\n")
        assert line.startswith(f"Error: {caps.server} does not support TTL indexes")
        assert "the other indexes are in place" in line
        assert "Traceback" not in result.output
        assert TTL_INDEX not in _indexes(raw_db)
    assert {name: shape for name, shape in _shape(raw_db).items() if name != TTL_INDEX} == EXPECTED
