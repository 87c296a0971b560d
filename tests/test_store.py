"""store_snapshot and get_asset_performance against a real server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId
from pymongo import MongoClient, monitoring
from pymongo.errors import BulkWriteError, DuplicateKeyError

from perf_analytics.errors import InvalidArgument, ServerError, ValidationError
from perf_analytics.schema import ASSETS, SNAPSHOTS, TIME_WINDOWS, validate_snapshot
from perf_analytics.store import (
    KEY_INDEX,
    MAX_DOCUMENT_BYTES,
    MAX_NESTING,
    Db,
    SortedWriteErrors,
    duplicate_key_index,
    duplicates_of,
    get_asset_performance,
    is_duplicate_key,
    missing_indexes,
    probe_capabilities,
    sort_write_errors,
    store_snapshot,
    touch_assets,
)
from tests.factories import T0, series, set_path, snapshot

MS = timedelta(milliseconds=1)


def _add_asset(db: Db, asset_id: Any, org: str = "org-a", **fields: Any) -> None:
    db[ASSETS].insert_one({"_id": asset_id, "orgId": org, "name": f"host {asset_id}", **fields})


def _add_objectid_and_string_assets(db: Db, text: str, *, string_org: str) -> None:
    """An ObjectId asset in org-a and a string asset of the same text in `string_org`.

    FerretDB 1.x keys _id uniqueness on the value's text, so it refuses the second one:
    the test then cannot run there, and says so in the report.
    """
    _add_asset(db, ObjectId(text))
    try:
        _add_asset(db, text, org=string_org)
    except DuplicateKeyError:
        pytest.skip("this server cannot hold ObjectId(x) and 'x' as two _ids (FerretDB 1.x)")


def _asset(db: Db, asset_id: Any) -> dict[str, Any]:
    doc = db[ASSETS].find_one({"_id": asset_id})
    assert doc is not None
    return doc


def _at(moment: datetime, **overrides: Any) -> dict[str, Any]:
    return snapshot(timestamp=moment.isoformat(), **overrides)


# --- store_snapshot -------------------------------------------------------------------


def test_a_stored_snapshot_goes_to_performance_snapshots_and_never_into_assets(db: Db) -> None:
    _add_asset(db, "asset-1")
    result = store_snapshot(db, "org-a", snapshot())
    assert result.inserted and not result.orphaned
    stored = list(db[SNAPSHOTS].find())
    assert len(stored) == 1
    assert stored[0]["_id"] == result.id
    assert stored[0]["orgId"] == "org-a" and stored[0]["assetId"] == "asset-1"
    assert stored[0]["timestamp"] == T0
    assert stored[0]["performanceData"]["cpu"]["usage"] == 37.5
    assert db[ASSETS].count_documents({}) == 1
    assert set(_asset(db, "asset-1")) == {"_id", "orgId", "name", "lastSeen", "updatedAt"}


def test_storing_a_snapshot_sets_last_seen_and_updated_at_of_the_asset(db: Db) -> None:
    _add_asset(db, "asset-1")
    before = datetime.now(UTC) - MS  # the server keeps milliseconds only
    store_snapshot(db, "org-a", snapshot())
    after = datetime.now(UTC)
    asset = _asset(db, "asset-1")
    assert asset["lastSeen"] == T0
    assert before <= asset["updatedAt"] <= after


def test_storing_an_old_snapshot_never_rewinds_last_seen(db: Db) -> None:
    _add_asset(db, "asset-1")
    store_snapshot(db, "org-a", _at(T0 + timedelta(minutes=10)))
    store_snapshot(db, "org-a", _at(T0))
    assert _asset(db, "asset-1")["lastSeen"] == T0 + timedelta(minutes=10)
    store_snapshot(db, "org-a", _at(T0 + timedelta(minutes=20)))
    assert _asset(db, "asset-1")["lastSeen"] == T0 + timedelta(minutes=20)


def test_an_older_snapshot_still_updates_updated_at(db: Db) -> None:
    _add_asset(db, "asset-1", lastSeen=T0 + timedelta(days=1), updatedAt=T0)
    store_snapshot(db, "org-a", snapshot())
    asset = _asset(db, "asset-1")
    assert asset["lastSeen"] == T0 + timedelta(days=1)
    assert asset["updatedAt"] > T0


@pytest.mark.parametrize("text", ["65f0a1b2c3d4e5f601234567", "65F0A1B2C3D4E5F601234567"])
def test_an_asset_id_of_24_hex_digits_matches_an_objectid_asset(db: Db, text: str) -> None:
    oid = ObjectId(text)
    _add_asset(db, oid)
    result = store_snapshot(db, "org-a", snapshot(assetId=text))
    assert not result.orphaned
    assert _asset(db, oid)["lastSeen"] == T0


def test_an_asset_id_of_24_hex_digits_also_matches_a_string_asset_of_the_same_text(db: Db) -> None:
    text = "65f0a1b2c3d4e5f601234567"
    _add_asset(db, text)
    result = store_snapshot(db, "org-a", snapshot(assetId=text))
    assert not result.orphaned
    assert _asset(db, text)["lastSeen"] == T0


def test_a_24_hex_asset_id_moves_both_an_objectid_and_a_string_asset_of_the_org(db: Db) -> None:
    text = "65f0a1b2c3d4e5f601234567"
    _add_objectid_and_string_assets(db, text, string_org="org-a")
    store_snapshot(db, "org-a", snapshot(assetId=text))
    assert _asset(db, ObjectId(text))["lastSeen"] == T0
    assert _asset(db, text)["lastSeen"] == T0


@pytest.mark.parametrize("text", ["asset-1", "abcdefghijkl", "zzf0a1b2c3d4e5f601234567", "65f0a1b2c3d4e5f6012345"])
def test_any_other_asset_id_matches_a_string_asset_only(db: Db, text: str) -> None:
    _add_asset(db, text)
    result = store_snapshot(db, "org-a", snapshot(assetId=text))
    assert not result.orphaned
    assert _asset(db, text)["lastSeen"] == T0


def test_a_12_character_asset_id_does_not_match_the_objectid_of_its_bytes(db: Db) -> None:
    # ObjectId accepts any 12-byte string; an assetId of 12 characters is still just text.
    text = "abcdefghijkl"
    _add_asset(db, ObjectId(text.encode()))
    result = store_snapshot(db, "org-a", snapshot(assetId=text))
    assert result.orphaned
    assert "lastSeen" not in _asset(db, ObjectId(text.encode()))


def test_a_snapshot_of_an_unknown_asset_is_stored_and_reported_orphaned(db: Db) -> None:
    result = store_snapshot(db, "org-a", snapshot(assetId="nobody"))
    assert result.inserted and result.orphaned
    assert db[SNAPSHOTS].count_documents({"assetId": "nobody"}) == 1
    assert db[ASSETS].count_documents({}) == 0  # no asset is invented


@pytest.mark.parametrize(
    ("asset_id", "text"),
    [
        ("asset-1", "asset-1"),
        ("65f0a1b2c3d4e5f601234567", "65f0a1b2c3d4e5f601234567"),
        (ObjectId("65f0a1b2c3d4e5f601234567"), "65f0a1b2c3d4e5f601234567"),
    ],
    ids=["string", "hex-string", "objectid"],
)
def test_an_asset_of_another_org_with_the_same_id_is_never_touched(
    db: Db, asset_id: Any, text: str
) -> None:
    _add_asset(db, asset_id, org="org-b")
    result = store_snapshot(db, "org-a", snapshot(assetId=text))
    assert result.inserted and result.orphaned
    assert set(_asset(db, asset_id)) == {"_id", "orgId", "name"}


def test_only_the_asset_of_the_callers_org_moves_when_both_orgs_have_the_id_text(db: Db) -> None:
    text = "65f0a1b2c3d4e5f601234567"
    _add_objectid_and_string_assets(db, text, string_org="org-b")
    result = store_snapshot(db, "org-a", snapshot(assetId=text))
    assert not result.orphaned
    assert _asset(db, ObjectId(text))["lastSeen"] == T0
    assert set(_asset(db, text)) == {"_id", "orgId", "name"}


class _AssetUpdates(monitoring.CommandListener):
    """The update statements sent to `assets` (an update command carries a list of them)."""

    def __init__(self) -> None:
        self.statements: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "update" and event.command.get("update") == ASSETS:
            self.statements.extend(event.command["updates"])

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def _watched(db: Db, server_uri: str) -> tuple[Db, _AssetUpdates, MongoClient[dict[str, Any]]]:
    updates = _AssetUpdates()
    client: MongoClient[dict[str, Any]] = MongoClient(server_uri, tz_aware=True, event_listeners=[updates])
    return client[db.name], updates, client


def test_a_fleet_reporting_at_one_time_moves_in_one_update_statement_where_the_server_narrows_it(
    db: Db, server_uri: str
) -> None:
    """One org-scoped `UpdateMany` on a server that narrows `{_id: {$in}, orgId}` by its
    index; on one that reads its whole collection for it (FerretDB), one `UpdateOne` by
    exact _id per asset of this org, and none for another org's."""
    fleet = [f"asset-{i}" for i in range(100)]
    db[ASSETS].insert_many([{"_id": a, "orgId": "org-a"} for a in fleet])
    db[ASSETS].insert_many([{"_id": "b-1", "orgId": "org-b"}, {"_id": "ahead", "orgId": "org-a", "lastSeen": T0 + MS}])
    watched, updates, client = _watched(db, server_uri)
    try:
        missing = touch_assets(watched, "org-a", {**dict.fromkeys(fleet, T0), "b-1": T0, "ahead": T0})
    finally:
        client.close()
    if probe_capabilities(db).compound_pushdown:
        assert len(updates.statements) == 1
        assert updates.statements[0]["q"]["orgId"] == "org-a"
    else:
        assert sorted(u["q"]["_id"] for u in updates.statements) == sorted([*fleet, "ahead"])
        assert all(set(u["q"]) == {"_id"} and not u.get("multi") for u in updates.statements)
    assert missing == {"b-1"}  # another org's asset is no asset of this org
    assert {a["_id"]: a["lastSeen"] for a in db[ASSETS].find({"orgId": "org-a"})} == {
        **dict.fromkeys(fleet, T0), "ahead": T0 + MS  # $max: never backwards, in a shared update too
    }
    assert set(_asset(db, "b-1")) == {"_id", "orgId"}


