"""DuckDB views over the snapshot mirror: shapes, tenants, pruning, and the hot tail from the server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
from bson import ObjectId

from perf_analytics import schema
from perf_analytics.config import Settings
from perf_analytics.errors import LakeError, UnreadableLakeFile
from perf_analytics.frames import Frames, frames_from_documents
from perf_analytics.lake import connect_lake, connect_lake_all_orgs, query_lake
from perf_analytics.schema import COUNT, SNAPSHOTS, SYSTEM_FIELDS, Table, validate_snapshot
from perf_analytics.store import Db
from perf_analytics.sync import (
    listed_snapshot_files,
    mark_for_sync,
    sync_snapshots,
    sync_snapshots_all_orgs,
)
from tests.factories import DELETE, T0, series, set_path, snapshot
from tests.test_sync import insert, old_id

DAY = timedelta(days=1)
VIEWS = ("snapshots", "snapshot_metrics", "disk_samples", "interface_samples")


def two_interfaces(payload: dict[str, Any]) -> dict[str, Any]:
    second = {"name": "wlan0", "bytesRecvPerSec": 7.0, "bytesSentPerSec": 3.0, "packetsRecvPerSec": 2.0,
              "packetsSentPerSec": 1.0}
    interfaces = [*payload["performanceData"]["network"]["interfaces"], second]
    return set_path(payload, "performanceData.network.interfaces", interfaces)


def fleet_payloads() -> list[dict[str, Any]]:
    """org-a over three days (two interfaces on a2, a snapshot without disks, one without
    network), and org-b on the first day."""
    payloads = series(3, org="org-a", asset="a1") + series(2, org="org-a", asset="a1", start=T0 + DAY)
    payloads += series(2, org="org-a", asset="a1", start=T0 + 2 * DAY)
    a2 = [two_interfaces(p) for p in series(3, org="org-a", asset="a2", start=T0 + DAY)]
    a2[1] = set_path(a2[1], "performanceData.disk", DELETE)
    a2[2] = set_path(a2[2], "performanceData.network", DELETE)
    return payloads + a2 + series(4, org="org-b", asset="b1")


@pytest.fixture
def fleet(db: Db, settings: Settings) -> list[dict[str, Any]]:
    """The fleet inserted and mirrored; returns the stored documents."""
    payloads = fleet_payloads()
    insert(db, payloads)
    sync_snapshots_all_orgs(db, settings.lake)
    return list(db[SNAPSHOTS].find({}))


@pytest.fixture
def org_a(settings: Settings, fleet: list[dict[str, Any]]) -> Iterator[duckdb.DuckDBPyConnection]:
    con = connect_lake(settings.lake, org_id="org-a")
    yield con
    con.close()


def view(con: duckdb.DuckDBPyConnection, sql: str) -> pl.DataFrame:
    return con.sql(sql).pl()


def expected_frames(docs: list[dict[str, Any]], org: str) -> Frames:
    return frames_from_documents([d for d in docs if d["orgId"] == org])


def as_frame(df: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """A view's rows in the frames' types and order (timestamps in ms, without `date`)."""
    return df.drop("date").with_columns(pl.col("timestamp").dt.cast_time_unit("ms")).sort(keys)


# ---- shapes ----------------------------------------------------------------------------


def test_snapshot_metrics_holds_the_frames_columns_and_values(org_a: duckdb.DuckDBPyConnection,
                                                              fleet: list[dict[str, Any]]) -> None:
    frames = expected_frames(fleet, "org-a")
    got = view(org_a, "SELECT * FROM snapshot_metrics")
    assert got.columns == [*frames.snapshots.columns, "date"]
    want = frames.snapshots.with_columns(pl.col("_id").bin.encode("hex"))
    assert as_frame(got, ["assetId", "timestamp"]).equals(want.sort(["assetId", "timestamp"]), null_equal=True)
    # The sums over interfaces: two of them on a2; none without a network section.
    sums = view(org_a, "SELECT network_bytes_recv_per_sec AS s FROM snapshot_metrics WHERE assetId = 'a2' ORDER BY timestamp")
    assert sums["s"].to_list() == [1007.0, 1007.0, None]


@pytest.mark.parametrize(("name", "frame", "item"), [("disk_samples", "disks", "disk"),
                                                       ("interface_samples", "interfaces", "interface")])
def test_the_sample_views_hold_one_row_per_snapshot_and_item_as_the_frames(
    org_a: duckdb.DuckDBPyConnection, fleet: list[dict[str, Any]], name: str, frame: str, item: str
) -> None:
    want: pl.DataFrame = getattr(expected_frames(fleet, "org-a"), frame)
    got = view(org_a, f"SELECT * FROM {name}")
    assert got.columns == [*want.columns, "date"]
    keys = ["assetId", "timestamp", item]
    assert as_frame(got, keys).equals(want.sort(keys), null_equal=True)
    assert got.height == (9 if frame == "disks" else 11)


def test_snapshots_is_the_stored_shape_with_the_id_as_hex_text(org_a: duckdb.DuckDBPyConnection,
                                                               fleet: list[dict[str, Any]]) -> None:
    columns = [c for c, *_ in org_a.execute("DESCRIBE snapshots").fetchall()]
    assert columns == ["_id", "_idOther", "agentId", "assetId", "timestamp", "timeWindow", "performanceData", "typed",
                       "orgId", "date"]  # bson stays in the files: read_lake_documents gives it back
    ids = {str(d["_id"]) for d in fleet if d["orgId"] == "org-a"}
    assert {i for (i,) in org_a.execute("SELECT _id FROM snapshots").fetchall()} == ids
    row = org_a.execute(
        "SELECT performanceData.network.interfaces[2].name, performanceData.cpu.perCore FROM snapshots "
        "WHERE assetId = 'a2' ORDER BY timestamp LIMIT 1"
    ).fetchone()
    assert row == ("wlan0", [30.0, 45.0])


def test_a_document_the_contract_refuses_is_in_snapshots_but_not_in_the_flat_views(db: Db, settings: Settings) -> None:
    insert(db, series(2, org="org-a", asset="a1"))
    refused = validate_snapshot(snapshot(orgId="org-a", assetId="a9"))
    refused["performanceData"]["cpu"]["usage"] = "high"  # written by other code
    db[SNAPSHOTS].insert_one({**refused, "_id": "legacy-7"})
    sync_snapshots(db, settings.lake, org_id="org-a")
    con = connect_lake(settings.lake, org_id="org-a")
    rows = con.execute("SELECT _id, _idOther, assetId, typed FROM snapshots ORDER BY assetId, timestamp").fetchall()
    assert [r[2:] for r in rows] == [("a1", True), ("a1", True), ("a9", False)]
    assert rows[2][:2] == (None, '"legacy-7"')
    for name in VIEWS[1:]:
        assert con.execute(f"SELECT count(*) FROM {name} WHERE assetId = 'a9'").fetchone() == (0,), name


@pytest.mark.parametrize(
    ("older_day", "expected"),
    [(DAY, [4242, None, None]), (-DAY, [None, None, 4242])],
    ids=["older-file-is-the-newest-day", "older-file-is-an-earlier-day"],
)
def test_a_field_added_to_the_contract_is_a_column_of_the_views(
    db: Db, settings: Settings, monkeypatch: pytest.MonkeyPatch, older_day: timedelta, expected: list[int | None]
) -> None:
    # Two snapshots mirrored before the field existed, one after: the view unites both.
    insert(db, series(2, org="org-a", asset="a1", start=T0 + older_day))
    sync_snapshots(db, settings.lake, org_id="org-a")
    system = Table("performanceData.system", (*SYSTEM_FIELDS, ("handleCount", COUNT, False)))
    monkeypatch.setattr(schema, "TABLES", tuple(system if t.path == system.path else t for t in schema.TABLES))
    newer = set_path(snapshot(orgId="org-a", assetId="a1"), "performanceData.system.handleCount", 4242)
    insert(db, [newer])
    sync_snapshots(db, settings.lake, org_id="org-a")
    con = connect_lake(settings.lake, org_id="org-a")
    rows = con.execute("SELECT system_handle_count FROM snapshot_metrics ORDER BY timestamp").fetchall()
    assert [r[0] for r in rows] == expected


def test_a_lake_without_snapshots_has_the_views_empty_with_their_columns(settings: Settings) -> None:
    con = connect_lake(settings.lake, org_id="org-a")
    for name in VIEWS:
        assert con.execute(f"SELECT count(*) FROM {name}").fetchone() == (0,), name
    assert "cpu_usage" in [c for c, *_ in con.execute("DESCRIBE snapshot_metrics").fetchall()]


# ---- tenants and listed files ------------------------------------------------------------


def test_an_org_connection_sees_only_its_own_snapshots(settings: Settings, fleet: list[dict[str, Any]]) -> None:
    con = connect_lake(settings.lake, org_id="org-b")
    for name in VIEWS:
        assert con.execute(f"SELECT DISTINCT orgId FROM {name}").fetchall() == [("org-b",)], name
    other = Path(settings.lake, listed_snapshot_files(settings.lake, org_id="org-a")[0].path)
    with pytest.raises(duckdb.PermissionException):
        con.execute(f"SELECT count(*) FROM read_parquet('{other}')").fetchall()
    admin = connect_lake_all_orgs(settings.lake)
    assert admin.execute("SELECT orgId, count(*) FROM snapshots GROUP BY 1 ORDER BY 1").fetchall() == [
        ("org-a", 10), ("org-b", 4)
    ]


def test_a_part_no_manifest_lists_is_not_read(settings: Settings, fleet: list[dict[str, Any]]) -> None:
    listed = Path(settings.lake, listed_snapshot_files(settings.lake, org_id="org-a")[0].path)
    stray = listed.with_name("part-0000000000000000dead.parquet")  # as a killed sync leaves one
    stray.write_bytes(listed.read_bytes())
    con = connect_lake(settings.lake, org_id="org-a")
    assert con.execute("SELECT count(*), count(DISTINCT _id) FROM snapshots").fetchone() == (10, 10)
    with pytest.raises(duckdb.PermissionException):
        con.execute(f"SELECT count(*) FROM read_parquet('{stray}')").fetchall()
    admin = connect_lake_all_orgs(settings.lake)
    assert admin.execute("SELECT count(*) FROM snapshots").fetchone() == (14,)


def test_a_manifest_listing_another_orgs_file_is_refused(settings: Settings, fleet: list[dict[str, Any]]) -> None:
    manifest = Path(settings.lake, "_manifests/snapshots/orgId=org-b.json")
    data = json.loads(manifest.read_text())
    data["files"].append({**data["files"][0], "path": listed_snapshot_files(settings.lake, org_id="org-a")[0].path})
    manifest.write_text(json.dumps(data))
    with pytest.raises(LakeError, match="outside the org's partitions"):
        connect_lake(settings.lake, org_id="org-b")


# ---- one day opens one day's files ----------------------------------------------------------


def read_files(con: duckdb.DuckDBPyConnection, sql: str) -> list[str]:
    """The files DuckDB's profile says the query's Parquet scans read."""
    row = con.execute(f"EXPLAIN (ANALYZE, FORMAT json) {sql}").fetchone()
    assert row is not None
    found: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        info = node.get("extra_info", {})
        if info.get("Function") == "READ_PARQUET":
            names = [n for n in info.get("Filename(s)", "").split(", ") if n]
            assert int(info["Total Files Read"]) == len(names)
            found.extend(names)
        for child in node.get("children", []):
            walk(child)

    for node in json.loads(row[1])["operator"]:
        walk(node)
    return sorted(found)


@pytest.mark.parametrize("hot", [False, True], ids=["cold", "hot"])
@pytest.mark.parametrize("name", VIEWS)
def test_a_one_day_query_opens_only_that_days_files(
    db: Db, settings: Settings, fleet: list[dict[str, Any]], name: str, hot: bool
) -> None:
    parts = listed_snapshot_files(settings.lake, org_id="org-a")
    by_day = {f.date: str(Path(settings.lake, f.path).resolve()) for f in parts}
    assert sorted(by_day) == ["2026-03-01", "2026-03-02", "2026-03-03"] and len(parts) == 3
    con = connect_lake(settings.lake, org_id="org-a", hot=db if hot else None)
    assert read_files(con, f"SELECT count(*) FROM {name} WHERE date = '2026-03-02'") == [by_day["2026-03-02"]]
    assert read_files(con, f"SELECT count(*) FROM {name}") == sorted(by_day.values())
    # And physically: the oldest day's file turned to garbage does not stop a query on
    # another day, but does stop one that reads it. (The newest day's file is read at
    # bind time for the view's columns, so the proof leaves it whole.)
    Path(by_day["2026-03-01"]).write_bytes(b"not parquet\n" * 100)
    n = con.execute(f"SELECT count(*) FROM {name} WHERE date = '2026-03-02'").fetchone()
    assert n is not None and n[0] > 0
    with pytest.raises(duckdb.Error, match="2026-03-01"):
        con.execute(f"SELECT count(*) FROM {name}").fetchall()


def test_a_damaged_newest_part_is_named_at_connect(settings: Settings, fleet: list[dict[str, Any]]) -> None:
    newest = Path(settings.lake, listed_snapshot_files(settings.lake, org_id="org-a")[-1].path).resolve()
    newest.write_bytes(b"not parquet\n" * 100)
    with pytest.raises(UnreadableLakeFile) as info:
        connect_lake(settings.lake, org_id="org-a")
    assert info.value.path == newest


# ---- hot and cold ------------------------------------------------------------------------------


def test_the_hot_view_adds_the_unsynced_tail_once(db: Db, settings: Settings) -> None:
    insert(db, series(5, org="org-a", asset="a1"))
    sync_snapshots(db, settings.lake, org_id="org-a")
    # Inserted after the sync, and within the skew margin of the synced ones: both are in
    # the tail query, and only the new ones may be added.
    insert(db, series(3, org="org-a", asset="a1", start=T0 + DAY))
    cold = connect_lake(settings.lake, org_id="org-a")
    hot = connect_lake(settings.lake, org_id="org-a", hot=db)
    assert cold.execute("SELECT count(*) FROM snapshot_metrics").fetchone() == (5,)
    assert hot.execute("SELECT count(*), count(DISTINCT _id) FROM snapshot_metrics").fetchone() == (8, 8)
    assert hot.execute("SELECT count(*) FROM disk_samples WHERE date = '2026-03-02'").fetchone() == (3,)
    ids = {str(i) for i in db[SNAPSHOTS].distinct("_id")}
    assert {i for (i,) in hot.execute("SELECT _id FROM snapshots").fetchall()} == ids


def test_for_an_id_in_both_the_lake_row_is_the_one_seen(db: Db, settings: Settings) -> None:
    ids = insert(db, series(2, org="org-a", asset="a1"))
    sync_snapshots(db, settings.lake, org_id="org-a")
    # Updated in place after the sync, and inside the tail query's skew margin: the mirror
    # keeps documents as first read, and so does the hot view.
    db[SNAPSHOTS].update_one({"_id": ids[0]}, {"$set": {"performanceData.cpu.usage": 99.0}})
    con = connect_lake(settings.lake, org_id="org-a", hot=db)
    assert con.execute("SELECT count(*), max(cpu_usage) FROM snapshot_metrics").fetchone() == (2, 37.5)


@pytest.mark.slow
def test_a_query_over_sixty_days_crosses_the_retention_boundary(db: Db, settings: Settings) -> None:
    start = T0 - 59 * DAY
    insert(db, series(50, org="org-a", asset="a1", start=start, step=DAY))  # days 1 to 50
    sync_snapshots(db, settings.lake, org_id="org-a")
    db[SNAPSHOTS].delete_many({"orgId": "org-a"})  # retention: the server keeps no old days
    insert(db, series(10, org="org-a", asset="a1", start=start + 50 * DAY, step=DAY))  # days 51 to 60
    sql = f"SELECT count(*), min(date), max(date) FROM snapshot_metrics WHERE timestamp >= TIMESTAMPTZ '{start.isoformat()}'"
    cold = connect_lake(settings.lake, org_id="org-a")
    assert cold.execute(sql).fetchone() == (50, start.date(), (start + 49 * DAY).date())
    hot = connect_lake(settings.lake, org_id="org-a", hot=db)
    assert hot.execute(sql).fetchone() == (60, start.date(), T0.date())


def test_the_hot_tail_holds_a_restored_document_once_its_day_is_marked(db: Db, settings: Settings) -> None:
    insert(db, series(2, org="org-a", asset="a1"))
    sync_snapshots(db, settings.lake, org_id="org-a")
    restored = validate_snapshot(snapshot(orgId="org-a", assetId="a7", timestamp=(T0 - 30 * DAY).isoformat()))
    db[SNAPSHOTS].insert_one({**restored, "_id": old_id(T0 - 30 * DAY)})
    con = connect_lake(settings.lake, org_id="org-a", hot=db)
    assert con.execute("SELECT count(*) FROM snapshots WHERE assetId = 'a7'").fetchone() == (0,)  # not found yet
    mark_for_sync(db, "org-a", [T0 - 30 * DAY])
    con = connect_lake(settings.lake, org_id="org-a", hot=db)
    assert con.execute("SELECT count(*) FROM snapshots WHERE assetId = 'a7'").fetchone() == (1,)


def test_the_hot_tail_of_an_org_holds_no_other_orgs_snapshots(db: Db, settings: Settings) -> None:
    insert(db, series(2, org="org-a", asset="a1"))
    sync_snapshots_all_orgs(db, settings.lake)
    insert(db, series(3, org="org-b", asset="b1", start=T0 + DAY))
    insert(db, series(1, org="org-a", asset="a1", start=T0 + DAY))
    con = connect_lake(settings.lake, org_id="org-a", hot=db)
    for name in VIEWS:
        assert con.execute(f"SELECT DISTINCT orgId FROM {name}").fetchall() == [("org-a",)], name
    assert con.execute("SELECT count(*) FROM snapshots").fetchone() == (3,)
    # Still locked: the tail is in memory, the files are the org's own.
    with pytest.raises(duckdb.PermissionException):
        con.execute("SELECT * FROM read_csv('/etc/passwd')").fetchall()
    with pytest.raises(duckdb.InvalidInputException):
        con.execute("SET enable_external_access = true")


def test_before_the_first_sync_the_hot_view_is_the_orgs_snapshots_on_the_server(db: Db, settings: Settings) -> None:
    ids = insert(db, series(3, org="org-a", asset="a1")) + insert(db, series(2, org="org-b", asset="b1"))
    con = connect_lake(settings.lake, org_id="org-a", hot=db)
    got = {i for (i,) in con.execute("SELECT _id FROM snapshot_metrics").fetchall()}
    assert got == {str(i) for i in ids[:3]}
    assert all(isinstance(i, ObjectId) for i in ids)
    assert not Path(settings.lake).exists()  # the hot view reads; it writes nothing


def test_a_damaged_older_part_is_named_by_the_query_that_reads_it(settings: Settings, fleet: list[dict[str, Any]]) -> None:
    oldest = Path(settings.lake, listed_snapshot_files(settings.lake, org_id="org-a")[0].path).resolve()
    oldest.write_bytes(b"not parquet\n" * 100)
    assert query_lake(settings.lake, "SELECT count(*) AS n FROM snapshots WHERE date = '2026-03-02'",
                      org_id="org-a").to_pylist() == [{"n": 5}]
    with pytest.raises(UnreadableLakeFile) as info:
        query_lake(settings.lake, "SELECT count(*) FROM snapshot_metrics", org_id="org-a")
    assert info.value.path == oldest
