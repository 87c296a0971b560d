"""The native decoder's own BSON walker on damaged bytes: it never crashes, refuses what
pymongo's decoder refuses, and says where and why."""

from __future__ import annotations

import functools
import re
from typing import Any

import bson
import pytest
from bson import Binary, Code, Decimal128, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.errors import InvalidBSON
from hypothesis import given, settings
from hypothesis import strategies as st

from perf_analytics.frames import native_frames_from_raw, raw_decoder
from perf_analytics.schema import validate_snapshot
from tests.factories import series

pytestmark = pytest.mark.skipif(raw_decoder() != "native", reason="perf_analytics_native is not built (make setup)")

# A flipped byte in a timestamp is still BSON, but may be a date Python's datetime cannot
# hold: read such dates as plain milliseconds, so that pymongo refuses only bad BSON.
_CODEC: CodecOptions[dict[str, Any]] = CodecOptions(datetime_conversion=DatetimeConversion.DATETIME_AUTO)

# Every other type BSON has, at the top level where the decoder steps over them (a scope's
# own elements are never read, so it is empty: its bytes are its length and terminator).
_OTHER_TYPES: dict[str, Any] = {
    "binary": Binary(b"\x01\x02\x03", 0),
    "oldBinary": Binary(b"\x01\x02\x03", 2),
    "regex": Regex("^C:", "i"),
    "code": Code("f()"),
    "codeWithScope": Code("f()", {}),
    "decimal": Decimal128("1.5"),
    "stamp": Timestamp(1, 2),
    "min": MinKey(),
    "max": MaxKey(),
    "flag": True,
}

# Value sizes of the fixed-size types, for `_layout`.
_FIXED = {0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8, 0x13: 16, 0x7F: 0, 0xFF: 0}


@functools.cache
def _snapshots() -> tuple[bytes, ...]:
    """Valid stored snapshots as BSON: two disks and interfaces, one with every other type."""
    docs = []
    for i, payload in enumerate(series(3)):
        doc = validate_snapshot(payload)
        doc["performanceData"]["disk"].append({**doc["performanceData"]["disk"][0], "name": "D:"})
        doc = {"_id": ObjectId(), **doc, **(_OTHER_TYPES if i == 2 else {})}
        docs.append(bson.encode(doc))
    return tuple(docs)


def _layout(doc: bytes, start: int = 0) -> tuple[list[int], list[int]]:
    """Where a valid document's type bytes and length prefixes (documents, strings, binary
    data, code with scope) are: (type byte offsets, length offsets)."""
    types, lengths = [], [start]
    at, end = start + 4, start + int.from_bytes(doc[start : start + 4], "little") - 1
    while at < end:
        tag = doc[at]
        types.append(at)
        at = doc.index(b"\x00", at + 1) + 1
        declared = int.from_bytes(doc[at : at + 4], "little")
        if tag in (0x03, 0x04):
            inner_types, inner_lengths = _layout(doc, at)
            types, lengths, at = types + inner_types, lengths + inner_lengths, at + declared
        elif tag in (0x02, 0x0D):
            lengths, at = [*lengths, at], at + 4 + declared
        elif tag == 0x05:
            lengths, at = [*lengths, at], at + 5 + declared
        elif tag == 0x0F:
            lengths, at = [*lengths, at, at + 4], at + declared
        elif tag == 0x0B:
            at = doc.index(b"\x00", doc.index(b"\x00", at) + 1) + 1
        else:
            at += _FIXED[tag]
    return types, lengths


def _int32(doc: bytes, at: int, value: int) -> bytes:
    return doc[:at] + value.to_bytes(4, "little", signed=True) + doc[at + 4 :]


def _byte(doc: bytes, at: int, value: int) -> bytes:
    return doc[:at] + bytes([value]) + doc[at + 1 :]


@st.composite
def _damaged(draw: st.DrawFn) -> bytes:
    """One valid snapshot with one kind of damage."""
    doc = draw(st.sampled_from(_snapshots()))
    types, lengths = _layout(doc)
    kind = draw(st.sampled_from(["truncated", "cut short", "length", "type", "byte"]))
    if kind == "truncated":  # the bytes end inside the document
        return doc[: draw(st.integers(0, len(doc) - 1))]
    if kind == "cut short":  # a shorter document, declared so: its last element runs past it
        size = draw(st.integers(5, len(doc) - 1))
        return size.to_bytes(4, "little") + doc[4 : size - 1] + b"\x00"
    if kind == "length":
        at = draw(st.sampled_from(lengths))
        old = int.from_bytes(doc[at : at + 4], "little", signed=True)
        new = draw(st.one_of(st.integers(old - 8, old + 8), st.integers(-(2**31), 2**31 - 1)))
        return _int32(doc, at, new)
    at = draw(st.sampled_from(types) if kind == "type" else st.integers(0, len(doc) - 1))
    return _byte(doc, at, draw(st.integers(0, 255)))


def _native_verdict(raw: bytes) -> str | None:
    """Why the native decoder does not read `raw` (one document), None when it does."""
    try:
        _, refused = native_frames_from_raw([raw])
    except ValueError as exc:  # the bytes cannot be cut into documents
        return str(exc)
    return refused[0][1] if refused else None


