"""NDJSON lines parsed, checked and encoded a block at a time, without a dict per record.

A block of lines goes to the native line encoder (`perf_analytics_native.LineEncoder`, a
Rust extension in `native/`, built by `make setup`): one pass per line parses the JSON,
checks the contract's rules (a tree built here from `schema.TABLES`) and writes the BSON
document the per-record path would store, byte for byte. Where that extension is not
built, the Arrow batch path does the same work (`bsonbatch.ArrowBlocks`, 3.4-4x the CPU
and more memory), with a warning logged once.

Either path vouches only for records an agent sends as it should. Any other line (a field
outside the contract, a type or value the path does not vouch for, a line that is not
JSON) is left to the per-record path, which parses it with orjson and accepts or rejects it
with `validate_snapshot`, so its reason is the same as it always was.

This module imports neither numpy nor pyarrow (with the pandas that pyarrow loads on its
first conversion, over 100 MiB of a load's memory): the native path needs none of them.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from perf_analytics import schema
from perf_analytics.schema import (
    ARRAY_KINDS,
    DATE_KEY,
    ID_FIELDS,
    PERFORMANCE_DATA,
    TIME_WINDOWS,
    Table,
    children,
)
from perf_analytics.store import MAX_DOCUMENT_BYTES

log = logging.getLogger(__name__)

NATIVE_MODULE = "perf_analytics_native"

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

    vouched: list[bool]
    documents: list[bytes] = field(default_factory=list)
    last_seen: LastSeen = field(default_factory=dict)


class ObjectIds:
    """ObjectIds as the BSON spec builds them (seconds, a random per-process value, a
    counter), handed out a block at a time. The random part is drawn anew in a forked
    child, so two processes never share it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = -1
        self._random = b""
        self._counter = 0

    def reserve(self, n: int) -> tuple[bytes, int]:
        """Room for `n` ids: their first 9 bytes (seconds, random) and the first of their
        counters; id i ends with (first + i) mod 2**24 as 3 big-endian bytes."""
        with self._lock:
            if self._pid != os.getpid():
                self._pid, self._random = os.getpid(), os.urandom(5)
                self._counter = int.from_bytes(os.urandom(3), "big")
            first, self._counter = self._counter, (self._counter + n) % (1 << 24)
        return int(time.time()).to_bytes(4, "big") + self._random, first


OBJECT_IDS = ObjectIds()


def _native_limits(kind: str) -> tuple[float, float, bool]:
    """(minimum, maximum, whole) of a field of `kind` (of its items, for an array kind)."""
    limits = schema.LIMITS[schema._ARRAY_OF.get(kind, kind)]
    return limits.minimum, limits.maximum, limits.whole


def _native_table(path: str, table: Table | None) -> tuple[Any, ...]:
    """The native encoder's description of `table` (performanceData when None), with the
    contract's limits, so that it checks what `validate_snapshot` checks: (fields [(name,
    array, required, (minimum, maximum, whole))], the name's key of a named table or None,
    the (part, whole) of a bounded one or None, children [(key, repeated, required,
    description)])."""
    fields = [
        (name, kind in ARRAY_KINDS, required, _native_limits(kind))
        for name, kind, required in (table.fields if table is not None else ())
    ]
    tables = [(t.key, t.repeated, t.required, _native_table(t.path, t)) for t in children(path)]
    # Read from `schema` when called, so an encoder follows the contract in force.
    named = schema.NAME if table is not None and table.named else None
    bounded = schema.BOUND if table is not None and table.bounded else None
    return fields, named, bounded, tables


def _native_encoder(module: Any, org_id: str | None) -> Any:
    """`module`'s line encoder for the contract in force (`schema`: its identifiers, time
    windows, tables and limits), vouching for lines of `org_id` only when given."""
    return module.LineEncoder(
        list(ID_FIELDS), (schema.ID_START, schema.ID_CHARS, schema.ID_MAX_LENGTH), list(TIME_WINDOWS), PERFORMANCE_DATA,
        _native_table(PERFORMANCE_DATA, None), DATE_KEY, org_id, MAX_DOCUMENT_BYTES,
    )


@cache
def _native_module() -> Any:
    """The native extension when it is built with the line encoder, else None (warned once)."""
    try:
        module = importlib.import_module(NATIVE_MODULE)
    except ImportError:
        module = None
    if module is None or not hasattr(module, "LineEncoder"):
        log.warning("%s is not built: NDJSON lines are checked and encoded by the Arrow batch path, "
                    "3.4-4x the CPU and 3x the memory (`make setup` builds it)", NATIVE_MODULE)
        return None
    return module


def native_available() -> bool:
    """Whether blocks go through the native line encoder."""
    return _native_module() is not None


class BlockEncoder:
    """Encodes blocks of NDJSON lines for a load (of `org_id` only, when given).

    `native`: True to require the native line encoder, False for the Arrow batch path,
    None (the default) for the native one when it is built.
    """

    def __init__(self, org_id: str | None, *, native: bool | None = None) -> None:
        self.org_id = org_id
        module = _native_module() if native is not False else None
        if native and module is None:
            raise RuntimeError(f"{NATIVE_MODULE} is not built with its line encoder (`make setup` builds it)")
        self._native = None if module is None else _native_encoder(module, org_id)
        self._arrow: Any = None

    @property
    def native(self) -> bool:
        return self._native is not None

    def encode(self, lines: list[bytes]) -> Encoded:
        """Documents for the lines of `lines` that the block path vouches for (see the module)."""
        if self._native is None:
            if self._arrow is None:
                # Imported here: numpy and pyarrow are needed only without the native encoder.
                from perf_analytics.ingest.bsonbatch import ArrowBlocks

                self._arrow = ArrowBlocks(self.org_id)
            result: Encoded = self._arrow.encode(lines)
            return result
        prefix, first = OBJECT_IDS.reserve(len(lines))
        vouched, documents, last_seen = self._native.encode(lines, prefix, first)
        return Encoded([v == 1 for v in vouched], documents, last_seen)
