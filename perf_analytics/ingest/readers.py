"""Archive readers: stream records out of NDJSON, JSON arrays, mongoexport and mongodump files.

Each reader yields `Record`s one at a time, so an archive larger than memory streams.
Compression (gzip, zstd) and format are detected from the content and the file name;
both can be forced. A record that cannot even be parsed is yielded with its error, so the
loader can reject it with its position instead of stopping the whole archive.
"""

from __future__ import annotations

import gzip
import io
import itertools
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bson
import ijson
import orjson
import zstandard
from bson import json_util
from bson.errors import BSONError

from perf_analytics.errors import ArchiveError
from perf_analytics.store import MAX_NESTING

FORMATS = ("ndjson", "json", "bson")
COMPRESSIONS = ("none", "gzip", "zstd")

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_JSON_OPTIONS = json_util.JSONOptions(tz_aware=True, tzinfo=None)
_CODEC: bson.CodecOptions[dict[str, Any]] = bson.CodecOptions(tz_aware=True)
_MAX_BSON = 48 * 1024 * 1024  # larger than MongoDB's 16 MiB limit, catches garbage lengths
MAX_LINE_BYTES = 16 * 1024 * 1024  # longest NDJSON line read; a longer one is a reject
_SKIP_PIECE = 1 << 20  # how much of an over-long line is read at a time while passing it
_TEXT_CHARS = 4000  # how much of a rejected record the rejects file shows


@dataclass(frozen=True)
class Record:
    """One record of an archive: its position ("line 12", "item 3", "byte 4096"), and
    either the parsed payload or why it could not be parsed (with the raw text)."""

    index: int  # 0-based ordinal of the record in its archive
    position: str
    payload: Any = None
    error: str | None = None
    raw: str | None = None


class CountingReader(io.RawIOBase):
    """Wraps a binary file and counts the bytes read from it (compressed bytes, for progress)."""

    def __init__(self, fh: io.BufferedReader) -> None:
        self._fh = fh
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._fh.readinto(buffer)
        self.consumed += n or 0
        return n or 0

    def close(self) -> None:
        self._fh.close()
        super().close()


def detect_compression(head: bytes, name: str) -> str:
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    if name.endswith((".gz", ".zst", ".zstd")):
        raise ArchiveError(name, "the name says compressed but the content is not gzip or zstd")
    return "none"


