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

Raw BSON batches (what `find_raw_batches` returns) become frames or the nested table
through one of two decoders that read the same types and refuse the same documents:

- the native one (`perf_analytics_native`, a Rust extension in `native/`, built by
  `make setup`): one pass over each document into Arrow buffers, frames built from the
  leaf columns directly (about a fifth of the other's CPU, see bench/README.md);
- pymongoarrow's builder with the nested schema, flattened by Polars (`frames_from_arrow`).

`raw_decoder()` says which one is in use: the native one when it is installed, else
pymongoarrow's, with a warning logged once, so a missing build is slower, never wrong.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
from bson import ObjectId

from perf_analytics import schema
from perf_analytics.schema import COUNT, PERCENTS, PERFORMANCE_DATA, Table

KEYS = ("orgId", "assetId", "timestamp")
TIMESTAMP = pa.timestamp("ms", tz="UTC")
NATIVE_MODULE = "perf_analytics_native"

Decoder = Literal["native", "pymongoarrow"]
Refused = list[tuple[int, str]]  # (position among the batches' documents, why), in order

log = logging.getLogger(__name__)


def snake(name: str) -> str:
    """`usagePercent` -> `usage_percent`."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def column_name(table: Table, name: str) -> str:
    """The frame column of `table`'s field `name`: `<field>` on a repeated table's own frame,
    `<table>_<field>` on the snapshots frame (`memory_usage_percent`)."""
    return snake(name) if table.repeated else f"{table.key}_{snake(name)}"


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
        return [base.struct.field(name).alias(column_name(table, name)) for name, _, _ in table.fields]
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
    """One row per object of a repeated table, keyed by KEYS and the object's name.

    Ordered by its snapshot's keys, then by snapshot (as read) and name, stably: as the
    native decoder orders them, so that the objects of two snapshots sharing every key
    (which the unique index rules out) stay apart, each snapshot's together."""
    return (
        df.select(*KEYS, _column(table.path).alias("item"))
        .with_row_index("snapshot")
        .explode("item")
        .drop_nulls("item")
        .unnest("item")
        .sort([*KEYS, "snapshot", "name"], maintain_order=True)
        .select(*KEYS, pl.col("name").alias(table.item), *(pl.col(n).alias(snake(n)) for n, _, _ in table.fields))
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
    # Stable, as the native decoder orders them: rows sharing every key keep the order read.
    snapshots = df.select(*ids, *(c for t in tables for c in _snapshot_columns(t))).sort(list(KEYS), maintain_order=True)
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


# ---- raw BSON batches through the native decoder ------------------------------------------

# Arrow type of a leaf column -> the native decoder's name for it.
_KINDS: dict[pa.DataType, str] = {
    pa.string(): "str",
    pa.float64(): "f64",
    pa.int64(): "i64",
    TIMESTAMP: "ts",
    pa.binary(12): "oid",
    pa.list_(pa.float64()): "f64list",
}

Columns = dict[str, Any]  # one node of the native decoder's output (see native/src/lib.rs)


@lru_cache(maxsize=1)
def _native() -> ModuleType | None:
    try:
        return importlib.import_module(NATIVE_MODULE)
    except ImportError:
        log.warning("%s is not built: raw BSON is decoded by pymongoarrow, about 10x the CPU "
                    "(`make setup` builds it)", NATIVE_MODULE)
        return None


def raw_decoder() -> Decoder:
    """The decoder raw BSON batches go through: "native" when its extension is installed."""
    return "native" if _native() is not None else "pymongoarrow"


def _spec(fields: Iterable[pa.Field]) -> tuple[list[tuple[str, str]], list[tuple[str, bool, Any]]]:
    """What the native decoder reads, derived from the Arrow schema: (leaves, children)."""
    leaves: list[tuple[str, str]] = []
    children: list[tuple[str, bool, Any]] = []
    for f in fields:
        if pa.types.is_struct(f.type):
            children.append((f.name, False, _spec(f.type)))
        elif pa.types.is_list(f.type) and pa.types.is_struct(f.type.value_type):
            children.append((f.name, True, _spec(f.type.value_type)))
        else:
            leaves.append((f.name, _KINDS[f.type]))
    return leaves, children


def _decode(batches: Sequence[bytes], schema: pa.Schema, *, sort: bool) -> tuple[Columns, Refused]:
    """Decode natively; with `sort`, each node also carries its rows' order ("order")."""
    native = _native()
    if native is None:
        raise ModuleNotFoundError(f"{NATIVE_MODULE} is not installed (`make setup` builds it)")
    columns, refused = native.decode_batches(list(batches), _spec(schema), (list(KEYS), "name") if sort else None)
    return columns, refused


def _order(node: Columns) -> pl.Series:
    """A node's sorted row order: the frames' sort, done while decoding (uint32 indices)."""
    return pl.Series(np.frombuffer(node["order"], dtype=np.uint32))


def _gathered(columns: pa.Table, order: pl.Series) -> pl.DataFrame:
    """`columns` as a frame with its rows in `order`, gathered by Polars after conversion:
    at a million rows a third of the CPU of Arrow's `take` before it (bench/README.md)."""
    df = pl.from_arrow(columns)
    assert isinstance(df, pl.DataFrame)
    return df.select(pl.all().gather(order))


def _buffer(data: bytes | None) -> pa.Buffer | None:
    return None if data is None else pa.py_buffer(data)


def _leaf(column: Columns, kind: pa.DataType, rows: int) -> pa.Array:
    """One leaf column's buffers as an Arrow array (no copy)."""
    validity, values = _buffer(column["validity"]), pa.py_buffer(column["values"])
    if pa.types.is_list(kind):
        inner = pa.Array.from_buffers(kind.value_type, len(column["values"]) // 8,
                                      [_buffer(column["inner_validity"]), values])
        return pa.Array.from_buffers(kind, rows, [validity, pa.py_buffer(column["offsets"])], children=[inner])
    if kind == pa.string():
        return pa.Array.from_buffers(kind, rows, [validity, pa.py_buffer(column["offsets"]), values])
    return pa.Array.from_buffers(kind, rows, [validity, values])


def _array(node: Columns, field: pa.Field) -> pa.Array:
    """The nested Arrow array of `field` in a decoded node."""
    if field.name in node["leaves"]:
        return _leaf(node["leaves"][field.name], field.type, node["rows"])
    child = node["children"][field.name]
    if not child["repeated"]:
        return _struct(child["node"], field.type)
    values = _struct(child["node"], field.type.value_type)
    buffers = [_buffer(child["validity"]), pa.py_buffer(child["offsets"])]
    return pa.Array.from_buffers(field.type, node["rows"], buffers, children=[values])


def _struct(node: Columns, kind: pa.StructType) -> pa.StructArray:
    # Never null, as pymongoarrow builds them: a missing object is a struct of nulls.
    return pa.StructArray.from_arrays([_array(node, f) for f in kind], fields=list(kind))


def native_table_from_raw(batches: Sequence[bytes], *, with_id: bool) -> tuple[pa.Table, Refused]:
    """The documents of raw BSON `batches` as an `arrow_schema(with_id=...)` table, built natively.

    The documents whose types the contract cannot read (pymongoarrow would refuse them)
    are left out and listed by position with the reason. ModuleNotFoundError when the
    native decoder is not installed.
    """
    shape = arrow_schema(with_id=with_id)
    root, refused = _decode(batches, shape, sort=False)
    return pa.Table.from_arrays([_array(root, f) for f in shape], schema=shape), refused


def _node_at(root: Columns, path: str) -> Columns:
    node = root
    for key in path.split("."):
        node = node["children"][key]["node"]
    return node


def native_frames_from_raw(batches: Sequence[bytes]) -> tuple[Frames, Refused]:
    """The three frames of the documents of raw BSON `batches`, built natively.

    Equal to `frames_from_arrow` of pymongoarrow's table of the same documents, and the
    same documents left out (listed by position with the reason), without building the
    nested table: the frames' columns are the decoded leaf columns themselves. Each frame
    is sorted as `frames_from_arrow` sorts it, stably: snapshots sharing (orgId, assetId,
    timestamp), which the unique index rules out, and a snapshot's objects sharing a name
    keep the order they were read in.
    ModuleNotFoundError without the native decoder.
    """
    shape = arrow_schema(with_id=True)
    root, refused = _decode(batches, shape, sort=True)
    rows = root["rows"]
    columns = {f.name: _leaf(root["leaves"][f.name], f.type, rows) for f in shape if f.name in root["leaves"]}
    repeated: list[tuple[Table, Columns]] = []
    for table in schema.TABLES:
        parent = _node_at(root, table.parent)
        if not table.repeated:
            node = parent["children"][table.key]["node"]
            for name, kind, _ in table.fields:
                columns[column_name(table, name)] = _leaf(node["leaves"][name], _arrow_type(kind), rows)
            continue
        child = parent["children"][table.key]
        if table.sum_prefix:
            for name, _, _ in table.fields:
                sums = child["sums"][name]
                columns[f"{table.sum_prefix}_{snake(name)}"] = pa.Array.from_buffers(
                    pa.float64(), rows, [_buffer(sums["validity"]), pa.py_buffer(sums["values"])])
        repeated.append((table, child))
    order = _order(root)
    snapshots = _gathered(pa.table(columns), order)
    keys = snapshots.select(KEYS)
    items = {table.frame: _native_items(keys, order.to_numpy(), child, table) for table, child in repeated}
    return Frames(snapshots, items["disks"], items["interfaces"]), refused


def _native_items(keys: pl.DataFrame, order: np.ndarray, child: Columns, table: Table) -> pl.DataFrame:
    """The frame of a repeated table: one row per object, keyed by its snapshot's KEYS
    (`keys`: the snapshots' in the frames' order, `order` their rows' indices as decoded)."""
    node = child["node"]
    own = {table.item: _leaf(node["leaves"]["name"], pa.string(), node["rows"])}
    for name, kind, _ in table.fields:
        own[snake(name)] = _leaf(node["leaves"][name], _arrow_type(kind), node["rows"])
    objects = _gathered(pa.table(own), _order(node))
    # The objects come in their snapshots' order, so their keys are the sorted snapshots'
    # repeated per object: read in order, not gathered from all over a part (which misses
    # the CPU's caches once a part outgrows them).
    per_snapshot = np.diff(np.frombuffer(child["offsets"], dtype=np.int32))[order]
    repeated = pl.Series(np.repeat(np.arange(len(per_snapshot), dtype=np.uint32), per_snapshot))
    return pl.concat([keys.select(pl.all().gather(repeated)), objects], how="horizontal")
