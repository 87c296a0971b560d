"""Bulk loading: the client's own cost without a server, and loads into one server.

Client table (no server; the default). One archive of generated snapshots as Extended
JSON lines (`{"$date": ...}` timestamps, as mongoexport writes them and mongoimport reads
them), uncompressed, cached under bench/.cache and read once beforehand so it is in the
page cache. Each side runs in a child process of its own, one after the other; its CPU
(user + system, all threads) and peak RSS come from wait4:

- `ingest --dry-run`: the loader's whole client path (read, validate, encode to BSON),
  with the insert replaced by counting the encoded documents, through the native line
  encoder (`perf_analytics_native`, built by `make setup`);
- the same through the Arrow batch path, the extension hidden from the child (what a
  load does where it is not built);
- the per-snapshot path, as the loader worked before batches: each line parsed with
  orjson, `validate_snapshot`, `check_nesting`, a new ObjectId and `encode_document`;
- the limit: reading the lines and nothing else;
- mongoimport (a binary given with --mongoimport or $MONGOIMPORT; skipped with a message
  when absent) on the first --mongoimport-size lines into the embedded server: it has no
  dry run, so its CPU is measured beside a server that inserts about a thousand documents
  a second, where its own CPU per snapshot is what counts.

Server table (--server-sizes): `perf-analytics ingest` of a generated archive into the
server, beside the original service's `insert_one` + `update_one` per snapshot and
`insert_many` of ready documents (the server's limit), on a sample. Results go to
bench/results/ingest.json and markdown tables on stdout.

    python bench/bench_ingest.py                                   # client table, 1M snapshots
    python bench/bench_ingest.py --client-size 100000 --baseline-size 20000   # a quick look
    python bench/bench_ingest.py --client-size 0 --server-sizes 20000 --sample 2000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

import orjson
from bson import CodecOptions, ObjectId

from perf_analytics.config import load_settings
from perf_analytics.ingest import open_archive
from perf_analytics.ingest.batches import native_available
from perf_analytics.schema import ASSETS, SNAPSHOTS, asset_id_filter, validate_snapshot
from perf_analytics.store import (
    Db,
    check_nesting,
    connect,
    encode_document,
    ensure_indexes,
    probe_capabilities,
)
from perf_analytics.synth import FleetSpec, fleet_assets, generate_fleet, write_fleet

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
RESULTS = HERE / "results"
ORGS = 4
DAY_SNAPSHOTS = 1440  # one a minute


def fleet_for(size: int) -> FleetSpec:
    """The fleet giving about `size` snapshots in one day per asset."""
    assets = max(1, round(size / (ORGS * DAY_SNAPSHOTS)))
    return FleetSpec(orgs=ORGS, assets=assets, days=1, interval_s=60, seed=42)


def archive_for(size: int) -> tuple[Path, FleetSpec]:
    fleet = fleet_for(size)
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"fleet-{fleet.orgs}x{fleet.assets}x{fleet.days}.ndjson.zst"
    if not path.exists():
        summary = write_fleet(path, fleet)
        print(f"generated {summary.snapshots:,} snapshots -> {path}", file=sys.stderr)
    return path, fleet


def extended_json_archive(size: int) -> Path:
    """The first `size` snapshots of the fleet for `size` as Extended JSON lines (cached)."""
    fleet = fleet_for(size)
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"fleet-ext-{fleet.orgs}x{fleet.assets}x{fleet.days}-{size}.ndjson"
    if not path.exists():
        partial = path.with_suffix(".partial")
        with partial.open("wb") as fh:
            for payload in islice(generate_fleet(fleet), size):
                payload["timestamp"] = {"$date": payload["timestamp"]}
                fh.write(orjson.dumps(payload) + b"\n")
        partial.rename(path)
        print(f"generated {size:,} snapshots -> {path}", file=sys.stderr)
    return path


def head_of(archive: Path, lines: int) -> Path:
    """The first `lines` lines of `archive` (cached beside it)."""
    path = archive.with_name(f"{archive.stem}-head{lines}.ndjson")
    if not path.exists():
        with archive.open("rb") as src, path.open("wb") as dst:
            dst.writelines(islice(src, lines))
    return path


def warm(path: Path) -> int:
    """Read `path` once so every side finds it in the page cache; return its line count."""
    count = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 24):
            count += chunk.count(b"\n")
    return count


# Runs a command and writes its wait4 usage to the file named first. A child forked from
# the bench itself would report the bench's peak RSS as its own (Linux keeps the peak of
# the memory a process had before exec), so children start from this small process.
_LAUNCHER = """
import json, os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as fh:
    json.dump({"code": os.waitstatus_to_exitcode(status), "cpu_s": usage.ru_utime + usage.ru_stime,
               "peak_rss_mib": usage.ru_maxrss / 1024}, fh)
