"""Archive readers: stream records out of NDJSON, JSON arrays, mongoexport and mongodump files.

Each reader yields `Record`s one at a time, so an archive larger than memory streams.
Compression (gzip, zstd) and format are detected from the content and the file name;
both can be forced. A record that cannot even be parsed is yielded with its error, so the
loader can reject it with its position instead of stopping the whole archive. When the
file itself becomes unreadable (a cut or corrupt compressed stream, a broken JSON array,
a cut BSON document) reading raises: the loader reports the rest of the archive as damaged
at the byte offset of the decompressed content where reading stopped.
"""

from __future__ import annotations

import gzip
import io
import itertools
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bson
import ijson
import orjson
import zstandard
from bson import json_util
from bson.errors import BSONError

from perf_analytics.errors import ArchiveError, DamagedArchive
from perf_analytics.store import MAX_NESTING

FORMATS = ("ndjson", "json", "bson")
COMPRESSIONS = ("none", "gzip", "zstd")

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZSTD_SKIPPABLE = 0x184D2A50  # magic of zstd's skippable frames, low 4 bits free
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
    damaged: bool = False  # stands for the unreadable rest of its archive


@dataclass
class RecordBlock:
    """Consecutive records of an archive, from the one numbered `first_index` on.

    An item is a Record, or, for NDJSON, the raw bytes of a whole line still to be parsed
    (the loader parses and checks a block's lines at once); `line_numbers` gives each
    item's line (0 outside NDJSON). `error`: the archive is unreadable after these items.
    """

    first_index: int
    items: list[bytes | Record] = field(default_factory=list)
    line_numbers: list[int] = field(default_factory=list)
    error: BaseException | None = None


class CountingReader(io.RawIOBase):
    """Wraps a binary stream and counts the bytes read from it: the file's bytes (for
    progress), or the decompressed content's (for the offset of damage)."""

    def __init__(self, fh: io.BufferedIOBase | io.RawIOBase) -> None:
        self._fh = fh
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        # One read of the source at a time (readinto1): a decompressor that fails part-way
        # then hands over what it decoded before the failure instead of dropping it.
        read = self._fh.readinto1 if isinstance(self._fh, io.BufferedIOBase) else self._fh.readinto
        n = read(buffer)
        self.consumed += n or 0
        return n or 0

    def close(self) -> None:
        self._fh.close()
        super().close()


class ZstdFrames(io.RawIOBase):
    """Decompresses a sequence of zstd frames, and fails where the input ends inside one.

    zstandard's stream_reader(read_across_frames=True) reports a clean end of stream when
    the file is cut inside a frame (a one-frame archive cut at 60% reads as empty; a cut in
    the second frame drops it silently), so each frame is decoded by its own decompressobj
    whose `eof` says whether the frame really ended. Bytes after a frame that are no frame
    raise zstandard.ZstdError.
    """

    _CHUNK = 1 << 16  # compressed bytes per step: bounds the output held at once

    def __init__(self, raw: io.BufferedIOBase) -> None:
        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor()
        self._frame: Any = None  # decompressobj of the frame being read, None between frames
        self._input = b""  # compressed bytes read but not yet decompressed
        self._output = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._output:
            if not self._decompress_some():
                return 0
        n = min(len(buffer), len(self._output))
        buffer[:n] = self._output[:n]
        self._output = self._output[n:]
        return n

    def _decompress_some(self) -> bool:
        """Decompress the next piece of input; False at a clean end between frames."""
        data = self._input or self._raw.read(self._CHUNK)
        self._input = b""
        if not data:
            if self._frame is not None:
                raise DamagedArchive("zstd data ends inside a frame: the file is cut")
            return False
        if self._frame is None:
            self._frame = self._dctx.decompressobj()
        self._output = memoryview(self._frame.decompress(data))
        if self._frame.eof:
            self._input = self._frame.unused_data
            self._frame = None
        return True

    def close(self) -> None:
        self._raw.close()
        super().close()


def detect_compression(head: bytes, name: str) -> str:
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC) or _is_skippable_frame(head):
        return "zstd"
    if name.endswith((".gz", ".zst", ".zstd")):
        raise ArchiveError(name, "the name says compressed but the content is not gzip or zstd")
    return "none"


