"""Bulk loading against the real server: formats, rejects, duplicates, lastSeen, resume."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import bson
import orjson
import pytest
import zstandard
from bson import ObjectId, json_util

from perf_analytics.config import Settings
from perf_analytics.ingest import LoadOptions, ingest_archives, ingest_archives_all_orgs
from perf_analytics.schema import ASSETS, SNAPSHOTS, validate_snapshot
from perf_analytics.store import Db
from tests.conftest import Cli
from tests.factories import DELETE, T0, series, set_path, snapshot


def write_ndjson(path: Path, records: list[Any]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    data = ("\n".join(lines) + "\n").encode()
    return _compress(path, data)


def _compress(path: Path, data: bytes) -> Path:
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    elif path.name.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


def stored(db: Db, org: str | None = None) -> list[dict[str, Any]]:
    """The stored snapshots without _id, in key order: what two equal loads must share."""
    query = {"orgId": org} if org else {}
    docs = db[SNAPSHOTS].find(query, {"_id": 0}).sort([("orgId", 1), ("assetId", 1), ("timestamp", 1)])
    return list(docs)


def load(db: Db, paths: list[Path], tmp_path: Path, org_id: str | None = None, progress: Any = None,
         **kw: Any) -> Any:
    kw.setdefault("checkpoint_dir", tmp_path / "checkpoints")
    options = LoadOptions(**kw)
    if org_id is not None:
        return ingest_archives(db, paths, org_id, options=options, progress=progress)
    return ingest_archives_all_orgs(db, paths, options=options, progress=progress)


def test_loading_an_archive_stores_every_valid_record(db: Db, tmp_path: Path) -> None:
    archive = write_ndjson(tmp_path / "a.ndjson", series(50))
    summary = load(db, [archive], tmp_path)
    assert (summary.read, summary.inserted, summary.duplicates, summary.rejected) == (50, 50, 0, 0)
    docs = stored(db)
    assert len(docs) == 50
    assert docs[0] == validate_snapshot(series(1)[0])
    assert db[ASSETS].count_documents({}) == 0  # snapshots never go into assets


def test_reloading_an_archive_inserts_nothing_and_counts_duplicates(db: Db, tmp_path: Path) -> None:
    archive = write_ndjson(tmp_path / "a.ndjson", series(40))
    load(db, [archive], tmp_path, batch_size=7)
    before = stored(db)
    again = load(db, [archive], tmp_path, batch_size=7)
    assert (again.read, again.inserted, again.duplicates) == (40, 0, 40)
    assert stored(db) == before


def _mongoexport_lines(records: list[dict[str, Any]], options: json_util.JSONOptions) -> list[str]:
    out = []
    for r in records:
        doc = validate_snapshot(r)
        doc["_id"] = ObjectId()
        out.append(json_util.dumps(doc, json_options=options))
    return out


@pytest.mark.parametrize("suffix", ["", ".gz", ".zst"])
@pytest.mark.parametrize("kind", ["ndjson", "json-array", "relaxed", "canonical", "bson"])
def test_every_archive_format_and_compression_loads_the_same_snapshots(
    db: Db, tmp_path: Path, kind: str, suffix: str
) -> None:
    records = series(12)
    expected = [validate_snapshot(r) for r in records]
    if kind == "ndjson":
        path = write_ndjson(tmp_path / f"a.ndjson{suffix}", records)
    elif kind == "json-array":
        path = _compress(tmp_path / f"a.json{suffix}", json.dumps(records, indent=1).encode())
    elif kind == "relaxed":
        path = write_ndjson(tmp_path / f"export.json{suffix}", _mongoexport_lines(records, json_util.RELAXED_JSON_OPTIONS))
    elif kind == "canonical":
        path = write_ndjson(tmp_path / f"export.json{suffix}", _mongoexport_lines(records, json_util.CANONICAL_JSON_OPTIONS))
    else:
        data = b"".join(bson.encode({"_id": ObjectId(), **e}) for e in expected)
        path = _compress(tmp_path / f"performance_snapshots.bson{suffix}", data)
    summary = load(db, [path], tmp_path)
    assert (summary.inserted, summary.rejected) == (12, 0)
    assert stored(db) == expected


def test_a_mongodump_archive_keeps_its_document_ids(db: Db, tmp_path: Path) -> None:
    ids = [ObjectId() for _ in range(3)]
    data = b"".join(bson.encode({"_id": i, **validate_snapshot(r)}) for i, r in zip(ids, series(3), strict=True))
    path = _compress(tmp_path / "dump.bson", data)
    load(db, [path], tmp_path)
    assert sorted(d["_id"] for d in db[SNAPSHOTS].find({}, {"_id": 1})) == sorted(ids)


def test_the_format_can_be_forced_when_the_name_says_nothing(db: Db, tmp_path: Path) -> None:
    path = write_ndjson(tmp_path / "archive.data", series(3))
    summary = load(db, [path], tmp_path, fmt="ndjson")
    assert summary.inserted == 3


def test_malformed_records_are_rejected_with_field_reason_and_line(db: Db, tmp_path: Path) -> None:
    good = series(4)
    records: list[Any] = [
        good[0],
        "{not json",
        set_path(good[1], "orgId", DELETE),
        set_path(good[2], "performanceData.cpu.usage", 250),
        good[3],
        set_path(snapshot(timestamp="2026-03-02T00:00:00Z"), "performanceData.disk.0.usedBytes", 9e12),
    ]
    archive = write_ndjson(tmp_path / "mixed.ndjson", records)
    rejects = tmp_path / "rejects.ndjson"
    summary = load(db, [archive], tmp_path, rejects=rejects)
    assert (summary.read, summary.inserted, summary.rejected) == (6, 2, 4)
    lines = [orjson.loads(line) for line in rejects.read_bytes().splitlines()]
    assert [(r["position"], r["field"]) for r in lines] == [
        ("line 2", ""),
        ("line 3", "orgId"),
        ("line 4", "performanceData.cpu.usage"),
        ("line 6", "performanceData.disk[0].usedBytes"),
    ]
    assert lines[0]["reason"].startswith("not valid JSON")
    assert lines[1]["reason"] == "is required"
    assert "outside [0, 100]" in lines[2]["reason"]
    assert all(r["source"] == str(archive) for r in lines)
    assert lines[0]["record"] == "{not json"
    assert json.loads(lines[2]["record"])["performanceData"]["cpu"]["usage"] == 250
    # nothing of a rejected record was written
    assert [d["timestamp"] for d in stored(db)] == [T0, T0 + timedelta(minutes=3)]


def test_a_record_of_another_org_is_rejected_when_the_load_is_for_one_org(db: Db, tmp_path: Path) -> None:
    archive = write_ndjson(tmp_path / "a.ndjson", series(2, org="org-a") + series(2, org="org-b"))
    summary = load(db, [archive], tmp_path, org_id="org-a", rejects=tmp_path / "r.ndjson")
    assert (summary.inserted, summary.rejected) == (2, 2)
    assert {d["orgId"] for d in stored(db)} == {"org-a"}
    reasons = [orjson.loads(x)["reason"] for x in (tmp_path / "r.ndjson").read_bytes().splitlines()]
    assert reasons == ["record belongs to org 'org-b'; this load is for org 'org-a'"] * 2


def test_last_seen_moves_to_the_newest_snapshot_and_never_back(db: Db, tmp_path: Path) -> None:
    asset_id = str(ObjectId())
    db[ASSETS].insert_one({"_id": ObjectId(asset_id), "orgId": "org-a", "name": "web-1"})
    recent = write_ndjson(tmp_path / "recent.ndjson", series(30, asset=asset_id, start=T0 + timedelta(days=1)))
    old = write_ndjson(tmp_path / "old.ndjson", series(30, asset=asset_id))
    summary = load(db, [recent], tmp_path, batch_size=8)
    assert summary.orphaned == 0
    newest = T0 + timedelta(days=1, minutes=29)
    assert db[ASSETS].find_one({"_id": ObjectId(asset_id)})["lastSeen"] == newest
    load(db, [old], tmp_path)
    asset = db[ASSETS].find_one({"_id": ObjectId(asset_id)})
    assert asset["lastSeen"] == newest
    assert "updatedAt" in asset


def test_snapshots_of_unknown_assets_are_stored_and_reported_orphaned(db: Db, tmp_path: Path) -> None:
    db[ASSETS].insert_one({"_id": "known", "orgId": "org-a"})
    archive = write_ndjson(tmp_path / "a.ndjson", series(3, asset="known") + series(2, asset="ghost"))
    summary = load(db, [archive], tmp_path)
    assert (summary.inserted, summary.orphaned) == (5, 2)
    assert summary.orphan_assets == ["org-a/ghost"]


def test_loading_never_touches_the_asset_of_another_org_with_the_same_id(db: Db, tmp_path: Path) -> None:
    db[ASSETS].insert_many([{"_id": "shared-id", "orgId": "org-b", "name": "theirs"}])
    archive = write_ndjson(tmp_path / "a.ndjson", series(3, org="org-a", asset="shared-id"))
    summary = load(db, [archive], tmp_path)
    assert summary.orphaned == 3
    assert db[ASSETS].find_one({"_id": "shared-id"}) == {"_id": "shared-id", "orgId": "org-b", "name": "theirs"}


def test_a_cut_compressed_archive_keeps_what_was_readable_and_rejects_the_rest(db: Db, tmp_path: Path) -> None:
    whole = gzip.compress(("\n".join(json.dumps(r) for r in series(400)) + "\n").encode())
    path = tmp_path / "cut.ndjson.gz"
    path.write_bytes(whole[: len(whole) // 2])
    summary = load(db, [path], tmp_path, rejects=tmp_path / "r.ndjson", batch_size=7, allow_partial=True)
    assert 0 < summary.inserted < 400
    assert summary.rejected == 1
    assert summary.read == summary.inserted + 1
    reject = orjson.loads((tmp_path / "r.ndjson").read_bytes())
    assert "archive damaged, unreadable from here on" in reject["reason"]
    readable = zlib.decompressobj(wbits=31).decompress(whole[: len(whole) // 2])
    assert reject["position"] == f"byte {len(readable)}"  # where the decompressed content ends
    assert summary.inserted == readable.count(b"\n")


def test_an_interrupted_load_resumes_after_its_checkpoint(db: Db, tmp_path: Path) -> None:
    records: list[Any] = series(60)
    records[5] = "garbage"
    archive = write_ndjson(tmp_path / "a.ndjson", records)
    rejects = tmp_path / "r.ndjson"
    calls = {"n": 0}

    def stop_after_two_batches(done_bytes: int, docs: int) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        load(db, [archive], tmp_path, batch_size=10, rejects=rejects, progress=stop_after_two_batches)
    assert 0 < db[SNAPSHOTS].count_documents({}) < 59
    summary = load(db, [archive], tmp_path, batch_size=10, rejects=rejects)
    assert summary.resumed_from >= 20
    assert (summary.read, summary.inserted + summary.duplicates, summary.rejected) == (60, 59, 1)
    assert db[SNAPSHOTS].count_documents({}) == 59
    assert len(rejects.read_bytes().splitlines()) == 1


def _cli_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MONGODB_URI", "PERF_DB")}
    return env


@pytest.mark.slow
@pytest.mark.parametrize("commit_seconds", ["0", "1"], ids=["commit-every-batch", "grouped-commits"])
def test_kill_9_during_a_load_then_rerun_ends_exactly_like_one_clean_run(
    db: Db, settings: Settings, server_uri: str, tmp_path: Path, commit_seconds: str
) -> None:
    """Killed between commits, a load has inserted batches its checkpoint does not cover yet
    (with grouped commits, several): the re-run must count them as duplicates, not lose
    their lastSeen, and end like a clean run."""
    records: list[Any] = []
    for asset in ("a1", "a2", "a3"):
        records += series(2000, asset=asset)
    for i in range(0, len(records), 997):
        records[i] = set_path(records[i], "performanceData.memory.usagePercent", -4)  # rejects
    archive = write_ndjson(tmp_path / "big.ndjson.zst", records)
    for a in ("a1", "a2"):
        db[ASSETS].insert_one({"_id": a, "orgId": "org-a"})

    cp_dir = tmp_path / "cp"
    rejects = tmp_path / "rejects.ndjson"
    cmd = [sys.executable, "-m", "perf_analytics.cli", "--uri", server_uri, "--db", db.name, "ingest",
           str(archive), "--rejects", str(rejects), "--batch-size", "250", "--commit-seconds", commit_seconds, "--checkpoint-dir", str(cp_dir)]
    proc = subprocess.Popen(cmd, env=_cli_env(settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        files = list(cp_dir.glob("ingest-*.json")) if cp_dir.exists() else []
        if files and json.loads(files[0].read_text())["records_done"] >= 1500:
            break
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the load finished before it could be killed; make the archive bigger"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    partial = db[SNAPSHOTS].count_documents({})
    assert 0 < partial < len(records)

    rerun = subprocess.run([*cmd, "--json"], env=_cli_env(settings), capture_output=True, text=True, check=False)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["resumed_from"] > 0

    clean_db = db.client[db.name + "_clean"]
    try:
        for a in ("a1", "a2"):
            clean_db[ASSETS].insert_one({"_id": a, "orgId": "org-a"})
        from perf_analytics.store import ensure_indexes

        ensure_indexes(clean_db)
        clean = ingest_archives_all_orgs(clean_db, [archive], options=LoadOptions(
            rejects=tmp_path / "clean-rejects.ndjson", checkpoint_dir=tmp_path / "cp2", batch_size=250))
        assert stored(db) == stored(clean_db)
        assert list(db[ASSETS].find({}, {"updatedAt": 0}).sort("_id")) == list(
            clean_db[ASSETS].find({}, {"updatedAt": 0}).sort("_id"))
        got = [orjson.loads(x) for x in rejects.read_bytes().splitlines()]
        want = [orjson.loads(x) for x in (tmp_path / "clean-rejects.ndjson").read_bytes().splitlines()]
        assert got == want and len(want) == clean.rejected > 0
        assert summary["read"] == clean.read
        assert summary["inserted"] + summary["duplicates"] == clean.inserted
        assert not list(cp_dir.glob("ingest-*.json"))  # a finished load leaves no checkpoint
    finally:
        db.client.drop_database(db.name + "_clean")


def test_cli_ingest_prints_a_summary_and_json(cli: Cli, db: Db, tmp_path: Path) -> None:
    archive = write_ndjson(tmp_path / "a.ndjson", [*series(3), "oops"])
    base = ["ingest", str(archive),
            "--checkpoint-dir", str(tmp_path / "cp")]
    result = cli(*base, "--rejects", str(tmp_path / "r.ndjson"))
    assert result.exit_code == 0, result.output
    first, second = result.stdout.splitlines()[:2]
    assert first.startswith("read 4 · inserted 3 · duplicates 0 · rejected 1 · orphaned 3 · ")
    assert second == f"rejected records and reasons: {tmp_path / 'r.ndjson'}"
    result = cli(*base, "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert (data["read"], data["inserted"], data["duplicates"], data["rejected"]) == (4, 0, 3, 1)


def test_cli_ingest_of_a_missing_file_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    result = cli("ingest", str(tmp_path / "nope.ndjson"))
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


def test_parallel_writers_keep_the_rejects_in_archive_order(db: Db, tmp_path: Path) -> None:
    records: list[Any] = series(90)
    bad_lines = [4, 17, 18, 40, 77, 90]
    for line in bad_lines:
        records[line - 1] = set_path(records[line - 1], "performanceData.cpu.usage", -1)
    archive = write_ndjson(tmp_path / "a.ndjson", records)
    rejects = tmp_path / "r.ndjson"
    summary = load(db, [archive], tmp_path, batch_size=3, workers=4, rejects=rejects)
    assert (summary.read, summary.inserted, summary.rejected) == (90, 84, 6)
    positions = [orjson.loads(x)["position"] for x in rejects.read_bytes().splitlines()]
    assert positions == [f"line {n}" for n in bad_lines]
    assert db[SNAPSHOTS].count_documents({}) == 84


def test_last_seen_ends_at_the_newest_snapshot_with_parallel_writers(db: Db, tmp_path: Path) -> None:
    db[ASSETS].insert_many([{"_id": "a1", "orgId": "org-a"}, {"_id": "a2", "orgId": "org-a"}])
    records = [r for pair in zip(series(300, asset="a1"), series(300, asset="a2"), strict=True) for r in pair]
    archive = write_ndjson(tmp_path / "a.ndjson", records)
    load(db, [archive], tmp_path, batch_size=4, workers=4)
    newest = T0 + timedelta(minutes=299)
    assert [a["lastSeen"] for a in db[ASSETS].find({}).sort("_id")] == [newest, newest]


def test_a_batch_touching_hundreds_of_assets_updates_every_last_seen(db: Db, tmp_path: Path) -> None:
    # One update command of more than 100 statements never returns on FerretDB 1.24:
    # lastSeen updates must go out in smaller chunks.
    assets = [f"host-{i:03d}" for i in range(150)]
    db[ASSETS].insert_many([{"_id": a, "orgId": "org-a"} for a in assets])
    records = [snapshot(assetId=a, timestamp=T0.isoformat()) for a in assets]
    load(db, [write_ndjson(tmp_path / "a.ndjson", records)], tmp_path, batch_size=500)
    assert db[ASSETS].count_documents({"lastSeen": T0}) == 150
