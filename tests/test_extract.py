"""Windowed extraction from the real server into Polars frames."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import polars as pl
import pytest
from bson import ObjectId

from perf_analytics.errors import ConfigError
from perf_analytics.extract import extract_window, extract_window_all_orgs, iter_window
from perf_analytics.frames import frames_from_documents
from perf_analytics.schema import SNAPSHOTS, validate_snapshot
from perf_analytics.store import Db
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
    with pytest.raises(ConfigError, match="an org id is required"):
        extract_window(db, "", T0, T0 + timedelta(hours=1))


def test_bad_windows_are_clear_errors(db: Db) -> None:
    with pytest.raises(ConfigError, match="empty window"):
        extract_window(db, "org-a", T0, T0)
    with pytest.raises(ConfigError, match="timezone-aware"):
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


def test_cli_extract_writes_three_parquet_files_that_duckdb_reads(db: Db, tmp_path: Any) -> None:
    import duckdb
    from click.testing import CliRunner

    from perf_analytics.cli import app

    _store(db, series(20))
    out = tmp_path / "w.parquet"
    result = CliRunner().invoke(app, ["--uri", _uri(db), "--db", db.name, "extract",
                                      "--org", "org-a", "--from", "2026-03-01T12:00", "--to", "2026-03-01T12:10",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("10 snapshots, 10 disk rows, 10 interface rows -> ")
    con = duckdb.connect()
    assert con.execute(f"select count(*), max(cpu_usage) from '{out}'").fetchone() == (10, 37.5)
    assert con.execute(f"select count(*) from '{tmp_path / 'w.disks.parquet'}'").fetchone() == (10,)


def test_cli_extract_rejects_a_bad_time_in_one_line(db: Db) -> None:
    from click.testing import CliRunner

    from perf_analytics.cli import app

    result = CliRunner().invoke(app, ["--uri", _uri(db), "extract", "--org", "o", "--from", "soon",
                                      "--to", "2026-01-01", "--out", "x.parquet"])
    assert result.exit_code == 1
    assert result.stderr == "Error: --from: not an ISO-8601 date: 'soon'\n"


def _uri(db: Db) -> str:
    host, port = db.client.address  # type: ignore[misc]
    return f"mongodb://{host}:{port}/?directConnection=true"
