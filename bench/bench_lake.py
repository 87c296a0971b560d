"""The snapshot mirror against the server it mirrors, on one server, in one run.

Four parts, each in a child process of its own (so its peak RSS is its own), one at a time:

- `sync`: `sync_snapshots_all_orgs` of a generated fleet into an empty lake, with a pymongo
  CommandListener counting the documents in the server's find/getMore replies
  (returned / new: goal 1.0), then at once a second sync (nothing new: what the skew
  margin re-reads) and a third with no skew margin; process CPU and wall time, peak RSS. Then, server-independent, our
  CPU per snapshot: the raw batches are read once into memory, and only the per-chunk work
  of a sync (place, deduplicate, build the typed columns, write the parts) is timed.
- `race`: `run_day(lake, org, day)` (from the lake) against `run_day(lake2, org, day,
  source=ServerSnapshots(db))` (extraction from the server, as before the mirror), same
  org and day, interleaved rounds, median ratio. Goal: at least 20x.
- `fleet`: daily p95 CPU per asset over the fleet's days: DuckDB over the lake's
  `snapshot_metrics` view against a MongoDB aggregation pipeline over the same snapshots in
  the database, interleaved rounds, the numbers checked equal. Goal: at least 10x.
- `demo`: `pipelines/demo.py` end to end in a fresh directory and database, each output
  line timed (the phases). Goal: under 90 s.

    python bench/bench_lake.py                                   # 1,000 assets x 1 day x 1 min (hours on FerretDB)
    python bench/bench_lake.py --assets 200 --interval 300 --fleet-assets 30 --fleet-interval 3600 --parts sync race fleet
    python bench/bench_lake.py --assets 50 --interval 300 --fleet-assets 10 --fleet-interval 3600   # all four, minutes
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench_extract import count_documents
from pymongo import MongoClient, monitoring

if TYPE_CHECKING:
    from perf_analytics.synth import FleetSpec

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
RESULTS = HERE / "results"
PARTS = ("sync", "race", "fleet", "demo")


def _usage() -> tuple[float, float]:
    """(CPU seconds of this process so far, peak RSS MiB)."""
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime, u.ru_maxrss / 1024


class ReplyCounter(monitoring.CommandListener):
    """Counts the documents in the server's find/getMore replies (raw or decoded batches)."""

    def __init__(self) -> None:
        self.docs = 0
        self.replies = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if event.command_name not in ("find", "getMore", "aggregate"):
            return
        cursor = event.reply.get("cursor") or {}
        batch = cursor.get("firstBatch", cursor.get("nextBatch", []))
        self.replies += 1
        # A raw-batch cursor's reply holds one bytes object: the batch's documents end to end.
        self.docs += sum(count_documents(item) if isinstance(item, bytes) else 1 for item in batch)


# ---- data ----------------------------------------------------------------------------------


def ensure_data(fleet: FleetSpec) -> tuple[str, str, Path]:
    """The fleet loaded once in a database of its own (cached), and the server's URI."""
    from perf_analytics.config import load_settings
    from perf_analytics.ingest import LoadOptions, ingest_archives_all_orgs
    from perf_analytics.schema import SNAPSHOTS
    from perf_analytics.store import connect, ensure_indexes
    from perf_analytics.synth import write_fleet

    settings = load_settings()
    db = connect(settings)
    tag = "x".join(str(n) for n in (fleet.orgs, fleet.assets, fleet.days, fleet.interval_s))
    CACHE.mkdir(parents=True, exist_ok=True)
    archive = CACHE / f"lake-fleet-{tag}.ndjson.zst"
    if not archive.exists():
        summary = write_fleet(archive, fleet)
        print(f"generated {summary.snapshots:,} snapshots -> {archive}", file=sys.stderr)
    name = f"bench_lake_{tag}"
    target = db.client[name]
    if target[SNAPSHOTS].estimated_document_count() == 0:
        ensure_indexes(target)
        began = time.perf_counter()
        ingest_archives_all_orgs(target, [archive], options=LoadOptions(checkpoint_dir=CACHE / f"checkpoints-lake-{tag}"))
        print(f"loaded {name} in {time.perf_counter() - began:.0f}s", file=sys.stderr)
    host, port = db.client.address  # type: ignore[misc]
    uri = settings.uri or f"mongodb://{host}:{port}/?directConnection=true"
    return uri, name, CACHE / f"lake-{tag}"


