"""Windowed extraction against the plain path and the server's limit, on one server, in one run.

Loads a generated fleet once (cached in a database of its own), then reads every org's
whole day three ways, each in a child process of its own so that its peak RSS is its own:

- toolkit: `extract_window` (pymongoarrow, server-side filter and projection, time slices
  with range pushdown, else one cursor cut into parts, flattened into the
  snapshots/disks/interfaces frames);
- plain: what one writes by hand: `find` into Python dicts, then `polars.from_dicts`;
- limit: `find_raw_batches` with the same filter, bytes only, no decoding.

Wall-clock docs/s are bounded by the server (FerretDB reads a few thousand documents a
second at best); the client's CPU time per document shows what each path costs on our
side, which is what decides throughput against a server that keeps up (MongoDB).

    python bench/bench_extract.py                    # 1M snapshots (very long on FerretDB)
    python bench/bench_extract.py --size 100000      # what was run for the README
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PATHS = ("toolkit", "plain", "limit")


def _day(fleet: dict[str, Any]) -> tuple[datetime, datetime]:
    from perf_analytics.synth import DEFAULT_START

    return DEFAULT_START, DEFAULT_START + timedelta(days=fleet["days"])


def run_path(path: str, uri: str, db_name: str, orgs: list[str], start: datetime, end: datetime) -> dict[str, Any]:
    """Read every org's window one way; return rows read and seconds (in this process)."""
    import polars as pl

    from perf_analytics.extract import extract_window
    from perf_analytics.schema import SNAPSHOTS
    from perf_analytics.store import connect_uri

    db = connect_uri(uri, db_name)
    rows = 0
    nbytes = 0
    before = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = before.ru_utime + before.ru_stime
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
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"path": path, "rows": rows, "seconds": seconds, "bytes": nbytes,
            "cpu_seconds": usage.ru_utime + usage.ru_stime - cpu_before,
            "peak_rss_mib": usage.ru_maxrss / 1024}


def count_documents(batch: bytes) -> int:
    """Documents in a raw batch, by stepping over their length prefixes (no decoding)."""
    n, offset = 0, 0
    while offset < len(batch):
        offset += struct.unpack_from("<i", batch, offset)[0]
        n += 1
    return n


def ensure_data(size: int) -> tuple[str, str, dict[str, Any]]:
    from bench_ingest import archive_for

    from perf_analytics.config import load_settings
    from perf_analytics.ingest import ingest_archives_all_orgs
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
        ingest_archives_all_orgs(target, [archive], checkpoint_dir=with_dir)
    host, port = db.client.address  # type: ignore[misc]
    uri = settings.uri or f"mongodb://{host}:{port}/?directConnection=true"
    return uri, name, fleet


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000, help="snapshots in the collection")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        start, end = datetime.fromisoformat(spec["start"]), datetime.fromisoformat(spec["end"])
        print(json.dumps(run_path(spec["path"], spec["uri"], spec["db"], spec["orgs"], start, end)))
        return 0

    uri, name, fleet = ensure_data(args.size)
    start, end = _day(fleet)
    orgs = [f"org-{i:02d}" for i in range(1, fleet["orgs"] + 1)]
    results = {}
    for path in PATHS:
        spec = {"path": path, "uri": uri, "db": name, "orgs": orgs, "start": start.isoformat(), "end": end.isoformat()}
        out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                             text=True, check=True, env=os.environ.copy())
        results[path] = json.loads(out.stdout.strip().splitlines()[-1])
        print(results[path], file=sys.stderr)
    rate = {p: r["rows"] / r["seconds"] for p, r in results.items()}
    RESULTS.mkdir(exist_ok=True)
    summary = {"size": args.size, "window": [start.isoformat(), end.isoformat()], "results": results,
               "ratio_vs_plain": rate["toolkit"] / rate["plain"], "share_of_limit": rate["toolkit"] / rate["limit"]}
    (RESULTS / "extract.json").write_text(json.dumps(summary, indent=2))
    print("| path | snapshots | docs/s (wall) | client CPU µs/doc | peak RSS MiB |\n|---|---:|---:|---:|---:|")
    for p in PATHS:
        r = results[p]
        print(f"| {p} | {r['rows']:,} | {rate[p]:,.0f} | {1e6 * r['cpu_seconds'] / max(r['rows'], 1):,.1f} | "
              f"{r['peak_rss_mib']:.0f} |")
    print(f"\ntoolkit / plain: {summary['ratio_vs_plain']:.2f}x; toolkit / limit: {summary['share_of_limit']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