def test_assets_of_different_times_each_move_to_their_own(db: Db, server_uri: str) -> None:
    times = {f"asset-{i}": T0 + i * MS for i in range(5)} | {f"shared-{i}": T0 + 100 * MS for i in range(20)}
    db[ASSETS].insert_many([{"_id": a, "orgId": "org-a"} for a in times])
    watched, updates, client = _watched(db, server_uri)
    try:
        assert touch_assets(watched, "org-a", times) == set()
    finally:
        client.close()
    # five times of one asset each, one time of 20 (grouped only where the server narrows it)
    assert len(updates.statements) == (6 if probe_capabilities(db).compound_pushdown else 25)
    assert {a["_id"]: a["lastSeen"] for a in db[ASSETS].find({"orgId": "org-a"})} == times


def test_storing_the_same_snapshot_twice_stores_it_once(db: Db) -> None:
    _add_asset(db, "asset-1")
    first = store_snapshot(db, "org-a", snapshot())
    second = store_snapshot(db, "org-a", snapshot())
    assert first.inserted and not second.inserted
    assert second.id == first.id
    assert not second.orphaned
    assert db[SNAPSHOTS].count_documents({}) == 1


def test_the_same_snapshot_with_another_timestamp_form_or_id_is_still_a_duplicate(db: Db) -> None:
    first = store_snapshot(db, "org-a", snapshot())
    again = [
        snapshot(timestamp=int(T0.timestamp() * 1000)),
        snapshot(timestamp="2026-03-01T13:00:00+01:00"),
        snapshot(_id=ObjectId()),
    ]
    for payload in again:
        result = store_snapshot(db, "org-a", payload)
        assert not result.inserted
        assert result.id == first.id
    assert db[SNAPSHOTS].count_documents({}) == 1


