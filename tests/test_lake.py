"""The Parquet lake: partition paths, atomic replacement, DuckDB views scoped to one org."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.parquet as pq
import pytest

from perf_analytics.errors import LakeError
from perf_analytics.frames import Frames
from perf_analytics.lake import (
    ANOMALY_SCHEMA,
    connect_lake,
    connect_lake_all_orgs,
    lake_files,
    write_anomalies,
    write_availability,
    write_partition,
    write_rollups,
)
from perf_analytics.rollups import Rollups, compute_availability, compute_rollups
from tests.test_rollups import T0, frames_of, snap

DAY = date(2026, 3, 1)


def two_org_frames(cpu: float = 10.0) -> Frames:
    """org-a and org-b, one asset each, two days, a disk and an interface on org-a."""
    snaps = [snap(m, cpu_usage=cpu) for m in range(0, 24 * 60 + 60, 30)]
    snaps += [snap(m, orgId="org-b", assetId="asset-b", cpu_usage=77.0) for m in range(0, 60, 30)]
    disks = [{"orgId": "org-a", "assetId": "asset-1", "timestamp": T0, "disk": "C:", "usage_percent": 3.0}]
    ifaces = [{"orgId": "org-a", "assetId": "asset-1", "timestamp": T0, "interface": "eth0",
               "bytes_recv_per_sec": 1.0, "bytes_sent_per_sec": 2.0,
               "packets_recv_per_sec": 1.0, "packets_sent_per_sec": 1.0}]
    return frames_of(snaps, disks, ifaces)


def rollups_of(frames: Frames) -> dict[str, Rollups]:
    return compute_rollups(frames, windows=["1hour", "1day"])


def flags_frame() -> pl.DataFrame:
    rows = [
        ("org-a", "asset-1", "cpu.usage", "zscore", T0 + timedelta(hours=1), T0 + timedelta(hours=2), "high", 4.2, "hot"),
        ("org-a", "asset-1", "memory.usagePercent", "trend", T0 + timedelta(days=1), T0 + timedelta(days=1, hours=1),
         "low", 1.5, "leak?"),
        ("org-b", "asset-b", "cpu.usage", "zscore", T0, T0, "medium", 3.0, "spike"),
    ]
    return pl.DataFrame(rows, schema=ANOMALY_SCHEMA.names, orient="row").with_columns(
        pl.col("start", "end").dt.cast_time_unit("ms")
    )


def test_rollup_partitions_are_written_at_the_specified_paths(tmp_path: Path) -> None:
    written = write_rollups(tmp_path, rollups_of(two_org_frames()))
    relative = sorted(str(p.relative_to(tmp_path)) for p in written)
    assert "rollups/window=1hour/orgId=org-a/date=2026-03-01/part-0.parquet" in relative
    assert "rollups/window=1day/orgId=org-a/date=2026-03-02/part-0.parquet" in relative
    assert "rollups/window=1day/orgId=org-b/date=2026-03-01/part-0.parquet" in relative
    assert "rollups_disks/window=1hour/orgId=org-a/date=2026-03-01/part-0.parquet" in relative
    assert "rollups_interfaces/window=1day/orgId=org-a/date=2026-03-01/part-0.parquet" in relative
    assert len(relative) == 2 * (2 + 1) + 2 + 2  # assets: 2 windows x (2 days org-a + 1 org-b); disks; interfaces
    assert "orgId" not in pq.read_schema(written[0]).names  # the path carries it
    assert pq.ParquetFile(written[0]).metadata.row_group(0).column(0).compression == "ZSTD"


def test_derived_partitions_are_written_without_dictionary_pages(tmp_path: Path) -> None:
    """A nightly run writes hundreds of MB of rollups; dictionaries of distinct floats only slow it."""
    for path in write_rollups(tmp_path, rollups_of(two_org_frames())):
        group = pq.ParquetFile(path).metadata.row_group(0)
        encodings = {e for i in range(group.num_columns) for e in group.column(i).encodings}
        assert encodings.isdisjoint({"PLAIN_DICTIONARY", "RLE_DICTIONARY"}), path


@pytest.mark.slow
def test_duckdb_reads_back_exactly_the_rollups_that_were_written(tmp_path: Path) -> None:
    rollups = rollups_of(two_org_frames())
    write_rollups(tmp_path, rollups)
    con = connect_lake_all_orgs(tmp_path)
    back = con.sql("SELECT * FROM rollups WHERE \"window\" = '1hour' ORDER BY orgId, assetId, bucket").pl()
    expected = rollups["1hour"].assets
    assert back.columns[-3:] == ["window", "orgId", "date"]
    back = back.with_columns(pl.col("bucket").dt.convert_time_zone("UTC").dt.cast_time_unit("ms"))
    assert back.select(expected.columns).equals(expected, null_equal=True)
    assert back["date"].unique().sort().to_list() == [DAY, DAY + timedelta(days=1)]
    assert con.execute("SELECT typeof(orgId), typeof(date) FROM rollups LIMIT 1").fetchone() == ("VARCHAR", "DATE")


def test_rewriting_a_partition_replaces_its_rows_and_never_duplicates(tmp_path: Path) -> None:
    write_rollups(tmp_path, rollups_of(two_org_frames(cpu=10.0)))
    write_rollups(tmp_path, rollups_of(two_org_frames(cpu=20.0)))
    con = connect_lake(tmp_path, org_id="org-a")
    rows = con.execute("SELECT count(*), min(cpu_usage_max), max(cpu_usage_max) FROM rollups "
                   "WHERE \"window\" = '1day'").fetchone()
    assert rows == (2, 20.0, 20.0)


def test_a_rewrite_removes_other_parts_left_in_the_partition(tmp_path: Path) -> None:
    table = pl.DataFrame({"x": [1, 2]})
    first = write_partition(tmp_path, "rollups", {"window": "1day", "orgId": "o", "date": "2026-03-01"}, table)
    (first.parent / "part-1.parquet").write_bytes(first.read_bytes())
    write_partition(tmp_path, "rollups", {"window": "1day", "orgId": "o", "date": "2026-03-01"}, table.head(1))
    assert sorted(p.name for p in first.parent.iterdir()) == ["part-0.parquet"]


def test_a_temp_file_left_by_a_crash_is_invisible_to_the_views(tmp_path: Path) -> None:
    written = write_rollups(tmp_path, rollups_of(two_org_frames()))
    target = next(p for p in written if "rollups/window=1day/orgId=org-a/date=2026-03-01" in str(p))
    leftover = target.parent / ".part-0.parquet.999.deadbeef.tmp"
    leftover.write_bytes(target.read_bytes())
    (target.parent / ".part-0.parquet.998.cafe.tmp").write_bytes(b"half a parquet file")
    assert leftover not in lake_files(tmp_path, "rollups")
    con = connect_lake(tmp_path, org_id="org-a")
    assert con.execute("SELECT count(*) FROM rollups WHERE \"window\" = '1day'").fetchone() == (2,)


def test_an_org_scoped_connection_sees_only_its_own_org(tmp_path: Path) -> None:
    write_rollups(tmp_path, rollups_of(two_org_frames()))
    write_anomalies(tmp_path, flags_frame())
    files = [str(p) for dataset in ("rollups", "rollups_disks", "rollups_interfaces", "anomalies")
             for p in lake_files(tmp_path, dataset, org_id="org-b")]
    assert files and all("orgId=org-b" in f and "orgId=org-a" not in f for f in files)
    con = connect_lake(tmp_path, org_id="org-b")
    assert con.execute("SELECT DISTINCT orgId FROM rollups").fetchall() == [("org-b",)]
    assert con.execute("SELECT count(*) FROM rollups_disks").fetchone() == (0,)
    assert con.execute("SELECT DISTINCT orgId FROM anomalies").fetchall() == [("org-b",)]
    admin = connect_lake_all_orgs(tmp_path)
    assert admin.execute("SELECT count(DISTINCT orgId) FROM rollups").fetchone() == (2,)


def test_an_org_scoped_connection_cannot_read_other_files_through_sql(tmp_path: Path) -> None:
    written = write_rollups(tmp_path, rollups_of(two_org_frames()))
    other = next(p for p in written if "orgId=org-a" in str(p))
    con = connect_lake(tmp_path, org_id="org-b")
    with pytest.raises(duckdb.PermissionException):
        con.execute(f"SELECT * FROM read_parquet('{other}')").fetchall()
    with pytest.raises(duckdb.PermissionException):
        con.execute(f"SELECT * FROM read_parquet('{tmp_path}/**/*.parquet')").fetchall()
    with pytest.raises(duckdb.InvalidInputException):
        con.execute("SET enable_external_access = true")


def test_views_over_datasets_without_files_exist_empty_with_their_columns(tmp_path: Path) -> None:
    con = connect_lake(tmp_path, org_id="org-a")
    assert con.execute("SELECT count(*) FROM rollups").fetchone() == (0,)
    assert con.execute("SELECT count(*) FROM anomalies").fetchone() == (0,)
    columns = [c for c, *_ in con.execute("DESCRIBE rollups_interfaces").fetchall()]
    assert columns[:4] == ["assetId", "interface", "bucket", "samples"]
    assert columns[-3:] == ["window", "orgId", "date"]
    for view in ("snapshots", "snapshot_metrics", "disk_samples", "interface_samples"):
        assert con.execute(f"SELECT count(*) FROM {view}").fetchone() == (0,)  # before the first sync


def test_anomalies_go_to_the_date_of_their_start(tmp_path: Path) -> None:
    written = write_anomalies(tmp_path, flags_frame())
    assert sorted(str(p.relative_to(tmp_path)) for p in written) == [
        "anomalies/orgId=org-a/date=2026-03-01/part-0.parquet",
        "anomalies/orgId=org-a/date=2026-03-02/part-0.parquet",
        "anomalies/orgId=org-b/date=2026-03-01/part-0.parquet",
    ]
    con = connect_lake(tmp_path, org_id="org-a")
    row = con.execute("SELECT metric, score, start FROM anomalies ORDER BY start LIMIT 1").fetchone()
    assert row == ("cpu.usage", 4.2, datetime(2026, 3, 1, 1, tzinfo=UTC))


def test_anomaly_flags_without_a_required_column_raise_a_lake_error(tmp_path: Path) -> None:
    with pytest.raises(LakeError, match=r"lack column\(s\) severity"):
        write_anomalies(tmp_path, flags_frame().drop("severity"))


def test_partition_values_that_would_escape_their_directory_are_refused(tmp_path: Path) -> None:
    table = pl.DataFrame({"x": [1]})
    for bad in ("../other", "a/b", "", "..", "k=v"):
        with pytest.raises(LakeError):
            write_partition(tmp_path, "anomalies", {"orgId": bad, "date": "2026-03-01"}, table)
    with pytest.raises(LakeError):
        connect_lake(tmp_path, org_id="../org-a")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("org", ["*", "org%2D01", "org%2F01", "org?", "[ab]", "p|q", "org 01", ".hidden", "-x"])
def test_org_ids_outside_the_identifier_rule_never_become_partitions(tmp_path: Path, org: str) -> None:
    flags = flags_frame().with_columns(pl.lit(org).alias("orgId"))
    with pytest.raises(LakeError, match="cannot be a partition path segment: use letters, digits"):
        write_anomalies(tmp_path, flags)
    with pytest.raises(LakeError, match="cannot be a partition path segment"):
        connect_lake(tmp_path, org_id=org)
    assert not any(tmp_path.iterdir())


def test_a_partition_another_program_named_with_a_glob_is_refused_not_read_twice(tmp_path: Path) -> None:
    write_anomalies(tmp_path, flags_frame())
    # DuckDB globs `*` in the paths it is given: orgId=* would add every org's rows again.
    star = tmp_path / "anomalies" / "orgId=*" / "date=2026-03-01"
    star.mkdir(parents=True)
    (star / "part-0.parquet").write_bytes((tmp_path / "anomalies/orgId=org-b/date=2026-03-01/part-0.parquet").read_bytes())

    with pytest.raises(LakeError, match=r"orgId=\* is not a partition the lake writes"):
        connect_lake_all_orgs(tmp_path)
    # An org-scoped connection never enters another org's directory.
    assert connect_lake(tmp_path, org_id="org-a").execute("SELECT count(*) FROM anomalies").fetchone() == (2,)


def test_a_percent_encoded_partition_value_is_refused_not_decoded(tmp_path: Path) -> None:
    write_anomalies(tmp_path, flags_frame())
    encoded = tmp_path / "anomalies" / "orgId=org%2Da" / "date=2026-03-01"
    encoded.mkdir(parents=True)
    (encoded / "part-0.parquet").write_bytes((tmp_path / "anomalies/orgId=org-b/date=2026-03-01/part-0.parquet").read_bytes())

    with pytest.raises(LakeError, match="orgId=org%2Da is not a partition"):
        lake_files(tmp_path, "anomalies")


@pytest.mark.parametrize("name", ["lake*", "lake?", "lake[1]", "lake%2F"])
def test_a_lake_root_duckdb_would_read_as_a_pattern_is_refused_clearly(tmp_path: Path, name: str) -> None:
    root = tmp_path / name
    with pytest.raises(LakeError, match="which DuckDB reads as a pattern"):
        write_anomalies(root, flags_frame())
    with pytest.raises(LakeError, match="which DuckDB reads as a pattern"):
        connect_lake(root, org_id="org-a")
    assert not root.exists()


def test_availability_is_written_per_org_and_date_and_read_back(tmp_path: Path) -> None:
    availability = compute_availability(two_org_frames())
    written = write_availability(tmp_path, availability)
    assert sorted(str(p.relative_to(tmp_path)) for p in written) == [
        "availability/orgId=org-a/date=2026-03-01/part-0.parquet",
        "availability/orgId=org-a/date=2026-03-02/part-0.parquet",
        "availability/orgId=org-b/date=2026-03-01/part-0.parquet",
    ]
    con = connect_lake(tmp_path, org_id="org-a")
    rows = con.execute("SELECT date, samples, availability FROM availability ORDER BY date").fetchall()
    expected = availability.filter(pl.col("orgId") == "org-a").select("date", "samples", "availability").rows()
    assert rows == expected


def test_timestamps_come_back_in_utc_whatever_the_machines_zone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_rollups(tmp_path, rollups_of(two_org_frames()))
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        con = connect_lake(tmp_path, org_id="org-a")
        back = con.sql("SELECT bucket FROM rollups WHERE \"window\" = '1hour' ORDER BY bucket LIMIT 1").pl()
    finally:
        monkeypatch.undo()
        time.tzset()
    assert back.schema["bucket"] == pl.Datetime("us", "UTC")
    assert back["bucket"][0] == T0