def _strip_compression_suffix(name: str) -> str:
    for suffix in (".gz", ".zst", ".zstd"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def detect_format(head: bytes, name: str) -> str:
    """Format from the (decompressed) first bytes, the extension breaking ties.

    `.json` is ambiguous: mongoexport writes one object per line under that name, and
    `--jsonArray` a single array, so the first non-blank byte decides.
    """
    base = _strip_compression_suffix(name.lower())
    if base.endswith(".bson"):
        return "bson"
    stripped = head.lstrip()
    if stripped.startswith(b"["):
        return "json"
    if stripped.startswith(b"{"):
        return "ndjson"
    if base.endswith((".ndjson", ".jsonl")):
        return "ndjson"
    if len(head) >= 5:
        (length,) = struct.unpack("<i", head[:4])
        if 5 <= length <= _MAX_BSON and head[4] in range(0x01, 0x14):
            return "bson"
    if not head.strip():
        return "ndjson"  # an empty archive: zero records, not an error
    raise ArchiveError(name, "cannot tell the format (not JSON, NDJSON or BSON); pass --format")


def open_decompressed(
    path: Path, compression: str | None = None
) -> tuple[io.BufferedIOBase, CountingReader, str]:
    """Open `path` as a stream of decompressed bytes; also return the raw byte counter and
    the compression found."""
    try:
        raw_file = path.open("rb")
    except OSError as exc:
        raise ArchiveError(str(path), exc.strerror or str(exc)) from None
    counter = CountingReader(raw_file)
    raw = io.BufferedReader(counter, buffer_size=1 << 20)
    kind = compression or detect_compression(raw.peek(4)[:4], path.name)
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb"), counter, kind
    if kind == "zstd":
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        return io.BufferedReader(reader, buffer_size=1 << 20), counter, kind
    if kind != "none":
        raw.close()
        raise ArchiveError(str(path), f"unknown compression {kind!r}; use one of {', '.join(COMPRESSIONS)}")
    return raw, counter, kind


def decode_extended_json(value: Any) -> Any:
    """Turn Extended JSON wrappers ($oid, $date, $numberLong, ...) into BSON values, bottom up.

    Only the first MAX_NESTING levels are decoded; anything deeper is returned as it is.
    Such a record is rejected for its depth anyway (`store.check_nesting`), and decoding
    it would recurse until Python's recursion limit (about 500 levels here).
    """
    return _decode(value, 1)


def _decode(value: Any, depth: int) -> Any:
    if depth > MAX_NESTING:
        return value
    if isinstance(value, dict):
        decoded = {k: _decode(v, depth + 1) for k, v in value.items()}
        if any(k.startswith("$") for k in decoded):
            return json_util.object_hook(decoded, _JSON_OPTIONS)
        return decoded
    if isinstance(value, list):
        return [_decode(v, depth + 1) for v in value]
    return value


def _read_ndjson(stream: io.BufferedIOBase, skip: int) -> Iterator[Record]:
    """One record per non-blank line. A line longer than MAX_LINE_BYTES is a record in
    error, read past in bounded pieces: no line over the limit is ever held whole."""
    max_line = MAX_LINE_BYTES
    index = 0
    line_no = 0
    while line := stream.readline(max_line + 1):
        line_no += 1
        too_long = len(line) > max_line and not line.endswith(b"\n")
        if too_long:
            length = len(line) + _skip_rest_of_line(stream)
        elif not line.strip():
            continue
        if index < skip:
            index += 1
            continue
        if too_long:
            reason = f"line is {length:,} bytes long, over the limit of {max_line:,}"
            yield Record(index, f"line {line_no}", error=reason, raw=_text(line[:_TEXT_CHARS]))
            index += 1
            continue
        try:
            payload: Any = orjson.loads(line)
            if b'"$' in line:
                payload = decode_extended_json(payload)
            yield Record(index, f"line {line_no}", payload)
        except (orjson.JSONDecodeError, ValueError, TypeError, BSONError) as exc:
            yield Record(index, f"line {line_no}", error=_json_error(exc), raw=_text(line))
        index += 1


def _json_error(exc: Exception) -> str:
    # orjson stops at 1,024 levels with "depth limit exceeded": valid JSON, but nested
    # far deeper than anything a server stores.
    if "depth limit" in str(exc):
        return f"nested deeper than {MAX_NESTING} levels of objects and arrays"
    return f"not valid JSON: {exc}"


def _skip_rest_of_line(stream: io.BufferedIOBase) -> int:
    """Read up to the end of the current line in pieces; return how many bytes that was."""
    skipped = 0
    while piece := stream.readline(_SKIP_PIECE):
        skipped += len(piece)
        if piece.endswith(b"\n"):
            break
    return skipped


def _read_json_array(stream: io.BufferedIOBase, skip: int, name: str) -> Iterator[Record]:
    index = 0
    try:
        for item in ijson.items(stream, "item", use_float=True):
            if index >= skip:
                try:
                    yield Record(index, f"item {index + 1}", decode_extended_json(item))
                except (ValueError, TypeError, BSONError) as exc:
                    yield Record(index, f"item {index + 1}", error=f"bad Extended JSON: {exc}", raw=repr(item)[:2000])
            index += 1
    except ijson.JSONError as exc:
        # The array itself is broken here: nothing after this point can be delimited.
        yield Record(index, f"item {index + 1}", error=f"JSON array broken, rest of file unreadable: {exc}")


def _read_bson(stream: io.BufferedIOBase, skip: int, name: str) -> Iterator[Record]:
    offset = 0
    index = 0
    while True:
        head = stream.read(4)
        if not head:
            return
        if len(head) < 4:
            yield Record(index, f"byte {offset}", error="truncated BSON document at end of file")
            return
        (length,) = struct.unpack("<i", head)
        if not 5 <= length <= _MAX_BSON:
            yield Record(index, f"byte {offset}", error=f"invalid BSON length {length}; rest of file unreadable")
            return
        body = stream.read(length - 4)
        if len(body) < length - 4:
            yield Record(index, f"byte {offset}", error="truncated BSON document at end of file")
            return
        if index >= skip:
            try:
                payload: dict[str, Any] = bson.decode(head + body, codec_options=_CODEC)
            except (BSONError, ValueError, OverflowError) as exc:
                yield Record(index, f"byte {offset}", error=f"invalid BSON document: {exc}")
            else:
                yield Record(index, f"byte {offset}", payload)
        index += 1
        offset += length


def _text(line: bytes) -> str:
    return line.decode("utf-8", errors="replace").rstrip("\r\n")[:_TEXT_CHARS]


def read_records(stream: io.BufferedIOBase, fmt: str, *, skip: int = 0, name: str = "") -> Iterator[Record]:
    """Records of an already decompressed stream, skipping the first `skip` cheaply."""
    if fmt == "ndjson":
        return _read_ndjson(stream, skip)
    if fmt == "json":
        return _read_json_array(stream, skip, name)
    if fmt == "bson":
        return _read_bson(stream, skip, name)
    raise ArchiveError(name, f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


@dataclass
class Archive:
    """An open archive: its records and how far into the file reading has got."""

    path: Path
    format: str
    compression: str
    records: Iterator[Record]
    counter: CountingReader
    stream: io.BufferedIOBase

    def close(self) -> None:
        self.stream.close()
        self.counter.close()


def open_archive(
    path: str | Path, *, fmt: str | None = None, compression: str | None = None, skip: int = 0
) -> Archive:
    """Open one archive for streaming; `skip` records already loaded are passed over."""
    p = Path(path)
    if not p.is_file():
        raise ArchiveError(str(p), "no such file")
    if fmt is not None and fmt not in FORMATS:
        raise ArchiveError(str(p), f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    stream, counter, detected_compression = open_decompressed(p, compression)
    try:
        peek_fn = getattr(stream, "peek", None)
        peek = peek_fn(64)[:64] if peek_fn is not None else b""
        kind = fmt or detect_format(peek, p.name)
    except (OSError, EOFError, zstandard.ZstdError) as exc:
        stream.close()
        raise ArchiveError(str(p), f"cannot decompress: {exc}") from None
    except ArchiveError:
        stream.close()
        raise
    return Archive(p, kind, detected_compression, read_records(stream, kind, skip=skip, name=str(p)), counter, stream)


def record_as_text(record: Record) -> str:
    """The record as a person would want to see it in a rejects file."""
    if record.raw is not None:
        return record.raw
    if record.payload is None:
        return ""
    excerpt = _excerpt(record.payload, 1)
    try:
        return json_util.dumps(excerpt, json_options=json_util.RELAXED_JSON_OPTIONS)[:_TEXT_CHARS]
    except (TypeError, ValueError):
        return repr(excerpt)[:_TEXT_CHARS]


def _excerpt(value: Any, depth: int) -> Any:
    """As much of `value` as a rejects line can show: containers below MAX_NESTING levels
    become "...", and long strings, lists and objects are cut. Printing the whole of a
    record nested hundreds of levels deep would hit Python's recursion limit, and one of
    many megabytes would be printed whole only to be cut to _TEXT_CHARS."""
    if isinstance(value, dict | list) and depth > MAX_NESTING:
        return "..."
    if isinstance(value, dict):
        return {k: _excerpt(v, depth + 1) for k, v in itertools.islice(value.items(), _TEXT_CHARS)}
    if isinstance(value, list):
        return [_excerpt(v, depth + 1) for v in value[:_TEXT_CHARS]]
    if isinstance(value, str | bytes) and len(value) > _TEXT_CHARS:
        return value[:_TEXT_CHARS]
    return value