def test_a_snapshot_reusing_the_id_of_another_snapshot_is_rejected_and_moves_nothing(db: Db) -> None:
    _add_asset(db, "asset-2")
    first = store_snapshot(db, "org-a", snapshot())
    with pytest.raises(ValidationError) as info:
        store_snapshot(db, "org-a", snapshot(_id=first.id, assetId="asset-2"))
    assert info.value.field == "_id"
    assert db[SNAPSHOTS].count_documents({}) == 1
    assert "lastSeen" not in _asset(db, "asset-2")


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("performanceData.cpu.usage", 140),
        ("timestamp", "yesterday"),
        ("orgId", "org-b"),  # the payload names another org than the call
    ],
)
def test_a_bad_payload_raises_validation_error_and_writes_nothing(db: Db, path: str, value: Any) -> None:
    _add_asset(db, "asset-1")
    with pytest.raises(ValidationError):
        store_snapshot(db, "org-a", set_path(snapshot(), path, value))
    assert db[SNAPSHOTS].count_documents({}) == 0
    assert set(_asset(db, "asset-1")) == {"_id", "orgId", "name"}


def test_storing_twice_into_a_database_without_init_stores_once(raw_db: Db) -> None:
    first = store_snapshot(raw_db, "org-a", snapshot())
    again = store_snapshot(raw_db, "org-a", snapshot())
    assert (first.inserted, again.inserted) == (True, False)
    assert raw_db[SNAPSHOTS].count_documents({}) == 1
    assert KEY_INDEX not in missing_indexes(raw_db)


