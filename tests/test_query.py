"""`perf-analytics query`: one read statement over one org's locked lake, one-line errors."""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from perf_analytics.cli import app
from perf_analytics.config import Settings
from perf_analytics.errors import NotReadOnly, UnreadableLakeFile
from perf_analytics.frames import frames_from_documents
from perf_analytics.lake import (
    READ_STATEMENTS,
    check_read_only,
    connect_lake,
    connect_lake_all_orgs,
    lake_files,
    query_lake,
    write_anomalies,
    write_availability,
    write_rollups,
)
from perf_analytics.rollups import compute_availability, compute_rollups
from perf_analytics.schema import SNAPSHOTS
from perf_analytics.store import Db
from perf_analytics.sync import sync_snapshots
from tests.conftest import Cli
from tests.factories import T0, series, set_path
from tests.test_lake import flags_frame, rollups_of, two_org_frames
from tests.test_sync import insert


@pytest.fixture
def lake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two orgs' rollups, anomalies and availability, with no settings from outside the test."""
    monkeypatch.chdir(tmp_path)
    for var in ("PERF_CONFIG", "PERF_LAKE", "PERF_DUCKDB_MEMORY_LIMIT", "PERF_DUCKDB_THREADS"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "lake"
    frames = two_org_frames()
    write_rollups(root, rollups_of(frames))
    write_anomalies(root, flags_frame())
    write_availability(root, compute_availability(frames))
    return root


def _part(lake: Path) -> Path:
    """org-a's first anomalies partition."""
    return lake_files(lake, "anomalies", org_id="org-a")[0]


def _query(lake: Path, sql: str, *, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, ["--lake", str(lake), "query", "--org", "org-a", "--format", "json", sql], env=env)


def _error_line(result: Result) -> str:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert result.stdout == ""
    assert result.stderr.endswith("\n") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr.removesuffix("\n")


def _refused(kind: str) -> str:
    return f"Error: statement refused ({kind}): only read statements run here ({READ_STATEMENTS})"


# ---- only reads -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "kind"),
    [
        ("COPY (SELECT 1 AS a) TO '{f}' (USE_TMP_FILE false)", "COPY"),
        ("WITH x AS (COPY (SELECT 1 AS a) TO '{f}' (USE_TMP_FILE false)) SELECT 1", "COPY inside a query"),
        ("EXPLAIN ANALYZE COPY (SELECT 1 AS a) TO '{f}' (USE_TMP_FILE false)", "EXPLAIN of COPY"),
        ("EXPLAIN (ANALYZE) /* options first */ COPY (SELECT 1 AS a) TO '{f}' (USE_TMP_FILE false)", "EXPLAIN of COPY"),
    ],
    ids=["copy", "copy-in-with", "explain-analyze-copy", "explain-options-copy"],
)
def test_writing_over_the_orgs_own_partition_is_refused_and_the_file_is_unchanged(
    lake: Path, template: str, kind: str
) -> None:
    target = _part(lake)
    before = target.read_bytes()
    assert _error_line(_query(lake, template.format(f=target))) == _refused(kind)
    assert target.read_bytes() == before
    # Both connections still read the partition as it was.
    assert json.loads(_query(lake, "SELECT count(*) AS n FROM anomalies").stdout) == [{"n": 2}]
    admin = connect_lake_all_orgs(lake)
    assert admin.execute("SELECT count(*) FROM anomalies").fetchone() == (3,)
    admin.close()


