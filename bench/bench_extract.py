"""Extraction: decoding raw BSON into the three frames, beside its peers, and against a server.

Two tables, each path in a child process of its own (so its peak RSS is its own):

1. **Decode, no server.** A generated fleet captured as the server sends it (raw BSON
   batches of 2,000 documents, cached in bench/.cache), decoded in memory in parts of
   `--chunk-rows` snapshots, as extraction reads them (several sizes, comma-separated,
   are run in turn in each path's one process, so their ratio is measured under the same
   load). CPU per snapshot (median of `--repeat` runs in the child), wall time, peak RSS:
   - `native`: `frames_from_raw_batches(decoder="native")`, the three frames (the default);
   - `pymongoarrow frames`: the same with `decoder="pymongoarrow"`: pymongoarrow's builder
     with the nested schema, flattened by Polars (where the native decoder is not built);
   - `pymongoarrow nested`: pymongoarrow's builder alone, the nested table, no frames;
   - `plain`: `bson.decode_all` + `polars.from_dicts` per part, nested columns unflattened;
   - `limit`: stepping over the documents' length prefixes (bytes touched, no decoding).
2. **Against the server** (`--server-size`, 0 to skip): every org's whole day read from a
   generated collection (cached in a database of its own) with `extract_window`, by hand
   (`find` + `polars.from_dicts`), as raw batches only (the limit) and, when
   `--polars-mongo PYTHON` names an interpreter with polars-mongo 0.3.1 (it needs Polars 1.x:
   `python -m venv /tmp/pm && /tmp/pm/bin/pip install polars-mongo==0.3.1 "polars<2"`),
   with its `scan_mongo` and the same filter, rows counted. On FerretDB the wall time is
   the server's; client CPU is what each path costs us.

    python bench/bench_extract.py --size 1000000 --repeat 1 --server-size 0
    python bench/bench_extract.py --size 1000000 --repeat 3 --chunk-rows 100000,1000000 --paths native --server-size 0
    python bench/bench_extract.py --size 100000 --repeat 3 --server-size 10000 --polars-mongo /tmp/pm/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from perf_analytics.synth import FleetSpec

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CACHE = HERE / ".cache"
DECODE_PATHS = ("native", "pymongoarrow frames", "pymongoarrow nested", "plain", "limit")
SERVER_PATHS = ("toolkit", "plain", "limit", "polars-mongo")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def count_documents(batch: bytes) -> int:
    """Documents in a raw batch, by stepping over their length prefixes (no decoding)."""
    n, offset = 0, 0
    while offset < len(batch):
        offset += struct.unpack_from("<i", batch, offset)[0]
        n += 1
    return n


def captured_batches(size: int) -> list[bytes]:
    """About `size` generated snapshots as the server would send them: raw BSON batches of
    RAW_BATCH_DOCS documents, each stored with an ObjectId `_id` first (cached on disk)."""
    import bson
    from bench_ingest import fleet_for

    from perf_analytics.extract import RAW_BATCH_DOCS
    from perf_analytics.schema import validate_snapshot
    from perf_analytics.synth import generate_fleet

    path = CACHE / f"raw-{size}.bson"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as out:
            for payload in generate_fleet(fleet_for(size)):
                doc = validate_snapshot(payload)
                out.write(bson.encode({"_id": bson.ObjectId(), **doc}))
        tmp.rename(path)
    data = path.read_bytes()
    batches, start, offset, docs = [], 0, 0, 0
    while offset < len(data):
        offset += struct.unpack_from("<i", data, offset)[0]
        docs += 1
        if docs % RAW_BATCH_DOCS == 0 or offset == len(data):
            batches.append(data[start:offset])
            start = offset
    return batches


def _parts(batches: list[bytes], chunk_rows: int) -> Iterator[list[bytes]]:
    """The batches in parts of about `chunk_rows` documents (whole batches, as extraction cuts)."""
    from perf_analytics.extract import RAW_BATCH_DOCS

    per_part = max(1, chunk_rows // RAW_BATCH_DOCS)
    for i in range(0, len(batches), per_part):
        yield batches[i : i + per_part]


def _decoder(path: str) -> Callable[[list[bytes]], int]:
    """One part's decode on `path`; returns the snapshots it produced."""
    import bson
    import polars as pl
    from bson.codec_options import CodecOptions

    from perf_analytics.extract import _arrow, _mongo_schema, frames_from_raw_batches

    if path == "native":
        return lambda part: len(frames_from_raw_batches(part, decoder="native").frames)
    if path == "pymongoarrow frames":
        return lambda part: len(frames_from_raw_batches(part, decoder="pymongoarrow").frames)
    if path == "pymongoarrow nested":
        schema, codec = _mongo_schema(), CodecOptions()
        return lambda part: int(_arrow(part, schema, codec).num_rows)
    if path == "plain":
        return lambda part: pl.from_dicts([d for batch in part for d in bson.decode_all(batch)]).height
    return lambda part: sum(count_documents(batch) for batch in part)


