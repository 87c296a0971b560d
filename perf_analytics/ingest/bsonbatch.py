"""BSON documents for a whole batch of payloads at once, from their Arrow columns: the
loader's block path where the native line encoder (`batches.py`) is not built.

Encoding one Python dict per snapshot costs more than parsing it. For rows that
`schema.conforming_rows` vouched for, the stored document is a fixed function of the
columns (the contract's fields in stored order, `_id` first, doubles for metrics, int32
for counts, a UTC date), so it is written with numpy into one buffer: each field's bytes go
to every row at once, at offsets computed from the sizes of what comes before it. The
bytes are those `bson.encode` gives for the dict `validate_snapshot` returns for the same
payload written in the contract's order (a test compares them; a payload whose keys come
in another order is stored with the same fields and values in the contract's order).
`ArrowBlocks` (at the end) reads NDJSON lines into those columns.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from perf_analytics.ingest.batches import OBJECT_IDS, Encoded, add_seen
from perf_analytics.schema import (
    ARRAY_KINDS,
    COUNT,
    DATE_KEY,
    ID_FIELDS,
    PERFORMANCE_DATA,
    Table,
    children,
    conforming_rows,
    payload_arrow_schema,
)
from perf_analytics.store import MAX_DOCUMENT_BYTES

Ints = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]

_BLOCK_ROWS = 256
PADDED_BYTES = 64 << 20  # the most a batch's padded matrix may take (its mask as much again)
_DOUBLE, _STRING, _DOCUMENT, _ARRAY, _OBJECT_ID, _DATE, _INT32 = 0x01, 0x02, 0x03, 0x04, 0x07, 0x09, 0x10


def _bytes_of(values: Any, dtype: str) -> Any:
    """Little-endian bytes of `values` as a (rows, width) uint8 matrix."""
    array = np.ascontiguousarray(values, dtype=dtype)
    return array.view(np.uint8).reshape(len(array), array.itemsize)


class _Value:
    """A BSON value for each of `n` rows; `present` says which rows have one.

    Values are laid out in a padded matrix, one row per document and a fixed column range
    per value (as wide as its widest row), with a mask of the bytes that are real; the
    documents are the masked bytes, row after row. Every write is then a column slice of
    all rows at once (a strided copy), and one masked copy packs the rows.
    """

    type_code: int
    present: Mask

    def sizes(self) -> Ints:
        """The value's size in bytes in each row (0 where absent)."""
        raise NotImplementedError

    def width(self) -> int:
        """Columns the value takes in the padded matrix."""
        raise NotImplementedError

    def fill(self, out: Any, real: Any, col: int) -> None:
        """Write the value at columns `col`... of `out`; mark its real bytes in `real`."""
        raise NotImplementedError


class _Fixed(_Value):
    """Doubles, int32s, dates (int64 ms) or ObjectIds: the same width in every row."""

    def __init__(self, type_code: int, data: Any, present: Mask) -> None:
        self.type_code, self.data, self.present = type_code, data, present

    def sizes(self) -> Ints:
        return np.where(self.present, self.data.shape[1], 0)

    def width(self) -> int:
        return int(self.data.shape[1])

    def fill(self, out: Any, real: Any, col: int) -> None:
        end = col + self.width()
        out[:, col:end] = self.data
        real[:, col:end] = self.present[:, None]


class _String(_Value):
    type_code = _STRING

    def __init__(self, array: Any, present: Mask) -> None:
        array = array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array
        n = len(array)
        offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[array.offset : array.offset + n + 1].astype(np.int64)
        data = array.buffers()[2]
        self.starts = offsets[:-1]
        self.lengths = np.where(present, offsets[1:] - offsets[:-1], 0)
        self.data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(1, dtype=np.uint8)
        self.present = present
        self.longest = int(self.lengths.max()) if n else 0

    def sizes(self) -> Ints:
        return np.where(self.present, self.lengths + 5, 0)

    def width(self) -> int:
        return self.longest + 5

    def fill(self, out: Any, real: Any, col: int) -> None:
        out[:, col : col + 4] = _bytes_of(self.lengths + 1, "<i4")
        real[:, col : col + 4] = self.present[:, None]
        span = np.arange(self.longest + 1)
        inside = span[None, :] < self.lengths[:, None]
        picked = np.where(inside, self.starts[:, None] + span[None, :], 0)
        text = col + 4
        out[:, text : text + self.longest + 1] = np.where(inside, self.data[picked], 0)
        real[:, text : text + self.longest + 1] = (span[None, :] <= self.lengths[:, None]) & self.present[:, None]


