"""The snapshot contract: what an agent payload must look like and how it is stored.

`validate_snapshot` checks one payload and returns the normalised document (UTC BSON
date, doubles for metrics, ints for counts, an ObjectId `_id`, unknown fields kept). The
contract is data: `TABLES` says where each field table lives in a stored document, and
validation, the Arrow schema and frames (`frames.py`), extraction and `doctor` all read
it, so a field or a section is added with one edit here. A broken payload raises
`ValidationError` naming the field path and what is wrong; the caller's mapping is never
modified.

Identifiers (`orgId`, `assetId`, `agentId`) follow one rule, `ID_PATTERN`: they become
lake paths, DuckDB file lists and sink keys, where `*`, `%`, `/` or `|` would reach
another tenant's data or collide with it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import reprlib
import string
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache, partial
from typing import Any

import bson
from bson import Decimal128, ObjectId
from bson.int64 import Int64

from perf_analytics.errors import ValidationError

SNAPSHOTS = "performance_snapshots"
ASSETS = "assets"

TIME_WINDOWS: dict[str, timedelta] = {
    "1min": timedelta(minutes=1),
    "5min": timedelta(minutes=5),
    "15min": timedelta(minutes=15),
    "1hour": timedelta(hours=1),
    "1day": timedelta(days=1),
}

# -- identifiers ------------------------------------------------------------------------

# Letters, digits and . _ : -, 1 to 128 characters, starting with a letter or digit. Out:
# "." and ".." (path steps), "/" and "\" (path separators), "*", "?", "[" (DuckDB globs
# the paths it reads), "%" (DuckDB decodes %xx in Hive partition values), "=" (Hive
# key=value), "|" and spaces (separators of keys older code joined).
# The pattern is built from its parts, which the native line encoder also receives.
ID_START = string.ascii_letters + string.digits  # an identifier's first character
ID_CHARS = ID_START + "._:-"  # any of its characters
ID_MAX_LENGTH = 128
ID_PATTERN = re.compile(f"[{re.escape(ID_START)}][{re.escape(ID_CHARS)}]{{0,{ID_MAX_LENGTH - 1}}}")
ID_RULE = f"letters, digits and . _ : - (1 to {ID_MAX_LENGTH} characters, starting with a letter or digit)"
ID_FIELDS = ("orgId", "agentId", "assetId")


def is_valid_id(value: Any) -> bool:
    """True when `value` is a string that follows the identifier rule (`ID_PATTERN`)."""
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def check_id(field: str, value: Any) -> str:
    """`value` when it follows the identifier rule; otherwise ValidationError naming `field`."""
    if value is None:
        raise ValidationError(field, "is required")
    if not isinstance(value, str):
        raise ValidationError(field, f"expected a string, got {_type_name(value)}")
    if not value.strip():
        raise ValidationError(field, "must not be empty")
    if not is_valid_id(value):
        raise ValidationError(field, f"{_shown(value)} is not an identifier: use {ID_RULE}")
    return value


def hashed_key(*parts: str) -> str:
    """A document `_id` for a key made of several ids: the SHA-256 of the parts as a JSON
    array, so no two different keys share an `_id`, whatever the parts contain."""
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()


# -- document ids -----------------------------------------------------------------------

_HEX_ID = re.compile(r"[0-9a-fA-F]{24}")
ORIGINAL_ID = "originalId"  # where a repaired document keeps an `_id` that was no ObjectId


def _object_id(value: Any) -> ObjectId:
    """The stored `_id` of a payload: an ObjectId, or a 24-hex-digit string as its ObjectId."""
    if isinstance(value, ObjectId):
        return value
    if isinstance(value, str) and _HEX_ID.fullmatch(value):
        return ObjectId(value)
    raise ValidationError("_id", f"expected an ObjectId or a 24-hex-digit string, got {_type_name(value)} {_shown(value)}")


def repaired_id(org_id: str, value: Any) -> tuple[ObjectId, dict[str, Any]]:
    """The ObjectId a stored document with `_id` `value` gets on repair, and the fields to add.

    An ObjectId stays; a 24-hex-digit string becomes that ObjectId; any other value becomes
    an ObjectId derived from (org, value), the same on every run, so an interrupted repair
    finishes under the same id, and the old value is kept in `originalId`.
    """
    if isinstance(value, ObjectId) or (isinstance(value, str) and _HEX_ID.fullmatch(value)):
        return ObjectId(str(value)), {}
    digest = hashlib.sha256(bson.encode({"orgId": org_id, "_id": value})).digest()
    return ObjectId(digest[:12]), {ORIGINAL_ID: value}


@dataclass(frozen=True)
class Problem:
    """A document an operation left alone (not extracted, not repaired, not moved), and why."""

    id: Any
    reason: str


# -- the field tables --------------------------------------------------------------------

# Kinds of value a field may hold; each maps to one checker below.
PERCENT = "percent"  # double in [0, 100]
PERCENTS = "percents"  # array of PERCENT
BYTES = "bytes"  # double >= 0
RATE = "rate"  # double >= 0
SECONDS = "seconds"  # a duration, double >= 0
COUNT = "count"  # int >= 0
TEMPERATURE = "temperature"  # double above absolute zero


@dataclass(frozen=True)
class Limits:
    """The numbers a kind of field takes: from `minimum` to `maximum`, both included;
    `whole`: whole numbers only, stored as integers."""

    minimum: float = -math.inf
    maximum: float = math.inf
    whole: bool = False


ABSOLUTE_ZERO = -273.15

# Each kind's limits, read by the checkers below, the Arrow batch path (`conforming_rows`)
# and the native line encoder (its spec carries them), so a limit is changed here only.
LIMITS: dict[str, Limits] = {
    PERCENT: Limits(0.0, 100.0),
    BYTES: Limits(0.0),
    RATE: Limits(0.0),
    SECONDS: Limits(0.0),
    COUNT: Limits(0.0, whole=True),
    TEMPERATURE: Limits(ABSOLUTE_ZERO),
}

NAME = "name"  # the key of each object's name in a named table
BOUND = ("usedBytes", "totalBytes")  # in a bounded table the first may not exceed the second

FieldSpec = tuple[tuple[str, str, bool], ...]

# (field, kind, required) per table.
CPU_FIELDS: FieldSpec = (
    ("usage", PERCENT, True),
    ("temperature", TEMPERATURE, False),
    ("frequency", RATE, False),
    ("perCore", PERCENTS, False),
)
MEMORY_FIELDS: FieldSpec = (
    ("usagePercent", PERCENT, True),
    ("usedBytes", BYTES, True),
    ("totalBytes", BYTES, True),
    ("availableBytes", BYTES, True),
    ("swapUsed", BYTES, False),
)
DISK_FIELDS: FieldSpec = (
    ("usagePercent", PERCENT, True),
    ("totalBytes", BYTES, True),
    ("usedBytes", BYTES, True),
    ("freeBytes", BYTES, True),
    ("readBytesPerSec", RATE, False),
    ("writeBytesPerSec", RATE, False),
    ("readOpsPerSec", RATE, False),
    ("writeOpsPerSec", RATE, False),
)
NETWORK_FIELDS: FieldSpec = (("totalUsage", RATE, True),)
INTERFACE_FIELDS: FieldSpec = (
    ("bytesRecvPerSec", RATE, True),
    ("bytesSentPerSec", RATE, True),
    ("packetsRecvPerSec", RATE, True),
    ("packetsSentPerSec", RATE, True),
)
SYSTEM_FIELDS: FieldSpec = (("uptime", SECONDS, True), ("processCount", COUNT, True), ("threadCount", COUNT, True))

PERFORMANCE_DATA = "performanceData"


@dataclass(frozen=True)
class Table:
    """One field table and where it lives in a stored document.

    `path` is the dotted path of an object (or, `repeated`, of an array of objects) whose
    parent is `performanceData` or another table. `required`: present whenever its parent
    is (`performanceData`'s required tables: every snapshot has them). `named`: each object
    carries a non-empty string `name` (`NAME`). `bounded`: its usedBytes may not exceed
    totalBytes (`BOUND`).
    A repeated table is one row per object in the frame `frame` (its name column `item`);
    with `sum_prefix` its fields are also summed per snapshot as `<sum_prefix>_<field>`.
    """

    path: str
    fields: FieldSpec
    required: bool = False
    repeated: bool = False
    named: bool = False
    bounded: bool = False
    frame: str = ""
    item: str = ""
    sum_prefix: str = ""

    @property
    def parent(self) -> str:
        return self.path.rpartition(".")[0]

    @property
    def key(self) -> str:
        return self.path.rpartition(".")[2]


# cpu and memory are what every agent sends; the others may be absent on agents that
# cannot measure them, but are complete when present. Order: the Arrow schema's and frames'.
TABLES: tuple[Table, ...] = (
    Table("performanceData.cpu", CPU_FIELDS, required=True),
    Table("performanceData.memory", MEMORY_FIELDS, required=True, bounded=True),
    Table("performanceData.disk", DISK_FIELDS, repeated=True, named=True, bounded=True, frame="disks", item="disk"),
    Table("performanceData.network", NETWORK_FIELDS),
    Table(
        "performanceData.network.interfaces",
        INTERFACE_FIELDS,
        required=True,
        repeated=True,
        named=True,
        frame="interfaces",
        item="interface",
        sum_prefix="network",
    ),
    Table("performanceData.system", SYSTEM_FIELDS),
)


def children(parent: str, tables: tuple[Table, ...] | None = None) -> list[Table]:
    """The tables directly under `parent` (a table's path or `performanceData`), in order."""
    return [t for t in (TABLES if tables is None else tables) if t.parent == parent]


def metric_paths() -> tuple[str, ...]:
    """Dotted paths of every metric (a double, or an array of doubles) in a stored document."""
    return _paths(TABLES, counts=False)


def count_paths() -> tuple[str, ...]:
    """Dotted paths of every count (an int) in a stored document."""
    return _paths(TABLES, counts=True)


@cache
def _paths(tables: tuple[Table, ...], *, counts: bool) -> tuple[str, ...]:
    # Keyed by the tables themselves, so a contract with a field added gets its own paths;
    # off_type_kinds asks for them once per document.
    return tuple(f"{t.path}.{name}" for t in tables for name, kind, _ in t.fields if (kind == COUNT) == counts)


# -- off-type stored documents -----------------------------------------------------------

ID_NOT_OBJECTID = "_id not an ObjectId"
TIMESTAMP_NOT_DATE = "timestamp not a date"
METRIC_STRING = "metric stored as string"
METRIC_INTEGER = "metric stored as int/long"
METRIC_OTHER = "metric of another type"
COUNT_STRING = "count stored as string"
COUNT_OTHER = "count stored as double or another type"
OFF_TYPE_KINDS = (
    ID_NOT_OBJECTID,
    TIMESTAMP_NOT_DATE,
    METRIC_STRING,
    METRIC_INTEGER,
    METRIC_OTHER,
    COUNT_STRING,
    COUNT_OTHER,
)


def values_at(doc: Any, path: str) -> Iterator[Any]:
    """The values at a dotted path, stepping into arrays as MongoDB's path matching does."""
    head, _, rest = path.partition(".")
    if isinstance(doc, list):
        for item in doc:
            yield from values_at(item, path)
        return
    if not isinstance(doc, Mapping) or head not in doc:
        return
    value = doc[head]
    if rest:
        yield from values_at(value, rest)
    elif isinstance(value, list):
        yield from value
    else:
        yield value


def off_type_kinds(doc: Mapping[str, Any]) -> list[str]:
    """Which off-type kinds a stored document shows (the types extraction cannot read)."""
    kinds = []
    if not isinstance(doc.get("_id"), ObjectId):
        kinds.append(ID_NOT_OBJECTID)
    if not isinstance(doc.get("timestamp"), datetime):
        kinds.append(TIMESTAMP_NOT_DATE)
    metrics = [v for p in metric_paths() for v in values_at(doc, p)]
    counts = [v for p in count_paths() for v in values_at(doc, p)]
    if any(isinstance(v, str) for v in metrics):
        kinds.append(METRIC_STRING)
    if any(isinstance(v, int) and not isinstance(v, bool) for v in metrics):
        kinds.append(METRIC_INTEGER)
    if any(isinstance(v, bool | Mapping | Decimal128) for v in metrics):
        kinds.append(METRIC_OTHER)
    if any(isinstance(v, str) for v in counts):
        kinds.append(COUNT_STRING)
    if any(isinstance(v, float | bool | Mapping | Decimal128) for v in counts):
        kinds.append(COUNT_OTHER)
    return kinds


# -- checkers ----------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_MS_THRESHOLD = 100_000_000_000  # numbers above this are epoch milliseconds (year 5138 in s)
_ISO_Z = re.compile(r"[zZ]$")
_SHOWN_CHARS = 60


_REPR = reprlib.Repr()
_REPR.maxlevel = 2
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = _SHOWN_CHARS


def _shown(value: Any) -> str:
    """`repr(value)`, cut short (and a few levels deep): a reason quotes the value, not a
    whole payload, and a deeply nested one must not exhaust the stack."""
    text = _REPR.repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def _as_float(path: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | Int64):
        raise ValidationError(path, f"expected a number, got {_type_name(value)} {_shown(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise ValidationError(path, f"number {_shown(value)} is too large") from None
    if not math.isfinite(number):
        raise ValidationError(path, f"expected a finite number, got {value!r}")
    return number


def _limited(kind: str, path: str, value: Any) -> float | int:
    """`value` as a number of `kind`: within its `LIMITS`, an int when they say whole."""
    number = _as_float(path, value)
    limits = LIMITS[kind]
    if not limits.minimum <= number <= limits.maximum or (limits.whole and number != int(number)):
        raise ValidationError(path, _outside(kind, limits, number, value))
    return int(number) if limits.whole else number


def _outside(kind: str, limits: Limits, number: float, value: Any) -> str:
    """Why `number` (given as `value`) is no number of `kind`, in the words of its limits."""
    if kind == PERCENT:
        return f"percentage {number:g} is outside [{limits.minimum:g}, {limits.maximum:g}]"
    if kind == TEMPERATURE and number < limits.minimum:
        return f"temperature {number:g} is below absolute zero"
    bounds = []
    if math.isfinite(limits.minimum):
        bounds.append(f">= {limits.minimum:g}")
    if math.isfinite(limits.maximum):
        bounds.append(f"<= {limits.maximum:g}")
    if limits.whole:
        return f"expected a whole number {' and '.join(bounds)}, got {_shown(value)}"
    return f"must be {' and '.join(bounds)}, got {number:g}"


_CHECKERS: dict[str, Callable[[str, Any], float | int]] = {kind: partial(_limited, kind) for kind in LIMITS}
_ARRAY_OF = {PERCENTS: PERCENT}  # array kinds and the kind of their items
ARRAY_KINDS = frozenset(_ARRAY_OF)


def _object(path: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValidationError(path, f"expected an object, got {_type_name(value)}")
    return value


def _array(path: str, value: Any) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise ValidationError(path, f"expected an array, got {_type_name(value)}")
    return list(value)


def _name(path: str, value: Any) -> str:
    if value is None:
        raise ValidationError(path, "is required")
    if not isinstance(value, str):
        raise ValidationError(path, f"expected a string, got {_type_name(value)}")
    if not value.strip():
        raise ValidationError(path, "must not be empty")
    return value


def _numeric_string(path: str, value: Any, coerce: bool) -> Any:
    """With `coerce`, turn a numeric string ("45.2") into a float; anything else passes through."""
    if not coerce or not isinstance(value, str):
        return value
    try:
        return float(value.strip())
    except ValueError:
        raise ValidationError(path, f"expected a number, got string {_shown(value)}") from None


def _value(path: str, kind: str, value: Any, coerce: bool) -> Any:
    if kind in _ARRAY_OF:
        check = _CHECKERS[_ARRAY_OF[kind]]
        items = _array(path, value)
        return [check(f"{path}[{i}]", _numeric_string(f"{path}[{i}]", v, coerce)) for i, v in enumerate(items)]
    return _CHECKERS[kind](path, _numeric_string(path, value, coerce))


def _fields(path: str, section: Mapping[str, Any], spec: FieldSpec, coerce: bool) -> dict[str, Any]:
    """Copy `section`, checking and converting the fields that `spec` names."""
    out = dict(section)
    for field, kind, required in spec:
        value = section.get(field)
        if value is None:
            if required:
                raise ValidationError(f"{path}.{field}", "is required")
            out.pop(field, None)  # null optional fields are stored as absent
            continue
        out[field] = _value(f"{path}.{field}", kind, value, coerce)
    return out


def _used_within_total(path: str, section: Mapping[str, Any]) -> None:
    part, whole = BOUND
    used, total = section.get(part), section.get(whole)
    if used is not None and total is not None and used > total:
        raise ValidationError(f"{path}.{part}", f"{used:g} exceeds {whole} {total:g}")


def _table_object(path: str, table: Table, value: Any, coerce: bool) -> dict[str, Any]:
    """One object of `table` (at `path`, indexes shown), checked, with its child tables."""
    out = _fields(path, _object(path, value), table.fields, coerce)
    if table.named:
        out[NAME] = _name(f"{path}.{NAME}", out.get(NAME))
    if table.bounded:
        _used_within_total(path, out)
    _child_tables(table.path, path, out, coerce)
    return out


def _child_tables(parent: str, path: str, container: dict[str, Any], coerce: bool) -> None:
    """Check, in `container` (the object at `path`), the tables whose parent is `parent`."""
    for table in children(parent):
        here = f"{path}.{table.key}"
        value = container.get(table.key)
        if value is None:
            if table.required:
                raise ValidationError(here, "is required")
            container.pop(table.key, None)
        elif table.repeated:
            items = _array(here, value)
            container[table.key] = [_table_object(f"{here}[{i}]", table, v, coerce) for i, v in enumerate(items)]
        else:
            container[table.key] = _table_object(here, table, value, coerce)


# -- timestamps --------------------------------------------------------------------------


def parse_timestamp(value: Any, path: str = "timestamp") -> datetime:
    """Return `value` as an aware UTC datetime with millisecond precision (BSON's).

    ISO-8601 strings (naive means UTC) and datetimes are cut to the millisecond; epoch
    numbers (seconds, or milliseconds above 1e11) are rounded to the nearest millisecond,
    since a float holds no more than that reliably; `{"$date": ...}` is Extended JSON.
    """
    if isinstance(value, Mapping) and "$date" in value:
        value = value["$date"]
        if isinstance(value, Mapping) and "$numberLong" in value:
            text = value["$numberLong"]
            if not isinstance(text, str) or not re.fullmatch(r"-?[0-9]{1,19}", text.strip()):
                raise ValidationError(path, f"$numberLong must be a string of digits, got {_shown(text)}")
            return _from_epoch(path, int(text), milliseconds=True)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return _from_epoch(path, value, milliseconds=True)
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return _utc_millis(path, moment)
    if isinstance(value, bool):
        raise ValidationError(path, "expected a date, got boolean")
    if isinstance(value, int | float | Int64):
        return _from_epoch(path, value, milliseconds=abs(value) >= _EPOCH_MS_THRESHOLD)
    if isinstance(value, str):
        return _from_iso(path, value)
    if value is None:
        raise ValidationError(path, "is required")
    raise ValidationError(path, f"expected a date, got {_type_name(value)}")


def _from_iso(path: str, value: str) -> datetime:
    text = value.strip()
    if not text:
        raise ValidationError(path, "must not be empty")
    try:
        moment = datetime.fromisoformat(_ISO_Z.sub("+00:00", text))
    except ValueError:
        raise ValidationError(path, f"not an ISO-8601 date: {_shown(value)}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return _utc_millis(path, moment)


def _from_epoch(path: str, value: float, *, milliseconds: bool) -> datetime:
    try:
        if not math.isfinite(value):
            raise ValidationError(path, f"expected a finite epoch time, got {value!r}")
        millis = int(value) if milliseconds and isinstance(value, int) else round(value * (1 if milliseconds else 1000))
        return _EPOCH + timedelta(milliseconds=millis)
    except (OverflowError, ValueError):
        raise ValidationError(path, f"epoch time {_shown(value)} is out of range") from None


def _utc_millis(path: str, moment: datetime) -> datetime:
    try:
        utc = moment.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValidationError(path, f"{moment.isoformat()} is out of range in UTC") from None
    return utc.replace(microsecond=utc.microsecond // 1000 * 1000)


# -- the whole payload -------------------------------------------------------------------


def validate_snapshot(payload: Any, *, org_id: str | None = None, coerce: bool = False) -> dict[str, Any]:
    """Check one agent payload and return the document to store.

    `org_id`, when given, is the organisation the caller acts for: a payload without
    orgId takes it, a payload naming another org is rejected. orgId, agentId and assetId
    must follow the identifier rule (`ID_PATTERN`). An `_id` must be an ObjectId or a
    24-hex-digit string, stored as that ObjectId. `coerce` also accepts numeric strings
    ("45.2") for numeric fields and converts them: for repairing documents that older or
    other code stored with off types (`migrate`, `doctor --fix`), never for agent payloads.
    """
    doc = dict(_object("", payload))
    if org_id is not None:
        given = doc.get("orgId")
        if given is not None and given != org_id:
            raise ValidationError("orgId", f"payload names org {_shown(given)} but the call is for org {org_id!r}")
        doc["orgId"] = org_id
    for field in ID_FIELDS:
        doc[field] = check_id(field, doc.get(field))
    doc["timestamp"] = parse_timestamp(doc.get("timestamp"))
    window = doc.get("timeWindow")
    if window is None:
        raise ValidationError("timeWindow", "is required")
    if not isinstance(window, str) or window not in TIME_WINDOWS:
        raise ValidationError("timeWindow", f"{_shown(window)} is not one of {', '.join(TIME_WINDOWS)}")
    if "_id" in doc:
        doc["_id"] = _object_id(doc["_id"])
    raw = doc.get(PERFORMANCE_DATA)
    if raw is None:
        raise ValidationError(PERFORMANCE_DATA, "is required")
    perf = dict(_object(PERFORMANCE_DATA, raw))
    _child_tables(PERFORMANCE_DATA, PERFORMANCE_DATA, perf, coerce)
    doc[PERFORMANCE_DATA] = perf
    return doc


def asset_id_filter(asset_id: str) -> Any:
    """Filter value for `assets._id`: a 24-hex id matches its ObjectId or the string itself."""
    if ObjectId.is_valid(asset_id) and len(asset_id) == 24:
        return {"$in": [ObjectId(asset_id), asset_id]}
    return asset_id


# -- batches of payloads -----------------------------------------------------------------
#
# A loader reads thousands of payloads at once into Arrow (one C++ JSON parse) and checks
# them as columns: `payload_arrow_schema` is the contract's shape as Arrow types, and
# `conforming_rows` says which rows certainly pass `validate_snapshot` and store exactly
# what it would return. It is deliberately narrower than `validate_snapshot`: any row it
# does not vouch for (a null, a signed zero, an odd date form, a count outside int32) goes
# through `validate_snapshot` one by one, which accepts or rejects it with its reason. So
# the rules stay written once, above; this only recognises their plainest cases.

_BATCH_ISO = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{3})?(Z|\+00:00)$"
_BATCH_ID = f"^[{re.escape(ID_START)}][{re.escape(ID_CHARS)}]*$"  # ID_PATTERN but for its length
_INT32_LIMIT = 2**31  # pymongo stores a smaller int as int32; a batch encodes only those
_BATCH_ITEMS = 1024  # longer lists go one by one (a batch pads every row to its longest)
DATE_KEY = "$date"  # Extended JSON's date wrapper (mongoexport writes timestamps in it)


def payload_arrow_schema(*, wrapped_dates: bool = False) -> Any:
    """The contract's payload as an Arrow schema (pyarrow.Schema), fields in stored order.

    Metrics and counts are float64 (a count is checked to be whole), identifiers and
    names strings, repeated tables lists of structs. `wrapped_dates`: the timestamp is
    Extended JSON `{"$date": "<ISO-8601>"}` instead of a plain ISO-8601 string.
    """
    import pyarrow as pa

    stamp = pa.struct([(DATE_KEY, pa.string())]) if wrapped_dates else pa.string()
    top = [(f, pa.string()) for f in ID_FIELDS]
    top += [("timestamp", stamp), ("timeWindow", pa.string()), (PERFORMANCE_DATA, _arrow_struct(PERFORMANCE_DATA, None))]
    return pa.schema(top)


def _arrow_struct(path: str, table: Table | None) -> Any:
    """The Arrow struct of `table`'s objects (or of performanceData when None)."""
    import pyarrow as pa

    fields: list[tuple[str, Any]] = [(NAME, pa.string())] if table is not None and table.named else []
    for name, kind, _ in table.fields if table is not None else ():
        fields.append((name, pa.list_(pa.float64()) if kind in _ARRAY_OF else pa.float64()))
    for child in children(path):
        struct = _arrow_struct(child.path, child)
        fields.append((child.key, pa.list_(struct) if child.repeated else struct))
    return pa.struct(fields)


def conforming_rows(batch: Any, *, org_id: str | None = None) -> tuple[Any, Any]:
    """Which rows of `batch` (a pyarrow Table of `payload_arrow_schema`) `validate_snapshot`
    certainly accepts unchanged but for types, and their timestamps in epoch milliseconds.

    Returns two numpy arrays: a bool mask of the rows vouched for, and int64 milliseconds
    (meaningful where the mask is true). `org_id`: rows naming another org are not vouched
    for (the caller rejects them one by one, with that reason).
    """
    import numpy as np
    import pyarrow.compute as pc

    n = batch.num_rows
    ok = np.ones(n, dtype=bool)
    for field in ID_FIELDS:
        column = batch.column(field)
        # RE2 is slow on counted repeats ({0,127}): the length is checked apart.
        ok &= _true(pc.match_substring_regex(column, _BATCH_ID)) & _true(pc.less_equal(pc.binary_length(column), ID_MAX_LENGTH))
        if field == "orgId" and org_id is not None:
            ok &= _true(pc.equal(column, org_id))
    ok &= _true(pc.is_in(batch.column("timeWindow"), value_set=_string_array(list(TIME_WINDOWS))))
    stamps = batch.column("timestamp").combine_chunks()
    if _is_struct(stamps):
        stamps = pc.struct_field(stamps, DATE_KEY)
    millis, good_stamps = _iso_millis(stamps)
    ok &= good_stamps
    perf = batch.column(PERFORMANCE_DATA).combine_chunks()
    ok &= ~_section_faults(PERFORMANCE_DATA, None, perf, _true(pc.is_valid(perf)))
    return ok, millis


def _is_struct(array: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_struct(array.type))


def _string_array(values: list[str]) -> Any:
    import pyarrow as pa

    return pa.array(values, type=pa.string())


def _true(mask: Any) -> Any:
    """An Arrow boolean array as numpy, null counted as false."""
    return (mask.fill_null(False) if mask.null_count else mask).to_numpy(zero_copy_only=False)


def _iso_millis(stamps: Any) -> tuple[Any, Any]:
    """Epoch milliseconds of `YYYY-MM-DDTHH:MM:SS[.mmm]Z` (or `+00:00`) strings that name a real instant
    (as `datetime.fromisoformat` reads them), and where they are that. The digits are read
    from the strings' bytes directly: Arrow's strptime accepts February 30 and second 60."""
    import numpy as np
    import pyarrow.compute as pc

    n = len(stamps)
    shaped = _true(pc.match_substring_regex(stamps, _BATCH_ISO))
    millis = np.zeros(n, dtype=np.int64)
    if not shaped.any():
        return millis, shaped
    offsets = np.frombuffer(stamps.buffers()[1], dtype=np.int32)[stamps.offset : stamps.offset + n + 1]
    data = np.frombuffer(stamps.buffers()[2], dtype=np.uint8)
    start = offsets[:-1][shaped].astype(np.int64)

    def number(first: int, last: int, at: Any = start) -> Any:
        value = np.zeros(len(at), dtype=np.int64)
        for i in range(first, last):
            value = value * 10 + (data[at + i].astype(np.int64) - 48)
        return value

    year, month, day = number(0, 4), number(5, 7), number(8, 10)
    hour, minute, second = number(11, 13), number(14, 16), number(17, 19)
    has_fraction = data[start + 19] == ord(".")
    fraction = np.zeros(len(start), dtype=np.int64)
    fraction[has_fraction] = number(20, 23, start[has_fraction])
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_days = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])[np.clip(month, 0, 12)] + (leap & (month == 2))
    real = (year >= 1) & (month >= 1) & (month <= 12) & (day >= 1) & (day <= month_days)
    real &= (hour < 24) & (minute < 60) & (second < 60)
    # Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + np.where(month > 2, -3, 9)) + 2) // 5 + day - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    millis[shaped] = ((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + fraction
    good = shaped.copy()
    good[shaped] = real
    return millis, good


def _number_faults(kind: str, values: Any, present: Any) -> Any:
    """Per item: a present number that `validate_snapshot` would refuse or store otherwise."""
    import numpy as np

    limits = LIMITS[kind]
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(values) | ((values == 0) & np.signbit(values))
        bad |= (values < limits.minimum) | (values > limits.maximum)
        if limits.whole:
            bad |= (values < -_INT32_LIMIT) | (values >= _INT32_LIMIT) | (np.floor(values) != values)
    return present & bad


def _floats(array: Any) -> tuple[Any, Any]:
    """A float64 Arrow array as (values with nulls as 0, where valid)."""
    if not array.null_count:
        return array.to_numpy(zero_copy_only=False), _all(len(array))
    return array.fill_null(0.0).to_numpy(zero_copy_only=False), _true(array.is_valid())


def _all(n: int) -> Any:
    import numpy as np

    return np.ones(n, dtype=bool)


def _section_faults(path: str, table: Table | None, array: Any, present: Any) -> Any:
    """Per item of `array` (objects of `table`, or performanceData): whether a present one
    holds anything `conforming_rows` does not vouch for."""
    import numpy as np
    import pyarrow.compute as pc

    bad = np.zeros(len(array), dtype=bool)
    if table is not None:
        for name, kind, required in table.fields:
            child = pc.struct_field(array, name)
            if kind in _ARRAY_OF:
                valid = present & _true(pc.is_valid(child))
                bad |= _list_faults(child, valid, partial(_item_number_faults, _ARRAY_OF[kind]))
                given = valid
            else:
                values, given = _floats(child)
                given &= present
                bad |= _number_faults(kind, values, given)
            if required:
                bad |= present & ~given
        if table.named:
            names = pc.struct_field(array, NAME)
            bad |= present & ~_true(pc.match_substring_regex(names, "[!-~]"))
        if table.bounded:
            used, has_used = _floats(pc.struct_field(array, BOUND[0]))
            total, has_total = _floats(pc.struct_field(array, BOUND[1]))
            bad |= present & has_used & has_total & (used > total)
    for child_table in children(path):
        child = pc.struct_field(array, child_table.key)
        given = present & _true(pc.is_valid(child))
        if child_table.required:
            bad |= present & ~given
        if child_table.repeated:
            bad |= _list_faults(child, given, partial(_element_faults, child_table))
        else:
            bad |= _section_faults(child_table.path, child_table, child, given)
    return bad


def _item_number_faults(kind: str, items: Any) -> Any:
    values, given = _floats(items)
    return ~given | _number_faults(kind, values, given)


def _element_faults(table: Table, items: Any) -> Any:
    valid = _true(items.is_valid())
    return ~valid | _section_faults(table.path, table, items, valid)


def _list_faults(lists: Any, present: Any, item_faults: Callable[[Any], Any]) -> Any:
    """Per list of `lists` (where `present`): whether any of its items is at fault, or it
    has more than _BATCH_ITEMS of them."""
    import numpy as np
    import pyarrow.compute as pc

    items = pc.list_flatten(lists)
    if len(items) == 0:
        return np.zeros(len(lists), dtype=bool)
    long = _true(pc.greater(pc.list_value_length(lists), _BATCH_ITEMS))
    parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
    faulty = item_faults(items)
    bad = np.bincount(parents[faulty], minlength=len(lists)) > 0
    return present & (bad | long)
