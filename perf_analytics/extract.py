"""Windowed extraction: one org's snapshots of [start, end) as Arrow, flattened into Polars.

The server filters (orgId, optional assetIds, time range) and projects (the fields of the
Arrow schema in `frames.py`); the raw BSON batches of `find_raw_batches` are decoded
without a Python dict per document, by the native decoder (`native/`, built by `make
setup`; the three frames straight from one pass over each document) or, where it is not
installed, by pymongoarrow's builder into the nested schema, flattened by Polars, after
pymongo's decoder has checked each batch is valid BSON (the builder reads a damaged
document's first elements and leaves the rest missing). Both read the same types and
refuse the same documents (`frames.raw_decoder()` says which is in use);
`frames_from_raw_batches` decodes captured batches without a server.

Memory is bounded by parts: each query's documents are cut client-side, at document
boundaries in the raw batches, into Arrow tables of at most `chunk_rows` documents, and
each table is flattened into frames on its own. Which queries run depends on the server:

- with range pushdown (MongoDB), one query per time slice (`slice_length`, one day by
  default), each read in parts of at most `chunk_rows`;
- without it (FerretDB 1.x reads every document of the org for each query), ONE query for
  the whole window, read in parts of at most `chunk_rows`.

No server-side sort: FerretDB 1.24 sorts by loading every matching document into memory
(`SortIterator` consumes the whole cursor), so parts of one query come in the server's
natural order, not time order. Each part is sorted by (orgId, assetId, timestamp) within
itself; `extract_window` concatenates the parts and sorts the whole window, and
`sink_window_parquet` (`perf-analytics extract`) writes them to Parquet as they come.

A document written by other code with an off-type field (a metric stored as a string,
an `_id` that is no ObjectId, say) is refused: the native decoder leaves it out and says
which; pymongoarrow refuses the whole part it is in, which is then built again by halving
it until the refused documents are isolated. Either way they are left out, counted and
reported with their _id and kind for `doctor --fix`, the rest of the part is kept. Only
refused documents are left out (an integer metric is read as a double), so what is
skipped does not depend on where the parts are cut. A refused document
that is none of the kinds `doctor` repairs stops the read with an ExtractError. Documents
whose timestamp is not a date cannot fall in any window (a date range never matches a
string); `doctor` counts and repairs those.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import bson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.errors import InvalidBSON
from pymongoarrow.api import Schema
from pymongoarrow.context import PyMongoArrowContext
from pymongoarrow.types import ObjectIdType

from perf_analytics.atomic import atomic_path
from perf_analytics.errors import ConfigError, ExtractError, InvalidArgument
from perf_analytics.frames import (
    KEYS,
    Decoder,
    Frames,
    arrow_schema,
    empty_frames,
    frames_from_arrow,
    native_frames_from_raw,
    raw_decoder,
)
from perf_analytics.schema import SNAPSHOTS, Problem, off_type_kinds
from perf_analytics.store import Db, Doc, probe_capabilities

# One query per slice on servers with range pushdown. Servers without it (FerretDB 1.x)
# read all of the org's documents for every query, so there the whole window is one
# query (see `_slice_length`), cut into parts client-side.
DEFAULT_SLICE = timedelta(days=1)
DEFAULT_CHUNK_ROWS = 100_000  # documents per yielded part: what bounds memory
# Documents per server batch. FerretDB 1.24 takes batchSize literally (no 16 MiB cap on a
# reply) and answers a getMore without one with 250 documents; a few thousand projected
# snapshots keep each reply to a few MiB on both servers.
RAW_BATCH_DOCS = 2_000
MAX_REPORTED = 100  # skipped documents listed by _id; the count is complete

_DOC_LENGTH = struct.Struct("<i")  # every BSON document starts with its length in bytes


@dataclass
class Extraction:
    frames: Frames
    skipped: list[Problem] = field(default_factory=list)  # left out, and why (for `doctor --fix`)
    skipped_count: int = 0  # all skipped documents (the list keeps the first MAX_REPORTED)


def _mongo_schema() -> Schema:
    fields = {f.name: f.type for f in arrow_schema(with_id=False)}
    return Schema({"_id": ObjectIdType(), **fields})


def _check_window(start: datetime, end: datetime, slice_length: timedelta | None, chunk_rows: int) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidArgument("window bounds must be timezone-aware (UTC)")
    if end <= start:
        raise InvalidArgument(f"empty window: end {end.isoformat()} is not after start {start.isoformat()}")
    if slice_length is not None and slice_length <= timedelta(0):
        raise InvalidArgument("slice length must be positive")
    if chunk_rows <= 0:
        raise InvalidArgument("chunk rows must be a positive number of snapshots")


def _slice_length(db: Db, start: datetime, end: datetime, asked: timedelta | None) -> timedelta:
    if asked is not None:
        return asked
    return DEFAULT_SLICE if probe_capabilities(db).range_pushdown else max(end - start, DEFAULT_SLICE)


def _slices(start: datetime, end: datetime, length: timedelta) -> Iterator[tuple[datetime, datetime]]:
    lo = start
    while lo < end:
        hi = min(lo + length, end)
        yield lo, hi
        lo = hi


def _query(org_id: str | None, lo: datetime, hi: datetime, asset_ids: Sequence[str] | None) -> Doc:
    query: Doc = {} if org_id is None else {"orgId": org_id}
    query["timestamp"] = {"$gte": lo, "$lt": hi}
    if asset_ids:
        query["assetId"] = {"$in": list(asset_ids)}
    return query


def _step(batch: bytes, offset: int, limit: int) -> tuple[int, int]:
    """Step over at most `limit` documents of a raw batch from `offset`: (new offset, count).

    Reads only the length prefixes; nothing is decoded.
    """
    count, size = 0, len(batch)
    while count < limit and offset < size:
        offset += _DOC_LENGTH.unpack_from(batch, offset)[0]
        count += 1
    return offset, count


def _documents(pieces: Sequence[bytes]) -> list[bytes]:
    """The documents of raw BSON pieces, one bytes object each (only when a part is refused)."""
    docs = []
    for piece in pieces:
        offset = 0
        while offset < len(piece):
            end = offset + _DOC_LENGTH.unpack_from(piece, offset)[0]
            docs.append(piece[offset:end])
            offset = end
    return docs


def _arrow(pieces: Sequence[bytes], schema: Schema, codec: CodecOptions[Any]) -> pa.Table:
    """Raw BSON through pymongoarrow's builder, as `find_arrow_all` does with its batches."""
    context = PyMongoArrowContext(schema, codec_options=codec)
    for piece in pieces:
        context.process_bson_stream(piece)
    table: pa.Table = context.finish()
    return table