class _Document(_Value):
    type_code = _DOCUMENT

    def __init__(self, fields: list[tuple[bytes, _Value]], present: Mask) -> None:
        self.fields, self.present = fields, present
        self._sizes: Ints | None = None

    def sizes(self) -> Ints:
        if self._sizes is None:
            total = np.where(self.present, 5, 0)
            for key, value in self.fields:
                total = total + np.where(value.present, 2 + len(key) + value.sizes(), 0)
            self._sizes = total
        return self._sizes

    def width(self) -> int:
        return 5 + sum(2 + len(key) + value.width() for key, value in self.fields)

    def fill(self, out: Any, real: Any, col: int) -> None:
        out[:, col : col + 4] = _bytes_of(self.sizes(), "<i4")
        real[:, col : col + 4] = self.present[:, None]
        col += 4
        for key, value in self.fields:
            head = len(key) + 2
            out[:, col : col + head] = np.frombuffer(bytes([value.type_code]) + key + b"\0", dtype=np.uint8)
            real[:, col : col + head] = value.present[:, None]
            value.fill(out, real, col + head)
            col += head + value.width()
        out[:, col] = 0
        real[:, col] = self.present


class _Array(_Document):
    """A BSON array: a document whose keys are "0", "1", ...; `slots[j]` holds each row's
    j-th item (absent where the row's list is shorter)."""

    type_code = _ARRAY

    def __init__(self, slots: list[_Value], present: Mask) -> None:
        super().__init__([(str(j).encode(), slot) for j, slot in enumerate(slots)], present)


def _slots(lists: Any, present: Mask) -> tuple[Any, list[tuple[Any, Mask]]]:
    """The items of each row's list, by place: for place j, the indexes into the lists'
    flattened items of each row's j-th item (null where the row has none), and the mask."""
    flat = pc.list_flatten(lists)
    n = len(lists)
    if not len(flat):
        return flat, []
    parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    counts = np.bincount(parents, minlength=n)
    first = np.cumsum(counts) - counts
    slots = []
    for j in range(int(counts.max())):
        has = present & (counts > j)
        index = pa.array(np.where(has, first + j, 0), mask=~has)
        slots.append((index, has))
    return flat, slots


def _doubles(array: Any, present: Mask) -> _Fixed:
    values = _numbers(array)
    return _Fixed(_DOUBLE, _bytes_of(values, "<f8"), present)


def _numbers(array: Any) -> Any:
    """A float64 Arrow array as numpy, nulls (absent values, never written) as 0."""
    return (array.fill_null(0.0) if array.null_count else array).to_numpy(zero_copy_only=False)


def _valid(array: Any) -> Mask:
    if not array.null_count:
        return np.ones(len(array), dtype=bool)
    return np.asarray(array.is_valid().to_numpy(zero_copy_only=False), dtype=bool)


def _section(table: Table | None, path: str, array: Any, present: Mask) -> _Document:
    """The stored object of `table` (performanceData when None) for each row of `array`."""
    fields: list[tuple[bytes, _Value]] = []
    if table is not None and table.named:
        fields.append((b"name", _String(pc.struct_field(array, "name"), present)))
    for name, kind, _ in table.fields if table is not None else ():
        child = pc.struct_field(array, name)
        valid = present & _valid(child)
        if kind in ARRAY_KINDS:
            flat, slots = _slots(child, valid)
            fields.append((name.encode(), _Array([_doubles(flat.take(i), has) for i, has in slots], valid)))
        elif kind == COUNT:
            counts = _numbers(child)
            fields.append((name.encode(), _Fixed(_INT32, _bytes_of(counts.astype(np.int32), "<i4"), valid)))
        else:
            fields.append((name.encode(), _doubles(child, valid)))
    for sub in children(path):
        child = pc.struct_field(array, sub.key)
        valid = present & _valid(child)
        if sub.repeated:
            flat, slots = _slots(child, valid)
            items: list[_Value] = [_section(sub, sub.path, flat.take(i), has) for i, has in slots]
            fields.append((sub.key.encode(), _Array(items, valid)))
        else:
            fields.append((sub.key.encode(), _section(sub, sub.path, child, valid)))
    return _Document(fields, present)