def test_storing_where_duplicates_stop_the_key_index_is_one_line_error_and_writes_nothing(raw_db: Db) -> None:
    twice = validate_snapshot(snapshot())
    raw_db[SNAPSHOTS].insert_many([dict(twice), dict(twice)])
    with pytest.raises(ServerError) as info:
        store_snapshot(raw_db, "org-a", snapshot(assetId="asset-2"))
    assert str(info.value) == (
        f"cannot create unique index {KEY_INDEX}: duplicate snapshots exist "
        "(remove them first: see `doctor`, then run `perf-analytics init`)"
    )
    assert raw_db[SNAPSHOTS].count_documents({}) == 2


def test_a_snapshot_reusing_the_id_of_another_orgs_snapshot_is_rejected_and_moves_nothing(db: Db) -> None:
    _add_asset(db, "asset-1", org="org-b")
    first = store_snapshot(db, "org-a", snapshot())
    with pytest.raises(ValidationError) as info:
        store_snapshot(db, "org-b", snapshot(orgId="org-b", _id=first.id))
    assert (info.value.field, info.value.reason) == ("_id", f"{first.id!r} is already the id of another snapshot")
    assert db[SNAPSHOTS].count_documents({"orgId": "org-b"}) == 0
    assert "lastSeen" not in _asset(db, "asset-1")


# Write errors as MongoDB documents them (errmsg names the index; keyPattern since 4.2) and
# as FerretDB 1.24 answers (measured: the same errmsg for a clash on _id and on the key).
_MONGODB_KEY_CLASH = {
    "index": 0, "code": 11000,
    "errmsg": f"E11000 duplicate key error collection: deskwise.performance_snapshots index: {KEY_INDEX} "
    "dup key: { orgId: \"org-a\", assetId: \"asset-1\", timestamp: new Date(1772366400000) }",
    "keyPattern": {"orgId": 1, "assetId": 1, "timestamp": -1},
}
_MONGODB_ID_CLASH = {
    "index": 0, "code": 11000,
    "errmsg": "E11000 duplicate key error collection: deskwise.performance_snapshots index: _id_ dup key: { _id: 1 }",
    "keyPattern": {"_id": 1},
}
_MONGODB_OTHER_CLASH = {
    "index": 0, "code": 11000,
    "errmsg": "E11000 duplicate key error collection: deskwise.performance_snapshots index: agent_unique dup key: {}",
}
_FERRETDB_CLASH = {"index": 0, "code": 11000, "errmsg": "E11000 duplicate key error collection: t.performance_snapshots"}


@pytest.mark.parametrize(
    ("error", "index"),
    [(_MONGODB_KEY_CLASH, KEY_INDEX), (_MONGODB_ID_CLASH, "_id_"), (_MONGODB_OTHER_CLASH, "agent_unique"),
     (_FERRETDB_CLASH, None)],
    ids=["mongodb-key", "mongodb-id", "mongodb-other", "ferretdb"],
)
def test_a_duplicate_key_error_names_its_index_when_the_server_says(error: dict[str, Any], index: str | None) -> None:
    assert is_duplicate_key(error)
    assert duplicate_key_index(error) == index