def _bisect(
    docs: list[bytes], schema: Schema, codec: CodecOptions[Any]
) -> tuple[list[pa.Table], list[tuple[bytes, str]]]:
    """Documents pymongoarrow refused as a whole: tables of the readable runs, in order,
    and each refused document with pymongoarrow's reason.

    A refused build leaves the builder half-filled, so each half gets a builder of its
    own; k refused documents among n cost about k * log2(n) extra builds.
    """
    if len(docs) == 1:
        try:
            return [_arrow(docs, schema, codec)], []
        except TypeError as exc:
            return [], [(docs[0], str(exc))]
    tables: list[pa.Table] = []
    refused: list[tuple[bytes, str]] = []
    mid = len(docs) // 2
    for half in (docs[:mid], docs[mid:]):
        try:
            tables.append(_arrow(half, schema, codec))
        except TypeError:
            more_tables, more_refused = _bisect(half, schema, codec)
            tables += more_tables
            refused += more_refused
    return tables, refused


def _leading_id(raw: bytes) -> str | None:
    """The `_id` of a damaged document when it is the first element, as servers write it,
    and an ObjectId or a short string (`_id=...`); None when it cannot be read."""
    if len(raw) >= 21 and raw[4] == 0x07 and raw[5:9] == b"_id\x00":
        return f"_id={raw[9:21].hex()}"
    if len(raw) >= 13 and raw[4] == 0x02 and raw[5:9] == b"_id\x00":
        size = _DOC_LENGTH.unpack_from(raw, 9)[0]
        if 0 < size <= 200 and len(raw) >= 13 + size and raw[12 + size] == 0:
            try:
                return f"_id={raw[13 : 12 + size].decode()!r}"
            except UnicodeDecodeError:
                return None
    return None