def _is_skippable_frame(head: bytes) -> bool:
    """A zstd skippable frame (metadata, e.g. a seek table) may open a zstd file."""
    return len(head) == 4 and struct.unpack("<I", head)[0] & ~0xF == _ZSTD_SKIPPABLE


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
) -> tuple[io.BufferedIOBase, CountingReader, CountingReader, str]:
    """Open `path` as a stream of decompressed bytes; also return the counters of the file's
    bytes and of the content's bytes decompressed so far, and the compression found."""
    try:
        raw_file = path.open("rb")
    except OSError as exc:
        raise ArchiveError(str(path), exc.strerror or str(exc)) from None
    counter = CountingReader(raw_file)
    raw = io.BufferedReader(counter, buffer_size=1 << 20)
    kind = compression or detect_compression(raw.peek(4)[:4], path.name)
    decompressed: io.BufferedIOBase | io.RawIOBase
    if kind == "gzip":
        decompressed = gzip.GzipFile(fileobj=raw, mode="rb")
    elif kind == "zstd":
        decompressed = ZstdFrames(raw)
    elif kind == "none":
        return raw, counter, counter, kind
    else:
        raw.close()
        raise ArchiveError(str(path), f"unknown compression {kind!r}; use one of {', '.join(COMPRESSIONS)}")
    content = CountingReader(decompressed)
    return io.BufferedReader(content, buffer_size=1 << 20), counter, content, kind


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
    for block in _ndjson_blocks(stream, skip, 1 << 12):
        for i, item in enumerate(block.items):
            yield parse_line(block.first_index + i, f"line {block.line_numbers[i]}", item) if isinstance(item, bytes) else item
        if block.error is not None:
            raise block.error


def _ndjson_blocks(stream: io.BufferedIOBase, skip: int, size: int) -> Iterator[RecordBlock]:
    """The records of an NDJSON stream, `size` at a time; each whole line is handed over
    unparsed, for its block to be parsed at once. Reading stops at the first error of the
    stream itself (a cut or corrupt file), which the last block carries."""
    max_line = MAX_LINE_BYTES
    readline = stream.readline
    index = 0
    line_no = 0
    offset = 0  # of the line in the content
    block = RecordBlock(skip)
    try:
        while line := readline(max_line + 1):
            line_no += 1
            start, offset = offset, offset + len(line)
            if len(line) <= max_line and line.endswith(b"\n"):
                if line.isspace():
                    continue
                if index >= skip:
                    block.items.append(line)
                    block.line_numbers.append(line_no)
                index += 1
            else:
                record, length = _odd_line(stream, line, line_no, start, index >= skip, index)
                offset = start + length
                if record is None:
                    continue
                if index >= skip:
                    block.items.append(record)
                    block.line_numbers.append(line_no)
                index += 1
            if len(block.items) >= size:
                yield block
                block = RecordBlock(index)
    except (OSError, EOFError, zstandard.ZstdError, DamagedArchive) as exc:
        block.error = exc
    yield block


def _odd_line(
    stream: io.BufferedIOBase, line: bytes, line_no: int, start: int, wanted: bool, index: int
) -> tuple[Record | None, int]:
    """A line that is over the length limit or lacks its end of line (the last one): its
    record (None for a blank one) and its whole length. Raises DamagedArchive for a last
    line that was cut."""
    if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
        length = len(line) + _skip_rest_of_line(stream)
        reason = f"line is {length:,} bytes long, over the limit of {MAX_LINE_BYTES:,}"
        return Record(index, f"line {line_no}", error=reason, raw=_text(line[:_TEXT_CHARS])), length
    if not line.strip():
        return None, len(line)
    if not wanted:
        return Record(index, f"line {line_no}"), len(line)
    return parse_line(index, f"line {line_no}", line, start), len(line)


def parse_line(index: int, position: str, line: bytes, start: int = 0) -> Record:
    """The record of one NDJSON line: its payload, or why it is not one. Raises
    DamagedArchive (at `start`, the line's offset) for a last line that was cut."""
    try:
        payload: Any = orjson.loads(line)
        if b'"$' in line:
            payload = decode_extended_json(payload)
        return Record(index, position, payload)
    except (orjson.JSONDecodeError, ValueError, TypeError, BSONError) as exc:
        if not line.endswith(b"\n") and isinstance(exc, orjson.JSONDecodeError) and "depth limit" not in str(exc):
            # Only the last line can lack its end of line: one that does not parse
            # either is where the file was cut, not a record someone wrote wrong.
            raise DamagedArchive(f"the last line is cut (no end of line, {_json_error(exc)})", start) from None
        return Record(index, position, error=_json_error(exc), raw=_text(line))


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
                    yield Record(index, f"item {index + 1}", error=f"bad Extended JSON: {exc}", payload=item)
            index += 1
    except ijson.JSONError as exc:
        # The array itself is broken here (cut, or not JSON): nothing after this point can
        # be delimited.
        raise DamagedArchive(f"JSON array broken after item {index}: {exc}") from None


