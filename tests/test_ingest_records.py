"""Loads that meet a bad record, or a database without `init`: each bad record is one
reject with its field and reason, the rest is stored, and loading twice stores once."""

from __future__ import annotations

import json
import math
import tracemalloc
from pathlib import Path
from typing import Any

import bson
import orjson
import pytest
from bson import ObjectId, json_util

from perf_analytics.errors import ServerError
from perf_analytics.ingest import LoadOptions, ingest_archives_all_orgs
from perf_analytics.ingest.readers import MAX_LINE_BYTES, open_archive
from perf_analytics.schema import ASSETS, SNAPSHOTS, validate_snapshot
from perf_analytics.store import (
    KEY_INDEX,
    MAX_DOCUMENT_BYTES,
    MAX_NESTING,
    Db,
    missing_indexes,
    probe_capabilities,
)
from tests.conftest import Cli
from tests.factories import T0, series, set_path, snapshot


def _load(db: Db, path: Path, tmp_path: Path, **kw: Any) -> Any:
    kw.setdefault("checkpoint_dir", tmp_path / "cp")
    kw.setdefault("rejects", tmp_path / "rejects.ndjson")
    return ingest_archives_all_orgs(db, [path], options=LoadOptions(**kw))


def _ndjson(path: Path, records: list[Any]) -> Path:
    """One record a line; a str is written as it is (a line the test built by hand)."""
    with path.open("wb") as fh:
        for record in records:
            fh.write((record if isinstance(record, str) else json.dumps(record)).encode() + b"\n")
    return path


def _rejects(tmp_path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (tmp_path / "rejects.ndjson").read_bytes().splitlines()]


def _nested(depth: int, kind: str) -> Any:
    """A value that is `depth` objects (or arrays) deep."""
    value: Any = 1
    for _ in range(depth):
        value = {"a": value} if kind == "object" else [value]
    return value


def _deep_line(depth: int, kind: str) -> str:
    """An NDJSON line: a valid snapshot whose field `extra` nests `depth` levels, written by
    hand (json.dumps itself stops at Python's recursion limit)."""
    opening, closing = ('{"a":', "}") if kind == "object" else ("[", "]")
    body = json.dumps(snapshot(assetId="deep", extra=0))
    return body.replace('"extra": 0', f'"extra": {opening * depth}1{closing * depth}')


# Item 1: idempotent by construction ------------------------------------------------------


def test_loading_twice_into_a_database_without_init_stores_each_snapshot_once(raw_db: Db, tmp_path: Path) -> None:
    archive = _ndjson(tmp_path / "a.ndjson", series(30))
    first = _load(raw_db, archive, tmp_path, batch_size=7)
    second = _load(raw_db, archive, tmp_path, batch_size=7, resume=False)
    assert (first.inserted, first.duplicates) == (30, 0)
    assert (second.inserted, second.duplicates) == (0, 30)
    assert raw_db[SNAPSHOTS].count_documents({}) == 30
    assert KEY_INDEX not in missing_indexes(raw_db)


def test_a_load_into_a_database_whose_duplicates_stop_the_key_index_says_what_to_do(
    raw_db: Db, tmp_path: Path
) -> None:
    twice = validate_snapshot(snapshot())
    raw_db[SNAPSHOTS].insert_many([dict(twice), dict(twice)])
    archive = _ndjson(tmp_path / "a.ndjson", series(5, asset="asset-9"))
    with pytest.raises(ServerError) as info:
        _load(raw_db, archive, tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert "duplicate snapshots exist" in message and "`doctor`" in message and "init" in message
    assert raw_db[SNAPSHOTS].count_documents({}) == 2  # nothing of the archive was written


def test_cli_ingest_where_duplicates_stop_the_key_index_is_one_error_line(
    cli: Cli, raw_db: Db, tmp_path: Path
) -> None:
    twice = validate_snapshot(snapshot())
    raw_db[SNAPSHOTS].insert_many([dict(twice), dict(twice)])
    archive = _ndjson(tmp_path / "a.ndjson", series(2, asset="asset-9"))
    result = cli("ingest", str(archive), "--checkpoint-dir", str(tmp_path))
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: cannot create unique index {KEY_INDEX}: duplicate snapshots exist "
        "(remove them first: see `doctor`, then run `perf-analytics init`)\n"
    )


# Item 4: one bad record never stops a load ---------------------------------------------------


