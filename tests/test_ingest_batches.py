"""NDJSON blocks are parsed, checked and encoded at once, by the native line encoder or,
without it, as Arrow columns: the documents are byte for byte those of the per-record
path, every record a block path does not vouch for gets the per-record verdict and reason,
and `--dry-run` checks archives without writing anything."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from itertools import islice
from pathlib import Path
from typing import Any

import bson
import orjson
import pytest
from bson import ObjectId

from perf_analytics.cli import app
from perf_analytics.errors import ValidationError
from perf_analytics.ingest import LoadOptions, ingest_archives_all_orgs, validate_archives
from perf_analytics.ingest.batches import BlockEncoder, native_available
from perf_analytics.ingest.readers import parse_line
from perf_analytics.schema import SNAPSHOTS, validate_snapshot
from perf_analytics.store import MAX_DOCUMENT_BYTES, Db, check_nesting
from perf_analytics.synth import FleetSpec, generate_fleet
from tests.conftest import Cli
from tests.factories import DELETE, set_path, snapshot

_CODEC: bson.CodecOptions[dict[str, Any]] = bson.CodecOptions(tz_aware=True)
_NATIVE = pytest.param(
    "native", marks=pytest.mark.skipif(not native_available(), reason="perf_analytics_native is not built (make setup)")
)


@pytest.fixture(params=[_NATIVE, "arrow"])
def block_path(request: pytest.FixtureRequest) -> str:
    """Which block path a test's BlockEncoder takes: the native line encoder or Arrow's."""
    return str(request.param)


def _encoder(block_path: str, org_id: str | None = None) -> BlockEncoder:
    return BlockEncoder(org_id, native=block_path == "native")


def _line(payload: Any) -> bytes:
    return (payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)).encode() + b"\n"


def _per_record_bytes(line: bytes, object_id: Any) -> bytes:
    """What the per-record path stores for `line`, with the given _id."""
    doc = validate_snapshot(bson.json_util.loads(line)) if b'"$' in line else validate_snapshot(orjson.loads(line))
    return bson.encode({"_id": object_id, **doc}, codec_options=_CODEC)


def _shapes() -> list[Any]:
    """Payloads of every shape the contract allows, plainly written."""
    base = snapshot()
    return [
        base,
        set_path(base, "performanceData.cpu.temperature", DELETE),
        set_path(base, "performanceData.cpu.perCore", []),
        set_path(base, "performanceData.cpu.perCore", [float(i) for i in range(12)]),
        set_path(base, "performanceData.memory.swapUsed", None),
        set_path(base, "performanceData.disk", []),
        set_path(base, "performanceData.disk", DELETE),
        set_path(base, "performanceData.network", DELETE),
        set_path(base, "performanceData.system", DELETE),
        set_path(base, "performanceData.disk.0.name", "Диск C: ✓"),
        set_path(base, "performanceData.disk.0.readOpsPerSec", None),
        snapshot(assetId="a" * 128, agentId="x", timestamp="2024-02-29T23:59:59.999Z"),
        snapshot(timestamp="1969-12-31T23:59:59.001+00:00"),
        set_path(base, "performanceData.system.processCount", 2**31 - 1),
        set_path(base, "performanceData.memory.swapUsed", 2**60),
    ]


@pytest.mark.parametrize("dates", ["ISO-8601", "Extended JSON"])
def test_block_documents_are_the_bytes_the_per_record_path_stores(dates: str, block_path: str) -> None:
    payloads = [*islice(generate_fleet(FleetSpec(orgs=2, assets=3, days=1, seed=7)), 300), *_shapes()]
    if dates == "Extended JSON":  # as mongoexport writes them, for a whole archive
        payloads = [{**p, "timestamp": {"$date": p["timestamp"]}} for p in payloads]
    lines = [_line(p) for p in payloads]
    encoded = _encoder(block_path).encode(lines)

    assert all(encoded.vouched)
    for line, document in zip(lines, encoded.documents, strict=True):
        stored = bson.decode(document, codec_options=_CODEC)
        assert document == _per_record_bytes(line, stored["_id"])
    assert len({bson.decode(d)["_id"] for d in encoded.documents}) == len(lines)


@pytest.mark.parametrize(
    "line",
    [
        _line(set_path(snapshot(), "performanceData.cpu.usage", 120)),
        _line(set_path(snapshot(), "performanceData.cpu.usage", "45.2")),
        _line(set_path(snapshot(), "performanceData.cpu.usage", True)),
        _line(set_path(snapshot(), "performanceData.cpu.usage", None)),
        _line(set_path(snapshot(), "performanceData.cpu.perCore", [1, None])),
        _line(set_path(snapshot(), "performanceData.memory.usedBytes", 9e12)),
        _line(set_path(snapshot(), "performanceData.disk.0.name", " ")),
        _line(set_path(snapshot(), "performanceData.disk", [None])),
        _line(set_path(snapshot(), "performanceData.network.interfaces", DELETE)),
        _line(set_path(snapshot(), "performanceData.system.processCount", 1.5)),
        _line(set_path(snapshot(), "performanceData.system.processCount", 2**31)),
        _line(snapshot(assetId="a/b")),
        _line(snapshot(assetId="a" * 129)),
        _line(snapshot(timestamp="2026-02-30T00:00:00Z")),
        _line(snapshot(timestamp="2026-03-01T12:00:00+02:00")),
        _line(snapshot(timestamp=1772366400)),
        _line(snapshot(timeWindow="2min")),
        _line(snapshot(tags={"site": "lyon"})),
        _line(set_path(snapshot(), "performanceData.gpu", {"usage": 3})),
        _line(set_path(snapshot(), "performanceData.disk.0.serial", "X1")),
        _line(snapshot(_id="65c347ae3e442a4f8c6c8c55")),
        b'{"orgId": "org-a", "orgId": "org-b"}\n',
        _line(snapshot()).replace(b'"usage": 37.5', b'"usage": NaN'),
        _line(snapshot()).replace(b'"usage": 37.5', b'"usage": -0.0'),
        _line(snapshot()).replace(b'"usage": 37.5', b'"usage": -0'),
        _line(snapshot()).rstrip(b"\n") + b" " + _line(snapshot()),
        b"[1, 2]\n",
        b"not json\n",
    ],
)
def test_a_record_the_block_paths_do_not_vouch_for_gets_its_per_record_verdict(
    line: bytes, block_path: str, tmp_path: Path
) -> None:
    good = [_line(snapshot(timestamp=f"2026-03-01T12:{i:02d}:00Z")) for i in range(40)]
    archive = tmp_path / "mixed.ndjson"
    archive.write_bytes(b"".join(good[:20]) + line + b"".join(good[20:]))
    try:
        payload = orjson.loads(line)
        expected: tuple[str, str] | None = None
        validate_snapshot(payload)
    except orjson.JSONDecodeError:
        expected = ("", "not valid JSON")
    except ValidationError as exc:
        expected = (exc.field, exc.reason)

    encoded = _encoder(block_path).encode([*good[:20], line, *good[20:]])
    summary = validate_archives([archive], options=LoadOptions(rejects=tmp_path / "rejects.ndjson"))

    # Vouched for only when the per-record path stores it (a signed zero, natively).
    assert not encoded.vouched[20] or expected is None
    # A line Arrow cannot read costs at most its part of 16; the native encoder reads each alone.
    others = sum(encoded.vouched) - encoded.vouched[20]
    assert others == 40 if block_path == "native" else others >= 40 - 16
    assert summary.read == 41
    rejects = [orjson.loads(r) for r in (tmp_path / "rejects.ndjson").read_bytes().splitlines()]
    if expected is None:
        assert (summary.valid, summary.rejected, rejects) == (41, 0, [])
    else:
        assert summary.valid == 40
        assert [(r["position"], r["field"]) for r in rejects] == [("line 21", expected[0])]
        assert rejects[0]["reason"].startswith(expected[1])


def test_records_outside_the_columns_are_stored_as_the_per_record_path_stores_them(db: Db, tmp_path: Path) -> None:
    odd = [
        snapshot(assetId="asset-2", tags={"site": "lyon"}),
        set_path(snapshot(assetId="asset-3"), "performanceData.gpu", {"usage": 3}),
        set_path(snapshot(assetId="asset-4"), "performanceData.system.processCount", 12.0),
    ]
    archive = tmp_path / "a.ndjson"
    archive.write_bytes(b"".join(_line(p) for p in [snapshot(), *odd]))

    summary = ingest_archives_all_orgs(db, [archive], options=LoadOptions(checkpoint_dir=tmp_path / "cp"))

    assert (summary.inserted, summary.rejected) == (4, 0)
    for payload in [snapshot(), *odd]:
        stored = db[SNAPSHOTS].find_one({"orgId": "org-a", "assetId": payload["assetId"]}, {"_id": 0})
        assert stored is not None
        assert bson.encode(stored) == bson.encode(validate_snapshot(payload))


def test_a_block_that_arrow_cannot_read_leaves_only_its_unreadable_lines_to_the_per_record_path(
    block_path: str,
) -> None:
    good = [_line(snapshot(timestamp=f"2026-03-01T12:{i:02d}:00Z")) for i in range(60)]
    lines = [*good[:7], b"{broken\n", *good[7:33], _line(snapshot(tags=[1])), *good[33:]]

    encoded = _encoder(block_path).encode(lines)

    assert not encoded.vouched[7] and not encoded.vouched[34]
    assert sum(encoded.vouched) >= (60 if block_path == "native" else 60 - 2 * 16)  # Arrow: the halves holding a bad line


@pytest.mark.slow
def test_a_load_stores_the_same_documents_through_blocks_as_one_by_one(db: Db, tmp_path: Path) -> None:
    payloads = list(islice(generate_fleet(FleetSpec(orgs=2, assets=2, days=1, seed=3)), 500))
    archive = tmp_path / "fleet.ndjson"
    archive.write_bytes(b"".join(orjson.dumps(p) + b"\n" for p in payloads))

    options = LoadOptions(checkpoint_dir=tmp_path / "cp", batch_size=128)
    summary = ingest_archives_all_orgs(db, [archive], options=options)

    assert (summary.read, summary.inserted) == (500, 500)
    stored = {(d["orgId"], d["assetId"], d["timestamp"]): d for d in db[SNAPSHOTS].find({}, {"_id": 0})}
    for payload in payloads:
        doc = validate_snapshot(payload)
        assert bson.encode(stored[doc["orgId"], doc["assetId"], doc["timestamp"]]) == bson.encode(doc)
    again = ingest_archives_all_orgs(db, [archive], options=options)
    assert (again.inserted, again.duplicates) == (0, 500)


def test_dry_run_checks_without_a_server_and_writes_nothing_but_rejects(cli: Cli, tmp_path: Path) -> None:
    archive = tmp_path / "a.ndjson"
    bad = set_path(snapshot(assetId="asset-9"), "performanceData.cpu.usage", 120)
    archive.write_bytes(b"".join(_line(snapshot(timestamp=f"2026-03-01T12:{i:02d}:00Z")) for i in range(3)) + _line(bad))
    unreachable = "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=200"

    result = cli.invoke(app, ["--uri", unreachable, "ingest", str(archive), "--dry-run",
                                      "--rejects", str(tmp_path / "r.ndjson"),
                                      "--checkpoint-dir", str(tmp_path / "cp")])

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("dry run, nothing written: read 4 · valid 3 · rejected 1 · ")
    assert "µs of client CPU a record" in lines[0]
    assert lines[1] == "rejected line 4: performanceData.cpu.usage: percentage 120 is outside [0, 100]"
    assert lines[2] == f"rejected records and reasons: {tmp_path / 'r.ndjson'}"
    assert not (tmp_path / "cp").exists()
    assert len((tmp_path / "r.ndjson").read_bytes().splitlines()) == 1


def test_dry_run_json_counts_what_a_load_would_send(cli: Cli, db: Db, tmp_path: Path) -> None:
    archive = tmp_path / "a.ndjson"
    archive.write_bytes(b"".join(_line(snapshot(timestamp=f"2026-03-01T12:{i:02d}:00Z")) for i in range(5)))

    result = cli("ingest", str(archive), "--dry-run", "--json", "--org", "org-b")

    summary = json.loads(result.output)
    assert result.exit_code == 0
    assert (summary["dry_run"], summary["read"], summary["valid"], summary["rejected"]) == (True, 5, 0, 5)
    assert summary["first_rejects"][0]["reason"] == "record belongs to org 'org-a'; this load is for org 'org-b'"
    assert math.isfinite(summary["cpu_seconds"])
    assert db[SNAPSHOTS].count_documents({}) == 0


@pytest.mark.slow
def test_a_row_far_larger_than_its_block_goes_one_by_one_and_a_too_large_one_is_refused(
    block_path: str, tmp_path: Path
) -> None:
    # 1,200 rows padded to 400 disks would take over the 64 MiB a batch may pad to.
    good = [_line(snapshot(timestamp=f"2026-03-{1 + i // 1440:02d}T{i // 60 % 24:02d}:{i % 60:02d}:00Z"))
            for i in range(1200)]
    many_cores = _line(set_path(snapshot(assetId="asset-2"), "performanceData.cpu.perCore", [1.5] * 3000))
    many_disks = set_path(snapshot(assetId="asset-3"), "performanceData.disk",
                          [{**snapshot()["performanceData"]["disk"][0], "name": f"d{i}"} for i in range(400)])
    too_large = _line(set_path(snapshot(assetId="asset-4"), "performanceData.cpu.perCore", [1.0] * 1_100_000))
    lines = [*good[:10], many_cores, *good[10:20], _line(many_disks), *good[20:], too_large]
    archive = tmp_path / "a.ndjson"
    archive.write_bytes(b"".join(lines))

    encoded = _encoder(block_path).encode(lines)
    summary = validate_archives([archive], options=LoadOptions(rejects=tmp_path / "r.ndjson"))

    # Arrow pads a block's rows to the widest, so the wide ones go one by one; the native
    # encoder writes each row apart. Neither vouches for the one too large to store.
    wide = [10, 21] if block_path == "arrow" else []
    assert [i for i, v in enumerate(encoded.vouched) if not v] == [*wide, len(lines) - 1]
    assert (summary.valid, summary.rejected) == (1202, 1)
    assert summary.first_rejects[0]["reason"].startswith("the document is ")


def test_lines_that_are_no_object_never_reach_arrow_and_are_rejected_one_by_one(block_path: str, tmp_path: Path) -> None:
    # pyarrow 25's JSON reader ends the process with a segmentation fault on a `null` line.
    good = [_line(snapshot(timestamp=f"2026-03-01T12:{i:02d}:00Z")) for i in range(20)]
    lines = [b"null\n", *good[:10], b" null\n", *good[10:], b"1\n"]
    archive = tmp_path / "a.ndjson"
    archive.write_bytes(b"".join(lines))

    encoded = _encoder(block_path).encode(lines)
    summary = validate_archives([archive])

    assert encoded.vouched == [False, *[True] * 10, False, *[True] * 10, False]
    assert (summary.valid, summary.rejected) == (20, 3)
    assert [r["reason"] for r in summary.first_rejects] == ["expected an object, got null"] * 2 + ["expected an object, got int"]


# -- the native line encoder against the per-record path -------------------------------

_PLACE = "\u2063PLACE\u2063"  # stands for a raw JSON literal in a payload before it is written

_NUMBERS = [
    "0", "-0", "-0.0", "0.0", "1e2", "1E+2", "1e-2", "100", "100.0", "100.00000000000001", "1e400", "-1e400",
    "1.5e-400", "4.9e-324", "2.2250738585072014e-308", "18446744073709551615", "18446744073709551616",
    "-9223372036854775808", "-9223372036854775809", "123456789012345678901234567890", "0.1",
    "0.30000000000000004", "9007199254740993", "9007199254740993.0", "1.7976931348623157e308", "01", "1.",
    ".5", "+1", "NaN", "Infinity", "-", "1e", "0x10", "2147483647", "2147483648", "2147483647.0",
    "2147483647.5", "-273.15", "-273.16", "99.99999999999999999999", "true", "null", '"5"', "[]", "{}",
    "1e22", "1e23", "123456789012345.6", "1234567890123456.7", "0.000001234", "5e-324", "12.0e0",
]
_STRINGS = [
    '"C:\\\\"', '"\\u00e9t\\u00e9"', '"\\ud83d\\ude00 disk"', '"\\ud83d"', '"\\ude00x"', '"a\\u0000b"', '" "',
    '"\\t"', '"a b"', '""', '"' + "x" * 129 + '"', '"Диск ✓"', '"\\/x\\b\\f\\n\\r\\"\\\\"', '"\\x41"', '"\\u00"',
    '"a\tb"', '"org-a"', '"org-b"', '"1min"', '"1MIN"', '"asset:1.x_y-z"', "null", "7", '["a"]',
]
_STAMPS = [
    '"2026-03-01T12:00:00Z"', '"2026-03-01T12:00:00.123Z"', '"2026-03-01T12:00:00.1Z"',
    '"2026-03-01T12:00:00.123456Z"', '"2026-03-01T12:00:00+00:00"', '"2026-03-01T12:00:00.999+00:00"',
    '"2026-03-01T12:00:00-00:00"', '"2026-03-01T12:00:00+01:00"', '"2026-03-01T12:00:00"', '"2026-03-01 12:00:00Z"',
    '"2024-02-29T23:59:59.999Z"', '"2026-02-29T00:00:00Z"', '"2026-04-31T00:00:00Z"', '"2026-03-01T24:00:00Z"',
    '"2026-03-01T23:60:00Z"', '"2026-03-01T23:59:60Z"', '"0001-01-01T00:00:00Z"', '"0000-01-01T00:00:00Z"',
    '"9999-12-31T23:59:59.999Z"', '"1969-12-31T23:59:59.001Z"', '"2026-03-01T12:00:00z"', "1772366400",
    "1772366400000", '{"$date": "2026-03-01T12:00:00.042Z"}', '{"$date": "2026-03-01T12:00:00Z", "x": 1}',
    '{"$date": {"$numberLong": "1772366400000"}}', '{"$date": 1772366400000}', '{"$date": "2026-03-01T12:00:00.5Z"}',
    '{"$date": "2026-03-01T12:00:00+01:00"}', '{"$date": null}', '{"$dat": "2026-03-01T12:00:00Z"}', "null", '""',
]


def _paths(value: Any, prefix: str = "") -> list[str]:
    """Every dotted path to a leaf or container below `value` (list items by index)."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return []
    found = []
    for key, child in items:
        path = f"{prefix}.{key}" if prefix else key
        found += [path, *_paths(child, path)]
    return found