"""


def run_child(cmd: list[str]) -> dict[str, Any]:
    """Run `cmd`; its wall time, CPU (user + system, every thread), peak RSS and stdout."""
    with tempfile.TemporaryDirectory() as tmp:
        usage_file = Path(tmp) / "usage.json"
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-S", "-E", "-c", _LAUNCHER, str(usage_file), *cmd],
                              capture_output=True, check=False)
        wall = time.perf_counter() - started
        usage = json.loads(usage_file.read_text())
    if usage["code"] != 0:
        raise SystemExit(f"{cmd[0]} failed: {proc.stderr.decode()[-2000:]}")
    return {"wall_s": wall, "cpu_s": usage["cpu_s"], "peak_rss_mib": usage["peak_rss_mib"], "stdout": proc.stdout.decode()}


def per_snapshot_child(archive: Path, limit: int) -> None:
    """The loader's client work before batches, one record at a time: parse, validate,
    check nesting, _id, encode. Prints the records done and the loop's CPU seconds."""
    codec: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=True)

    class _Codec:  # encode_document reads only the collection's codec options
        codec_options = codec

    started = time.process_time()
    done = 0
    arch = open_archive(archive)
    try:
        for record in islice(arch.records, limit):
            doc = validate_snapshot(record.payload)
            check_nesting(doc)
            doc.setdefault("_id", ObjectId())
            encode_document(doc, _Codec(), nesting_checked=True)  # type: ignore[arg-type]
            done += 1
    finally:
        arch.close()
    print(json.dumps({"read": done, "cpu_seconds": time.process_time() - started}))


# The limit: the archive's lines read, nothing else (in a bare interpreter).
_LINES = """
import json, sys, time
started = time.process_time()
done = 0
with open(sys.argv[1], "rb") as fh:
    for _ in fh:
        done += 1
print(json.dumps({"read": done, "cpu_seconds": time.process_time() - started}))
"""


# The CLI with the native extension hidden (an import of it fails), as where it is not built.
_WITHOUT_NATIVE = """
import sys
sys.modules["perf_analytics_native"] = None
sys.argv[0] = "perf-analytics"
from perf_analytics.cli import main
sys.exit(main())
"""


def client_table(size: int, baseline_size: int, mongoimport: str | None, mongoimport_size: int) -> dict[str, Any]:
    """Every side's client CPU per snapshot and peak RSS (see the module docstring)."""
    archive = extended_json_archive(size)
    warm(archive)
    py = sys.executable
    sides: dict[str, dict[str, Any]] = {}
    baseline = archive if baseline_size >= size else head_of(archive, baseline_size)
    warm(baseline)
    dry_run = ["ingest", str(archive), "--dry-run", "--json"]
    runs = {
        "ingest --dry-run": [py, "-m", "perf_analytics.cli", *dry_run],
        "ingest --dry-run, Arrow batch path": [py, "-c", _WITHOUT_NATIVE, *dry_run],
        "per-snapshot path": [py, __file__, "--per-snapshot-child", str(baseline), str(baseline_size)],
        "read lines only (limit)": [py, "-S", "-E", "-c", _LINES, str(archive)],
    }
    for name, cmd in runs.items():
        run = run_child(cmd)
        summary = json.loads(run.pop("stdout"))
        run["snapshots"] = summary["read"]
        run["loop_cpu_s"] = summary["cpu_seconds"]
        if name.startswith("ingest --dry-run"):
            run["valid"], run["rejected"] = summary["valid"], summary["rejected"]
        run["cpu_us_per_snapshot"] = run["cpu_s"] / run["snapshots"] * 1e6
        run["loop_cpu_us_per_snapshot"] = run["loop_cpu_s"] / run["snapshots"] * 1e6
        sides[name] = run
        print(f"{name}: {run}", file=sys.stderr)
    if mongoimport:
        sides["mongoimport"] = run_mongoimport(mongoimport, head_of(archive, mongoimport_size), mongoimport_size)
    else:
        print("mongoimport: not found (pass --mongoimport PATH or set MONGOIMPORT); that side is skipped",
              file=sys.stderr)
    return {"snapshots": size, "native_encoder": native_available(), "sides": sides}


def run_mongoimport(binary: str, archive: Path, n: int) -> dict[str, Any]:
    """mongoimport of `archive` into a fresh database of the bench's server."""
    settings = load_settings()
    db = connect(settings)
    uri = settings.uri or f"mongodb://127.0.0.1:{db.client.address[1]}/?directConnection=true"  # type: ignore[index]
    name = "bench_ingest_mongoimport"
    db.client.drop_database(name)
    ensure_indexes(db.client[name])
    warm(archive)
    try:
        run = run_child([binary, "--uri", uri, "--db", name, "--collection", SNAPSHOTS, "--file", str(archive),
                         "--quiet"])
        stored = db.client[name][SNAPSHOTS].count_documents({})
    finally:
        db.client.drop_database(name)
        db.client.close()
    run.pop("stdout")
    run.update(snapshots=n, stored=stored, cpu_us_per_snapshot=run["cpu_s"] / n * 1e6)
    print(f"mongoimport: {run}", file=sys.stderr)
    return run