def test_only_a_clash_whose_snapshot_is_stored_is_a_duplicate(db: Db) -> None:
    stored = validate_snapshot(snapshot()) | {"_id": 1}
    db[SNAPSHOTS].insert_one(stored)
    same = validate_snapshot(snapshot()) | {"_id": 1}  # a reload: clashes on _id and key
    other = validate_snapshot(snapshot(assetId="asset-2")) | {"_id": 1}  # only the _id is taken
    errors = [_MONGODB_KEY_CLASH, _MONGODB_ID_CLASH, _FERRETDB_CLASH, _MONGODB_ID_CLASH, _FERRETDB_CLASH,
              _MONGODB_OTHER_CLASH]
    verdicts = duplicates_of(db, [same, same, same, other, other, same], errors)
    assert verdicts[:3] == [None, None, None]
    assert [(v.field, v.reason) for v in verdicts[3:5] if v is not None] == [
        ("_id", "1 is already the id of another snapshot")
    ] * 2
    assert verdicts[5] is not None and verdicts[5].reason.startswith("duplicate key on unique index agent_unique")


def test_write_errors_sort_into_duplicates_refusals_and_the_rest_inserted(db: Db) -> None:
    db[SNAPSHOTS].insert_one(validate_snapshot(snapshot()) | {"_id": 1})
    batch = [
        validate_snapshot(snapshot(assetId="asset-2")) | {"_id": 2},  # new
        validate_snapshot(snapshot()) | {"_id": 3},  # stored before: a duplicate
        validate_snapshot(snapshot(assetId="asset-3")) | {"_id": 1},  # another snapshot's _id
    ]
    with pytest.raises(BulkWriteError) as caught:
        db[SNAPSHOTS].insert_many(batch, ordered=False)
    asked: list[int] = []

    def doc_at(i: int) -> dict[str, Any]:
        asked.append(i)
        return batch[i]

    result = sort_write_errors(db, caught.value.details, doc_at)
    assert result == SortedWriteErrors(duplicates=[1], refused={2: ("_id", "1 is already the id of another snapshot")})
    assert sorted(asked) == [1, 2]  # only the documents with a duplicate-key error are looked at


def test_a_write_error_that_is_no_duplicate_key_is_refused_with_the_servers_reason(db: Db) -> None:
    details = {"writeErrors": [{"index": 0, "code": 2, "errmsg": "bad value\nmore"}]}
    result = sort_write_errors(db, details, lambda i: pytest.fail("no duplicate to look up"))
    assert result == SortedWriteErrors(duplicates=[], refused={0: ("", "refused by the server: bad value")})


def _deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("extra", "field", "reason"),
    [
        (_deep(MAX_NESTING), "extra.a.a.a...", f"nested deeper than {MAX_NESTING} levels of objects and arrays"),
        (2**70, "", "cannot be stored as BSON"),
        (b"\0" * MAX_DOCUMENT_BYTES, "extra", "the document is "),
    ],
    ids=["too-deep", "int-over-64-bits", "over-16-mib"],
)
def test_a_snapshot_no_server_can_store_raises_validation_error_and_writes_nothing(
    db: Db, extra: Any, field: str, reason: str
) -> None:
    _add_asset(db, "asset-1")
    with pytest.raises(ValidationError) as info:
        store_snapshot(db, "org-a", snapshot(extra=extra))
    assert info.value.field == field
    assert info.value.reason.startswith(reason)
    assert db[SNAPSHOTS].count_documents({}) == 0
    assert "lastSeen" not in _asset(db, "asset-1")


def test_the_counts_add_up(db: Db) -> None:
    _add_asset(db, "asset-1")
    unique = series(12)
    duplicates = [unique[i] for i in (0, 3, 3, 11)]
    results = [store_snapshot(db, "org-a", payload) for payload in [*unique, *duplicates]]
    assert sum(r.inserted for r in results) == len(unique)
    assert [r.inserted for r in results[len(unique):]] == [False] * len(duplicates)
    assert db[SNAPSHOTS].count_documents({}) == len(unique) + len(duplicates) - len(duplicates)
    assert _asset(db, "asset-1")["lastSeen"] == T0 + timedelta(minutes=11)


