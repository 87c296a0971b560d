"""`perf-analytics query --org ORG SQL`: SQL over one org's lake with DuckDB."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from perf_analytics.atomic import atomic_path, write_atomic
from perf_analytics.commands._common import db_of, settings_of
from perf_analytics.errors import ConfigError

if TYPE_CHECKING:
    import pyarrow as pa

FORMATS = ("table", "csv", "json", "parquet")


@click.command("query")
@click.option("--org", "org_id", required=True, help="The organisation whose lake partitions are visible.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="How the rows are written; parquet needs --out.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the rows to this file (replaced atomically) instead of the terminal.")
@click.option("--hot", is_flag=True,
              help="Add to the snapshot views the org's snapshots not synced into the lake yet, read from the database.")
@click.argument("sql")
@click.pass_context
def command(ctx: click.Context, org_id: str, fmt: str, out: Path | None, hot: bool, sql: str) -> None:
    """Run one read-only SQL statement over one org's lake. Views: snapshots (as mirrored
    by sync, nested), snapshot_metrics (one flat row per snapshot), disk_samples,
    interface_samples, rollups, rollups_disks, rollups_interfaces, anomalies, availability.

    The connection is built from that org's files only and cannot read others; --hot adds
    the snapshots the last sync has not copied yet (each snapshot once). Filter on date to
    read only those days' files. Only reads run (SELECT, WITH, DESCRIBE, SUMMARIZE, SHOW,
    PIVOT ... IN (...), EXPLAIN); COPY, INSERT, CREATE, SET and the like are refused.
    DuckDB's memory and threads come from the settings duckdb_memory_limit and duckdb_threads.

    \b
    Examples:
      perf-analytics query --org org-01 "select detector, count(*) from anomalies group by 1"
      perf-analytics query --org org-01 --format csv \\
          "select assetId, bucket, cpu_usage_p95 from rollups where \\"window\\" = '1hour'"
      perf-analytics query --org org-01 \\
          "select assetId, max(cpu_usage) from snapshot_metrics where date = '2026-01-06' group by 1"
      perf-analytics query --org org-01 --hot \\
          "select date, count(*) from snapshots where timestamp > now() - interval 60 day group by 1 order by 1"
      perf-analytics query --org org-01 --format parquet --out full-disks.parquet \\
          "select * from disk_samples where usage_percent > 90"
    """
    # The data stack loads here, when the command runs, not for --help.
    from perf_analytics.lake import query_lake

    if fmt == "parquet" and out is None:
        raise ConfigError("--format parquet writes a file: give --out FILE")
    settings = settings_of(ctx)
    table = query_lake(
        settings.lake,
        sql,
        org_id=org_id,
        hot=db_of(ctx) if hot else None,
        memory_limit=settings.duckdb_memory_limit,
        threads=settings.duckdb_threads,
    )
    if out is None:
        sys.stdout.write(_render(table, fmt))
        return
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq  # the data stack, already loaded by the query that ran

            with atomic_path(out) as tmp, tmp.open("wb") as fh:
                pq.write_table(table, fh, compression="zstd")
        else:
            write_atomic(out, _render(table, fmt).encode())
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror or exc}") from None
    click.echo(f"{table.num_rows} rows written to {out}")


def _render(table: pa.Table, fmt: str) -> str:
    """The rows as text: an aligned table, CSV or JSON records."""
    import polars as pl  # the data stack, already loaded by the query that ran

    _check_text_columns(table.schema, fmt)
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    if fmt == "csv":
        return frame.write_csv()
    if fmt == "json":
        return frame.write_json() + "\n"
    with pl.Config(tbl_rows=50, tbl_cols=20, fmt_str_lengths=60, tbl_width_chars=160):
        return str(frame) + "\n"


def _check_text_columns(schema: pa.Schema, fmt: str) -> None:
    """Refuse, naming the column, what CSV or JSON cannot hold (rather than a traceback or half a file)."""
    import pyarrow as pa  # the data stack, already loaded by the query that ran

    from perf_analytics.errors import QueryError

    if fmt == "table":
        return
    for field in schema:
        if _holds_bytes(field.type):
            raise QueryError(f"column {field.name} holds bytes, which {fmt} cannot show: select hex({field.name}), "
                             "or use --format parquet --out FILE")
        if fmt == "csv" and pa.types.is_nested(field.type):
            raise QueryError(f"column {field.name} is nested (a struct or list), which csv cannot hold: "
                             "select its fields, or use --format json or parquet")


def _holds_bytes(kind: pa.DataType) -> bool:
    """Whether `kind`, or a type nested in it, is binary."""
    import pyarrow as pa  # the data stack, already loaded by the query that ran

    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind) \
            or pa.types.is_binary_view(kind):
        return True
    return any(_holds_bytes(kind.field(i).type) for i in range(kind.num_fields))
