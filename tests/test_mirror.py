"""Reading the snapshot mirror gives what extraction gives, opening only the org's listed files of the window."""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from bson import ObjectId

from perf_analytics import schema
from perf_analytics.config import Settings
from perf_analytics.errors import ExtractError, InvalidArgument, MirrorError, NotSynced
from perf_analytics.extract import Extraction, extract_window
from perf_analytics.frames import arrow_schema
from perf_analytics.mirror import read_window, scan_window, window_assets, window_files
from perf_analytics.schema import SNAPSHOTS, validate_snapshot
from perf_analytics.store import Db
from perf_analytics.sync import (
    _load_org,
    _save_org,
    listed_snapshot_files,
    sync_snapshots,
    sync_snapshots_all_orgs,
)
from tests.factories import T0, series, set_path, snapshot

DAY = timedelta(days=1)
MIDNIGHT = T0.replace(hour=0)


def insert(db: Db, payloads: list[dict[str, Any]], **fields: Any) -> None:
    db[SNAPSHOTS].insert_many([{**fields, **validate_snapshot(p)} for p in payloads])


def fleet(db: Db) -> None:
    """Two orgs over three days, and documents extraction skips or reads as doubles."""
    insert(db, series(50, org="org-a", asset="a1", start=T0 - DAY, step=timedelta(hours=1)))
    insert(db, series(30, org="org-a", asset="a2", start=T0))
    insert(db, series(20, org="org-b", asset="b1", start=T0))
    base = validate_snapshot(snapshot(assetId="a2", timestamp=(T0 + timedelta(hours=2)).isoformat()))
    db[SNAPSHOTS].insert_many([
        set_path({**base, "agentId": "string-metric"}, "performanceData.memory.usagePercent", "50.5"),
        set_path({**base, "agentId": "int-metric", "timestamp": T0 + timedelta(hours=3)}, "performanceData.cpu.usage", 37),
        {**base, "_id": "legacy-string-id", "timestamp": T0 + timedelta(hours=4)},
        {**base, "assetId": "a1", "timestamp": "2026-03-01T12:00:00Z"},  # never in a date window
    ])


def same(got: Extraction, want: Extraction) -> None:
    for a, b in zip((got.frames.snapshots, got.frames.disks, got.frames.interfaces),
                    (want.frames.snapshots, want.frames.disks, want.frames.interfaces), strict=True):
        assert a.equals(b), (a, b)
    assert sorted((str(p.id), p.reason) for p in got.skipped) == sorted((str(p.id), p.reason) for p in want.skipped)
    assert got.skipped_count == want.skipped_count


def test_a_window_read_from_the_lake_equals_the_same_window_extracted_from_the_server(
    db: Db, settings: Settings
) -> None:
    fleet(db)
    sync_snapshots_all_orgs(db, settings.lake)
    for start, end, assets in [
        (T0 - DAY, T0 + 2 * DAY, None),
        (T0, T0 + timedelta(hours=5), None),  # inside one day
        (T0 - timedelta(hours=3), T0 + timedelta(hours=3), ["a2"]),
        (T0 - DAY, T0 + 2 * DAY, ["a1", "nobody"]),
    ]:
        lake = read_window(settings.lake, "org-a", start, end, asset_ids=assets)
        server = extract_window(db, "org-a", start, end, asset_ids=assets)
        same(lake, server)
    whole = read_window(settings.lake, "org-a", T0 - DAY, T0 + 2 * DAY)
    assert whole.frames.snapshots.height == 50 + 30 + 1  # the int metric is read as a double
    assert whole.skipped_count == 2  # the string metric and the string _id
    assert set(whole.frames.snapshots["orgId"]) == {"org-a"}


def test_the_lazy_scan_has_the_snapshot_schema_and_pushes_the_filters(db: Db, settings: Settings) -> None:
    fleet(db)
    sync_snapshots(db, settings.lake, org_id="org-a")
    scan = scan_window(settings.lake, "org-a", T0, T0 + timedelta(hours=1), asset_ids=["a2"])
    assert isinstance(scan, pl.LazyFrame)
    assert scan.collect_schema().names() == arrow_schema().names
    rows = scan.collect()
    assert rows.height == 30  # a2 reports every minute of the first half hour
    assert set(rows["assetId"]) == {"a2"}
    assert window_assets(settings.lake, "org-a", T0 - DAY, T0 + DAY) == ["a1", "a2"]


def test_an_orgs_read_opens_only_its_listed_files_of_the_windows_days(db: Db, settings: Settings) -> None:
    fleet(db)
    sync_snapshots_all_orgs(db, settings.lake)
    want = read_window(settings.lake, "org-a", MIDNIGHT, MIDNIGHT + DAY)
    files = window_files(settings.lake, "org-a", MIDNIGHT, MIDNIGHT + DAY)
    lake = Path(settings.lake)
    assert files == [lake / f.path for f in listed_snapshot_files(settings.lake, org_id="org-a") if f.date == "2026-03-01"]
    assert all(p.relative_to(lake).parts[:3] == ("snapshots", "orgId=org-a", "date=2026-03-01") for p in files)
    # Everything else a careless read would open is made unreadable: org-b's files, the
    # org's other days, and a stray part no manifest lists beside the listed ones.
    others = [p for p in lake.joinpath("snapshots").rglob("*.parquet") if p not in files]
    assert any("orgId=org-b" in str(p) for p in others) and any("date=2026-02-28" in str(p) for p in others)
    for path in [*others, files[0].with_name("part-stray.parquet")]:
        path.write_bytes(b"not parquet")
    same(read_window(settings.lake, "org-a", MIDNIGHT, MIDNIGHT + DAY), want)


