"""`perf-analytics query --org ORG SQL`: SQL over one org's lake with DuckDB."""

from __future__ import annotations

import sys

import click
import polars as pl

from perf_analytics.commands._common import settings_of
from perf_analytics.lake import query_lake


@click.command("query")
@click.option("--org", "org_id", required=True, help="The organisation whose lake partitions are visible.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.argument("sql")
@click.pass_context
def command(ctx: click.Context, org_id: str, fmt: str, sql: str) -> None:
    """Run one read-only SQL statement over one org's lake: views rollups, rollups_disks,
    rollups_interfaces, anomalies, availability (and snapshots once archived).

    The connection is built from that org's partition files only and cannot read others.
    Only reads run (SELECT, WITH, DESCRIBE, SUMMARIZE, SHOW, PIVOT ... IN (...), EXPLAIN);
    COPY, INSERT, CREATE, SET and the like are refused. DuckDB's memory and threads come
    from the settings duckdb_memory_limit and duckdb_threads.

    \b
    Examples:
      perf-analytics query --org org-01 "select detector, count(*) from anomalies group by 1"
      perf-analytics query --org org-01 --format csv \\
          "select assetId, bucket, cpu_usage_p95 from rollups where \\"window\\" = '1hour'"
    """
    settings = settings_of(ctx)
    table = query_lake(
        settings.lake, sql, org_id=org_id, memory_limit=settings.duckdb_memory_limit, threads=settings.duckdb_threads
    )
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    if fmt == "csv":
        sys.stdout.write(frame.write_csv())
    elif fmt == "json":
        sys.stdout.write(frame.write_json() + "\n")
    else:
        with pl.Config(tbl_rows=50, tbl_cols=20, fmt_str_lengths=60, tbl_width_chars=160):
            click.echo(str(frame))
