"""The contract's limits are written once, in `schema`: the native line encoder receives
them with its table spec, so it vouches for a value exactly when `validate_snapshot`
accepts it, at each limit and just past it, and follows a limit changed there."""

from __future__ import annotations

import json
import math
from typing import Any

import bson
import pytest

from perf_analytics import schema
from perf_analytics.errors import ValidationError
from perf_analytics.ingest.batches import BlockEncoder, _native_table, native_available
from perf_analytics.schema import (
    COUNT,
    ID_MAX_LENGTH,
    LIMITS,
    PERCENT,
    PERFORMANCE_DATA,
    RATE,
    TABLES,
    TEMPERATURE,
    Limits,
    validate_snapshot,
)
from tests.factories import set_path, snapshot

pytestmark = pytest.mark.skipif(not native_available(), reason="perf_analytics_native is not built (make setup)")

_CODEC: bson.CodecOptions[dict[str, Any]] = bson.CodecOptions(tz_aware=True)

# One object of each table in a stored document's path form (the first item of a repeated one).
_PLACES = {
    "performanceData.cpu": "performanceData.cpu",
    "performanceData.memory": "performanceData.memory",
    "performanceData.disk": "performanceData.disk.0",
    "performanceData.network": "performanceData.network",
    "performanceData.network.interfaces": "performanceData.network.interfaces.0",
    "performanceData.system": "performanceData.system",
}