@pytest.mark.parametrize(("depth", "kind"), [(600, "object"), (600, "array"), (5000, "array"), (5000, "object")])
def test_a_record_nested_too_deep_is_one_reject_and_the_rest_loads(
    db: Db, tmp_path: Path, depth: int, kind: str
) -> None:
    lines: list[Any] = [*series(3), _deep_line(depth, kind), *series(3, asset="asset-2")]
    summary = _load(db, _ndjson(tmp_path / "a.ndjson", lines), tmp_path)
    assert (summary.read, summary.inserted, summary.rejected) == (7, 6, 1)
    [reject] = _rejects(tmp_path)
    assert reject["position"] == "line 4"
    assert reject["reason"] == f"nested deeper than {MAX_NESTING} levels of objects and arrays"
    if depth < 1024:  # parsed (orjson stops at 1,024 levels), so the field is known
        assert reject["field"] == ("extra.a.a.a..." if kind == "object" else "extra[0][0][0]...")
        assert reject["record"].startswith('{"orgId"')


@pytest.mark.parametrize("depth", [600, 5000])
def test_a_json_array_item_nested_too_deep_is_one_reject_and_the_rest_loads(
    db: Db, tmp_path: Path, depth: int
) -> None:
    items = [json.dumps(r) for r in series(2)] + [_deep_line(depth, "array")]
    path = tmp_path / "a.json"
    path.write_text("[" + ",\n".join(items) + "]")
    summary = _load(db, path, tmp_path)
    assert (summary.inserted, summary.rejected) == (2, 1)
    [reject] = _rejects(tmp_path)
    assert (reject["position"], reject["field"]) == ("item 3", "extra[0][0][0]...")
    assert reject["reason"] == f"nested deeper than {MAX_NESTING} levels of objects and arrays"


def test_a_record_at_the_nesting_limit_is_stored(db: Db, tmp_path: Path) -> None:
    # The document is level 1 and `extra` level 2: MAX_NESTING - 1 more levels fit.
    line = _deep_line(MAX_NESTING - 1, "object")
    summary = _load(db, _ndjson(tmp_path / "a.ndjson", [line]), tmp_path)
    assert (summary.inserted, summary.rejected) == (1, 0)


@pytest.mark.slow
def test_a_document_over_16_mib_as_bson_is_rejected_with_its_size_and_the_rest_loads(
    db: Db, tmp_path: Path
) -> None:
    # 1.5 million small numbers: about 3 MB of JSON, about 19 MB of BSON (each array item
    # carries its index as a key). The limit is on what the server would store.
    big = snapshot(assetId="big", extra=[0] * 1_500_000)
    summary = _load(db, _ndjson(tmp_path / "a.ndjson", [*series(2), big, *series(2, asset="asset-2")]), tmp_path)
    assert (summary.read, summary.inserted, summary.rejected) == (5, 4, 1)
    [reject] = _rejects(tmp_path)
    assert (reject["position"], reject["field"]) == ("line 3", "extra")
    size = len(bson.encode({"_id": ObjectId(), **validate_snapshot(big)}))
    assert reject["reason"].startswith(f"the document is {size:,} bytes as BSON, over the limit of {MAX_DOCUMENT_BYTES:,}")
    assert db[SNAPSHOTS].count_documents({"assetId": "big"}) == 0


def test_a_bson_archive_document_over_16_mib_is_rejected(db: Db, tmp_path: Path) -> None:
    docs = [validate_snapshot(r) for r in series(3)]
    docs[1]["blob"] = b"\0" * (MAX_DOCUMENT_BYTES + 1)
    path = tmp_path / "dump.bson"
    path.write_bytes(b"".join(bson.encode(d) for d in docs))
    summary = _load(db, path, tmp_path)
    assert (summary.inserted, summary.rejected) == (2, 1)
    [reject] = _rejects(tmp_path)
    assert reject["field"] == "blob"
    assert len(reject["record"]) <= 4000


def test_a_line_over_the_limit_is_rejected_with_its_number_and_length(db: Db, tmp_path: Path) -> None:
    long_line = json.dumps(snapshot(assetId="long", extra="x" * (MAX_LINE_BYTES + 10)))
    path = _ndjson(tmp_path / "a.ndjson", [*series(2), long_line, *series(2, asset="asset-2")])
    summary = _load(db, path, tmp_path)
    assert (summary.read, summary.inserted, summary.rejected) == (5, 4, 1)
    [reject] = _rejects(tmp_path)
    assert reject["position"] == "line 3"
    assert reject["reason"] == f"line is {len(long_line) + 1:,} bytes long, over the limit of {MAX_LINE_BYTES:,}"
    assert reject["record"].startswith('{"orgId"')