def test_a_write_after_a_read_in_one_string_is_refused_whole(lake: Path) -> None:
    target = _part(lake)
    before = target.read_bytes()
    sql = f"SELECT 1; COPY (SELECT 1 AS a) TO '{target}' (USE_TMP_FILE false)"
    assert _error_line(_query(lake, sql)) == "Error: give one SQL statement (found 2)"
    assert target.read_bytes() == before


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("CREATE TABLE t AS SELECT 1", "CREATE"),
        ("INSERT INTO rollups SELECT * FROM rollups", "INSERT"),
        ("WITH x AS (INSERT INTO rollups SELECT * FROM rollups RETURNING *) SELECT 1", "INSERT inside a query"),
        ("SELECT * FROM rollups WHERE assetId IN (WITH d AS (DELETE FROM rollups RETURNING *) SELECT assetId FROM d)",
         "DELETE inside a query"),
        ("UPDATE rollups SET samples = 0", "UPDATE"),
        ("DROP VIEW anomalies", "DROP"),
        ("SET threads = 1", "SET"),
        ("RESET memory_limit", "SET"),
        ("PRAGMA version", "PRAGMA"),
        ("CALL pragma_version()", "CALL"),
        ("ATTACH ':memory:' AS other", "ATTACH"),
        ("EXPORT DATABASE 'out'", "EXPORT"),
        ("INSTALL httpfs", "LOAD"),
        ("BEGIN", "TRANSACTION"),
        ("EXPLAIN CREATE TABLE t AS SELECT 1", "EXPLAIN of CREATE"),
    ],
)
def test_statements_that_are_not_reads_are_refused_by_their_parsed_type(lake: Path, sql: str, kind: str) -> None:
    assert _error_line(_query(lake, sql)) == _refused(kind)


def test_a_pivot_without_an_in_list_is_refused_with_the_form_that_runs(lake: Path) -> None:
    line = _error_line(_query(lake, "PIVOT anomalies ON severity USING count(*)"))
    assert line.startswith(_refused("PIVOT without an IN list") + "; name the pivoted values, e.g. PIVOT ")
    result = _query(lake, "PIVOT anomalies ON severity IN ('low', 'high') USING count(*) ORDER BY metric")
    assert result.exit_code == 0, result.output
    assert [(row["metric"], row["low"], row["high"]) for row in json.loads(result.stdout)] == [
        ("cpu.usage", 0, 1),
        ("memory.usagePercent", 1, 0),
    ]


@pytest.mark.parametrize(
    ("sql", "check"),
    [
        ("SELECT count(*) AS n FROM rollups_disks", lambda rows: rows == [{"n": 2}]),
        ("WITH d AS (SELECT DISTINCT orgId FROM rollups) SELECT * FROM d", lambda rows: rows == [{"orgId": "org-a"}]),
        ("FROM availability SELECT count(*) AS n", lambda rows: rows == [{"n": 2}]),
        ("VALUES (1)", lambda rows: len(rows) == 1),
        ("DESCRIBE anomalies", lambda rows: rows[0]["column_name"] == "assetId"),
        ("SUMMARIZE anomalies", lambda rows: {r["column_name"] for r in rows} >= {"score", "orgId"}),
        ("SHOW TABLES", lambda rows: {r["name"] for r in rows} >= {"rollups", "anomalies", "availability"}),
        ("UNPIVOT (SELECT score, score AS twice FROM anomalies) ON score, twice INTO NAME k VALUE v",
         lambda rows: len(rows) == 4),
        ("EXPLAIN SELECT * FROM anomalies", lambda rows: rows[0]["explain_key"] == "physical_plan"),
        ("EXPLAIN ANALYZE SELECT count(*) FROM anomalies", lambda rows: rows[0]["explain_key"] == "analyzed_plan"),
        ("EXPLAIN (FORMAT json) (SELECT 1) UNION ALL (SELECT 2)", lambda rows: len(rows) == 1),
        ("SELECT count(*) AS n -- the day's flags\nFROM anomalies;", lambda rows: rows == [{"n": 2}]),
    ],
)
def test_read_statements_run(lake: Path, sql: str, check: Callable[[list[dict[str, Any]]], bool]) -> None:
    result = _query(lake, sql)
    assert result.exit_code == 0, result.output
    assert check(json.loads(result.stdout)), result.stdout


