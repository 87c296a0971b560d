"""The analytical shape of snapshots: one Arrow schema, three flat Polars frames.

The nested Arrow schema is derived, when asked for, from the contract's tables
(`schema.TABLES`), so a field or a table added there is extracted, flattened and named
here without another edit: a field becomes a column, a new object under performanceData
becomes `<section>_<field>` columns of `snapshots`. (A new *repeated* table would need a
frame of its own in `Frames`.) The schema doubles as the server-side projection
(pymongoarrow projects exactly the schema's fields).

Frames, all sorted by (orgId, assetId, timestamp):

- `snapshots`: one row per snapshot: `_id`, `orgId`, `agentId`, `assetId`, `timestamp`
  (UTC, ms), `timeWindow`, then `cpu_usage`, `cpu_temperature`, `cpu_frequency`,
  `cpu_per_core` (list), `memory_usage_percent`, `memory_used_bytes`, ...,
  `network_total_usage`, `network_bytes_recv_per_sec` ... (sums over interfaces),
  `system_uptime`, `system_process_count`, `system_thread_count`;
- `disks`: one row per snapshot and disk: `orgId`, `assetId`, `timestamp`, `disk`, then
  `usage_percent`, `total_bytes`, `used_bytes`, `free_bytes`, `read_bytes_per_sec`, ...;
- `interfaces`: one row per snapshot and interface: `orgId`, `assetId`, `timestamp`,
  `interface`, `bytes_recv_per_sec`, `bytes_sent_per_sec`, `packets_recv_per_sec`,
  `packets_sent_per_sec`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import polars as pl
import pyarrow as pa
from bson import ObjectId

from perf_analytics import schema
from perf_analytics.schema import COUNT, PERCENTS, PERFORMANCE_DATA, Table

KEYS = ("orgId", "assetId", "timestamp")
TIMESTAMP = pa.timestamp("ms", tz="UTC")


def snake(name: str) -> str:
    """`usagePercent` -> `usage_percent`."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _arrow_type(kind: str) -> pa.DataType:
    if kind == COUNT:
        return pa.int64()
    return pa.list_(pa.float64()) if kind == PERCENTS else pa.float64()


def _table_type(table: Table, tables: tuple[Table, ...]) -> pa.StructType:
    """The struct of one object of `table`: name (if named), its fields, then its child tables."""
    fields: list[tuple[str, pa.DataType]] = [("name", pa.string())] if table.named else []
    fields += [(name, _arrow_type(kind)) for name, kind, _ in table.fields]
    fields += [(child.key, _child_type(child, tables)) for child in schema.children(table.path, tables)]
    return pa.struct(fields)


def _child_type(table: Table, tables: tuple[Table, ...]) -> pa.DataType:
    struct = _table_type(table, tables)
    return pa.list_(struct) if table.repeated else struct


@lru_cache(maxsize=8)
def _arrow_schema(tables: tuple[Table, ...], with_id: bool) -> pa.Schema:
    perf = pa.struct([(t.key, _child_type(t, tables)) for t in schema.children(PERFORMANCE_DATA, tables)])
    fields: list[tuple[str, pa.DataType]] = [("_id", pa.binary(12))] if with_id else []
    fields += [
        ("orgId", pa.string()),
        ("agentId", pa.string()),
        ("assetId", pa.string()),
        ("timestamp", TIMESTAMP),
        ("timeWindow", pa.string()),
        (PERFORMANCE_DATA, perf),
    ]
    return pa.schema(fields)


def arrow_schema(*, with_id: bool = True) -> pa.Schema:
    """The nested Arrow schema of a stored snapshot (`_id` as 12 raw bytes when asked).

    Derived from `schema.TABLES` when called (cached per contract), so it always follows
    the contract in force.
    """
    return _arrow_schema(schema.TABLES, with_id)


@dataclass(frozen=True)
class Frames:
    snapshots: pl.DataFrame
    disks: pl.DataFrame
    interfaces: pl.DataFrame

    def __len__(self) -> int:
        return self.snapshots.height


def _column(path: str) -> pl.Expr:
    """The column at a dotted path of a stored document (struct fields all the way)."""
    head, *rest = path.split(".")
    expr = pl.col(head)
    for name in rest:
        expr = expr.struct.field(name)
    return expr


def _snapshot_columns(table: Table) -> list[pl.Expr]:
    """A table's columns in the snapshots frame: its fields, or for a repeated table with
    `sum_prefix`, each field summed over the snapshot's objects (null when there is no
    list: no section is not a sum of 0)."""
    base = _column(table.path)
    if not table.repeated:
        return [base.struct.field(name).alias(f"{table.key}_{snake(name)}") for name, _, _ in table.fields]
    if not table.sum_prefix:
        return []
    return [
        pl.when(base.is_null())
        .then(None)
        .otherwise(base.list.eval(pl.element().struct.field(name)).list.sum())
        .alias(f"{table.sum_prefix}_{snake(name)}")
        for name, _, _ in table.fields
    ]


def _item_frame(df: pl.DataFrame, table: Table) -> pl.DataFrame:
    """One row per object of a repeated table, keyed by KEYS and the object's name."""
    return (
        df.select(*KEYS, _column(table.path).alias("item"))
        .explode("item")
        .drop_nulls("item")
        .unnest("item")
        .select(*KEYS, pl.col("name").alias(table.item), *(pl.col(n).alias(snake(n)) for n, _, _ in table.fields))
        .sort([*KEYS, table.item])
    )


def empty_frames() -> Frames:
    return frames_from_arrow(arrow_schema().empty_table())


def frames_from_arrow(table: pa.Table) -> Frames:
    """Flatten a table in `arrow_schema()` shape into the three frames."""
    if "_id" in table.column_names and not pa.types.is_fixed_size_binary(table.schema.field("_id").type) \
            and not pa.types.is_binary(table.schema.field("_id").type):
        # pymongoarrow's ObjectId extension type: keep its 12 bytes.
        column = table.column("_id")
        storage = pa.chunked_array([c.storage for c in column.chunks], type=column.type.storage_type)
        table = table.set_column(table.schema.get_field_index("_id"), "_id", storage)
    df = pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    ids = [c for c in ("_id", "orgId", "agentId", "assetId", "timestamp", "timeWindow") if c in df.columns]
    tables = schema.TABLES
    snapshots = df.select(*ids, *(c for t in tables for c in _snapshot_columns(t))).sort(list(KEYS))
    items = {t.frame: _item_frame(df, t) for t in tables if t.repeated}
    return Frames(snapshots, items["disks"], items["interfaces"])


def frames_from_documents(docs: Iterable[Mapping[str, Any]]) -> Frames:
    """The frames of already validated documents (small data: tests, notebooks, NAB files).

    Goes through the same Arrow schema as extraction, so the result has the same shape.
    """
    rows = []
    for doc in docs:
        row = dict(doc)
        oid = row.get("_id")
        row["_id"] = oid.binary if isinstance(oid, ObjectId) else None
        rows.append(row)
    return frames_from_arrow(pa.Table.from_pylist(rows, schema=arrow_schema()))