def print_client_table(table: dict[str, Any]) -> None:
    sides = table["sides"]
    ours = sides["ingest --dry-run"]
    print(f"client path, no server ({ours['snapshots']:,} snapshots as Extended JSON lines, one process each)\n")
    print("| side | snapshots | CPU µs / snapshot (process) | CPU µs / snapshot (loop) | peak RSS MiB | ours is faster by |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, run in sides.items():
        loop = f"{run['loop_cpu_us_per_snapshot']:.1f}" if "loop_cpu_us_per_snapshot" in run else "-"
        ratio = run["cpu_us_per_snapshot"] / ours["cpu_us_per_snapshot"]
        print(f"| {name} | {run['snapshots']:,} | {run['cpu_us_per_snapshot']:.1f} | {loop} | "
              f"{run['peak_rss_mib']:.0f} | {ratio:.2f}x |")
    print()


def fresh_db(db: Db, name: str, fleet: FleetSpec) -> Db:
    db.client.drop_database(name)
    target = db.client[name]
    ensure_indexes(target)
    target[ASSETS].insert_many(fleet_assets(orgs=fleet.orgs, assets=fleet.assets, seed=fleet.seed))
    return target


def run_ingest(uri: str, db_name: str, archive: Path) -> dict[str, Any]:
    """`perf-analytics ingest` in a child process: its summary, wall time and peak RSS."""
    with tempfile.TemporaryDirectory() as cp:
        run = run_child([sys.executable, "-m", "perf_analytics.cli", "--uri", uri, "--db", db_name,
                         "ingest", str(archive), "--json", "--checkpoint-dir", cp])
    summary: dict[str, Any] = json.loads(run.pop("stdout"))
    summary.update(run)
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
    parser.add_argument("--client-size", type=int, default=1_000_000, help="snapshots of the client table (0: none)")
    parser.add_argument("--baseline-size", type=int, default=1_000_000,
                        help="snapshots the per-snapshot path reads (its first lines; at most --client-size)")
    parser.add_argument("--mongoimport", default=os.environ.get("MONGOIMPORT") or shutil.which("mongoimport"),
                        help="the mongoimport binary (default: $MONGOIMPORT, else mongoimport on PATH)")
    parser.add_argument("--mongoimport-size", type=int, default=30000,
                        help="snapshots mongoimport loads into the server (it has no dry run)")
    parser.add_argument("--server-sizes", default="", help="archive sizes of the server table (comma separated)")
    parser.add_argument("--sample", type=int, default=10000, help="snapshots for the server table's baseline and limit")
    parser.add_argument("--per-snapshot-child", nargs=2, metavar=("ARCHIVE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.per_snapshot_child:
        per_snapshot_child(Path(args.per_snapshot_child[0]), int(args.per_snapshot_child[1]))
        return 0
    result: dict[str, Any] = {"machine": f"{platform.machine()} {os.cpu_count()} cores",
                              "python": platform.python_version(), "load_average": os.getloadavg()}
    if args.client_size:
        baseline_size = min(args.baseline_size, args.client_size)
        mongoimport_size = min(args.mongoimport_size, args.client_size)
        result["client"] = client_table(args.client_size, baseline_size, args.mongoimport, mongoimport_size)
        print_client_table(result["client"])
    if args.server_sizes:
        result["server"] = server_table([int(s) for s in args.server_sizes.split(",")], args.sample)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ingest.json").write_text(json.dumps(result, indent=2))
    return 0


def server_table(sizes: list[int], sample: int) -> dict[str, Any]:
    """`perf-analytics ingest` into the server beside the per-snapshot service and the limit."""
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
        docs = sample_docs(archive, sample)
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

    print(f"server: {server}; baseline and limit measured on {sample:,} snapshots of the same archive\n")
    print("| snapshots | ingest docs/s | per-snapshot docs/s | ratio | server insert limit docs/s | share of limit | peak RSS MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['snapshots']:,} | {r['bulk_docs_s']:,.0f} | {r['per_snapshot_docs_s']:,.0f} | "
              f"{r['ratio_vs_per_snapshot']:.1f}x | {r['server_insert_limit_docs_s']:,.0f} | "
              f"{r['share_of_limit']:.2f} | {r['peak_rss_mib']:.0f} |")
    db.client.close()
    return {"server": server, "sample": sample, "rows": rows}


if __name__ == "__main__":
    sys.exit(main())