# --- get_asset_performance --------------------------------------------------------------


def test_performance_comes_back_newest_first(db: Db) -> None:
    for payload in reversed(series(5)):
        store_snapshot(db, "org-a", payload)
    got = get_asset_performance(db, "asset-1", "org-a", "1hour", now=T0 + timedelta(minutes=10))
    assert [d["timestamp"] for d in got] == [T0 + timedelta(minutes=i) for i in (4, 3, 2, 1, 0)]


def test_performance_returns_at_most_limit_snapshots_the_newest_ones(db: Db) -> None:
    for payload in series(10):
        store_snapshot(db, "org-a", payload)
    got = get_asset_performance(db, "asset-1", "org-a", "1hour", 3, now=T0 + timedelta(minutes=30))
    assert [d["timestamp"] for d in got] == [T0 + timedelta(minutes=i) for i in (9, 8, 7)]


def test_the_default_limit_is_60(db: Db) -> None:
    for payload in series(65, step=timedelta(seconds=30)):
        store_snapshot(db, "org-a", payload)
    assert len(get_asset_performance(db, "asset-1", "org-a", now=T0 + timedelta(minutes=40))) == 60


@pytest.mark.parametrize("window", list(TIME_WINDOWS))
def test_each_window_keeps_the_snapshots_just_inside_and_drops_those_just_outside(
    db: Db, window: str
) -> None:
    now = T0 + timedelta(days=2)
    start = now - TIME_WINDOWS[window]
    inside = [now, now - MS, start + MS]
    outside = [now + MS, start - MS, start - timedelta(days=1)]
    for moment in inside + outside:
        store_snapshot(db, "org-a", _at(moment))
    got = get_asset_performance(db, "asset-1", "org-a", window, now=now)
    assert [d["timestamp"] for d in got] == inside


def test_the_window_ends_at_the_current_time_when_now_is_not_given(db: Db) -> None:
    current = datetime.now(UTC)
    store_snapshot(db, "org-a", _at(current - timedelta(minutes=30)))
    store_snapshot(db, "org-a", _at(current - timedelta(minutes=90)))
    got = get_asset_performance(db, "asset-1", "org-a", "1hour")
    assert len(got) == 1


def test_an_unknown_window_is_an_error_listing_the_valid_ones(db: Db) -> None:
    with pytest.raises(InvalidArgument) as info:
        get_asset_performance(db, "asset-1", "org-a", "2hours")
    message = str(info.value)
    assert "'2hours'" in message
    for window in TIME_WINDOWS:
        assert window in message


@pytest.mark.parametrize("limit", [0, -1])
def test_a_limit_below_one_is_an_error(db: Db, limit: int) -> None:
    with pytest.raises(InvalidArgument, match="limit must be positive"):
        get_asset_performance(db, "asset-1", "org-a", "1hour", limit)


def test_performance_never_returns_another_orgs_snapshots_of_the_same_asset_id(db: Db) -> None:
    store_snapshot(db, "org-a", _at(T0, agentId="agent-a"))
    store_snapshot(db, "org-b", _at(T0, orgId="org-b", agentId="agent-b"))
    store_snapshot(db, "org-b", _at(T0 + timedelta(minutes=1), orgId="org-b"))
    got = get_asset_performance(db, "asset-1", "org-a", "1hour", now=T0 + timedelta(minutes=5))
    assert [(d["orgId"], d["agentId"]) for d in got] == [("org-a", "agent-a")]
    assert len(get_asset_performance(db, "asset-1", "org-b", "1hour", now=T0 + timedelta(minutes=5))) == 2


def test_performance_returns_only_the_asked_asset(db: Db) -> None:
    store_snapshot(db, "org-a", _at(T0))
    store_snapshot(db, "org-a", _at(T0, assetId="asset-2"))
    got = get_asset_performance(db, "asset-2", "org-a", "1hour", now=T0 + timedelta(minutes=5))
    assert [d["assetId"] for d in got] == ["asset-2"]