def test_the_locked_connection_reads_no_file_but_the_orgs_own(lake: Path) -> None:
    other = lake_files(lake, "anomalies", org_id="org-b")[0]
    for sql in ("SELECT * FROM read_csv('/etc/passwd')", f"SELECT * FROM read_parquet('{other}')"):
        line = _error_line(_query(lake, sql))
        assert line.startswith("Error: Permission Error: Cannot access file "), line
    # The check is the connection's, not only the command's: a notebook gets the same lock.
    con = connect_lake(lake, org_id="org-a")
    with pytest.raises(duckdb.PermissionException):
        con.execute("SELECT * FROM read_csv('/etc/passwd')").fetchall()
    con.close()


def test_the_read_check_is_the_library_s_too(tmp_path: Path) -> None:
    check_read_only("SELECT 1")
    with pytest.raises(NotReadOnly) as info:
        check_read_only(f"COPY (SELECT 1) TO '{tmp_path / 'x.csv'}'")
    assert info.value.statement == "COPY"
    with pytest.raises(NotReadOnly):
        query_lake(tmp_path, f"COPY (SELECT 1) TO '{tmp_path / 'x.csv'}'", org_id="org-a")
    assert not (tmp_path / "x.csv").exists()


# ---- memory and threads ----------------------------------------------------------------


def test_duckdb_memory_and_threads_come_from_the_settings_and_stay_fixed(lake: Path) -> None:
    sql = "SELECT current_setting('memory_limit') AS m, current_setting('threads') AS t"
    result = _query(lake, sql, env={"PERF_DUCKDB_MEMORY_LIMIT": "1GB", "PERF_DUCKDB_THREADS": "1"})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [{"m": "953.6 MiB", "t": 1}]
    con = connect_lake(lake, org_id="org-a", memory_limit="1GB", threads=1)
    with pytest.raises(duckdb.InvalidInputException):  # locked: a notebook cannot raise them either
        con.execute("SET memory_limit = '100GB'")
    con.close()


def test_by_default_duckdb_gets_half_the_memory_and_every_cpu(lake: Path) -> None:
    reference = duckdb.connect(config={"memory_limit": "50%"})
    half = reference.execute("SELECT current_setting('memory_limit')").fetchone()
    reference.close()
    result = _query(lake, "SELECT current_setting('memory_limit') AS m, current_setting('threads') AS t")
    assert result.exit_code == 0, result.output
    assert half is not None
    assert json.loads(result.stdout) == [{"m": half[0], "t": os.cpu_count()}]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PERF_DUCKDB_MEMORY_LIMIT": "lots"},
         "Error: duckdb_memory_limit (env PERF_DUCKDB_MEMORY_LIMIT) must be a size such as 4GB or a share of RAM "
         "such as 50%"),
        ({"PERF_DUCKDB_THREADS": "0"},
         "Error: duckdb_threads (env PERF_DUCKDB_THREADS) must be a whole number of at least 1"),
        ({"PERF_DUCKDB_THREADS": "two"},
         "Error: duckdb_threads (env PERF_DUCKDB_THREADS) must be a whole number of at least 1"),
    ],
)
def test_a_bad_duckdb_setting_is_one_error_line(lake: Path, env: dict[str, str], message: str) -> None:
    assert _error_line(_query(lake, "SELECT 1", env=env)) == message


# ---- unreadable lake files ---------------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:10])


def _garbage(path: Path) -> None:
    path.write_bytes(b"not parquet at all\n" * 50)


def _damage_first_page(path: Path) -> None:
    """Scramble the first page's header; the footer stays intact, so DuckDB fails mid-scan."""
    assert pq.read_metadata(path).row_group(0).column(0).data_page_offset < 64
    data = bytearray(path.read_bytes())
    data[4:12] = bytes(b ^ 0x5A for b in data[4:12])
    path.write_bytes(bytes(data))


Damage = Callable[[Path], None]


@pytest.mark.parametrize("damage", [_truncate, _garbage, _damage_first_page], ids=["truncated", "garbage", "page"])
def test_an_unreadable_lake_file_is_one_error_line_naming_it(lake: Path, damage: Damage) -> None:
    target = _part(lake)
    damage(target)
    line = _error_line(_query(lake, "SELECT * FROM anomalies"))
    assert line.startswith(f"Error: lake file {target.resolve()} cannot be read: "), line
    with pytest.raises(UnreadableLakeFile) as info:
        query_lake(lake, "SELECT * FROM anomalies", org_id="org-a")
    assert info.value.path == target.resolve()