def _db(uri: str, name: str, *listeners: monitoring.CommandListener) -> Any:
    return MongoClient(uri, event_listeners=list(listeners))[name]


# ---- the parts, each run in a child ---------------------------------------------------------


def child_sync(spec: dict[str, Any]) -> dict[str, Any]:
    """Sync into an empty lake counting replies, re-sync, then our CPU on batches in memory."""
    from perf_analytics.schema import SNAPSHOTS
    from perf_analytics.sync import mirror_documents_all_orgs, sync_snapshots_all_orgs

    lake = Path(spec["lake"])
    shutil.rmtree(lake, ignore_errors=True)
    counter = ReplyCounter()
    db = _db(spec["uri"], spec["db"], counter)
    cpu0, _ = _usage()
    began = time.perf_counter()
    first = sync_snapshots_all_orgs(db, lake)
    wall = time.perf_counter() - began
    cpu, rss = _usage()
    out: dict[str, Any] = {"new": first.new, "read": first.read, "returned": counter.docs, "seconds": wall,
                           "cpu_seconds": cpu - cpu0, "peak_rss_mib": rss}
    counter.docs = 0
    again = sync_snapshots_all_orgs(db, lake)
    out["resync"] = {"new": again.new, "read": again.read, "returned": counter.docs}
    # The same with no clock-skew margin: what is left is what a run re-reads beyond the margin.
    counter.docs = 0
    tight = sync_snapshots_all_orgs(db, lake, skew=timedelta(0))
    out["resync_no_skew"] = {"new": tight.new, "read": tight.read, "returned": counter.docs}
    # Server-independent: the raw batches once in memory, then only the sync's writer.
    batches = list(db[SNAPSHOTS].find_raw_batches({}))
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        cpu0, _ = _usage()
        began = time.perf_counter()
        written = mirror_documents_all_orgs(Path(tmp), batches)
        cpu, rss = _usage()
        out["in_memory"] = {"snapshots": written.new, "cpu_seconds": cpu - cpu0,
                            "seconds": time.perf_counter() - began, "peak_rss_mib": rss}
    return out


def child_race(spec: dict[str, Any]) -> dict[str, Any]:
    """run_day from the lake against run_day from the server, interleaved rounds."""
    from perf_analytics.pipeline import ServerSnapshots, run_day
    from perf_analytics.sync import mirrored_orgs

    lake = Path(spec["lake"])
    org = mirrored_orgs(lake)[0]
    day = datetime.fromisoformat(spec["day"]).date()
    source = ServerSnapshots(_db(spec["uri"], spec["db"]))
    rounds: list[dict[str, float]] = []
    counts: dict[str, tuple[int, int]] = {}
    with tempfile.TemporaryDirectory(dir=CACHE) as lake2:
        for _ in range(spec["rounds"]):
            times = {}
            for side in ("lake", "server"):
                began = time.perf_counter()
                if side == "lake":
                    result = run_day(lake, org, day)
                else:
                    result = run_day(lake2, org, day, source=source)
                times[side] = time.perf_counter() - began
                counts[side] = (result.snapshots, result.flags.height)
                print(f"round {len(rounds) + 1}, {side}: {times[side]:.1f}s", file=sys.stderr, flush=True)
            rounds.append(times)
    _, rss = _usage()
    return {"org": org, "day": spec["day"], "rounds": rounds, "snapshots": counts,
            "ratio": statistics.median(r["server"] / r["lake"] for r in rounds), "peak_rss_mib": rss}


