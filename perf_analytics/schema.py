"""The snapshot contract: what an agent payload must look like and how it is stored.

`validate_snapshot` checks one payload and returns the normalised document (UTC BSON
date, doubles for metrics, ints for counts, unknown fields kept). Every rule lives in the
tables below, so a new field is added in one place. A broken payload raises
`ValidationError` naming the field path and what is wrong; the caller's mapping is never
modified.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId
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

# Kinds of value a field may hold; each maps to one checker below.
PERCENT = "percent"  # double in [0, 100]
BYTES = "bytes"  # double >= 0
RATE = "rate"  # double >= 0
NUMBER = "number"  # any finite double
COUNT = "count"  # int >= 0
TEMPERATURE = "temperature"  # double above absolute zero

# (field, kind, required) per section of performanceData.
CPU_FIELDS = (("usage", PERCENT, True), ("temperature", TEMPERATURE, False), ("frequency", RATE, False))
MEMORY_FIELDS = (
    ("usagePercent", PERCENT, True),
    ("usedBytes", BYTES, True),
    ("totalBytes", BYTES, True),
    ("availableBytes", BYTES, True),
    ("swapUsed", BYTES, False),
)
DISK_FIELDS = (
    ("usagePercent", PERCENT, True),
    ("totalBytes", BYTES, True),
    ("usedBytes", BYTES, True),
    ("freeBytes", BYTES, True),
    ("readBytesPerSec", RATE, False),
    ("writeBytesPerSec", RATE, False),
    ("readOpsPerSec", RATE, False),
    ("writeOpsPerSec", RATE, False),
)
INTERFACE_FIELDS = (
    ("bytesRecvPerSec", RATE, True),
    ("bytesSentPerSec", RATE, True),
    ("packetsRecvPerSec", RATE, True),
    ("packetsSentPerSec", RATE, True),
)
SYSTEM_FIELDS = (("uptime", NUMBER, True), ("processCount", COUNT, True), ("threadCount", COUNT, True))

# Sections of performanceData: cpu and memory are what every agent sends; the others may be
# absent on agents that cannot measure them, but are complete when present.
REQUIRED_SECTIONS = ("cpu", "memory")
OPTIONAL_SECTIONS = ("disk", "network", "system")

_EPOCH_MS_THRESHOLD = 100_000_000_000  # numbers above this are epoch milliseconds (year 5138 in s)
_ISO_Z = re.compile(r"[zZ]$")


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
        raise ValidationError(path, f"expected a number, got {_type_name(value)} {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValidationError(path, f"expected a finite number, got {value!r}")
    return number


def _percent(path: str, value: Any) -> float:
    number = _as_float(path, value)
    if not 0.0 <= number <= 100.0:
        raise ValidationError(path, f"percentage {number:g} is outside [0, 100]")
    return number


def _non_negative(path: str, value: Any) -> float:
    number = _as_float(path, value)
    if number < 0:
        raise ValidationError(path, f"must be >= 0, got {number:g}")
    return number


def _temperature(path: str, value: Any) -> float:
    number = _as_float(path, value)
    if number < -273.15:
        raise ValidationError(path, f"temperature {number:g} is below absolute zero")
    return number


def _count(path: str, value: Any) -> int:
    number = _as_float(path, value)
    if number < 0 or number != int(number):
        raise ValidationError(path, f"expected a whole number >= 0, got {value!r}")
    return int(number)


_CHECKERS: dict[str, Callable[[str, Any], float | int]] = {
    PERCENT: _percent,
    BYTES: _non_negative,
    RATE: _non_negative,
    NUMBER: _as_float,
    COUNT: _count,
    TEMPERATURE: _temperature,
}


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
        raise ValidationError(path, f"expected a number, got string {value!r}") from None


def _fields(
    path: str, section: Mapping[str, Any], spec: tuple[tuple[str, str, bool], ...], coerce: bool = False
) -> dict[str, Any]:
    """Copy `section`, checking and converting the fields that `spec` names."""
    out = dict(section)
    for field, kind, required in spec:
        value = section.get(field)
        if value is None:
            if required:
                raise ValidationError(f"{path}.{field}", "is required")
            out.pop(field, None)  # null optional fields are stored as absent
            continue
        out[field] = _CHECKERS[kind](f"{path}.{field}", _numeric_string(f"{path}.{field}", value, coerce))
    return out


def _used_within_total(path: str, section: Mapping[str, Any]) -> None:
    used, total = section.get("usedBytes"), section.get("totalBytes")
    if used is not None and total is not None and used > total:
        raise ValidationError(f"{path}.usedBytes", f"{used:g} exceeds totalBytes {total:g}")


def parse_timestamp(value: Any, path: str = "timestamp") -> datetime:
    """Return `value` as an aware UTC datetime with millisecond precision (BSON's)."""
    if isinstance(value, Mapping) and "$date" in value:
        value = value["$date"]
        if isinstance(value, Mapping) and "$numberLong" in value:
            value = int(value["$numberLong"])
            return _from_epoch(path, value, milliseconds=True)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return _from_epoch(path, value, milliseconds=True)
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return _millis(moment.astimezone(UTC))
    if isinstance(value, bool):
        raise ValidationError(path, "expected a date, got boolean")
    if isinstance(value, int | float | Int64):
        return _from_epoch(path, value, milliseconds=abs(value) >= _EPOCH_MS_THRESHOLD)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValidationError(path, "must not be empty")
        try:
            moment = datetime.fromisoformat(_ISO_Z.sub("+00:00", text))
        except ValueError:
            raise ValidationError(path, f"not an ISO-8601 date: {value!r}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return _millis(moment.astimezone(UTC))
    if value is None:
        raise ValidationError(path, "is required")
    raise ValidationError(path, f"expected a date, got {_type_name(value)}")


def _from_epoch(path: str, value: float, *, milliseconds: bool) -> datetime:
    if not math.isfinite(value):
        raise ValidationError(path, f"expected a finite epoch time, got {value!r}")
    seconds = value / 1000 if milliseconds else value
    try:
        return _millis(datetime.fromtimestamp(seconds, tz=UTC))
    except (OverflowError, OSError, ValueError):
        raise ValidationError(path, f"epoch time {value!r} is out of range") from None


def _millis(moment: datetime) -> datetime:
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def validate_snapshot(payload: Any, *, org_id: str | None = None, coerce: bool = False) -> dict[str, Any]:
    """Check one agent payload and return the document to store.

    `org_id`, when given, is the organisation the caller acts for: a payload without
    orgId takes it, a payload naming another org is rejected. `coerce` also accepts
    numeric strings ("45.2") for numeric fields and converts them: for repairing documents
    that older or other code stored with off types (`migrate`, `doctor --fix`), never for
    agent payloads.
    """
    doc = dict(_object("", payload))
    if org_id is not None:
        given = doc.get("orgId")
        if given is not None and given != org_id:
            raise ValidationError("orgId", f"payload names org {given!r} but the call is for org {org_id!r}")
        doc["orgId"] = org_id
    for field in ("orgId", "agentId", "assetId"):
        value = doc.get(field)
        if value is None:
            raise ValidationError(field, "is required")
        doc[field] = _name(field, value)
    doc["timestamp"] = parse_timestamp(doc.get("timestamp"))
    window = doc.get("timeWindow")
    if window is None:
        raise ValidationError("timeWindow", "is required")
    if window not in TIME_WINDOWS:
        raise ValidationError("timeWindow", f"{window!r} is not one of {', '.join(TIME_WINDOWS)}")
    if "_id" in doc and not isinstance(doc["_id"], ObjectId | str):
        raise ValidationError("_id", f"expected an ObjectId or string, got {_type_name(doc['_id'])}")

    raw = doc.get("performanceData")
    if raw is None:
        raise ValidationError("performanceData", "is required")
    perf = dict(_object("performanceData", raw))
    for section in REQUIRED_SECTIONS:
        if perf.get(section) is None:
            raise ValidationError(f"performanceData.{section}", "is required")

    cpu = _fields("performanceData.cpu", _object("performanceData.cpu", perf["cpu"]), CPU_FIELDS, coerce)
    if cpu.get("perCore") is not None:
        cores = _array("performanceData.cpu.perCore", cpu["perCore"])
        paths = [f"performanceData.cpu.perCore[{i}]" for i in range(len(cores))]
        cpu["perCore"] = [_percent(p, _numeric_string(p, v, coerce)) for p, v in zip(paths, cores, strict=True)]
    else:
        cpu.pop("perCore", None)
    perf["cpu"] = cpu

    memory = _fields(
        "performanceData.memory", _object("performanceData.memory", perf["memory"]), MEMORY_FIELDS, coerce
    )
    _used_within_total("performanceData.memory", memory)
    perf["memory"] = memory

    if perf.get("disk") is not None:
        disks = []
        for i, item in enumerate(_array("performanceData.disk", perf["disk"])):
            path = f"performanceData.disk[{i}]"
            disk = _fields(path, _object(path, item), DISK_FIELDS, coerce)
            disk["name"] = _name(f"{path}.name", disk.get("name"))
            _used_within_total(path, disk)
            disks.append(disk)
        perf["disk"] = disks
    else:
        perf.pop("disk", None)

    if perf.get("network") is not None:
        network = dict(_object("performanceData.network", perf["network"]))
        if network.get("totalUsage") is None:
            raise ValidationError("performanceData.network.totalUsage", "is required")
        total_path = "performanceData.network.totalUsage"
        network["totalUsage"] = _non_negative(total_path, _numeric_string(total_path, network["totalUsage"], coerce))
        interfaces = []
        raw_interfaces = network.get("interfaces")
        if raw_interfaces is None:
            raise ValidationError("performanceData.network.interfaces", "is required")
        for i, item in enumerate(_array("performanceData.network.interfaces", raw_interfaces)):
            path = f"performanceData.network.interfaces[{i}]"
            interface = _fields(path, _object(path, item), INTERFACE_FIELDS, coerce)
            interface["name"] = _name(f"{path}.name", interface.get("name"))
            interfaces.append(interface)
        network["interfaces"] = interfaces
        perf["network"] = network
    else:
        perf.pop("network", None)

    if perf.get("system") is not None:
        perf["system"] = _fields(
            "performanceData.system", _object("performanceData.system", perf["system"]), SYSTEM_FIELDS, coerce
        )
    else:
        perf.pop("system", None)

    doc["performanceData"] = perf
    return doc


def asset_id_filter(asset_id: str) -> Any:
    """Filter value for `assets._id`: a 24-hex id matches its ObjectId or the string itself."""
    if ObjectId.is_valid(asset_id) and len(asset_id) == 24:
        return {"$in": [ObjectId(asset_id), asset_id]}
    return asset_id