def _with_literal(payload: dict[str, Any], path: str, literal: str) -> bytes:
    """`payload` as a JSON line with the value at `path` written as the raw `literal`."""
    placed = set_path(payload, path, _PLACE)
    return json.dumps(placed, ensure_ascii=False).replace(json.dumps(_PLACE, ensure_ascii=False), literal).encode() + b"\n"


def _shuffled(value: Any, rng: random.Random) -> Any:
    """`value` with the keys of every object in a random order."""
    if isinstance(value, dict):
        keys = list(value)
        rng.shuffle(keys)
        return {k: _shuffled(value[k], rng) for k in keys}
    if isinstance(value, list):
        return [_shuffled(v, rng) for v in value]
    return value


def _hostile_lines(seed: int) -> list[bytes]:
    """Lines an agent should not send, or sends oddly: every field given odd numbers,
    strings, dates, nulls and types; keys shuffled, repeated, unknown; bytes cut, added,
    corrupted; odd whitespace."""
    rng = random.Random(seed)
    payloads = list(islice(generate_fleet(FleetSpec(orgs=1, assets=2, days=1, seed=seed)), 40))
    lines: list[bytes] = []
    for payload in [snapshot(), *payloads[:6]]:
        paths = _paths(payload)
        numeric = [p for p in paths if isinstance(_get(payload, p), int | float)]
        text = [p for p in paths if isinstance(_get(payload, p), str) and p != "timestamp"]
        lines += [_with_literal(payload, p, rng.choice(_NUMBERS)) for p in numeric for _ in range(3)]
        lines += [_with_literal(payload, p, f"{rng.uniform(0, 100):.{rng.randint(1, 19)}g}") for p in numeric]
        lines += [_with_literal(payload, p, f"{rng.uniform(0, 1e12):.{rng.randint(1, 19)}e}") for p in numeric]
        lines += [_with_literal(payload, p, rng.choice(_STRINGS)) for p in text for _ in range(3)]
        lines += [_with_literal(payload, p, rng.choice(["null", "[]", "{}", "[null]", '"x"', "0"])) for p in paths]
        lines += [_with_literal(payload, "timestamp", stamp) for stamp in _STAMPS]
        lines += [_with_literal(payload, p, literal) for p in ("_id", "tags", "performanceData.gpu",
                  "performanceData.cpu.extra") for literal in ('"65c347ae3e442a4f8c6c8c55"', '{"$oid": "65c347ae3e442a4f8c6c8c55"}', "1")]
        plain = json.dumps(payload).encode()
        lines += [json.dumps(_shuffled(payload, rng)).encode() + b"\n" for _ in range(5)]
        lines += [plain[: rng.randrange(len(plain))] + b"\n" for _ in range(5)]
        lines += [plain.replace(b'"orgId"', b'"orgId": "org-z", "orgId"', 1) + b"\n",
                  plain.replace(b'"usage"', b'"usage": 1, "usage"', 1) + b"\n",
                  plain.replace(b'"name"', b'"\\u006eame"', 1) + b"\n",
                  plain.replace(b'"timeWindow"', b'"time\\u0057indow"', 1) + b"\n",
                  plain.replace(b", ", b" ,\t\r\n ") + b"\n", plain.replace(b": ", b"\x0c: ") + b"\n",
                  b"\xef\xbb\xbf" + plain + b"\n", plain + b" x\n", plain + b"\r\n", b"  " + plain + b"  \n",
                  plain.replace(b'"C:"', b'"C\xff"') + b"\n", plain.replace(b'"eth0"', b'"eth\xc3"') + b"\n",
                  plain + b"\n" + plain + b"\n"]
        for _ in range(10):
            at = rng.randrange(len(plain))
            lines.append(plain[:at] + bytes([rng.randrange(256)]) + plain[at + 1:] + b"\n")
    return lines