def refused_problem(raw: bytes, codec: CodecOptions[Any], reason: str = "") -> Problem:
    """The Problem record of a document the contract's types refused (`reason`: why, if
    known), naming its off-type kinds; ExtractError when it shows none of the kinds
    `doctor --fix` repairs, since leaving it out silently would hide a bug, or when it is
    not BSON at all (a damaged document no repair can read)."""
    try:
        doc = bson.decode(raw, codec_options=codec)
    except (InvalidBSON, ValueError) as exc:
        which = _leading_id(raw)
        raise ExtractError(
            f"a stored snapshot{'' if which is None else f' ({which})'} is not valid BSON ({reason or exc}): "
            "the server returned a damaged document, which `doctor --fix` cannot repair"
        ) from None
    kinds = off_type_kinds(doc)
    if not kinds:
        why = f"({reason})" if reason else "with the contract's types"
        raise ExtractError(
            f"snapshot {doc.get('_id')} cannot be read {why} and is none of the "
            "off-type kinds `doctor --fix` repairs"
        )
    return Problem(doc.get("_id"), ", ".join(kinds))


# Structure only: any date is read as a number of milliseconds, so none is out of range.
_CHECK: CodecOptions[Any] = CodecOptions(datetime_conversion=DatetimeConversion.DATETIME_MS)


def _check_bson(pieces: Sequence[bytes], codec: CodecOptions[Any]) -> None:
    """ExtractError (`refused_problem`'s) for the first document of `pieces` that is not
    valid BSON (an unknown element type, a string that is not UTF-8, a length or
    terminator out of place).

    pymongoarrow's builder stops reading a document at an element it cannot step over and
    keeps what it read, so a damaged document would come out with some metrics missing
    and nothing said; the native decoder refuses it. Costs about 22 µs a snapshot (pymongo's
    decoder), on the path used only where the native decoder is not built.
    """
    for piece in pieces:
        try:
            bson.decode_all(piece, _CHECK)
        except (InvalidBSON, ValueError) as exc:
            for raw in _documents([piece]):
                try:
                    bson.decode(raw, _CHECK)
                except (InvalidBSON, ValueError) as why:
                    refused_problem(raw, codec, str(why))
            raise ExtractError(f"a stored batch is not valid BSON ({exc})") from None


def _build(pieces: list[bytes], schema: Schema, codec: CodecOptions[Any]) -> tuple[pa.Table, list[Problem]]:
    """One part as Arrow; documents pymongoarrow refuses are isolated, left out and reported."""
    _check_bson(pieces, codec)
    try:
        return _arrow(pieces, schema, codec), []
    except TypeError:
        tables, refused = _bisect(_documents(pieces), schema, codec)
    skipped = [refused_problem(raw, codec, reason) for raw, reason in refused]
    return (pa.concat_tables(tables) if tables else _arrow([], schema, codec)), skipped


def _decoder(asked: Decoder | None) -> Decoder:
    if asked is None:
        return raw_decoder()
    if asked not in ("native", "pymongoarrow"):
        raise InvalidArgument(f"unknown decoder {asked!r}: use 'native' or 'pymongoarrow'")
    if asked == "native" and raw_decoder() != "native":
        raise ConfigError("the native decoder is not installed: `make setup` builds it")
    return asked


def frames_from_raw_batches(
    batches: Sequence[bytes],
    *,
    decoder: Decoder | None = None,
    codec: CodecOptions[Any] | None = None,
) -> Extraction:
    """The three frames of the documents of raw BSON `batches` (as `find_raw_batches`
    returns them), each sorted by (orgId, assetId, timestamp), plus what was skipped.

    `decoder`: "native" or "pymongoarrow" (default: the native one when installed); both
    give equal frames and skip the same documents (off-type fields, reported for
    `doctor --fix`; one that `doctor` cannot repair raises ExtractError). `codec` decodes
    a skipped document to report it (the collection's codec options).

    Raises:
        InvalidArgument: an unknown `decoder`.
        ConfigError: the native decoder is asked for but not built.
        ExtractError: a document that `doctor` cannot repair.
    """
    codec = codec or CodecOptions()
    if _decoder(decoder) == "native":
        frames, refused = native_frames_from_raw(batches)
        docs = _documents(batches) if refused else []
        skipped = [refused_problem(docs[i], codec, reason) for i, reason in refused]
    else:
        table, skipped = _build(list(batches), _mongo_schema(), codec)
        frames = frames_from_arrow(table)
        del table  # the frames hold their own copy
    return Extraction(frames, skipped[:MAX_REPORTED], len(skipped))