def test_a_snapshot_listed_twice_is_read_once(db: Db, settings: Settings) -> None:
    fleet(db)
    sync_snapshots(db, settings.lake, org_id="org-a")
    want = read_window(settings.lake, "org-a", MIDNIGHT, MIDNIGHT + DAY)
    lake = Path(settings.lake)
    state = _load_org(lake, "org-a")
    first = next(f for f in state.files if f.date == "2026-03-01")
    copy = first.path.replace("part-", "part-copy-")
    shutil.copyfile(lake / first.path, lake / copy)
    state.files.append(type(first)(copy, first.date, first.rows, first.ids_sha256))
    _save_org(lake, state)
    assert len(window_files(settings.lake, "org-a", MIDNIGHT, MIDNIGHT + DAY)) == 2
    assert want.frames.snapshots.height > 0
    same(read_window(settings.lake, "org-a", MIDNIGHT, MIDNIGHT + DAY), want)


def test_an_org_never_synced_is_an_error_and_a_synced_empty_one_is_an_empty_window(
    db: Db, settings: Settings
) -> None:
    with pytest.raises(NotSynced, match=r"holds no snapshots of org org-a yet: run `perf-analytics sync --org org-a` first"):
        read_window(settings.lake, "org-a", T0, T0 + DAY)
    sync_snapshots(db, settings.lake, org_id="org-a")
    got = read_window(settings.lake, "org-a", T0, T0 + DAY)
    assert (got.frames.snapshots.height, got.skipped_count) == (0, 0)
    assert got.frames.snapshots.columns == extract_window(db, "org-a", T0, T0 + DAY).frames.snapshots.columns
    with pytest.raises(InvalidArgument, match="empty window"):
        read_window(settings.lake, "org-a", T0, T0)
    with pytest.raises(InvalidArgument, match="timezone-aware"):
        read_window(settings.lake, "org-a", T0.replace(tzinfo=None), T0 + DAY)


def test_a_snapshot_no_repair_can_read_stops_the_read_as_extraction_does(db: Db, settings: Settings) -> None:
    insert(db, series(3, org="org-a", asset="a1"))
    db[SNAPSHOTS].update_one({}, {"$set": {"assetId": ObjectId()}})
    sync_snapshots(db, settings.lake, org_id="org-a")
    with pytest.raises(ExtractError):
        extract_window(db, "org-a", T0, T0 + DAY)
    with pytest.raises(ExtractError, match="none of the off-type kinds"):
        read_window(settings.lake, "org-a", T0, T0 + DAY)
    assert window_assets(settings.lake, "org-a", T0, T0 + DAY) == ["a1", None]  # the odd id is in a batch


def test_a_listed_file_that_is_missing_or_damaged_is_one_clear_error(db: Db, settings: Settings) -> None:
    fleet(db)
    sync_snapshots(db, settings.lake, org_id="org-a")
    path = Path(settings.lake, next(f.path for f in listed_snapshot_files(settings.lake, org_id="org-a") if f.date == "2026-03-01"))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(MirrorError, match="a snapshot file the manifest of org org-a lists cannot be read: "):
        read_window(settings.lake, "org-a", MIDNIGHT, MIDNIGHT + DAY)
    path.unlink()
    with pytest.raises(MirrorError, match=f"the manifest of org org-a lists {path}, which is missing"):
        read_window(settings.lake, "org-a", MIDNIGHT, MIDNIGHT + DAY)


def test_parts_mirrored_before_a_field_joined_the_contract_read_it_as_null(
    db: Db, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    insert(db, series(3, org="org-a", asset="a1"))
    sync_snapshots(db, settings.lake, org_id="org-a")
    cpu, *rest = schema.TABLES
    monkeypatch.setattr(schema, "TABLES", (replace(cpu, fields=(*cpu.fields, ("stealPercent", schema.PERCENT, False))), *rest))
    insert(db, [set_path(p, "performanceData.cpu.stealPercent", 7) for p in series(2, org="org-a", asset="a2")])
    sync_snapshots(db, settings.lake, org_id="org-a")
    got = read_window(settings.lake, "org-a", MIDNIGHT, MIDNIGHT + DAY)
    same(got, extract_window(db, "org-a", MIDNIGHT, MIDNIGHT + DAY))
    assert got.frames.snapshots.select("assetId", "cpu_steal_percent").rows() == [
        ("a1", None), ("a1", None), ("a1", None), ("a2", 7.0), ("a2", 7.0)]