@pytest.mark.parametrize("damage", [_truncate, _garbage], ids=["truncated", "garbage"])
def test_a_file_without_a_footer_stops_the_connection_even_for_sql_that_does_not_read_it(
    lake: Path, damage: Damage
) -> None:
    target = _part(lake)
    damage(target)
    line = _error_line(_query(lake, "SELECT 1"))  # the views are built from every file's footer
    assert line.startswith(f"Error: lake file {target.resolve()} cannot be read: "), line
    with pytest.raises(UnreadableLakeFile):
        connect_lake(lake, org_id="org-a")


@pytest.mark.parametrize("damage", [_truncate, _garbage], ids=["truncated", "garbage"])
def test_the_all_orgs_connection_names_an_unreadable_file(lake: Path, damage: Damage) -> None:
    target = lake_files(lake, "anomalies", org_id="org-b")[0]
    damage(target)
    with pytest.raises(UnreadableLakeFile) as info:
        connect_lake_all_orgs(lake)
    assert info.value.path == target.resolve()
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(f"lake file {target.resolve()} cannot be read: ")


def test_an_error_in_the_sql_is_not_blamed_on_a_file(lake: Path) -> None:
    line = _error_line(_query(lake, "SELECT strptime(message, '%Y') FROM anomalies"))
    assert line.startswith("Error: Invalid Input Error: "), line
    assert "lake file" not in line


# ---- output: files, formats -------------------------------------------------------------


def _run(lake: Path, *args: str) -> Result:
    return CliRunner().invoke(app, ["--lake", str(lake), "query", "--org", "org-a", *args])


def test_parquet_output_goes_to_a_file_holding_the_rows(lake: Path, tmp_path: Path) -> None:
    out = tmp_path / "flags.parquet"
    sql = "SELECT assetId, score, start, date FROM anomalies ORDER BY start"
    result = _run(lake, "--format", "parquet", "--out", str(out), sql)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"2 rows written to {out}\n"
    assert pq.read_table(out).equals(query_lake(lake, sql, org_id="org-a"))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp file left


