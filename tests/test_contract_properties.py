"""Properties of the snapshot contract, checked on generated inputs (Hypothesis).

- `validate_snapshot` raises nothing but ValidationError, whatever JSON value it is given
  (huge integers, NaN and infinities, deep nesting, a valid payload with any one part
  replaced);
- every accepted form of one instant parses to the same UTC instant (milliseconds);
- `ingest` stores every record or rejects it with a reason, and its counts add up
  (against the real server, so fewer examples).
"""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perf_analytics.errors import ValidationError
from perf_analytics.ingest import LoadOptions, ingest_archives_all_orgs
from perf_analytics.ingest.readers import decode_extended_json
from perf_analytics.schema import SNAPSHOTS, parse_timestamp, validate_snapshot
from perf_analytics.store import Db
from tests.factories import T0, snapshot

# -- strategies ----------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)  # beyond any float and int64
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["", " ", "45.2", "nan", "1e999", "2026-03-01T12:00:00Z", "*", "65a0f0f0f0f0f0f0f0f0f0f0"])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


def _nested(depth: int) -> Any:
    value: Any = 1
    for level in range(depth):
        value = [value] if level % 2 else {"performanceData": value}
    return value


depths = st.integers(min_value=100, max_value=5000)  # the test nests: such values do not print


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside a payload (keys of objects, indexes of arrays)."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


_SNAPSHOT_PATHS = [p for p in _paths(snapshot()) if p]


def _replaced(path: tuple[Any, ...], value: Any, base: dict[str, Any]) -> dict[str, Any]:
    """`base` with the value at `path` replaced (base is a fresh payload each time)."""
    node: Any = base
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return base


spoiled_snapshots = st.builds(
    lambda path, value: _replaced(path, value, snapshot()),
    st.sampled_from(_SNAPSHOT_PATHS),
    json_values,
)

# -- validate_snapshot never raises anything else -------------------------------------------


def _only_validation_errors(value: Any, coerce: bool) -> None:
    try:
        doc = validate_snapshot(value, coerce=coerce)
    except ValidationError as exc:
        assert exc.field is not None and exc.reason
    else:
        assert isinstance(doc, dict) and doc["timestamp"].tzinfo is not None


@pytest.mark.slow
@given(value=json_values | spoiled_snapshots, coerce=st.booleans())
@settings(max_examples=400, deadline=None)
def test_validate_snapshot_raises_only_validation_errors_on_any_json_value(value: Any, coerce: bool) -> None:
    _only_validation_errors(value, coerce)


@given(depth=depths, path=st.none() | st.sampled_from(_SNAPSHOT_PATHS), coerce=st.booleans())
@settings(max_examples=60, deadline=None)
def test_validate_snapshot_raises_only_validation_errors_on_deep_nesting(
    depth: int, path: tuple[Any, ...] | None, coerce: bool
) -> None:
    _only_validation_errors(_nested(depth) if path is None else _replaced(path, _nested(depth), snapshot()), coerce)


# -- every timestamp form of one instant is the same UTC instant ----------------------------

instants = st.datetimes(min_value=datetime(1973, 4, 1), max_value=datetime(4999, 12, 31)).map(
    lambda moment: moment.replace(microsecond=moment.microsecond // 1000 * 1000, tzinfo=UTC)
)
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))


def _forms(instant: datetime, zone: timezone) -> list[Any]:
    """Every way an agent or an archive may write `instant` (milliseconds since the epoch: ms)."""
    ms = (instant - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    local = instant.astimezone(zone)
    forms: list[Any] = [
        instant.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        instant.isoformat(timespec="milliseconds").replace("+00:00", "z"),
        instant.replace(tzinfo=None).isoformat(timespec="milliseconds"),  # naive means UTC
        local.isoformat(timespec="milliseconds"),
        local.isoformat(),
        ms,
        float(ms),
        ms / 1000,  # epoch seconds as a float
        {"$date": instant.isoformat(timespec="milliseconds").replace("+00:00", "Z")},
        {"$date": local.isoformat(timespec="milliseconds")},
        {"$date": ms},
        {"$date": {"$numberLong": str(ms)}},
        instant,
        instant.replace(tzinfo=None),  # a naive BSON date
        local,
    ]
    if ms % 1000 == 0:
        forms.append(ms // 1000)  # whole epoch seconds
    return forms


@pytest.mark.slow
@given(instant=instants, zone=offsets)
@settings(max_examples=300, deadline=None)
def test_every_timestamp_form_of_one_instant_parses_to_the_same_utc_instant(instant: datetime, zone: timezone) -> None:
    for form in _forms(instant, zone):
        parsed = parse_timestamp(form)
        assert (parsed, parsed.utcoffset()) == (instant, timedelta(0)), form
    assert validate_snapshot(snapshot(timestamp=_forms(instant, zone)[3]))["timestamp"] == instant


# -- ingest stores or explains every record -------------------------------------------------


def _valid(index: int) -> dict[str, Any]:
    return snapshot(timestamp=(T0 + timedelta(minutes=index)).isoformat())


lines = st.lists(
    st.one_of(
        st.integers(min_value=0, max_value=30).map(lambda i: orjson.dumps(_valid(i)).decode()),  # repeats: duplicates
        spoiled_snapshots.map(lambda doc: json.dumps(doc)),  # NaN/Infinity are not JSON: rejected as such
        json_values.map(lambda value: json.dumps(value)),
        st.text(alphabet=st.characters(exclude_characters="\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"), max_size=40),
    ),
    min_size=1,
    max_size=25,
)


def _bytes(line: str) -> bytes:
    return line.encode("utf-8", "surrogatepass")


@pytest.mark.slow
@given(records=lines)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_ingest_stores_or_rejects_with_a_reason_every_record(db: Db, records: list[str]) -> None:
    db[SNAPSHOTS].delete_many({})  # one database for the test: each example starts empty
    with tempfile.TemporaryDirectory() as tmp:
        archive, rejects = Path(tmp) / "in.ndjson", Path(tmp) / "rejects.ndjson"
        # Lone surrogates become bytes that are not UTF-8: broken input the loader must explain.
        archive.write_bytes(b"".join(_bytes(line) + b"\n" for line in records))

        summary = ingest_archives_all_orgs(
            db, [archive], options=LoadOptions(rejects=rejects, fmt="ndjson", checkpoint_dir=Path(tmp) / "ckpt")
        )

        rejected = [orjson.loads(line) for line in rejects.read_bytes().splitlines()] if rejects.exists() else []
    assert summary.read == summary.inserted + summary.duplicates + summary.rejected
    assert len(rejected) == summary.rejected
    assert all(entry["reason"] and entry["position"] for entry in rejected)
    assert db[SNAPSHOTS].count_documents({}) == summary.inserted
    explained = {entry["position"] for entry in rejected}
    for number, line in enumerate(records, start=1):
        if f"line {number}" in explained or not _bytes(line).strip():  # blank lines are no records
            continue
        doc = validate_snapshot(decode_extended_json(orjson.loads(line)))  # not rejected: valid, so stored
        key = {"orgId": doc["orgId"], "assetId": doc["assetId"], "timestamp": doc["timestamp"]}
        assert db[SNAPSHOTS].count_documents(key) == 1, line
