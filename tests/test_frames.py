"""The flat analytical frames derived from the snapshot contract."""

from __future__ import annotations

from bson import ObjectId

from perf_analytics.frames import arrow_schema, empty_frames, frames_from_documents, snake
from perf_analytics.schema import DISK_FIELDS, validate_snapshot
from tests.factories import DELETE, series, set_path


def test_every_contract_field_becomes_a_snake_case_column() -> None:
    frames = empty_frames()
    assert "memory_usage_percent" in frames.snapshots.columns
    assert "system_process_count" in frames.snapshots.columns
    assert [snake(n) for n, _, _ in DISK_FIELDS] == frames.disks.columns[4:]
    assert frames.interfaces.columns[:4] == ["orgId", "assetId", "timestamp", "interface"]
    assert arrow_schema().field("timestamp").type.tz == "UTC"


def test_documents_flatten_into_one_row_per_snapshot_disk_and_interface() -> None:
    docs = [validate_snapshot(p) for p in series(3)]
    second_disk = {**docs[0]["performanceData"]["disk"][0], "name": "D:"}
    docs[2]["performanceData"]["disk"].append(second_disk)
    docs[0]["_id"] = ObjectId()
    frames = frames_from_documents(docs)
    assert frames.snapshots.height == 3
    assert frames.disks.height == 4
    assert frames.interfaces.height == 3
    row = frames.snapshots.row(0, named=True)
    assert row["_id"] == docs[0]["_id"].binary
    assert row["cpu_usage"] == 37.5
    assert row["cpu_per_core"] == [30.0, 45.0]
    assert row["system_process_count"] == 120
    assert row["network_bytes_recv_per_sec"] == 1000.0
    assert frames.disks.filter(disk="D:").height == 1


def test_a_snapshot_without_network_has_null_network_totals_not_zero() -> None:
    doc = validate_snapshot(set_path(series(1)[0], "performanceData.network", DELETE))
    frames = frames_from_documents([doc])
    assert frames.snapshots["network_bytes_sent_per_sec"].to_list() == [None]
    assert frames.interfaces.height == 0