def _read_parts(db: Db, query: Doc, schema: Schema, chunk_rows: int) -> Iterator[Extraction]:
    """One query's documents (one server cursor) as parts of at most `chunk_rows` snapshots.

    At least one part, empty when nothing matched. Held at a time: the server batch
    being cut (at most RAW_BATCH_DOCS documents), the raw BSON of the part being
    gathered, and the part the consumer has.
    """
    collection = db[SNAPSHOTS]
    codec = collection.codec_options
    pieces: list[bytes] = []
    rows = 0
    produced = False
    # The projection `find_arrow_all` sends for this schema: exactly its fields. Where it
    # costs the server more than it saves (FerretDB), whole documents come and the builder
    # reads only the schema's fields from them.
    projection = schema._get_projection() if probe_capabilities(db).cheap_projection else None
    cursor = collection.find_raw_batches(query, projection=projection, batch_size=min(chunk_rows, RAW_BATCH_DOCS))
    with cursor:
        for raw in cursor:
            batch: bytes = raw  # type: ignore[assignment]  # raw batches are bytes, not documents
            offset = 0
            while offset < len(batch):
                end, count = _step(batch, offset, chunk_rows - rows)
                pieces.append(batch[offset:end])  # a whole batch is the batch itself, not a copy
                rows += count
                offset = end
                if rows == chunk_rows:
                    part = frames_from_raw_batches(pieces, codec=codec)
                    pieces, rows = [], 0  # the raw BSON goes before the consumer gets the part
                    produced = True
                    yield part
    if rows or not produced:
        yield frames_from_raw_batches(pieces, codec=codec)


def _iter(
    db: Db,
    org_id: str | None,
    start: datetime,
    end: datetime,
    asset_ids: Sequence[str] | None,
    asked: timedelta | None,
    chunk_rows: int,
) -> Iterator[Extraction]:
    """Checks the window now (not at the first part), then reads it lazily."""
    _check_window(start, end, asked, chunk_rows)
    return _parts(db, org_id, start, end, asset_ids, _slice_length(db, start, end, asked), chunk_rows)


def _parts(
    db: Db,
    org_id: str | None,
    start: datetime,
    end: datetime,
    asset_ids: Sequence[str] | None,
    slice_length: timedelta,
    chunk_rows: int,
) -> Iterator[Extraction]:
    schema = _mongo_schema()
    for lo, hi in _slices(start, end, slice_length):
        yield from _read_parts(db, _query(org_id, lo, hi, asset_ids), schema, chunk_rows)