def _pymongo_verdict(raw: bytes) -> str | None:
    try:
        bson.decode_all(raw, _CODEC)
    except InvalidBSON as exc:
        return str(exc) or type(exc).__name__
    return None


def test_the_layout_finds_every_type_byte_and_length_of_the_documents() -> None:
    for doc in _snapshots():
        types, lengths = _layout(doc)
        assert all(doc[at] in _FIXED or doc[at] in (0x02, 0x03, 0x04, 0x05, 0x0B, 0x0D, 0x0F) for at in types)
        assert len(set(types)) == len(types) and len(set(lengths)) == len(lengths)
    assert len(_layout(_snapshots()[2])[0]) == len(_layout(_snapshots()[0])[0]) + len(_OTHER_TYPES)


# The one place the decoder is stricter than pymongo, as it was with the `bson` crate:
# pymongo skips an array's keys unread, the decoder checks them as every key is checked.
_ARRAY_KEY = re.compile(
    r"malformed BSON at performanceData\.(cpu\.perCore|disk|network\.interfaces)\.[^.]*: a key is not UTF-8"
)


@settings(max_examples=400, deadline=None)
@given(_damaged())
def test_damaged_snapshots_never_crash_the_walker_and_what_pymongo_refuses_it_refuses(raw: bytes) -> None:
    # A panic would surface as pyo3's PanicException and any other error as itself: both
    # fail here. One damage per document: every embedded document of a valid snapshot is
    # one the decoder reads, so no damage hides in bytes it steps over unread.
    native, pymongo = _native_verdict(raw), _pymongo_verdict(raw)
    if pymongo is not None:
        assert native is not None, f"pymongo refuses it ({pymongo}), the native decoder reads it"
    if native is not None and "malformed BSON" in native and not _ARRAY_KEY.fullmatch(native):
        assert pymongo is not None, f"the native decoder calls it malformed ({native}), pymongo reads it"


def test_an_array_key_that_is_not_utf8_is_refused_though_pymongo_skips_it() -> None:
    doc = _snapshots()[0]
    core = _element_at(doc, "performanceData.cpu.perCore.1")
    raw = _byte(doc, core + 1, 0xFF)  # the key "1"
    assert _ARRAY_KEY.fullmatch(_reason(raw))
    assert _pymongo_verdict(raw) is None


def _element_at(doc: bytes, path: str) -> int:
    """The offset of the type byte of the element at dotted `path` in valid `doc`."""
    start = 0
    for key in path.split("."):
        at = start + 4
        while True:
            name_end = doc.index(b"\x00", at + 1)
            if doc[at + 1 : name_end] == key.encode():
                break
            at = name_end + 1 + _size(doc, doc[at], name_end + 1)
        start = name_end + 1
    return at


def _value_at(doc: bytes, path: str) -> int:
    """The offset of the value of the element at dotted `path` (after its key)."""
    return doc.index(b"\x00", _element_at(doc, path) + 1) + 1


def _size(doc: bytes, tag: int, at: int) -> int:
    declared = int.from_bytes(doc[at : at + 4], "little")
    return {0x02: 4 + declared, 0x03: declared, 0x04: declared}.get(tag) or _FIXED[tag]


def _reason(raw: bytes) -> str:
    reason = _native_verdict(raw)
    assert reason is not None
    return reason


def test_a_malformed_element_is_refused_with_its_dotted_path_and_the_reason() -> None:
    doc = _snapshots()[0]
    usage = _element_at(doc, "performanceData.disk.1.usagePercent")
    assert _reason(_byte(doc, usage, 0x20)) == (
        "malformed BSON at performanceData.disk.1.usagePercent: unknown element type 0x20"
    )

    name = _value_at(doc, "performanceData.network.interfaces.0.name")
    interface = _value_at(doc, "performanceData.network.interfaces.0")
    remain = interface + int.from_bytes(doc[interface : interface + 4], "little") - name
    assert _reason(_int32(doc, name, 10_000)) == (
        "malformed BSON at performanceData.network.interfaces.0.name: "
        f"a string of 10004 bytes runs past its document ({remain} bytes remain)"
    )

    agent = _value_at(doc, "agentId") + 4  # the text, after its length
    assert _reason(_byte(doc, agent, 0xFF)) == "malformed BSON at agentId: a string is not UTF-8"

    core = _element_at(doc, "performanceData.cpu.perCore.1")
    as_boolean = _byte(_byte(doc, core, 0x08), _value_at(doc, "performanceData.cpu.perCore.1"), 7)
    assert _reason(as_boolean) == "malformed BSON at performanceData.cpu.perCore.1: a boolean must be 0 or 1, not 7"


def test_a_key_that_is_not_utf8_is_refused_where_no_column_has_it() -> None:
    doc = bson.decode(_snapshots()[0])
    raw = bson.encode({**doc, "odd": 1}).replace(b"odd\x00", b"o\xffd\x00")
    assert _reason(raw) == "malformed BSON at o\ufffdd: a key is not UTF-8"
    assert _pymongo_verdict(raw) is not None


def test_a_batch_whose_document_lacks_its_terminator_is_a_clear_error() -> None:
    doc = _snapshots()[0]
    message = r"^malformed BSON: a document does not end with its terminator \(document 1\)$"
    with pytest.raises(ValueError, match=message):
        native_frames_from_raw([doc + doc[:-1] + b"\x01"])
