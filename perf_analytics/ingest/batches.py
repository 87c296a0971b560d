"""NDJSON lines parsed, checked and encoded a block at a time, without a dict per record.

A block of lines is parsed by Arrow's JSON reader into columns of the contract's shape
(`schema.payload_arrow_schema`), checked as columns (`schema.conforming_rows`) and encoded
to BSON as columns (`bsonbatch.encode_rows`). That covers the records an agent sends as it
should. Any other line (a field outside the contract, a type or value the columns do not
vouch for, a line that is not JSON) is left to the per-record path, which parses it with
orjson and accepts or rejects it with `validate_snapshot`, so its reason is the same as it
always was. A block Arrow cannot read as a whole is halved until the readable parts are
found; when even halving finds nothing readable, the next blocks skip the attempt for a
while (an archive of another shape costs the per-record path plus little).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.json as pj

from perf_analytics.ingest.bsonbatch import TooWide, encode_rows
from perf_analytics.schema import DATE_KEY, conforming_rows, payload_arrow_schema
from perf_analytics.store import MAX_DOCUMENT_BYTES

_SMALLEST = 16  # lines: a smaller part Arrow cannot read goes to the per-record path whole
_REST_BLOCKS = 8  # blocks to leave to the per-record path after one with nothing readable
_WRAPPED = b'{"' + DATE_KEY.encode() + b'"'


LastSeen = dict[tuple[str, str], list[int]]  # (org, asset) -> [newest epoch ms, documents]


def add_seen(seen: LastSeen, org: str, asset: str, millis: int, documents: int = 1) -> None:
    """Count `documents` of an asset, the newest at `millis`, into `seen`."""
    entry = seen.get((org, asset))
    if entry is None:
        seen[org, asset] = [millis, documents]
    else:
        entry[0] = max(entry[0], millis)
        entry[1] += documents


@dataclass
class Encoded:
    """What a block's batch path produced: for each line vouched for (`vouched[i]`), its
    document, in line order, and per asset the newest timestamp and count of them."""

    vouched: Any  # numpy bool per line
    documents: list[bytes] = field(default_factory=list)
    last_seen: LastSeen = field(default_factory=dict)


class BlockEncoder:
    """Encodes blocks of NDJSON lines; remembers when recent blocks had nothing readable."""

    def __init__(self, org_id: str | None) -> None:
        self.org_id = org_id
        self._resting = 0
        self._schemas = {wrapped: payload_arrow_schema(wrapped_dates=wrapped) for wrapped in (False, True)}

    def encode(self, lines: list[bytes]) -> Encoded:
        """Documents for the lines of `lines` that the columns vouch for (see the module)."""
        # Only lines that open an object reach Arrow: its JSON reader (pyarrow 25) crashes
        # the process on a line that is `null`.
        objects = [i for i, line in enumerate(lines) if line.startswith(b"{") or line.lstrip().startswith(b"{")]
        if len(objects) < len(lines):
            part = self.encode([lines[i] for i in objects]) if objects else Encoded(np.zeros(0, dtype=bool))
            result = Encoded(np.zeros(len(lines), dtype=bool), part.documents, part.last_seen)
            result.vouched[np.asarray(objects, dtype=np.int64)] = part.vouched
            return result
        result = Encoded(np.zeros(len(lines), dtype=bool))
        if self._resting:
            self._resting -= 1
            return result
        for start, table in self._readable(lines, 0, len(lines)):
            self._encode_part(result, start, table)
        if len(lines) >= _SMALLEST and not result.vouched.any():
            self._resting = _REST_BLOCKS
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

    def _encode_part(self, result: Encoded, start: int, table: Any) -> None:
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
        result.vouched[start + rows] = True
        result.documents.extend(documents)
        keys = pa.table({"org": table.column("orgId"), "asset": table.column("assetId"), "millis": millis})
        per_asset = keys.group_by(["org", "asset"]).aggregate([("millis", "max"), ("millis", "count")])
        for org, asset, newest, count in zip(*(per_asset.column(c).to_pylist() for c in
                                              ("org", "asset", "millis_max", "millis_count")), strict=True):
            add_seen(result.last_seen, org, asset, newest, count)