def _read_bson(stream: io.BufferedIOBase, skip: int, name: str) -> Iterator[Record]:
    offset = 0
    index = 0
    while True:
        head = stream.read(4)
        if not head:
            return
        if len(head) < 4:
            raise DamagedArchive("BSON document cut at the end of the file", offset)
        (length,) = struct.unpack("<i", head)
        if not 5 <= length <= _MAX_BSON:
            raise DamagedArchive(f"invalid BSON document length {length}", offset)
        body = stream.read(length - 4)
        if len(body) < length - 4:
            raise DamagedArchive("BSON document cut at the end of the file", offset)
        if index >= skip:
            try:
                payload: dict[str, Any] = bson.decode(head + body, codec_options=_CODEC)
            except (BSONError, ValueError, OverflowError, RecursionError) as exc:
                # pymongo's decoder gives up near 1,000 levels of nesting (InvalidBSON
                # naming the recursion, or RecursionError from its pure-Python fallback).
                deep = isinstance(exc, RecursionError) or "recursion" in str(exc)
                reason = f"nested deeper than {MAX_NESTING} levels of objects and arrays" if deep else f"invalid BSON document: {exc}"
                yield Record(index, f"byte {offset}", error=reason)
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
    counter: CountingReader  # bytes of the file read so far
    content: CountingReader  # bytes of decompressed content produced so far
    stream: io.BufferedIOBase
    skip: int = 0  # records passed over at the start
    broken: BaseException | None = None  # why not even the first bytes could be read

    def blocks(self, size: int) -> Iterator[RecordBlock]:
        """The archive's records, `size` at a time (NDJSON lines still unparsed). Read
        either these or `records`, not both."""
        if self.format == "ndjson" and self.broken is None:
            return _ndjson_blocks(self.stream, self.skip, size)
        return _blocks_of(self.records, self.skip, size)

    def close(self) -> None:
        self.stream.close()
        self.counter.close()


def _blocks_of(records: Iterator[Record], skip: int, size: int) -> Iterator[RecordBlock]:
    block = RecordBlock(skip)
    try:
        for record in records:
            block.items.append(record)
            block.line_numbers.append(0)
            if len(block.items) >= size:
                yield block
                block = RecordBlock(record.index + 1)
    except (OSError, EOFError, zstandard.ZstdError, DamagedArchive) as exc:
        block.error = exc
    yield block


def open_archive(
    path: str | Path, *, fmt: str | None = None, compression: str | None = None, skip: int = 0
) -> Archive:
    """Open one archive for streaming; `skip` records already loaded are passed over."""
    p = Path(path)
    if not p.is_file():
        raise ArchiveError(str(p), "no such file")
    if fmt is not None and fmt not in FORMATS:
        raise ArchiveError(str(p), f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    stream, counter, content, detected_compression = open_decompressed(p, compression)
    try:
        peek_fn = getattr(stream, "peek", None)
        peek = peek_fn(64)[:64] if peek_fn is not None else b""
        kind = fmt or detect_format(peek, p.name)
        records = read_records(stream, kind, skip=skip, name=str(p))
        broken = None
    except (OSError, EOFError, zstandard.ZstdError, DamagedArchive) as exc:
        # Not even the first bytes decompress: the archive is damaged from its start, which
        # the loader reports like any other damaged tail.
        kind = fmt or detect_format(b"", p.name)
        records, broken = _unreadable(exc), exc
    except ArchiveError:
        stream.close()
        raise
    return Archive(p, kind, detected_compression, records, counter, content, stream, skip, broken)


def _unreadable(exc: BaseException) -> Iterator[Record]:
    """The records of an archive whose first bytes do not decompress: `exc`, at the first step."""
    yield from ()
    raise exc


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