def iter_window(
    db: Db,
    org_id: str,
    start: datetime,
    end: datetime,
    *,
    asset_ids: Sequence[str] | None = None,
    slice_length: timedelta | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Iterator[Extraction]:
    """`org_id`'s snapshots of [start, end) in parts of at most `chunk_rows` snapshots.

    With range pushdown (MongoDB) the window is read one time slice at a time
    (`slice_length`, default one day): slices come in time order, a slice of more than
    `chunk_rows` snapshots comes as several parts, and every slice yields at least one
    part (empty if it holds nothing). Without it (FerretDB 1.x) `slice_length` defaults
    to the whole window, read with one query and cut into parts in the server's natural
    order, not time order. Each part's frames are sorted by (orgId, assetId, timestamp)
    within the part; sort the concatenation for the window's order (`extract_window`
    does). Bad windows raise InvalidArgument here, not at the first part.

    Raises:
        InvalidArgument: a naive or empty window, or a `slice_length`/`chunk_rows` below 1.
        ExtractError: a snapshot that `doctor` cannot repair.
    """
    if not org_id:
        raise InvalidArgument("an org id is required (extract_window_all_orgs reads every org)")
    return _iter(db, org_id, start, end, asset_ids, slice_length, chunk_rows)


def extract_window(
    db: Db,
    org_id: str,
    start: datetime,
    end: datetime,
    *,
    asset_ids: Sequence[str] | None = None,
    slice_length: timedelta | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Extraction:
    """`org_id`'s snapshots of [start, end) as three sorted frames, plus what had to be skipped.

    The whole window is held in memory; `iter_window` reads it in bounded parts.

    Raises:
        InvalidArgument: no `org_id`, a naive or empty window, or `chunk_rows` below 1.
        ExtractError: a snapshot that `doctor` cannot repair.
    """
    if not org_id:
        raise InvalidArgument("an org id is required (extract_window_all_orgs reads every org)")
    return _combine(_iter(db, org_id, start, end, asset_ids, slice_length, chunk_rows))


def extract_window_all_orgs(
    db: Db,
    start: datetime,
    end: datetime,
    *,
    slice_length: timedelta | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Extraction:
    """Admin read across tenants: every org's snapshots of [start, end).

    Raises:
        InvalidArgument: a naive or empty window.
        ExtractError: a snapshot that `doctor` cannot repair.
    """
    return _combine(_iter(db, None, start, end, None, slice_length, chunk_rows))


def _combine(parts: Iterator[Extraction]) -> Extraction:
    frames, skipped, count = [], [], 0
    for part in parts:
        frames.append(part.frames)
        skipped += part.skipped
        count += part.skipped_count
    if not frames:
        return Extraction(empty_frames())
    # Each part is ordered already; a stable sort by the keys alone keeps, for rows sharing
    # them, the order they were read in (and each snapshot's objects in its own order).
    keys = list(KEYS)
    combined = Frames(
        pl.concat([f.snapshots for f in frames]).sort(keys, maintain_order=True),
        pl.concat([f.disks for f in frames]).sort(keys, maintain_order=True),
        pl.concat([f.interfaces for f in frames]).sort(keys, maintain_order=True),
    )
    return Extraction(combined, skipped[:MAX_REPORTED], count)


@dataclass(frozen=True)
class WrittenWindow:
    """What `sink_window_parquet` wrote: three files and their row counts."""

    paths: tuple[Path, Path, Path]  # snapshots, disks, interfaces
    rows: tuple[int, int, int]
    skipped: list[Problem]
    skipped_count: int


def parquet_paths(out: Path) -> tuple[Path, Path, Path]:
    """`out` for the snapshots, `<stem>.disks.parquet` and `<stem>.interfaces.parquet` beside it."""
    stem = out.name.removesuffix(".parquet")
    return out, out.with_name(f"{stem}.disks.parquet"), out.with_name(f"{stem}.interfaces.parquet")


def _tables(frames: Frames) -> tuple[pa.Table, pa.Table, pa.Table]:
    return frames.snapshots.to_arrow(), frames.disks.to_arrow(), frames.interfaces.to_arrow()


def sink_window_parquet(
    db: Db,
    org_id: str,
    start: datetime,
    end: datetime,
    out: Path,
    *,
    asset_ids: Sequence[str] | None = None,
    slice_length: timedelta | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> WrittenWindow:
    """Stream `org_id`'s window into three zstd Parquet files (`parquet_paths(out)`).

    Each part of `iter_window` is written (one row group per part and file) as it
    arrives, so memory stays bounded by `chunk_rows`. Rows are in the order the parts
    come, each part sorted by (orgId, assetId, timestamp): a window of at most
    `chunk_rows` snapshots is sorted as a whole. Each file is replaced atomically once
    the whole window is written; a failed read leaves the previous files as they were.

    Raises:
        InvalidArgument: no `org_id`, a naive or empty window.
        ExtractError: a snapshot that `doctor` cannot repair.
    """
    parts = iter_window(db, org_id, start, end, asset_ids=asset_ids, slice_length=slice_length,
                        chunk_rows=chunk_rows)
    paths = parquet_paths(out)
    rows = [0, 0, 0]
    skipped: list[Problem] = []
    skipped_count = 0
    with ExitStack() as stack:
        writers = []
        for path, empty in zip(paths, _tables(empty_frames()), strict=True):
            tmp = stack.enter_context(atomic_path(path))
            writers.append(stack.enter_context(pq.ParquetWriter(tmp, empty.schema, compression="zstd")))
        for part in parts:
            for i, (writer, table) in enumerate(zip(writers, _tables(part.frames), strict=True)):
                if table.num_rows:
                    writer.write_table(table)
                    rows[i] += table.num_rows
            skipped += part.skipped[: MAX_REPORTED - len(skipped)]
            skipped_count += part.skipped_count
    return WrittenWindow(paths, (rows[0], rows[1], rows[2]), skipped, skipped_count)