def _object_ids(n: int) -> Any:
    """`n` new ObjectIds as a (n, 12) uint8 matrix, from the loader's one allocator."""
    prefix, first = OBJECT_IDS.reserve(n)
    ids = np.empty((n, 12), dtype=np.uint8)
    ids[:, :9] = np.frombuffer(prefix, dtype=np.uint8)
    counters = (first + np.arange(n, dtype=np.int64)) % (1 << 24)
    ids[:, 9:] = counters.astype(">u4").view(np.uint8).reshape(n, 4)[:, 1:]
    return ids


@dataclass
class Packed:
    """Documents end to end in `data`; document i is data[ends[i] - sizes[i]:ends[i]]."""

    data: bytes
    sizes: Ints
    ends: Ints

    def documents(self) -> list[bytes]:
        data = self.data
        return [data[e - s : e] for s, e in zip(self.sizes.tolist(), self.ends.tolist(), strict=True)]


class TooWide(Exception):
    """The rows padded to the widest would take more than the budget; `sizes` are the
    rows' document sizes, for the caller to set the largest aside."""

    def __init__(self, sizes: Ints) -> None:
        super().__init__("rows too unequal to encode together")
        self.sizes = sizes


def encode_rows(batch: Any, millis: Any, *, budget: int = PADDED_BYTES) -> Packed:
    """The BSON documents to store for every row of `batch` (a pyarrow Table of
    `payload_arrow_schema` whose rows `conforming_rows` vouched for), each with a new
    `_id`; `millis` are the rows' timestamps in epoch milliseconds.

    Every row is padded to the widest, so one row with a list far longer than the others'
    would make the batch's matrix huge: when rows times width exceed `budget` bytes,
    nothing is encoded and TooWide is raised.
    """
    n = batch.num_rows
    everyone = np.ones(n, dtype=bool)
    fields: list[tuple[bytes, _Value]] = [(b"_id", _Fixed(_OBJECT_ID, _object_ids(n), everyone))]
    fields += [(f.encode(), _String(batch.column(f), everyone)) for f in ID_FIELDS]
    fields.append((b"timestamp", _Fixed(_DATE, _bytes_of(millis, "<i8"), everyone)))
    fields.append((b"timeWindow", _String(batch.column("timeWindow"), everyone)))
    perf = batch.column(PERFORMANCE_DATA).combine_chunks()
    fields.append((PERFORMANCE_DATA.encode(), _section(None, PERFORMANCE_DATA, perf, everyone)))
    document = _Document(fields, everyone)
    if n * document.width() > budget:
        raise TooWide(document.sizes())
    # Filled column by column, so stored column-major (each write is one contiguous run),
    # then turned row-major once to pack each row's real bytes in order.
    out = np.empty((n, document.width()), dtype=np.uint8, order="F")
    real = np.empty(out.shape, dtype=bool, order="F")
    document.fill(out, real, 0)
    sizes = document.sizes()
    # Turned row-major a block of rows at a time: a block fits in the cache, the whole does not.
    packed = [
        np.ascontiguousarray(out[i : i + _BLOCK_ROWS])[np.ascontiguousarray(real[i : i + _BLOCK_ROWS])].tobytes()
        for i in range(0, n, _BLOCK_ROWS)
    ]
    return Packed(b"".join(packed), sizes, np.cumsum(sizes))


# -- blocks of NDJSON lines through Arrow (where the native line encoder is not built) ----

_SMALLEST = 16  # lines: a smaller part Arrow cannot read goes to the per-record path whole
_REST_BLOCKS = 8  # blocks to leave to the per-record path after one with nothing readable
_WRAPPED = b'{"' + DATE_KEY.encode() + b'"'