P95_SQL = """
SELECT assetId, CAST(date AS VARCHAR) AS day, quantile_cont(cpu_usage, 0.95) AS p95
FROM snapshot_metrics WHERE timestamp >= $start AND timestamp < $end AND cpu_usage IS NOT NULL
GROUP BY ALL ORDER BY 1, 2
"""


def p95_duckdb(lake: Path, org: str, start: datetime, end: datetime) -> dict[tuple[str, str], float]:
    """Daily p95 CPU per asset in DuckDB over the lake (quantile_cont: linear interpolation)."""
    from perf_analytics.lake import connect_lake

    con = connect_lake(lake, org_id=org)
    try:
        rows = con.execute(P95_SQL, {"start": start, "end": end}).fetchall()
    finally:
        con.close()
    return {(a, d): p for a, d, p in rows}


def p95_mongo(db: Any, org: str, start: datetime, end: datetime) -> tuple[dict[tuple[str, str], float], str]:
    """The same as a MongoDB aggregation: server-side $percentile where the server has it
    (MongoDB 7+), else $match + $project on the server and the p95 on the client."""
    import numpy as np
    from pymongo.errors import OperationFailure

    from perf_analytics.schema import SNAPSHOTS

    match = {"$match": {"orgId": org, "timestamp": {"$gte": start, "$lt": end},
                        "performanceData.cpu.usage": {"$type": "double"}}}
    server_side = [match, {"$group": {
        "_id": {"a": "$assetId", "d": {"$dateToString": {"date": "$timestamp", "format": "%Y-%m-%d"}}},
        "p": {"$percentile": {"input": "$performanceData.cpu.usage", "p": [0.95], "method": "approximate"}}}}]
    try:
        return {(r["_id"]["a"], r["_id"]["d"]): r["p"][0] for r in db[SNAPSHOTS].aggregate(server_side)}, "server"
    except OperationFailure:
        pass
    project = {"$project": {"_id": 0, "assetId": 1, "timestamp": 1, "performanceData.cpu.usage": 1}}
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in db[SNAPSHOTS].aggregate([match, project]):
        values[(r["assetId"], r["timestamp"].strftime("%Y-%m-%d"))].append(r["performanceData"]["cpu"]["usage"])
    return {k: float(np.percentile(v, 95, method="linear")) for k, v in values.items()}, "client"


def child_fleet(spec: dict[str, Any]) -> dict[str, Any]:
    """The 30-day fleet aggregate both ways, interleaved rounds, checked equal."""
    from perf_analytics.sync import mirrored_orgs

    lake = Path(spec["lake"])
    org = mirrored_orgs(lake)[0]
    start, end = datetime.fromisoformat(spec["start"]), datetime.fromisoformat(spec["end"])
    db = _db(spec["uri"], spec["db"])
    rounds = []
    for _ in range(spec["rounds"]):
        began = time.perf_counter()
        duck = p95_duckdb(lake, org, start, end)
        mid = time.perf_counter()
        mongo, where = p95_mongo(db, org, start, end)
        rounds.append({"duckdb": mid - began, "mongo": time.perf_counter() - mid})
        print(rounds[-1], file=sys.stderr, flush=True)
    if set(duck) != set(mongo):
        raise SystemExit(f"the two sides disagree on the (asset, day) groups: {len(duck)} vs {len(mongo)}")
    diff = max(abs(duck[k] - mongo[k]) for k in duck)
    _, rss = _usage()
    return {"org": org, "groups": len(duck), "max_abs_diff": diff, "mongo_p95": where, "rounds": rounds,
            "ratio": statistics.median(r["mongo"] / r["duckdb"] for r in rounds), "peak_rss_mib": rss}


CHILDREN = {"sync": child_sync, "race": child_race, "fleet": child_fleet}


def _child(part: str, spec: dict[str, Any]) -> dict[str, Any]:
    # The child's stderr (each round's times) passes straight through, so a long run shows
    # its rounds as they finish and a run stopped early keeps them.
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps({**spec, "part": part})],
                         stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    out.check_returncode()
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# Each phase of the demo ends with the first output line that starts with its marker.
DEMO_PHASES = (
    ("generate", "generated "),
    ("server and indexes", "server: "),
    ("load", "read "),
    ("doctor org-01", "doctor "),
    ("one asset's last 15 minutes", "last 15 minutes"),
    ("sync", "sync: "),
    ("nightly of three orgs from the lake", "flagged and rolled up"),
)


