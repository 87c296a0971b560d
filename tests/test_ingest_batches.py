"""NDJSON blocks are parsed, checked and encoded as columns: the documents are byte for
byte those of the per-record path, every record the columns do not vouch for gets the
per-record verdict and reason, and `--dry-run` checks archives without writing anything."""

from __future__ import annotations

import json
import math
from itertools import islice
from pathlib import Path
from typing import Any

import bson
import orjson
import pytest
from click.testing import CliRunner

from perf_analytics.cli import app
from perf_analytics.config import Settings
from perf_analytics.errors import ValidationError
from perf_analytics.ingest import ingest_archives_all_orgs, validate_archives
from perf_analytics.ingest.batches import BlockEncoder
from perf_analytics.schema import SNAPSHOTS, validate_snapshot
from perf_analytics.store import Db
from perf_analytics.synth import generate_fleet
from tests.factories import DELETE, set_path, snapshot

_CODEC: bson.CodecOptions[dict[str, Any]] = bson.CodecOptions(tz_aware=True)


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
def test_block_documents_are_the_bytes_the_per_record_path_stores(dates: str) -> None:
    payloads = [*islice(generate_fleet(orgs=2, assets=3, days=1, seed=7), 300), *_shapes()]
    if dates == "Extended JSON":  # as mongoexport writes them, for a whole archive
        payloads = [{**p, "timestamp": {"$date": p["timestamp"]}} for p in payloads]
    lines = [_line(p) for p in payloads]
    encoded = BlockEncoder(None).encode(lines)

    assert encoded.vouched.all()
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
def test_a_record_the_columns_do_not_vouch_for_gets_its_per_record_verdict(line: bytes, tmp_path: Path) -> None:
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

    encoded = BlockEncoder(None).encode([*good[:20], line, *good[20:]])
    summary = validate_archives([archive], rejects=tmp_path / "rejects.ndjson")

    assert not encoded.vouched[20]
    assert encoded.vouched.sum() >= 40 - 16  # a line Arrow cannot read costs at most its part of 16
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

    summary = ingest_archives_all_orgs(db, [archive], checkpoint_dir=tmp_path / "cp")

    assert (summary.inserted, summary.rejected) == (4, 0)
    for payload in [snapshot(), *odd]:
        stored = db[SNAPSHOTS].find_one({"orgId": "org-a", "assetId": payload["assetId"]}, {"_id": 0})
        assert stored is not None
        assert bson.encode(stored) == bson.encode(validate_snapshot(payload))


def test_a_block_that_arrow_cannot_read_leaves_only_its_unreadable_lines_to_the_per_record_path() -> None:
    good = [_line(snapshot(timestamp=f"2026-03-01T12:{i:02d}:00Z")) for i in range(60)]
    lines = [*good[:7], b"{broken\n", *good[7:33], _line(snapshot(tags=[1])), *good[33:]]

    encoded = BlockEncoder(None).encode(lines)

    assert not encoded.vouched[7] and not encoded.vouched[34]
    assert encoded.vouched.sum() >= 60 - 2 * 16  # only the halves holding a bad line are given up


def test_a_load_stores_the_same_documents_through_blocks_as_one_by_one(db: Db, tmp_path: Path) -> None:
    payloads = list(islice(generate_fleet(orgs=2, assets=2, days=1, seed=3), 500))
    archive = tmp_path / "fleet.ndjson"
    archive.write_bytes(b"".join(orjson.dumps(p) + b"\n" for p in payloads))

    summary = ingest_archives_all_orgs(db, [archive], checkpoint_dir=tmp_path / "cp", batch_size=128)

    assert (summary.read, summary.inserted) == (500, 500)
    stored = {(d["orgId"], d["assetId"], d["timestamp"]): d for d in db[SNAPSHOTS].find({}, {"_id": 0})}
    for payload in payloads:
        doc = validate_snapshot(payload)
        assert bson.encode(stored[doc["orgId"], doc["assetId"], doc["timestamp"]]) == bson.encode(doc)
    again = ingest_archives_all_orgs(db, [archive], checkpoint_dir=tmp_path / "cp", batch_size=128)
    assert (again.inserted, again.duplicates) == (0, 500)