class ArrowBlocks:
    """Blocks of NDJSON lines parsed by Arrow's JSON reader into columns of the contract's
    shape (`schema.payload_arrow_schema`), checked as columns (`schema.conforming_rows`)
    and encoded with `encode_rows`. A block Arrow cannot read as a whole is halved until
    the readable parts are found; when even halving finds nothing readable, the next
    blocks skip the attempt for a while (an archive of another shape costs the per-record
    path plus little)."""

    def __init__(self, org_id: str | None) -> None:
        self.org_id = org_id
        self._resting = 0
        self._schemas = {wrapped: payload_arrow_schema(wrapped_dates=wrapped) for wrapped in (False, True)}

    def encode(self, lines: list[bytes]) -> Encoded:
        """Documents for the lines of `lines` that the columns vouch for."""
        vouched = np.zeros(len(lines), dtype=bool)
        # Only lines that open an object reach Arrow: its JSON reader (pyarrow 25) crashes
        # the process on a line that is `null`.
        objects = np.asarray([i for i, line in enumerate(lines) if line.lstrip().startswith(b"{")], dtype=np.int64)
        result = Encoded([])
        if len(objects) and self._resting:
            self._resting -= 1
        elif len(objects):
            part = np.zeros(len(objects), dtype=bool)
            readable = [lines[i] for i in objects]
            for start, table in self._readable(readable, 0, len(readable)):
                self._encode_part(result, part, start, table)
            if len(readable) >= _SMALLEST and not part.any():
                self._resting = _REST_BLOCKS
            vouched[objects] = part
        result.vouched = vouched.tolist()
        return result

    def _readable(self, lines: list[bytes], start: int, end: int) -> list[tuple[int, Any]]:
        """(first line, table) of the parts of lines[start:end] Arrow reads into the
        contract's shape exactly, one row per line."""
        data = b"".join(lines[start:end])
        schema = self._schemas[_WRAPPED in data]
        try:
            table = pj.read_json(
                io.BytesIO(data),
                read_options=pj.ReadOptions(use_threads=False, block_size=len(data) + 1),
                parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="infer"),
            )
        except pa.ArrowInvalid:
            table = None
        if table is not None and table.num_rows == end - start and table.schema.equals(schema):
            return [(start, table)]
        if end - start <= _SMALLEST:
            return []
        middle = (start + end) // 2
        return self._readable(lines, start, middle) + self._readable(lines, middle, end)

    def _encode_part(self, result: Encoded, vouched: Any, start: int, table: Any) -> None:
        ok, millis = conforming_rows(table, org_id=self.org_id)
        if not ok.any():
            return
        if not ok.all():
            table, millis = table.filter(pa.array(ok)), millis[ok]
        rows = np.flatnonzero(ok)
        try:
            encoded = encode_rows(table, millis)
        except TooWide as exc:
            # A row far larger than the rest (a list of thousands) goes one by one.
            typical = exc.sizes <= 2 * np.median(exc.sizes)
            table, millis, rows = table.filter(pa.array(typical)), millis[typical], rows[typical]
            try:
                encoded = encode_rows(table, millis)
            except TooWide:
                return
        small = encoded.sizes <= MAX_DOCUMENT_BYTES  # a larger one is refused one by one, with its size
        rows = rows[small]
        documents = encoded.documents()
        if not small.all():
            documents = [d for d, keep in zip(documents, small.tolist(), strict=True) if keep]
            table, millis = table.filter(pa.array(small)), millis[small]
        vouched[start + rows] = True
        result.documents.extend(documents)
        keys = pa.table({"org": table.column("orgId"), "asset": table.column("assetId"), "millis": millis})
        per_asset = keys.group_by(["org", "asset"]).aggregate([("millis", "max"), ("millis", "count")])
        for org, asset, newest, count in zip(*(per_asset.column(c).to_pylist() for c in
                                              ("org", "asset", "millis_max", "millis_count")), strict=True):
            add_seen(result.last_seen, org, asset, newest, count)