def demo_phases(lines: list[tuple[float, str]], seconds: float) -> dict[str, float]:
    """Seconds of each phase, from the times of the lines that end them; the rest is
    DuckDB, the pictures and the report."""
    phases: dict[str, float] = {}
    previous = 0.0
    for name, marker in DEMO_PHASES:
        at = next((t for t, line in lines if line.startswith(marker)), None)
        if at is not None:
            phases[name] = round(at - previous, 1)
            previous = at
    phases["DuckDB, pictures, report"] = round(seconds - previous, 1)
    return phases


def run_demo(uri: str) -> dict[str, Any]:
    """pipelines/demo.py in a fresh directory and database, each output line timed."""
    demo = HERE.parent / "pipelines" / "demo.py"
    name = "bench_lake_demo"
    MongoClient(uri).drop_database(name)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        env = {**os.environ, "MONGODB_URI": uri, "PERF_DB": name, "PERF_LAKE": str(Path(tmp) / "lake")}
        began = time.perf_counter()
        proc = subprocess.Popen([sys.executable, str(demo)], cwd=tmp, env=env, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        lines = [(round(time.perf_counter() - began, 1), line.rstrip()) for line in proc.stdout]
        if proc.wait() != 0:
            raise SystemExit(f"demo failed with exit code {proc.returncode}")
        seconds = time.perf_counter() - began
    MongoClient(uri).drop_database(name)
    return {"seconds": seconds, "phases": demo_phases(lines, seconds), "lines": lines}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orgs", type=int, default=1)
    parser.add_argument("--assets", type=int, default=1000, help="assets per org (sync and race)")
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument("--interval", type=int, default=60, help="seconds between an asset's snapshots")
    parser.add_argument("--fleet-assets", type=int, default=1000, help="assets of the 30-day fleet aggregate")
    parser.add_argument("--fleet-days", type=int, default=30)
    parser.add_argument("--fleet-interval", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(CHILDREN[spec["part"]](spec), default=str))
        return 0

    from perf_analytics.synth import DEFAULT_START, FleetSpec

    results: dict[str, Any] = {"args": vars(args)}
    day_fleet = FleetSpec(orgs=args.orgs, assets=args.assets, days=args.days, interval_s=args.interval, seed=42)
    if "sync" in args.parts or "race" in args.parts:
        uri, name, lake = ensure_data(day_fleet)
        spec = {"uri": uri, "db": name, "lake": str(lake), "rounds": args.rounds,
                "day": (DEFAULT_START + timedelta(days=args.days - 1)).isoformat()}
        if "sync" in args.parts or not lake.exists():
            results["sync"] = _child("sync", spec)
            print(json.dumps(results["sync"]), file=sys.stderr)
        if "race" in args.parts:
            results["race"] = _child("race", spec)
    if "fleet" in args.parts:
        fleet = FleetSpec(orgs=1, assets=args.fleet_assets, days=args.fleet_days, interval_s=args.fleet_interval, seed=42)
        uri, name, lake = ensure_data(fleet)
        spec = {"uri": uri, "db": name, "lake": str(lake), "rounds": args.rounds}
        if not lake.exists():
            _child("sync", spec)
        results["fleet"] = _child("fleet", {**spec, "start": DEFAULT_START.isoformat(),
                                            "end": (DEFAULT_START + timedelta(days=args.fleet_days)).isoformat()})
    if "demo" in args.parts:
        from perf_analytics.config import load_settings
        from perf_analytics.store import connect

        settings = load_settings()
        host, port = connect(settings).client.address  # type: ignore[misc]
        results["demo"] = run_demo(settings.uri or f"mongodb://{host}:{port}/?directConnection=true")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lake.json").write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
