"""The analytical shape of snapshots: one Arrow schema, three flat Polars frames.

The nested Arrow schema is derived from the field tables of the snapshot contract
(`schema.py`), so a field added there is extracted, flattened and named here without
another edit. It doubles as the server-side projection (pymongoarrow projects exactly the
schema's fields).

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
from typing import Any

import polars as pl
import pyarrow as pa
from bson import ObjectId

from perf_analytics.schema import (
    COUNT,
    CPU_FIELDS,
    DISK_FIELDS,
    INTERFACE_FIELDS,
    MEMORY_FIELDS,
    SYSTEM_FIELDS,
)

KEYS = ("orgId", "assetId", "timestamp")
TIMESTAMP = pa.timestamp("ms", tz="UTC")

FieldSpec = tuple[tuple[str, str, bool], ...]


def snake(name: str) -> str:
    """`usagePercent` -> `usage_percent`."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _arrow_type(kind: str) -> pa.DataType:
    return pa.int64() if kind == COUNT else pa.float64()


def _struct(
    spec: FieldSpec, extra: Iterable[tuple[str, pa.DataType]] = (), after: Iterable[tuple[str, pa.DataType]] = ()
) -> pa.StructType:
    return pa.struct([*extra, *((name, _arrow_type(kind)) for name, kind, _ in spec), *after])


CPU_TYPE = _struct(CPU_FIELDS, after=[("perCore", pa.list_(pa.float64()))])
MEMORY_TYPE = _struct(MEMORY_FIELDS)
DISK_TYPE = _struct(DISK_FIELDS, [("name", pa.string())])
INTERFACE_TYPE = _struct(INTERFACE_FIELDS, [("name", pa.string())])
NETWORK_TYPE = pa.struct([("totalUsage", pa.float64()), ("interfaces", pa.list_(INTERFACE_TYPE))])
SYSTEM_TYPE = _struct(SYSTEM_FIELDS)
PERFORMANCE_TYPE = pa.struct(
    [
        ("cpu", CPU_TYPE),
        ("memory", MEMORY_TYPE),
        ("disk", pa.list_(DISK_TYPE)),
        ("network", NETWORK_TYPE),
        ("system", SYSTEM_TYPE),
    ]
)


def arrow_schema(*, with_id: bool = True) -> pa.Schema:
    """The nested Arrow schema of a stored snapshot (`_id` as 12 raw bytes when asked)."""
    fields: list[tuple[str, pa.DataType]] = [("_id", pa.binary(12))] if with_id else []
    fields += [
        ("orgId", pa.string()),
        ("agentId", pa.string()),
        ("assetId", pa.string()),
        ("timestamp", TIMESTAMP),
        ("timeWindow", pa.string()),
        ("performanceData", PERFORMANCE_TYPE),
    ]
    return pa.schema(fields)


@dataclass(frozen=True)
class Frames:
    snapshots: pl.DataFrame
    disks: pl.DataFrame
    interfaces: pl.DataFrame

    def __len__(self) -> int:
        return self.snapshots.height


def _section_columns(section: str, spec: FieldSpec) -> list[pl.Expr]:
    base = pl.col("performanceData").struct.field(section)
    return [base.struct.field(name).alias(f"{section}_{snake(name)}") for name, _, _ in spec]


def _item_columns(spec: FieldSpec) -> list[pl.Expr]:
    return [pl.col(name).alias(snake(name)) for name, _, _ in spec]


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
    perf = pl.col("performanceData")
    interfaces_list = perf.struct.field("network").struct.field("interfaces")
    snapshots = df.select(
        *ids,
        *_section_columns("cpu", CPU_FIELDS),
        perf.struct.field("cpu").struct.field("perCore").alias("cpu_per_core"),
        *_section_columns("memory", MEMORY_FIELDS),
        perf.struct.field("network").struct.field("totalUsage").alias("network_total_usage"),
        *(
            # Snapshots without a network section have no interfaces: their sums are null, not 0.
            pl.when(perf.struct.field("network").is_null())
            .then(None)
            .otherwise(interfaces_list.list.eval(pl.element().struct.field(name)).list.sum())
            .alias(f"network_{snake(name)}")
            for name, _, _ in INTERFACE_FIELDS
        ),
        *_section_columns("system", SYSTEM_FIELDS),
    ).sort(list(KEYS))
    keys = df.select(*KEYS, perf)
    disks = (
        keys.select(*KEYS, perf.struct.field("disk").alias("item"))
        .explode("item")
        .drop_nulls("item")
        .unnest("item")
        .select(*KEYS, pl.col("name").alias("disk"), *_item_columns(DISK_FIELDS))
        .sort([*KEYS, "disk"])
    )
    interfaces = (
        keys.select(*KEYS, interfaces_list.alias("item"))
        .explode("item")
        .drop_nulls("item")
        .unnest("item")
        .select(*KEYS, pl.col("name").alias("interface"), *_item_columns(INTERFACE_FIELDS))
        .sort([*KEYS, "interface"])
    )
    return Frames(snapshots, disks, interfaces)


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