def _get(payload: Any, path: str) -> Any:
    for key in path.split("."):
        payload = payload[int(key)] if isinstance(payload, list) else payload[key]
    return payload


def _per_record_verdict(line: bytes, object_id: Any, org_id: str | None) -> bytes | None:
    """The document the per-record path stores for `line` (with `object_id`), or None
    when it rejects the line: the loader's own parse, validation and encoding."""
    record = parse_line(0, "line 1", line)
    if record.error is not None:
        return None
    try:
        doc = validate_snapshot(record.payload)
        if org_id is not None and doc["orgId"] != org_id:
            return None
        check_nesting(doc)
        data = bson.encode({"_id": object_id, **doc}, codec_options=_CODEC)
    except (ValidationError, bson.errors.BSONError, OverflowError, ValueError):
        return None
    return data if len(data) <= MAX_DOCUMENT_BYTES else None


@pytest.mark.slow
@pytest.mark.skipif(not native_available(), reason="perf_analytics_native is not built (make setup)")
@pytest.mark.parametrize("org_id", [None, "org-a"])
def test_the_native_encoder_vouches_only_for_what_the_per_record_path_stores_the_same(org_id: str | None) -> None:
    lines = [line for seed in (1, 2) for line in _hostile_lines(seed)]

    encoded = BlockEncoder(org_id, native=True).encode(lines)

    documents = iter(encoded.documents)
    accepted = 0
    for line, ok in zip(lines, encoded.vouched, strict=True):
        if ok:
            document = next(documents)
            stored = bson.decode(document, codec_options=_CODEC)
            assert document == _per_record_verdict(line, stored["_id"], org_id), line
        accepted += _per_record_verdict(line, ObjectId(), org_id) is not None
    assert next(documents, None) is None
    # Most lines the per-record path accepts are still plain records (a value in range,
    # keys in an order of their own), which the native encoder takes whole.
    assert sum(encoded.vouched) >= 0.75 * accepted > 200