def test_a_line_over_the_limit_is_never_held_whole_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "a.ndjson"
    with path.open("wb") as fh:
        fh.write(b'{"extra": "' + b"x" * (4 * MAX_LINE_BYTES) + b'"}\n')
        fh.write(json.dumps(snapshot()).encode() + b"\n")
    archive = open_archive(path)
    tracemalloc.start()
    try:
        records = list(archive.records)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        archive.close()
    assert [r.error is None for r in records] == [False, True]
    # The line is 4 x the limit; reading holds one limit's worth (twice, while joined).
    assert peak < 2.5 * MAX_LINE_BYTES


@pytest.mark.slow
def test_a_record_the_server_refuses_as_a_whole_batch_is_isolated_and_the_rest_loads(
    db: Db, tmp_path: Path
) -> None:
    # FerretDB 1.24 drops the connection on a NaN anywhere in a document, failing the
    # whole insert; MongoDB stores it. Either way the load goes on.
    lines = [json.dumps(r) for r in series(9)]
    nan = validate_snapshot(snapshot(assetId="nan"))
    nan["extra"] = math.nan
    lines.insert(4, json_util.dumps(nan, json_options=json_util.CANONICAL_JSON_OPTIONS))
    summary = _load(db, _ndjson(tmp_path / "a.ndjson", lines), tmp_path, batch_size=10)
    assert summary.read == 10
    assert db[SNAPSHOTS].count_documents({"assetId": "asset-1"}) == 9
    if probe_capabilities(db).server.startswith("FerretDB"):
        assert (summary.inserted, summary.rejected) == (9, 1)
        [reject] = _rejects(tmp_path)
        assert reject["position"] == "line 5"
        assert reject["reason"].startswith("refused by the server:")
    else:
        assert (summary.inserted, summary.rejected) == (10, 0)


# Item 6: an _id clash is not a duplicate -----------------------------------------------------


def test_a_record_whose_id_another_org_holds_is_a_reject_and_moves_no_last_seen(db: Db, tmp_path: Path) -> None:
    taken = ObjectId()
    db[SNAPSHOTS].insert_one({**validate_snapshot(snapshot(orgId="org-a")), "_id": taken})
    db[ASSETS].insert_one({"_id": "asset-b", "orgId": "org-b"})
    theirs = validate_snapshot(snapshot(orgId="org-b", assetId="asset-b"))
    lines = [json_util.dumps({**theirs, "_id": taken}, json_options=json_util.RELAXED_JSON_OPTIONS)]
    summary = _load(db, _ndjson(tmp_path / "a.ndjson", lines), tmp_path)
    assert (summary.inserted, summary.duplicates, summary.rejected) == (0, 0, 1)
    [reject] = _rejects(tmp_path)
    assert reject["field"] == "_id"
    assert reject["reason"] == f"{taken!r} is already the id of another snapshot"
    assert "lastSeen" not in db[ASSETS].find_one({"_id": "asset-b"})
    assert db[SNAPSHOTS].count_documents({"orgId": "org-b"}) == 0


def test_reloading_records_that_carry_their_id_still_counts_duplicates(db: Db, tmp_path: Path) -> None:
    # A mongodump reloaded: each record clashes on _id and on the key at once. The snapshot
    # is stored, so it is a duplicate, and its lastSeen update is made again.
    db[ASSETS].insert_one({"_id": "asset-1", "orgId": "org-a"})
    docs = [{"_id": ObjectId(), **validate_snapshot(r)} for r in series(6)]
    path = tmp_path / "dump.bson"
    path.write_bytes(b"".join(bson.encode(d) for d in docs))
    _load(db, path, tmp_path)
    db[ASSETS].update_one({"_id": "asset-1"}, {"$unset": {"lastSeen": ""}})
    again = _load(db, path, tmp_path, resume=False)
    assert (again.inserted, again.duplicates, again.rejected) == (0, 6, 0)
    assert db[ASSETS].find_one({"_id": "asset-1"})["lastSeen"] == docs[-1]["timestamp"]


def test_an_id_clash_and_a_duplicate_in_one_batch_are_told_apart(db: Db, tmp_path: Path) -> None:
    stored = validate_snapshot(snapshot(orgId="org-a"))
    db[SNAPSHOTS].insert_one(stored)
    same = set_path(snapshot(orgId="org-a"), "timestamp", T0.isoformat())  # the stored key again
    clash = {**validate_snapshot(snapshot(orgId="org-a", assetId="asset-2")), "_id": stored["_id"]}
    lines = [json.dumps(same), json_util.dumps(clash, json_options=json_util.RELAXED_JSON_OPTIONS), *series(2, asset="asset-3")]
    summary = _load(db, _ndjson(tmp_path / "a.ndjson", lines), tmp_path)
    assert (summary.inserted, summary.duplicates, summary.rejected) == (2, 1, 1)
    assert [(r["position"], r["field"]) for r in _rejects(tmp_path)] == [("line 2", "_id")]
