"""Damaged archives against the real server: a cut or corrupt file is never accepted silently.

Each unreadable tail (gzip, zstd, JSON array, BSON) becomes one reject at the byte of the
decompressed content where reading stopped; the load fails (IncompleteLoad, exit 1) unless
partial loads are allowed, and no checkpoint claims the damaged archive as read.
"""

from __future__ import annotations

import gzip
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import bson
import orjson
import pytest
import zstandard

from perf_analytics.errors import IncompleteLoad
from perf_analytics.schema import SNAPSHOTS, validate_snapshot
from perf_analytics.store import Db
from tests.conftest import Cli
from tests.factories import series
from tests.test_ingest import load

RECORDS = series(55)


def ndjson_bytes(records: list[Any]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def zstd_frames(*parts: bytes) -> list[bytes]:
    return [zstandard.ZstdCompressor().compress(p) for p in parts]


def incomplete(db: Db, path: Path, tmp_path: Path, **kw: Any) -> Any:
    """Load an archive that must be found damaged; return the summary the error carries."""
    with pytest.raises(IncompleteLoad) as caught:
        load(db, [path], tmp_path, rejects=tmp_path / "rejects.ndjson", **kw)
    assert "--allow-partial" in str(caught.value)
    return caught.value.summary


def only_reject(tmp_path: Path) -> dict[str, Any]:
    lines = (tmp_path / "rejects.ndjson").read_bytes().splitlines()
    assert len(lines) == 1
    reject: dict[str, Any] = orjson.loads(lines[0])
    assert reject["reason"].startswith("archive damaged, unreadable from here on")
    return reject


def test_a_one_frame_zstd_archive_cut_at_60_percent_fails_with_a_reject_at_byte_0(db: Db, tmp_path: Path) -> None:
    # The frame is one block: nothing of it decodes before its end, which the file lacks.
    (frame,) = zstd_frames(ndjson_bytes(RECORDS))
    path = tmp_path / "cut.ndjson.zst"
    path.write_bytes(frame[: len(frame) * 6 // 10])
    summary = incomplete(db, path, tmp_path)
    assert (summary.read, summary.inserted, summary.rejected) == (1, 0, 1)
    assert only_reject(tmp_path)["position"] == "byte 0"
    assert "ends inside a frame" in only_reject(tmp_path)["reason"]
    assert summary.damaged[0]["file_bytes_read"] == summary.damaged[0]["file_bytes"] == path.stat().st_size


def test_a_two_frame_zstd_archive_cut_in_its_second_frame_loads_the_first_and_fails(db: Db, tmp_path: Path) -> None:
    head = ndjson_bytes(RECORDS[:5])
    first, second = zstd_frames(head, ndjson_bytes(RECORDS[5:]))
    path = tmp_path / "cut.ndjson.zst"
    path.write_bytes(first + second[: len(second) // 2])
    summary = incomplete(db, path, tmp_path)
    assert (summary.read, summary.inserted, summary.rejected) == (6, 5, 1)
    assert summary.damaged[0]["records_before"] == 5
    assert only_reject(tmp_path)["position"] == f"byte {len(head)}"
    assert db[SNAPSHOTS].count_documents({}) == 5


def test_a_zstd_archive_cut_at_a_frame_boundary_is_complete_and_loads_fully(db: Db, tmp_path: Path) -> None:
    first, _second = zstd_frames(ndjson_bytes(RECORDS[:5]), ndjson_bytes(RECORDS[5:]))
    path = tmp_path / "first-frame.ndjson.zst"
    path.write_bytes(first)
    summary = load(db, [path], tmp_path)
    assert (summary.read, summary.inserted, summary.rejected, summary.damaged) == (5, 5, 0, [])


def test_every_frame_of_a_multi_frame_zstd_archive_loads(db: Db, tmp_path: Path) -> None:
    path = tmp_path / "frames.ndjson.zst"
    path.write_bytes(b"".join(zstd_frames(*(ndjson_bytes(RECORDS[i : i + 10]) for i in range(0, 55, 10)))))
    summary = load(db, [path], tmp_path, batch_size=7)
    assert (summary.read, summary.inserted, summary.rejected) == (55, 55, 0)


def test_a_zstd_archive_opening_with_a_skippable_frame_is_detected_and_loads(db: Db, tmp_path: Path) -> None:
    skippable = struct.pack("<II", 0x184D2A5E, 4) + b"meta"
    path = tmp_path / "with-metadata.ndjson.zst"
    path.write_bytes(skippable + b"".join(zstd_frames(ndjson_bytes(RECORDS[:20]), ndjson_bytes(RECORDS[20:]))))
    summary = load(db, [path], tmp_path)
    assert (summary.read, summary.inserted, summary.rejected) == (55, 55, 0)


def test_garbage_after_a_complete_zstd_frame_is_damage_after_every_record(db: Db, tmp_path: Path) -> None:
    content = ndjson_bytes(RECORDS)
    path = tmp_path / "tail.ndjson.zst"
    path.write_bytes(zstd_frames(content)[0] + b"this is no zstd frame")
    summary = incomplete(db, path, tmp_path)
    assert (summary.read, summary.inserted, summary.rejected) == (56, 55, 1)
    assert only_reject(tmp_path)["position"] == f"byte {len(content)}"


def test_a_cut_gzip_archive_fails_the_cli_after_its_summary_unless_partial_is_allowed(
    cli: Cli, db: Db, tmp_path: Path
) -> None:
    whole = gzip.compress(ndjson_bytes(series(400)))
    path = tmp_path / "cut.ndjson.gz"
    path.write_bytes(whole[: len(whole) // 2])
    readable = zlib.decompressobj(wbits=31).decompress(whole[: len(whole) // 2])
    good = readable.count(b"\n")
    base = ["ingest", str(path),
            "--checkpoint-dir", str(tmp_path / "cp"), "--batch-size", "50"]

    result = cli(*base)
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"read {good + 1:,} · inserted {good:,} · duplicates 0 · rejected 1 · ")
    assert lines[1] == (
        f"damaged: {path} unreadable from byte {len(readable)} of its content, after {good:,} records "
        f"(file read to byte {len(whole) // 2:,} of {len(whole) // 2:,})"
    )
    assert result.stderr == (
        f"Error: 1 damaged archive (cut.ndjson.gz unreadable from byte {len(readable)}): the load is "
        "incomplete; what came before the damage is loaded. Load an intact copy, or pass "
        "--allow-partial to accept what was readable\n"
    )

    result = cli(*base, "--allow-partial", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["read"], data["duplicates"], data["rejected"]) == (good + 1, good, 1)
    assert data["damaged"][0]["position"] == f"byte {len(readable)}"


def test_a_cut_json_array_fails_with_a_reject_at_the_end_of_the_file(db: Db, tmp_path: Path) -> None:
    text = json.dumps(RECORDS[:10], indent=1).encode()
    path = tmp_path / "cut.json"
    path.write_bytes(text[: len(text) - 40])  # inside the last item
    summary = incomplete(db, path, tmp_path)
    assert (summary.read, summary.inserted, summary.rejected) == (10, 9, 1)
    reject = only_reject(tmp_path)
    assert reject["position"] == f"byte {path.stat().st_size}"
    assert "JSON array broken after item 9" in reject["reason"]


def test_a_bson_dump_cut_in_its_last_document_fails_with_a_reject_at_that_document(
    db: Db, tmp_path: Path
) -> None:
    docs = [bson.encode(validate_snapshot(r)) for r in RECORDS[:8]]
    path = tmp_path / "performance_snapshots.bson.gz"
    path.write_bytes(gzip.compress(b"".join(docs)[:-10]))
    summary = incomplete(db, path, tmp_path)
    assert (summary.read, summary.inserted, summary.rejected) == (8, 7, 1)
    assert only_reject(tmp_path)["position"] == f"byte {sum(len(d) for d in docs[:7])}"


def test_the_checkpoint_never_passes_a_damaged_archive_and_a_partial_rerun_finishes(
    db: Db, tmp_path: Path
) -> None:
    whole = gzip.compress(ndjson_bytes(series(400, asset="cut")))
    damaged = tmp_path / "cut.ndjson.gz"
    damaged.write_bytes(whole[: len(whole) // 2])
    intact = tmp_path / "intact.ndjson"
    intact.write_bytes(ndjson_bytes(series(30, asset="intact")))
    cp_dir = tmp_path / "checkpoints"
    options: dict[str, Any] = {"rejects": tmp_path / "rejects.ndjson", "batch_size": 10, "commit_seconds": 0}

    with pytest.raises(IncompleteLoad) as caught:
        load(db, [damaged, intact], tmp_path, **options)
    first = caught.value.summary
    good = first.damaged[0]["records_before"]
    assert first.inserted == good + 30  # the archive after the damaged one is loaded too
    (checkpoint,) = cp_dir.glob("ingest-*.json")
    saved = json.loads(checkpoint.read_text())
    assert saved["archive_index"] == 0 and saved["records_done"] <= good
    assert saved["rejects_bytes"] == 0

    again = load(db, [damaged, intact], tmp_path, allow_partial=True, **options)
    assert again.resumed_from == saved["counts"]["read"] > 0
    assert (again.read, again.inserted + again.duplicates, again.rejected) == (good + 31, good + 30, 1)
    assert len((tmp_path / "rejects.ndjson").read_bytes().splitlines()) == 1
    assert not list(cp_dir.glob("ingest-*.json"))  # accepted as partial: the load is finished
    assert db[SNAPSHOTS].count_documents({}) == good + 30


def test_a_plain_ndjson_archive_cut_inside_its_last_line_fails_with_a_reject_where_that_line_starts(
    db: Db, tmp_path: Path
) -> None:
    whole = ndjson_bytes(RECORDS[:10])
    cut_at = whole.rindex(b"\n", 0, len(whole) - 1) + 1  # the last line starts here
    path = tmp_path / "cut.ndjson"
    path.write_bytes(whole[: cut_at + 40])
    summary = incomplete(db, path, tmp_path)
    assert (summary.inserted, summary.rejected) == (9, 1)
    assert only_reject(tmp_path)["position"] == f"byte {cut_at}"


def test_a_last_line_without_end_of_line_that_parses_is_a_record_not_damage(db: Db, tmp_path: Path) -> None:
    path = tmp_path / "no-newline.ndjson"
    path.write_bytes(ndjson_bytes(RECORDS[:3]).rstrip(b"\n"))
    summary = load(db, [path], tmp_path)
    assert (summary.inserted, summary.rejected) == (3, 0)


def _deep_bson(levels: int) -> bytes:
    """A document nested `levels` deep, built by hand: pymongo's encoder stops near 1,000."""
    doc = bson.encode({})
    for _ in range(levels):
        body = b"\x03a\x00" + doc + b"\x00"
        doc = struct.pack("<i", len(body) + 4) + body
    return doc


def test_a_bson_record_nested_past_the_decoders_limit_is_one_reject(db: Db, tmp_path: Path) -> None:
    good = [bson.encode(validate_snapshot(r)) for r in RECORDS[:4]]
    path = tmp_path / "deep.bson"
    path.write_bytes(good[0] + good[1] + _deep_bson(3000) + good[2] + good[3])
    summary = load(db, [path], tmp_path, rejects=tmp_path / "rejects.ndjson")
    assert (summary.inserted, summary.rejected) == (4, 1)
    reject = orjson.loads((tmp_path / "rejects.ndjson").read_bytes())
    assert reject["position"] == f"byte {len(good[0]) + len(good[1])}"
    assert reject["reason"].startswith("nested deeper than")


def test_a_json_array_item_with_bad_extended_json_and_deep_nesting_is_one_reject(db: Db, tmp_path: Path) -> None:
    bad = orjson.dumps({**RECORDS[1], "count": {"$numberLong": "not a number"}})
    bad = bad[:-1] + b', "deep": ' + b"[" * 5000 + b"]" * 5000 + b"}"  # deeper than any encoder writes
    path = tmp_path / "array.json"
    path.write_bytes(b"[" + b",".join([orjson.dumps(RECORDS[0]), bad, orjson.dumps(RECORDS[2])]) + b"]")
    summary = load(db, [path], tmp_path, rejects=tmp_path / "rejects.ndjson")
    assert (summary.inserted, summary.rejected) == (2, 1)
    reject = orjson.loads((tmp_path / "rejects.ndjson").read_bytes())
    assert (reject["position"], reject["reason"][:17]) == ("item 2", "bad Extended JSON")