@pytest.mark.skipif(not native_available(), reason="perf_analytics_native is not built (make setup)")
def test_the_native_encoder_keeps_each_payloads_key_order_as_the_per_record_path_does() -> None:
    rng = random.Random(5)
    payloads = [_shuffled(p, rng) for p in islice(generate_fleet(FleetSpec(orgs=1, assets=2, days=1, seed=5)), 50)]
    lines = [_line(p) for p in payloads]

    encoded = BlockEncoder(None, native=True).encode(lines)

    assert all(encoded.vouched)
    for line, document in zip(lines, encoded.documents, strict=True):
        assert document == _per_record_bytes(line, bson.decode(document)["_id"])


def _verdicts(rejects: bytes) -> list[tuple[str, str, str]]:
    return [(r["position"], r["field"], r["reason"]) for r in map(orjson.loads, rejects.splitlines())]


@pytest.mark.slow
@pytest.mark.skipif(not native_available(), reason="perf_analytics_native is not built (make setup)")
def test_native_and_arrow_paths_give_every_line_the_same_verdict(tmp_path: Path) -> None:
    lines = _hostile_lines(3)
    archive = tmp_path / "odd.ndjson"
    archive.write_bytes(b"".join(line if line.endswith(b"\n") else line + b"\n" for line in lines))
    script = (
        "import json, sys\n"
        "if sys.argv[2] == 'arrow':\n"
        "    sys.modules['perf_analytics_native'] = None  # the extension as if it were not built\n"
        "from perf_analytics.ingest import LoadOptions, validate_archives\n"
        "s = validate_archives([sys.argv[1]], options=LoadOptions(rejects=sys.argv[1] + '.' + sys.argv[2]))\n"
        "print(json.dumps([s.read, s.valid, s.rejected]))\n"
    )

    runs = {}
    for side in ("native", "arrow"):
        done = subprocess.run([sys.executable, "-c", script, str(archive), side], capture_output=True, check=True)
        runs[side] = (orjson.loads(done.stdout), (tmp_path / f"odd.ndjson.{side}").read_bytes(), done.stderr.decode())

    assert runs["native"][0] == runs["arrow"][0]
    assert runs["native"][0][2] > 100
    # The same rejects, fields and reasons, in order (the records shown may carry new _ids).
    assert _verdicts(runs["native"][1]) == _verdicts(runs["arrow"][1])
    assert "is not built: NDJSON lines are checked and encoded by the Arrow batch path" in runs["arrow"][2]
    assert "is not built" not in runs["native"][2]
