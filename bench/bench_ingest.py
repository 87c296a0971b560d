"""Bulk loading against the original service's per-snapshot path, on one server, in one run.

For each archive size: generate a synthetic fleet archive (cached under bench/.cache),
load it with `perf-analytics ingest` in a child process (its wall time and peak RSS are
measured), then, on a sample of the same records and the same server,

- the baseline: the original service's path, `insert_one` then `update_one` of the
  asset's lastSeen, for each snapshot;
- the limit: `insert_many` of already validated documents in batches, no lastSeen
  updates, no parsing: what the server itself can take.

Each figure is docs/s; the ratios are what to compare across machines. Results go to
bench/results/ingest.json and a markdown table on stdout.

    python bench/bench_ingest.py                      # 250k and 1M snapshots
    python bench/bench_ingest.py --sizes 20000 --sample 2000   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

from perf_analytics.config import load_settings
from perf_analytics.ingest import open_archive
from perf_analytics.schema import ASSETS, SNAPSHOTS, asset_id_filter, validate_snapshot
from perf_analytics.store import Db, connect, ensure_indexes, probe_capabilities
from perf_analytics.synth import fleet_assets, write_fleet

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
RESULTS = HERE / "results"
ORGS = 4
DAY_SNAPSHOTS = 1440  # one a minute


def fleet_for(size: int) -> dict[str, int]:
    """Fleet arguments giving about `size` snapshots in one day per asset."""
    assets = max(1, round(size / (ORGS * DAY_SNAPSHOTS)))
    return {"orgs": ORGS, "assets": assets, "days": 1, "interval_s": 60, "seed": 42}


def archive_for(size: int) -> tuple[Path, dict[str, int]]:
    args = fleet_for(size)
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"fleet-{args['orgs']}x{args['assets']}x{args['days']}.ndjson.zst"
    if not path.exists():
        summary = write_fleet(path, **args)
        print(f"generated {summary.snapshots:,} snapshots -> {path}", file=sys.stderr)
    return path, args


def fresh_db(db: Db, name: str, fleet: dict[str, int]) -> Db:
    db.client.drop_database(name)
    target = db.client[name]
    ensure_indexes(target)
    target[ASSETS].insert_many(fleet_assets(orgs=fleet["orgs"], assets=fleet["assets"], seed=fleet["seed"]))
    return target


def run_ingest(uri: str, db_name: str, archive: Path) -> dict[str, Any]:
    """`perf-analytics ingest` in a child process: its summary, wall time and peak RSS."""
    with tempfile.TemporaryDirectory() as cp:
        cmd = [sys.executable, "-m", "perf_analytics.cli", "--uri", uri, "--db", db_name,
               "ingest", str(archive), "--json", "--checkpoint-dir", cp]
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        out = proc.stdout.read() if proc.stdout else b""
        err = proc.stderr.read() if proc.stderr else b""
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"ingest failed: {err.decode()[-2000:]}")
    summary: dict[str, Any] = json.loads(out)
    summary["wall_s"] = wall
    summary["peak_rss_mib"] = usage.ru_maxrss / 1024  # Linux reports KiB
    return summary


def sample_docs(archive: Path, n: int) -> list[dict[str, Any]]:
    arch = open_archive(archive)
    try:
        return [validate_snapshot(r.payload) for r in islice(arch.records, n)]
    finally:
        arch.close()


def per_snapshot_path(db: Db, docs: list[dict[str, Any]]) -> float:
    """The original service: one insert and one lastSeen update per snapshot. Returns docs/s."""
    started = time.perf_counter()
    for doc in docs:
        db[SNAPSHOTS].insert_one(dict(doc))
        db[ASSETS].update_one(
            {"_id": asset_id_filter(doc["assetId"]), "orgId": doc["orgId"]},
            {"$set": {"lastSeen": doc["timestamp"], "updatedAt": datetime.now(UTC)}},
        )
    return len(docs) / (time.perf_counter() - started)


def server_limit(db: Db, docs: list[dict[str, Any]], batch: int = 2000) -> float:
    """insert_many of ready documents, nothing else. Returns docs/s."""
    started = time.perf_counter()
    for i in range(0, len(docs), batch):
        db[SNAPSHOTS].insert_many([dict(d) for d in docs[i : i + batch]], ordered=False)
    return len(docs) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="250000,1000000", help="archive sizes in snapshots (comma separated)")
    parser.add_argument("--sample", type=int, default=10000, help="snapshots for the baseline and the limit")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    settings = load_settings()
    db = connect(settings)
    uri = settings.uri or f"mongodb://127.0.0.1:{db.client.address[1]}/?directConnection=true"  # type: ignore[index]
    server = probe_capabilities(db).server
    rows = []
    for size in sizes:
        archive, fleet = archive_for(size)
        name = f"bench_ingest_{size}"
        fresh_db(db, name, fleet)
        loaded = run_ingest(uri, name, archive)
        docs = sample_docs(archive, args.sample)
        baseline = per_snapshot_path(fresh_db(db, name + "_base", fleet), docs)
        limit = server_limit(fresh_db(db, name + "_limit", fleet), docs)
        for suffix in ("", "_base", "_limit"):
            db.client.drop_database(name + suffix)
        bulk = loaded["read"] / loaded["wall_s"]
        rows.append({
            "snapshots": loaded["read"], "inserted": loaded["inserted"], "bulk_docs_s": bulk,
            "per_snapshot_docs_s": baseline, "server_insert_limit_docs_s": limit,
            "ratio_vs_per_snapshot": bulk / baseline, "share_of_limit": bulk / limit,
            "peak_rss_mib": loaded["peak_rss_mib"], "wall_s": loaded["wall_s"],
        })
        print(f"{size:,}: {rows[-1]}", file=sys.stderr)

    RESULTS.mkdir(exist_ok=True)
    result = {"server": server, "machine": f"{platform.machine()} {os.cpu_count()} cores",
              "python": platform.python_version(), "sample": args.sample, "rows": rows}
    (RESULTS / "ingest.json").write_text(json.dumps(result, indent=2))
    print(f"server: {server}; baseline and limit measured on {args.sample:,} snapshots of the same archive\n")
    print("| snapshots | ingest docs/s | per-snapshot docs/s | ratio | server insert limit docs/s | share of limit | peak RSS MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['snapshots']:,} | {r['bulk_docs_s']:,.0f} | {r['per_snapshot_docs_s']:,.0f} | "
              f"{r['ratio_vs_per_snapshot']:.1f}x | {r['server_insert_limit_docs_s']:,.0f} | "
              f"{r['share_of_limit']:.2f} | {r['peak_rss_mib']:.0f} |")
    db.client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