def _line(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode() + b"\n"


def _verdicts(lines: list[bytes]) -> list[bytes | None]:
    """Per line, the native encoder's document or None where it does not vouch for it."""
    encoded = BlockEncoder(None, native=True).encode(lines)
    documents = iter(encoded.documents)
    return [next(documents) if ok else None for ok in encoded.vouched]


def _stored(line: bytes, object_id: Any) -> bytes | None:
    """What the per-record path stores for `line` (with `object_id`), None if it rejects it."""
    try:
        doc = validate_snapshot(json.loads(line))
    except ValidationError:
        return None
    return bson.encode({"_id": object_id, **doc}, codec_options=_CODEC)


def _edges(limits: Limits) -> list[tuple[float, bool]]:
    """(value, whether within `limits`): each finite limit and the next value past it (a
    whole step past, for whole numbers, and then a fraction inside too)."""
    values: list[tuple[float, bool]] = []
    for bound, outward in ((limits.minimum, -math.inf), (limits.maximum, math.inf)):
        if math.isfinite(bound):
            past = bound + math.copysign(1, outward) if limits.whole else math.nextafter(bound, outward)
            values += [(bound, True), (past, False)]
    if limits.whole:
        values.append((max(limits.minimum, 0) + 0.5, False))
    return values


def _field_lines() -> list[tuple[str, float, bool, bytes]]:
    """(field path, value, whether within the limits, line) for every field of the
    contract at and past each of its kind's limits."""
    lines = []
    for table in TABLES:
        for name, kind, _ in table.fields:
            path = f"{_PLACES[table.path]}.{name}"
            item_kind = schema._ARRAY_OF.get(kind, kind)
            base = snapshot()
            if table.bounded:  # the bound between two fields kept out of the way
                base = set_path(set_path(base, f"{_PLACES[table.path]}.{schema.BOUND[0]}", 0), f"{_PLACES[table.path]}.{schema.BOUND[1]}", 1e15)
            for value, within in _edges(LIMITS[item_kind]):
                written = [value] if kind != item_kind else value
                lines.append((path, value, within, _line(set_path(base, path, written))))
    return lines


def test_the_native_encoders_spec_carries_every_limit_the_validator_uses() -> None:
    def tables(spec: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        fields, named, bounded, children = spec
        return [(fields, named, bounded), *(t for child in children for t in tables(child[3]))]

    root, *described = tables(_native_table(PERFORMANCE_DATA, None))  # depth first, as TABLES are listed

    assert root == ([], None, None)
    for table, (fields, named, bounded) in zip(TABLES, described, strict=True):
        expected = []
        for name, kind, required in table.fields:
            limits = LIMITS[schema._ARRAY_OF.get(kind, kind)]
            expected.append((name, kind in schema.ARRAY_KINDS, required, (limits.minimum, limits.maximum, limits.whole)))
        assert fields == expected
        assert named == (schema.NAME if table.named else None)
        assert bounded == (schema.BOUND if table.bounded else None)


def test_native_and_per_record_paths_agree_at_and_just_past_every_limit() -> None:
    cases = _field_lines()

    verdicts = _verdicts([line for *_, line in cases])

    for (path, value, within, line), document in zip(cases, verdicts, strict=True):
        if within:  # both take it, and store the same bytes
            assert document is not None, (path, value)
            assert document == _stored(line, bson.decode(document)["_id"]), (path, value)
        else:  # both refuse it
            assert document is None, (path, value)
            assert _stored(line, None) is None, (path, value)
    limited = {f"{_PLACES[t.path]}.{n}" for t in TABLES for n, k, _ in t.fields if LIMITS[schema._ARRAY_OF.get(k, k)] != Limits()}
    assert {path for path, *_ in cases} == limited
    assert len(limited) > 20


def test_native_and_per_record_paths_agree_on_the_identifier_rule() -> None:
    ids = ["a" * ID_MAX_LENGTH, "a" * (ID_MAX_LENGTH + 1), "a", ""]
    ids += [f"a{c}b" for c in map(chr, range(0x20, 0x7F))] + [f"{c}b" for c in map(chr, range(0x20, 0x7F))]
    lines = [_line(snapshot(assetId=asset)) for asset in ids if '"' not in asset and "\\" not in asset]

    verdicts = _verdicts(lines)

    for line, document in zip(lines, verdicts, strict=True):
        assert (document is None) == (_stored(line, None) is None), line
    assert 0 < sum(d is not None for d in verdicts) < len(lines)


# (kind, its new limits, a field of that kind, a value within them, a value the old limits took but not these)
_CHANGED = [
    (PERCENT, Limits(0.0, 50.0), "performanceData.cpu.usage", 50.0, 50.5),
    (PERCENT, Limits(10.0, 100.0), "performanceData.cpu.perCore", [10.0, 20.0], [10.0, 9.5]),
    (TEMPERATURE, Limits(-40.0), "performanceData.cpu.temperature", -40.0, -41.0),
    (RATE, Limits(0.0, 1e6), "performanceData.network.interfaces.0.bytesRecvPerSec", 1e6, 1e6 + 1),
    (COUNT, Limits(1.0, 5000.0, whole=True), "performanceData.system.processCount", 1, 0),
    (COUNT, Limits(1.0, 5000.0, whole=True), "performanceData.system.threadCount", 5000, 5001),
]


@pytest.mark.parametrize(("kind", "limits", "path", "within", "past"), _CHANGED)
def test_a_limit_changed_in_the_contract_changes_the_native_path_too(
    monkeypatch: pytest.MonkeyPatch, kind: str, limits: Limits, path: str, within: Any, past: Any
) -> None:
    inside, outside = _line(set_path(snapshot(), path, within)), _line(set_path(snapshot(), path, past))
    assert _verdicts([outside])[0] is not None  # the contract in force takes it
    monkeypatch.setitem(schema.LIMITS, kind, limits)

    document, refused = _verdicts([inside, outside])

    assert document is not None and document == _stored(inside, bson.decode(document)["_id"])
    assert refused is None
    with pytest.raises(ValidationError):
        validate_snapshot(json.loads(outside))


def test_a_bound_changed_in_the_contract_changes_the_native_path_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # availableBytes above totalBytes: nothing bounds it in the contract in force.
    line = _line(set_path(snapshot(), "performanceData.memory.availableBytes", 9_000_000_000))
    assert _verdicts([line])[0] is not None
    monkeypatch.setattr(schema, "BOUND", ("availableBytes", "totalBytes"))

    assert _verdicts([line]) == [None]
    with pytest.raises(ValidationError, match="availableBytes: 9e\\+09 exceeds totalBytes 8e\\+09"):
        validate_snapshot(json.loads(line))