@pytest.mark.parametrize("fmt", ["csv", "json", "table"])
def test_text_output_goes_to_a_file_with_out(lake: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"flags.{fmt}"
    sql = "SELECT assetId, score FROM anomalies ORDER BY score"
    result = _run(lake, "--format", fmt, "--out", str(out), sql)
    assert result.exit_code == 0, result.output
    assert out.read_text() == _run(lake, "--format", fmt, sql).stdout
    assert "1.5" in out.read_text() and "4.2" in out.read_text()


def test_parquet_without_out_is_one_error_line(lake: Path) -> None:
    assert _error_line(_run(lake, "--format", "parquet", "SELECT 1")) == "Error: --format parquet writes a file: give --out FILE"


def test_a_failed_query_leaves_the_out_file_as_it_was(lake: Path, tmp_path: Path) -> None:
    out = tmp_path / "result.csv"
    out.write_text("the last good result\n")
    _error_line(_run(lake, "--format", "csv", "--out", str(out), "SELECT * FROM no_such_view"))
    assert out.read_text() == "the last good result\n"


def test_an_out_file_in_a_missing_directory_is_one_error_line(lake: Path, tmp_path: Path) -> None:
    out = tmp_path / "missing" / "r.parquet"
    line = _error_line(_run(lake, "--format", "parquet", "--out", str(out), "SELECT 1 AS a"))
    assert line == f"Error: cannot write {out}: No such file or directory"


@pytest.mark.parametrize(
    ("fmt", "sql", "message"),
    [
        ("csv", "SELECT [1, 2] AS l", "Error: column l is nested (a struct or list), which csv cannot hold: "
         "select its fields, or use --format json or parquet"),
        ("csv", "SELECT {'a': 1} AS s", "Error: column s is nested (a struct or list), which csv cannot hold: "
         "select its fields, or use --format json or parquet"),
        ("json", "SELECT 'x'::BLOB AS b", "Error: column b holds bytes, which json cannot show: select hex(b), "
         "or use --format parquet --out FILE"),
        ("json", "SELECT {'a': 'x'::BLOB} AS s", "Error: column s holds bytes, which json cannot show: select hex(s), "
         "or use --format parquet --out FILE"),
    ],
)
def test_values_a_text_format_cannot_hold_are_one_error_line_naming_the_column(
    lake: Path, fmt: str, sql: str, message: str
) -> None:
    assert _error_line(_run(lake, "--format", fmt, sql)) == message


def test_nested_values_go_to_json_and_parquet(lake: Path, tmp_path: Path) -> None:
    result = _run(lake, "--format", "json", "SELECT {'a': [1, 2]} AS s")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [{"s": {"a": [1, 2]}}]
    out = tmp_path / "s.parquet"
    assert _run(lake, "--format", "parquet", "--out", str(out), "SELECT 'x'::BLOB AS b").exit_code == 0
    assert pq.read_table(out).column("b").to_pylist() == [b"x"]


# ---- the snapshot views and the hot tail ------------------------------------------------------


def test_hot_adds_the_snapshots_the_last_sync_has_not_copied(cli: Cli, db: Db, settings: Settings) -> None:
    insert(db, series(4, org="org-a", asset="a1"))
    sync_snapshots(db, settings.lake, org_id="org-a")
    insert(db, series(2, org="org-a", asset="a1", start=T0 + timedelta(days=1)))
    insert(db, series(3, org="org-b", asset="b1", start=T0 + timedelta(days=1)))
    sql = "SELECT count(*) AS n, count(DISTINCT _id) AS ids FROM snapshot_metrics"
    cold = cli("query", "--org", "org-a", "--format", "json", sql)
    assert json.loads(cold.stdout) == [{"n": 4, "ids": 4}]
    hot = cli("query", "--org", "org-a", "--hot", "--format", "json", sql)
    assert hot.exit_code == 0, hot.output
    assert json.loads(hot.stdout) == [{"n": 6, "ids": 6}]


def _help_examples(cli: Cli) -> list[list[str]]:
    """The examples of `query --help`, as argument lists (continued lines joined)."""
    text = cli.invoke(app, ["query", "--help"]).stdout
    lines = text.split("Examples:")[1].split("Options:")[0].splitlines()
    joined = " ".join(line.strip() for line in lines).replace("\\ ", "")
    return [shlex.split("perf-analytics " + e)[1:] for e in joined.split("perf-analytics ") if e.strip()]


@pytest.mark.slow
def test_the_help_examples_run_against_a_loaded_lake(
    cli: Cli, db: Db, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    day = datetime(2026, 1, 6, 12, tzinfo=UTC)
    payloads = series(3, org="org-01", asset="a1", start=day)
    payloads += [set_path(p, "performanceData.disk.0.usagePercent", 95.0) for p in series(2, org="org-01", asset="a2", start=day)]
    insert(db, payloads)
    sync_snapshots(db, settings.lake, org_id="org-01")
    insert(db, series(1, org="org-01", asset="a3", start=datetime.now(UTC)))  # not synced: --hot finds it
    docs = list(db[SNAPSHOTS].find({"orgId": "org-01"}))
    write_rollups(settings.lake, compute_rollups(frames_from_documents(docs), windows=["1hour"]))
    write_anomalies(settings.lake, flags_frame().with_columns(pl.lit("org-01").alias("orgId")))
    examples = _help_examples(cli)
    assert len(examples) == 5
    for args in examples:
        result = cli(*args)
        assert result.exit_code == 0, (args, result.output)
        assert result.stdout.strip(), args
    assert pq.read_table(tmp_path / "full-disks.parquet").column("assetId").to_pylist() == ["a2", "a2"]
    hot = cli(*examples[3], "--format", "json")
    assert sum(row["count_star()"] for row in json.loads(hot.stdout)) == 1  # within the last 60 days: the hot one