def test_dry_run_checks_without_a_server_and_writes_nothing_but_rejects(tmp_path: Path) -> None:
    archive = tmp_path / "a.ndjson"
    bad = set_path(snapshot(assetId="asset-9"), "performanceData.cpu.usage", 120)
    archive.write_bytes(b"".join(_line(snapshot(timestamp=f"2026-03-01T12:{i:02d}:00Z")) for i in range(3)) + _line(bad))
    unreachable = "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=200"

    result = CliRunner().invoke(app, ["--uri", unreachable, "ingest", str(archive), "--dry-run",
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


def test_dry_run_json_counts_what_a_load_would_send(settings: Settings, db: Db, tmp_path: Path) -> None:
    archive = tmp_path / "a.ndjson"
    archive.write_bytes(b"".join(_line(snapshot(timestamp=f"2026-03-01T12:{i:02d}:00Z")) for i in range(5)))

    result = CliRunner().invoke(app, ["--uri", str(settings.uri), "--db", str(settings.db), "ingest",
                                      str(archive), "--dry-run", "--json", "--org", "org-b"])

    summary = json.loads(result.output)
    assert result.exit_code == 0
    assert (summary["dry_run"], summary["read"], summary["valid"], summary["rejected"]) == (True, 5, 0, 5)
    assert summary["first_rejects"][0]["reason"] == "record belongs to org 'org-a'; this load is for org 'org-b'"
    assert math.isfinite(summary["cpu_seconds"])
    assert db[SNAPSHOTS].count_documents({}) == 0


def test_a_row_far_larger_than_its_block_goes_one_by_one_and_a_too_large_one_is_refused(tmp_path: Path) -> None:
    # 1,200 rows padded to 400 disks would take over the 64 MiB a batch may pad to.
    good = [_line(snapshot(timestamp=f"2026-03-{1 + i // 1440:02d}T{i // 60 % 24:02d}:{i % 60:02d}:00Z"))
            for i in range(1200)]
    many_cores = _line(set_path(snapshot(assetId="asset-2"), "performanceData.cpu.perCore", [1.5] * 3000))
    many_disks = set_path(snapshot(assetId="asset-3"), "performanceData.disk",
                          [{**snapshot()["performanceData"]["disk"][0], "name": f"d{i}"} for i in range(400)])
    too_large = _line(set_path(snapshot(assetId="asset-4"), "performanceData.cpu.perCore", [1.0] * 1_100_000))
    lines = [*good[:10], many_cores, *good[10:20], _line(many_disks), *good[20:], too_large]
    odd = [10, 21, len(lines) - 1]
    archive = tmp_path / "a.ndjson"
    archive.write_bytes(b"".join(lines))

    encoded = BlockEncoder(None).encode(lines)
    summary = validate_archives([archive], rejects=tmp_path / "r.ndjson")

    assert encoded.vouched.sum() == 1200
    assert not encoded.vouched[odd].any()
    assert (summary.valid, summary.rejected) == (1202, 1)
    assert summary.first_rejects[0]["reason"].startswith("the document is ")


def test_lines_that_are_no_object_never_reach_arrow_and_are_rejected_one_by_one(tmp_path: Path) -> None:
    # pyarrow 25's JSON reader ends the process with a segmentation fault on a `null` line.
    good = [_line(snapshot(timestamp=f"2026-03-01T12:{i:02d}:00Z")) for i in range(20)]
    lines = [b"null\n", *good[:10], b" null\n", *good[10:], b"1\n"]
    archive = tmp_path / "a.ndjson"
    archive.write_bytes(b"".join(lines))

    encoded = BlockEncoder(None).encode(lines)
    summary = validate_archives([archive])

    assert encoded.vouched.tolist() == [False, *[True] * 10, False, *[True] * 10, False]
    assert (summary.valid, summary.rejected) == (20, 3)
    assert [r["reason"] for r in summary.first_rejects] == ["expected an object, got null"] * 2 + ["expected an object, got int"]
