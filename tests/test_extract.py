"""Windowed extraction from the real server into Polars frames."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import bson
import polars as pl
import pyarrow.parquet as pq
import pytest
from bson import ObjectId
from pymongo import MongoClient, monitoring

from perf_analytics.errors import ExtractError, InvalidArgument
from perf_analytics.extract import (
    extract_window,
    extract_window_all_orgs,
    frames_from_raw_batches,
    iter_window,
)
from perf_analytics.frames import KEYS, frames_from_documents
from perf_analytics.schema import ID_NOT_OBJECTID, SNAPSHOTS, validate_snapshot
from perf_analytics.store import Db
from tests.conftest import Cli
from tests.factories import T0, series, set_path


def _store(db: Db, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    docs = [{"_id": ObjectId(), **validate_snapshot(p)} for p in payloads]
    db[SNAPSHOTS].insert_many([dict(d) for d in docs])
    return docs


def test_a_window_extracts_exactly_the_documents_of_that_org_and_time(db: Db) -> None:
    mine = _store(db, series(30, asset="a1") + series(30, asset="a2"))
    _store(db, series(30, org="org-b", asset="a1"))  # another tenant, same asset id and times
    start, end = T0 + timedelta(minutes=5), T0 + timedelta(minutes=25)
    got = extract_window(db, "org-a", start, end, slice_length=timedelta(minutes=7))
    expected = frames_from_documents([d for d in mine if start <= d["timestamp"] < end])
    assert got.frames.snapshots.equals(expected.snapshots)
    assert got.frames.disks.equals(expected.disks)
    assert got.frames.interfaces.equals(expected.interfaces)
    assert got.frames.snapshots["orgId"].unique().to_list() == ["org-a"]
    assert got.skipped_count == 0


def test_the_asset_filter_and_the_iterator_return_the_same_rows_in_slices(db: Db) -> None:
    _store(db, series(40, asset="a1") + series(40, asset="a2"))
    parts = list(iter_window(db, "org-a", T0, T0 + timedelta(hours=1), asset_ids=["a2"],
                             slice_length=timedelta(minutes=10)))
    assert len(parts) == 6
    assert [p.frames.snapshots.height for p in parts] == [10, 10, 10, 10, 0, 0]
    rows = pl.concat([p.frames.snapshots for p in parts])
    assert rows["assetId"].unique().to_list() == ["a2"]
    assert rows["timestamp"].is_sorted()


def test_an_off_type_document_is_skipped_and_reported_not_fatal(db: Db) -> None:
    docs = _store(db, series(10))
    bad_id = docs[3]["_id"]
    db[SNAPSHOTS].update_one({"_id": bad_id}, {"$set": {"performanceData.cpu.usage": "45.5"}})
    got = extract_window(db, "org-a", T0, T0 + timedelta(hours=1))
    assert got.frames.snapshots.height == 9
    assert got.skipped_count == 1
    assert got.skipped[0].id == bad_id
    assert got.skipped[0].reason == "metric stored as string"


@pytest.mark.parametrize("stored_id", ["65a0f0f0f0f0f0f0f0f0f0f0", "snap-4", 17])
def test_a_snapshot_stored_with_an_id_that_is_no_objectid_is_skipped_not_fatal(db: Db, stored_id: Any) -> None:
    _store(db, series(3))
    db[SNAPSHOTS].insert_one({**validate_snapshot(series(4)[3]), "_id": stored_id})  # as older code stored it

    got = extract_window(db, "org-a", T0, T0 + timedelta(hours=1))

    assert got.frames.snapshots.height == 3
    assert [(p.id, p.reason) for p in got.skipped] == [(stored_id, ID_NOT_OBJECTID)]


def test_a_snapshot_with_a_string_timestamp_does_not_break_the_window(db: Db) -> None:
    _store(db, series(3))
    db[SNAPSHOTS].insert_one({**validate_snapshot(series(1, asset="x")[0]), "timestamp": "2026-03-01 12:00"})
    got = extract_window(db, "org-a", T0, T0 + timedelta(hours=1))
    assert got.frames.snapshots.height == 3
    assert got.frames.snapshots["assetId"].unique().to_list() == ["asset-1"]


def test_reading_every_org_is_a_separately_named_admin_call(db: Db) -> None:
    _store(db, series(5) + series(5, org="org-b"))
    both = extract_window_all_orgs(db, T0, T0 + timedelta(hours=1))
    assert sorted(both.frames.snapshots["orgId"].unique().to_list()) == ["org-a", "org-b"]
    with pytest.raises(InvalidArgument, match="an org id is required"):
        extract_window(db, "", T0, T0 + timedelta(hours=1))


def test_bad_windows_are_clear_errors(db: Db) -> None:
    with pytest.raises(InvalidArgument, match="empty window"):
        extract_window(db, "org-a", T0, T0)
    with pytest.raises(InvalidArgument, match="timezone-aware"):
        extract_window(db, "org-a", T0.replace(tzinfo=None), T0.replace(tzinfo=None) + timedelta(hours=1))


def test_an_empty_window_gives_empty_frames_with_the_full_schema(db: Db) -> None:
    got = extract_window(db, "org-a", T0, T0 + timedelta(hours=1))
    assert got.frames.snapshots.height == 0
    assert "cpu_usage" in got.frames.snapshots.columns


def test_missing_optional_sections_come_out_as_nulls(db: Db) -> None:
    payload = set_path(series(1)[0], "performanceData.disk", [])
    _store(db, [payload])
    got = extract_window(db, "org-a", T0, T0 + timedelta(hours=1))
    assert got.frames.disks.height == 0
    assert got.frames.snapshots.height == 1


def _heights(parts: list[Any]) -> list[int]:
    return [p.frames.snapshots.height for p in parts]


def test_a_window_read_in_parts_equals_the_one_shot_read(db: Db) -> None:
    mine = _store(db, series(30, asset="a1") + series(30, asset="a2"))
    _store(db, series(30, org="org-b", asset="a1"))
    start, end = T0, T0 + timedelta(hours=1)
    one_shot = extract_window(db, "org-a", start, end)
    in_parts = extract_window(db, "org-a", start, end, chunk_rows=7)
    expected = frames_from_documents(mine)
    for got in (one_shot, in_parts):
        assert got.frames.snapshots.equals(expected.snapshots)
        assert got.frames.disks.equals(expected.disks)
        assert got.frames.interfaces.equals(expected.interfaces)


def test_each_part_holds_at_most_chunk_rows_snapshots(db: Db) -> None:
    _store(db, series(30, asset="a1") + series(30, asset="a2"))
    parts = list(iter_window(db, "org-a", T0, T0 + timedelta(hours=1), chunk_rows=7))
    # One time slice on MongoDB, the one query of the window on FerretDB: cut the same way.
    assert _heights(parts) == [7, 7, 7, 7, 7, 7, 7, 7, 4]
    assert [p.frames.disks.height for p in parts] == [7, 7, 7, 7, 7, 7, 7, 7, 4]
    for part in parts:
        assert part.frames.snapshots.sort(list(KEYS)).equals(part.frames.snapshots)
    rows = pl.concat([p.frames.snapshots for p in parts])
    assert rows.height == rows["_id"].n_unique() == 60


def test_the_first_part_arrives_before_the_rest_of_the_window_is_fetched(server_uri: str, db: Db) -> None:
    class Commands(monitoring.CommandListener):
        def __init__(self) -> None:
            self.names: list[str] = []

        def started(self, event: monitoring.CommandStartedEvent) -> None:
            self.names.append(event.command_name)

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            pass

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            pass

    _store(db, series(60))
    commands = Commands()
    watched: MongoClient[dict[str, Any]] = MongoClient(server_uri, tz_aware=True, event_listeners=[commands])
    try:
        parts = iter_window(watched[db.name], "org-a", T0, T0 + timedelta(hours=1), chunk_rows=5)
        assert next(parts).frames.snapshots.height == 5
        assert commands.names.count("find") == 1
        assert commands.names.count("getMore") == 0  # one server batch of 5 made the first part
        assert _heights([next(parts) for _ in range(11)]) == [5] * 11
        assert commands.names.count("find") == 1  # one cursor for the whole window
        assert commands.names.count("getMore") >= 11
    finally:
        watched.close()


def test_off_type_documents_are_skipped_and_reported_whichever_part_they_fall_in(db: Db) -> None:
    docs = _store(db, series(30))
    bad = {
        docs[1]["_id"]: ("performanceData.cpu.usage", "45.5", "metric stored as string"),
        docs[2]["_id"]: ("performanceData.system.processCount", "120", "count stored as string"),
        docs[13]["_id"]: ("performanceData.memory.usedBytes", {"v": 1}, "metric of another type"),
        docs[29]["_id"]: ("performanceData.disk.0.freeBytes", "1", "metric stored as string"),
    }
    for bad_id, (path, value, _) in bad.items():
        db[SNAPSHOTS].update_one({"_id": bad_id}, {"$set": {path: value}})
    # pymongoarrow reads an integer metric as a double: kept, in every part size.
    db[SNAPSHOTS].update_one({"_id": docs[3]["_id"]}, {"$set": {"performanceData.cpu.usage": 37}})
    docs[3]["performanceData"]["cpu"]["usage"] = 37.0
    expected = frames_from_documents([d for d in docs if d["_id"] not in bad])
    for chunk_rows in (1, 4, 100_000):
        got = extract_window(db, "org-a", T0, T0 + timedelta(hours=1), chunk_rows=chunk_rows)
        assert got.frames.snapshots.equals(expected.snapshots)
        assert got.frames.disks.equals(expected.disks)
        assert got.skipped_count == 4
        assert {s.id: s.reason for s in got.skipped} == {k: v[2] for k, v in bad.items()}
    parts = list(iter_window(db, "org-a", T0, T0 + timedelta(hours=1), chunk_rows=4))
    # 30 documents cut by 4 before the refused ones are left out; the rest of each part stays.
    assert len(parts) == 8
    assert sum(_heights(parts)) == 26
    assert max(_heights(parts)) <= 4
    assert sum(p.skipped_count for p in parts) == 4


def test_a_refused_document_that_doctor_cannot_repair_stops_the_read(db: Db) -> None:
    docs = _store(db, series(10))
    db[SNAPSHOTS].update_one({"_id": docs[6]["_id"]}, {"$set": {"agentId": 7}})
    with pytest.raises(ExtractError) as info:
        extract_window(db, "org-a", T0, T0 + timedelta(hours=1), chunk_rows=4)
    assert str(info.value) == (
        f"snapshot {docs[6]['_id']} cannot be read (Got unexpected type `int32` instead of expected type "
        "`string`) and is none of the off-type kinds `doctor --fix` repairs"
    )


def _damaged_pair() -> tuple[ObjectId, bytes]:
    """Two documents as one raw batch, the second with an element type BSON does not have."""
    good = bson.encode({"_id": ObjectId(), **validate_snapshot(series(1)[0])})
    oid = ObjectId()
    damaged = bytearray(bson.encode({"_id": oid, **validate_snapshot(series(1)[0])}))
    damaged[damaged.index(b"usage\x00") - 1] = 0x20
    return oid, good + bytes(damaged)


@pytest.mark.parametrize("decoder", ["native", "pymongoarrow"])
def test_a_damaged_document_in_a_batch_is_a_one_line_error_naming_it(decoder: str) -> None:
    # A server never stores such a document, but a damaged one read back must stop the
    # read with the decoder's reason, not with pymongo's traceback from reporting it; and
    # pymongoarrow's builder, which stops at an element it cannot step over and leaves the
    # rest of the document missing, must not read it in part (the batch is checked first).
    oid, batch = _damaged_pair()
    with pytest.raises(ExtractError) as info:
        frames_from_raw_batches([batch], decoder=decoder)
    message = str(info.value)
    assert message.startswith(f"a stored snapshot (_id={oid}) is not valid BSON (")
    assert "\n" not in message
    if decoder == "native":
        assert "performanceData.cpu.usage" in message
    good = batch[: int.from_bytes(batch[:4], "little")]  # the first document alone
    assert frames_from_raw_batches([good], decoder=decoder).frames.snapshots.height == 1


def test_parts_of_one_cursor_never_hold_another_orgs_documents(db: Db) -> None:
    mine, theirs = series(20, asset="a1"), series(20, org="org-b", asset="a1")
    _store(db, [p for pair in zip(mine, theirs, strict=True) for p in pair])  # interleaved on disk
    parts = list(iter_window(db, "org-a", T0, T0 + timedelta(hours=1), chunk_rows=3))
    assert _heights(parts) == [3, 3, 3, 3, 3, 3, 2]
    assert pl.concat([p.frames.snapshots for p in parts])["orgId"].unique().to_list() == ["org-a"]
    both = extract_window_all_orgs(db, T0, T0 + timedelta(hours=1), chunk_rows=3)
    assert both.frames.snapshots.group_by("orgId").len().sort("orgId").rows() == [("org-a", 20), ("org-b", 20)]


def test_unknown_extra_fields_of_any_type_neither_change_nor_break_the_frames(db: Db) -> None:
    plain = series(20)
    _store(db, plain)
    expected = extract_window(db, "org-a", T0, T0 + timedelta(hours=1)).frames
    db[SNAPSHOTS].delete_many({})
    extra = []
    for i, p in enumerate(series(20)):
        p["agentVersion"] = ["7", 7, None][i % 3]  # other code's fields, any type
        p["performanceData"]["gpu"] = {"usage": "busy", "cores": [1, "2"]}
        p["performanceData"]["cpu"]["vendor"] = {"name": "x"}
        extra.append(p)
    _store(db, extra)
    got = extract_window(db, "org-a", T0, T0 + timedelta(hours=1))
    assert got.skipped_count == 0
    assert got.frames.snapshots.drop("_id").equals(expected.snapshots.drop("_id"))
    assert got.frames.disks.equals(expected.disks)
    assert got.frames.interfaces.equals(expected.interfaces)


def test_a_bad_chunk_size_is_a_clear_error_before_any_read(db: Db) -> None:
    with pytest.raises(InvalidArgument, match="chunk rows must be a positive number"):
        iter_window(db, "org-a", T0, T0 + timedelta(hours=1), chunk_rows=0)


def test_cli_extract_writes_three_parquet_files_that_duckdb_reads(cli: Cli, db: Db, tmp_path: Any) -> None:
    import duckdb
    _store(db, series(20))
    out = tmp_path / "w.parquet"
    result = cli("extract", "--org", "org-a", "--from", "2026-03-01T12:00", "--to", "2026-03-01T12:10", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("10 snapshots, 10 disk rows, 10 interface rows -> ")
    con = duckdb.connect()
    assert con.execute(f"select count(*), max(cpu_usage) from '{out}'").fetchone() == (10, 37.5)
    assert con.execute(f"select count(*) from '{tmp_path / 'w.disks.parquet'}'").fetchone() == (10,)


def test_cli_extract_streams_parts_into_the_parquet_the_one_shot_write_gave(cli: Cli, db: Db, tmp_path: Path) -> None:
    docs = _store(db, series(30, asset="a1") + series(30, asset="a2"))
    db[SNAPSHOTS].update_one({"_id": docs[4]["_id"]}, {"$set": {"performanceData.cpu.usage": "45.5"}})
    out = tmp_path / "w.parquet"
    result = cli("extract", "--org", "org-a", "--from", "2026-03-01T12:00", "--to", "2026-03-01T12:10",
                  "--chunk-rows", "4", "--out", str(out))
    assert result.exit_code == 0, result.output
    names = ("w.parquet", "w.disks.parquet", "w.interfaces.parquet")
    assert result.stdout == (
        f"19 snapshots, 19 disk rows, 19 interface rows -> {', '.join(str(tmp_path / n) for n in names)}\n"
    )
    assert result.stderr == f"skipped 1 off-type snapshot(s) ({docs[4]['_id']}); run `doctor --fix`\n"
    assert pq.ParquetFile(out).metadata.num_row_groups == 5  # 20 documents in parts of 4, written as they came
    # What the command wrote before streaming: the one-shot frames, through Polars.
    whole = extract_window(db, "org-a", T0, T0 + timedelta(minutes=10)).frames
    for name, frame, extra in zip(names, (whole.snapshots, whole.disks, whole.interfaces),
                                  ([], ["disk"], ["interface"]), strict=True):
        frame.write_parquet(tmp_path / f"before-{name}", compression="zstd")
        before = pl.read_parquet(tmp_path / f"before-{name}")
        assert pl.read_parquet(tmp_path / name).sort([*KEYS, *extra]).equals(before)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("before-")) == sorted(names)


def test_cli_extract_leaves_the_previous_files_when_the_read_fails(cli: Cli, db: Db, tmp_path: Path) -> None:
    docs = _store(db, series(10))
    db[SNAPSHOTS].update_one({"_id": docs[7]["_id"]}, {"$set": {"agentId": 7}})
    out = tmp_path / "w.parquet"
    out.write_bytes(b"the previous extract")
    result = cli("extract", "--org", "org-a", "--from", "2026-03-01T12:00", "--to", "2026-03-01T13:00",
                  "--chunk-rows", "3", "--out", str(out))
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: snapshot {docs[7]['_id']} cannot be read (Got unexpected type `int32` instead of expected "
        "type `string`) and is none of the off-type kinds `doctor --fix` repairs\n"
    )
    assert out.read_bytes() == b"the previous extract"
    assert [p.name for p in tmp_path.iterdir()] == ["w.parquet"]  # no temporary file left behind


def test_cli_extract_of_an_empty_window_writes_three_empty_files_with_every_column(cli: Cli, db: Db, tmp_path: Path) -> None:
    out = tmp_path / "w.parquet"
    result = cli("extract", "--org", "org-a", "--from", "2026-03-01", "--to", "2026-03-02", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("0 snapshots, 0 disk rows, 0 interface rows -> ")
    empty = extract_window(db, "org-a", T0, T0 + timedelta(hours=1)).frames
    assert pl.read_parquet(out).equals(empty.snapshots)
    assert pl.read_parquet(tmp_path / "w.disks.parquet").equals(empty.disks)
    assert pl.read_parquet(tmp_path / "w.interfaces.parquet").equals(empty.interfaces)


def test_cli_extract_rejects_a_bad_time_in_one_line(cli: Cli) -> None:
    result = cli("extract", "--org", "o", "--from", "soon", "--to", "2026-01-01", "--out", "x.parquet")
    assert result.exit_code == 1
    assert result.stderr == "Error: --from: not an ISO-8601 date: 'soon'\n"


@pytest.mark.slow
def test_extraction_reads_the_contract_from_schema_without_importing_doctor() -> None:
    code = "import sys, perf_analytics.extract; print('perf_analytics.doctor' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_a_damaged_document_with_a_string_id_is_named_by_it() -> None:
    raw = bytearray(bson.encode({"_id": "snap-7", **validate_snapshot(series(1)[0])}))
    raw[raw.index(b"usage\x00") - 1] = 0x20
    with pytest.raises(ExtractError) as info:
        frames_from_raw_batches([bytes(raw)], decoder="pymongoarrow")
    assert str(info.value).startswith("a stored snapshot (_id='snap-7') is not valid BSON (")