def run_decode(path: str, size: int, chunk_rows: list[int], repeat: int) -> dict[str, Any]:
    """Decode the captured batches `repeat` times on `path` in parts of each size of
    `chunk_rows` (the sizes taking turns within each run); per size the median CPU and
    wall seconds."""
    batches = captured_batches(size)
    decode = _decoder(path)
    cpu: dict[int, list[float]] = {c: [] for c in chunk_rows}
    wall: dict[int, list[float]] = {c: [] for c in chunk_rows}
    rows = 0
    for _ in range(repeat):
        for chunk in chunk_rows:
            began, cpu_before = time.perf_counter(), _cpu()
            rows = sum(decode(part) for part in _parts(batches, chunk))
            cpu[chunk].append(_cpu() - cpu_before)
            wall[chunk].append(time.perf_counter() - began)
    parts = {str(c): {"cpu_seconds": statistics.median(cpu[c]), "seconds": statistics.median(wall[c]), "cpu_runs": cpu[c]}
             for c in chunk_rows}
    return {"path": path, "rows": rows, "parts": parts,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _day(fleet: FleetSpec) -> tuple[datetime, datetime]:
    return fleet.start_time, fleet.start_time + timedelta(days=fleet.days)


# Run by the polars-mongo interpreter (Polars 1.x, without this package): argv = uri, db,
# collection, orgs (JSON), start, end (ISO). Prints rows, CPU seconds, wall seconds, peak RSS.
_POLARS_MONGO = """
import json, resource, sys, time
from datetime import datetime
import polars as pl
from polars_mongo import scan_mongo
uri, db, collection, orgs, start, end = sys.argv[1:]
start, end = datetime.fromisoformat(start), datetime.fromisoformat(end)
before = resource.getrusage(resource.RUSAGE_SELF)
began, rows = time.perf_counter(), 0
for org in json.loads(orgs):
    frame = scan_mongo(uri, db, collection).filter(
        (pl.col("orgId") == org) & (pl.col("timestamp") >= start) & (pl.col("timestamp") < end))
    rows += frame.collect().height
usage = resource.getrusage(resource.RUSAGE_SELF)
cpu = usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime
print(json.dumps({"rows": rows, "cpu_seconds": cpu,
                  "seconds": time.perf_counter() - began, "peak_rss_mib": usage.ru_maxrss / 1024}))
"""


def run_polars_mongo(python: str, spec: dict[str, Any]) -> dict[str, Any]:
    """polars-mongo's `scan_mongo` with the same filter, in its own interpreter (CPU after its imports)."""
    from perf_analytics.schema import SNAPSHOTS

    out = subprocess.run([python, "-c", _POLARS_MONGO, spec["uri"], spec["db"], SNAPSHOTS, json.dumps(spec["orgs"]),
                          spec["start"], spec["end"]], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"path": "polars-mongo", "error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return {"path": "polars-mongo", "bytes": 0, **json.loads(out.stdout.strip().splitlines()[-1])}


def run_server(path: str, uri: str, db_name: str, orgs: list[str], start: datetime, end: datetime) -> dict[str, Any]:
    """Read every org's window one way; return rows read and seconds (in this process)."""
    import polars as pl

    from perf_analytics.extract import extract_window
    from perf_analytics.schema import SNAPSHOTS
    from perf_analytics.store import connect_uri

    db = connect_uri(uri, db_name)
    rows = 0
    nbytes = 0
    cpu_before = _cpu()
    began = time.perf_counter()
    for org in orgs:
        query = {"orgId": org, "timestamp": {"$gte": start, "$lt": end}}
        if path == "toolkit":
            rows += extract_window(db, org, start, end).frames.snapshots.height
        elif path == "plain":
            rows += pl.from_dicts(list(db[SNAPSHOTS].find(query))).height
        else:
            for batch in db[SNAPSHOTS].find_raw_batches(query):
                nbytes += len(batch)
                rows += count_documents(batch)
    seconds = time.perf_counter() - began
    return {"path": path, "rows": rows, "seconds": seconds, "bytes": nbytes, "cpu_seconds": _cpu() - cpu_before,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def ensure_data(size: int) -> tuple[str, str, FleetSpec]:
    from bench_ingest import archive_for

    from perf_analytics.config import load_settings
    from perf_analytics.ingest import LoadOptions, ingest_archives_all_orgs
    from perf_analytics.schema import SNAPSHOTS
    from perf_analytics.store import connect, ensure_indexes

    settings = load_settings()
    db = connect(settings)
    archive, fleet = archive_for(size)
    name = f"bench_extract_{size}"
    target = db.client[name]
    if target[SNAPSHOTS].estimated_document_count() == 0:
        ensure_indexes(target)
        with_dir = HERE / ".cache" / "checkpoints"
        ingest_archives_all_orgs(target, [archive], options=LoadOptions(checkpoint_dir=with_dir))
    host, port = db.client.address  # type: ignore[misc]
    uri = settings.uri or f"mongodb://{host}:{port}/?directConnection=true"
    return uri, name, fleet


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                         env=os.environ.copy(), check=False)
    if out.returncode != 0:
        return {"path": spec["path"], "error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def decode_table(size: int, chunk_rows: list[int], repeat: int, paths: list[str]) -> dict[str, Any]:
    captured_batches(size)  # generate once, before the children read it
    paths = ["native", *(p for p in paths if p != "native")]
    results = {p: _child({"kind": "decode", "path": p, "size": size, "chunk_rows": chunk_rows, "repeat": repeat})
               for p in paths}
    sizes = ", ".join(f"{c:,}" for c in chunk_rows)
    print(f"\nDecode, no server: {results['native']['rows']:,} snapshots in parts of {sizes}, median of {repeat}\n")
    print("| path | part | CPU µs per snapshot | x native | x first part | wall s | peak RSS MiB |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    for p in paths:
        r = results[p]
        for c in chunk_rows:
            part, native, first = r["parts"][str(c)], results["native"]["parts"][str(c)], r["parts"][str(chunk_rows[0])]
            print(f"| {p} | {c:,} | {1e6 * part['cpu_seconds'] / r['rows']:.2f} | "
                  f"{part['cpu_seconds'] / native['cpu_seconds']:.2f} | {part['cpu_seconds'] / first['cpu_seconds']:.2f} | "
                  f"{part['seconds']:.2f} | {r['peak_rss_mib']:.0f} |")
    return results


def server_table(size: int, polars_mongo: str | None) -> dict[str, Any]:
    uri, name, fleet = ensure_data(size)
    start, end = _day(fleet)
    orgs = [f"org-{i:02d}" for i in range(1, fleet.orgs + 1)]
    paths = SERVER_PATHS if polars_mongo else SERVER_PATHS[:-1]
    spec = {"kind": "server", "uri": uri, "db": name, "orgs": orgs, "start": start.isoformat(), "end": end.isoformat()}
    results = {p: _child({**spec, "path": p}) for p in paths[:3]}
    if polars_mongo:
        results["polars-mongo"] = run_polars_mongo(polars_mongo, spec)
    print(f"\nAgainst the server: every org's whole day of a {size:,}-snapshot collection\n")
    print("| path | snapshots | docs/s (wall) | client CPU µs/doc | peak RSS MiB |\n|---|---:|---:|---:|---:|")
    for p in paths:
        r = results[p]
        if "error" in r:
            print(f"| {p} | failed: {r['error']} | | | |")
            continue
        rate = r["rows"] / r["seconds"]
        print(f"| {p} | {r['rows']:,} | {rate:,.0f} | {1e6 * r['cpu_seconds'] / max(r['rows'], 1):,.1f} | "
              f"{r['peak_rss_mib']:.0f} |")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000, help="captured snapshots to decode")
    parser.add_argument("--chunk-rows", default="100000",
                        help="snapshots per decoded part; several sizes comma-separated, run in turn in one process")
    parser.add_argument("--repeat", type=int, default=3, help="decode runs per path (median)")
    parser.add_argument("--server-size", type=int, default=100_000, help="snapshots in the server's collection (0: skip)")
    parser.add_argument("--polars-mongo", help="a Python interpreter with polars-mongo 0.3.1 installed")
    parser.add_argument("--paths", default=",".join(DECODE_PATHS), help="decode paths, comma-separated")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        if spec["kind"] == "decode":
            print(json.dumps(run_decode(spec["path"], spec["size"], spec["chunk_rows"], spec["repeat"])))
        else:
            start, end = datetime.fromisoformat(spec["start"]), datetime.fromisoformat(spec["end"])
            print(json.dumps(run_server(spec["path"], spec["uri"], spec["db"], spec["orgs"], start, end)))
        return 0

    try:
        chunk_rows = [int(c) for c in args.chunk_rows.split(",") if c]
    except ValueError:
        parser.error(f"--chunk-rows: whole numbers, comma-separated, got {args.chunk_rows!r}")
    if not chunk_rows or min(chunk_rows) < 1:
        parser.error(f"--chunk-rows: sizes of at least 1, got {args.chunk_rows!r}")
    summary: dict[str, Any] = {"size": args.size, "chunk_rows": chunk_rows, "repeat": args.repeat,
                               "load_average": os.getloadavg()}
    paths = [p for p in args.paths.split(",") if p]
    unknown = sorted(set(paths) - set(DECODE_PATHS))
    if unknown:
        parser.error(f"unknown decode paths {unknown}: choose from {', '.join(DECODE_PATHS)}")
    summary["decode"] = decode_table(args.size, chunk_rows, args.repeat, paths)
    if args.server_size:
        summary["server_size"] = args.server_size
        summary["server"] = server_table(args.server_size, args.polars_mongo)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "extract.json").write_text(json.dumps(summary, indent=2))
    print(f"\nload average at the start: {summary['load_average']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
