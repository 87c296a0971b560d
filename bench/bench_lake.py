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
  org and day, interleaved rounds (each side a child of its own), median ratio. Goal: at
  least 20x.
- `fleet`: daily p95 CPU per asset over the fleet's days: DuckDB over the lake's
  `snapshot_metrics` view against a MongoDB aggregation pipeline over the same snapshots in
  the database, interleaved rounds (each side a child of its own), the numbers checked
  equal. Goal: at least 10x.

With `--server-timeout-s T` the server side of `race` and `fleet` is stopped T seconds
after it starts: the ratio is then a lower bound (`ratio_lower_bound`, T over the lake's
time), with how far the server got (`progress`: assets done of the org's, or documents
received of those in the window) and the full time extrapolated from that rate (for the
race before its first batch, from the time of its `distinct`, one scan on FerretDB, times
1 + the batches). Each part's result replaces only that part's in `results/lake.json`.
- `demo`: `pipelines/demo.py` end to end in a fresh directory and database, each output
  line timed (the phases). Goal: under 90 s.

    python bench/bench_lake.py                                   # 1,000 assets x 1 day x 1 min (hours on FerretDB)
    python bench/bench_lake.py --assets 200 --interval 300 --fleet-assets 30 --fleet-interval 3600 --parts sync race fleet
    python bench/bench_lake.py --assets 50 --interval 300 --fleet-assets 10 --fleet-interval 3600   # all four, minutes
    python bench/bench_lake.py --parts sync --sync-once                                          # 1.44M: the sync alone
    python bench/bench_lake.py --parts race --rounds 1 --server-timeout-s 1800                  # then the race, time-boxed
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench_extract import count_documents
from pymongo import MongoClient, monitoring

if TYPE_CHECKING:
    from perf_analytics.synth import FleetSpec

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
LOADED = "bench_loaded"  # one document per fleet archive whose load finished
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
    # A load that finished leaves a mark; one that was stopped (a time box, a kill) is
    # resumed from its checkpoint rather than benchmarked on part of the fleet. A mark, not
    # a count: FerretDB counts a collection by reading all of it.
    if target[LOADED].find_one({"_id": archive.name}) is None:
        if target[SNAPSHOTS].find_one({}, {"_id": 1}) is not None:
            print(f"{name} holds part of the fleet (its load was stopped): resuming the load", file=sys.stderr)
        ensure_indexes(target)
        began = time.perf_counter()
        loaded = ingest_archives_all_orgs(
            target, [archive], options=LoadOptions(checkpoint_dir=CACHE / f"checkpoints-lake-{tag}"))
        if loaded.damaged or loaded.rejected:
            raise SystemExit(f"the fleet archive {archive} did not load whole: {loaded.damaged or loaded.first_rejects}")
        target[LOADED].replace_one({"_id": archive.name}, {"_id": archive.name, "at": datetime.now(UTC)}, upsert=True)
        print(f"loaded {name} in {time.perf_counter() - began:.0f}s: {loaded.inserted:,} inserted, "
              f"{loaded.resumed_from:,} from an earlier run", file=sys.stderr)
    host, port = db.client.address  # type: ignore[misc]
    uri = settings.uri or f"mongodb://{host}:{port}/?directConnection=true"
    return uri, name, CACHE / f"lake-{tag}"


def _db(uri: str, name: str, *listeners: monitoring.CommandListener) -> Any:
    return MongoClient(uri, event_listeners=list(listeners))[name]


# ---- the parts, each run in a child ---------------------------------------------------------


def _sync_progress(began: float, cpu0: float, every: int = 100_000) -> Any:
    """A sync progress callback printing, every `every` snapshots read, the wall and CPU
    seconds so far and the peak RSS: a long sync shows its rate and its memory as it goes."""
    shown = [0]

    def tell(stage: str, count: int) -> None:
        if stage == "read" and count - shown[0] >= every:
            shown[0] = count
            cpu, rss = _usage()
            print(f"sync: {count:,} read, {time.perf_counter() - began:.0f}s wall, {cpu - cpu0:.1f}s CPU, "
                  f"peak RSS {rss:.0f} MiB", file=sys.stderr, flush=True)

    return tell


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
    first = sync_snapshots_all_orgs(db, lake, progress=_sync_progress(began, cpu0))
    wall = time.perf_counter() - began
    cpu, rss = _usage()
    out: dict[str, Any] = {"new": first.new, "read": first.read, "returned": counter.docs, "seconds": wall,
                           "cpu_seconds": cpu - cpu0, "peak_rss_mib": rss}
    if spec.get("sync_once"):
        return out
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


def child_race_lake(spec: dict[str, Any]) -> dict[str, Any]:
    """One round's lake side: `run_day` reading the mirror."""
    from perf_analytics.pipeline import run_day
    from perf_analytics.sync import mirrored_orgs

    lake = Path(spec["lake"])
    day = datetime.fromisoformat(spec["day"]).date()
    org = mirrored_orgs(lake)[0]
    assets: list[int] = [0]
    began = time.perf_counter()
    result = run_day(lake, org, day, progress=lambda done, total: assets.__setitem__(0, total))
    seconds = time.perf_counter() - began
    _, rss = _usage()
    return {"org": org, "seconds": seconds, "snapshots": result.snapshots, "flags": result.flags.height,
            "assets": assets[0], "peak_rss_mib": rss}


class ScanTimer(monitoring.CommandListener):
    """Prints the server's time for each `distinct` (one scan of the collection on FerretDB)."""

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if event.command_name == "distinct":
            print(f"@scan {json.dumps({'command': 'distinct', 'seconds': event.duration_micros / 1e6})}",
                  file=sys.stderr, flush=True)


def child_race_server(spec: dict[str, Any]) -> dict[str, Any]:
    """One round's server side: `run_day` reading the server (`ServerSnapshots`), into the
    scratch lake `spec["lake2"]`; prints `@begin` and `@progress` lines for the time box."""
    from perf_analytics.pipeline import ServerSnapshots, run_day

    day = datetime.fromisoformat(spec["day"]).date()
    source = ServerSnapshots(_db(spec["uri"], spec["db"], ScanTimer()))
    began = _begin()

    def progress(done: int, total: int) -> None:
        _progress({"assets_done": done, "assets": total, "seconds": time.perf_counter() - began})

    result = run_day(Path(spec["lake2"]), spec["org"], day, source=source, progress=progress)
    seconds = time.perf_counter() - began
    _, rss = _usage()
    return {"seconds": seconds, "snapshots": result.snapshots, "flags": result.flags.height, "peak_rss_mib": rss}


def _begin() -> float:
    """Mark the start of the timed work for a time-boxed child's parent (its clock starts here)."""
    print("@begin", file=sys.stderr, flush=True)
    return time.perf_counter()


def _progress(state: dict[str, Any]) -> None:
    print(f"@progress {json.dumps(state)}", file=sys.stderr, flush=True)


def _extrapolated(progress: dict[str, Any] | None, done: str, total: str) -> float | None:
    """The full time at the rate reached so far (None before the first step is done)."""
    if not progress or not progress[done]:
        return None
    return float(progress["seconds"] * progress[total] / progress[done])


def race(spec: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    """Interleaved rounds: the lake side, then the server side (stopped after `timeout` s)."""
    from perf_analytics.pipeline import DEFAULT_ASSET_BATCH

    rounds: list[dict[str, Any]] = []
    for n in range(spec["rounds"]):
        lake = _child("race-lake", spec)
        print(f"round {n + 1}, lake: {lake['seconds']:.1f}s", file=sys.stderr, flush=True)
        lake2 = tempfile.mkdtemp(dir=CACHE)
        try:
            server = _timed_child("race-server", {**spec, "org": lake["org"], "lake2": lake2}, timeout)
        finally:
            shutil.rmtree(lake2, ignore_errors=True)
        print(f"round {n + 1}, server: {server}", file=sys.stderr, flush=True)
        rounds.append({"lake": lake, "server": server})
    out: dict[str, Any] = {"org": rounds[0]["lake"]["org"], "day": spec["day"], "rounds": rounds}
    finished = [r for r in rounds if r["server"]["finished"]]
    if finished:
        out["ratio"] = statistics.median(r["server"]["seconds"] / r["lake"]["seconds"] for r in finished)
        for r in finished:
            if (r["server"]["snapshots"], r["server"]["flags"]) != (r["lake"]["snapshots"], r["lake"]["flags"]):
                raise SystemExit(f"the two sides disagree: lake {r['lake']}, server {r['server']}")
    else:
        # No server side finished: its time is at least the time box (a lower bound), and the
        # rate it reached (assets done in its batches) gives an estimate of the whole.
        lake_median = statistics.median(r["lake"]["seconds"] for r in rounds)
        last = rounds[-1]["server"]
        out["ratio_lower_bound"] = last["seconds"] / lake_median
        out["server_extrapolated_seconds"] = _extrapolated(last.get("progress"), "assets_done", "assets")
        out["server_extrapolated_from"] = "batches done"
        if out["server_extrapolated_seconds"] is None and last["scans"]:
            # Not one batch done, but the `distinct` done: on FerretDB each batch's read is
            # another scan of the collection, so at least (1 + batches) scans in all (the
            # detectors and rollups not counted).
            batches = -(-rounds[-1]["lake"]["assets"] // DEFAULT_ASSET_BATCH)
            out["server_extrapolated_seconds"] = last["scans"][0]["seconds"] * (1 + batches)
            out["server_extrapolated_from"] = f"distinct scan x (1 + {batches} batches)"
        if out["server_extrapolated_seconds"]:
            out["ratio_extrapolated"] = out["server_extrapolated_seconds"] / lake_median
    return out


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


def p95_mongo(db: Any, org: str, start: datetime, end: datetime,
              progress: Any = None) -> tuple[dict[tuple[str, str], float], str]:
    """The same as a MongoDB aggregation: server-side $percentile where the server has it
    (MongoDB 7+), else $match + $project on the server and the p95 on the client
    (`progress(documents)` every 10,000 documents received)."""
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
    for n, r in enumerate(db[SNAPSHOTS].aggregate([match, project]), 1):
        values[(r["assetId"], r["timestamp"].strftime("%Y-%m-%d"))].append(r["performanceData"]["cpu"]["usage"])
        if progress is not None and n % 10_000 == 0:
            progress(n)
    return {k: float(np.percentile(v, 95, method="linear")) for k, v in values.items()}, "client"


def child_fleet_duckdb(spec: dict[str, Any]) -> dict[str, Any]:
    """One round's DuckDB side of the fleet aggregate, with the lake's snapshot count in the window."""
    from perf_analytics.lake import connect_lake
    from perf_analytics.sync import mirrored_orgs

    lake = Path(spec["lake"])
    org = mirrored_orgs(lake)[0]
    start, end = datetime.fromisoformat(spec["start"]), datetime.fromisoformat(spec["end"])
    began = time.perf_counter()
    duck = p95_duckdb(lake, org, start, end)
    seconds = time.perf_counter() - began
    con = connect_lake(lake, org_id=org)
    try:
        row = con.execute("SELECT count(*) FROM snapshot_metrics WHERE timestamp >= $start AND timestamp < $end "
                          "AND cpu_usage IS NOT NULL", {"start": start, "end": end}).fetchone()
    finally:
        con.close()
    _, rss = _usage()
    return {"org": org, "seconds": seconds, "documents": row[0] if row else 0, "peak_rss_mib": rss,
            "p95": {f"{a}|{d}": v for (a, d), v in duck.items()}}


def child_fleet_mongo(spec: dict[str, Any]) -> dict[str, Any]:
    """One round's MongoDB side of the fleet aggregate; prints `@begin` and `@progress`
    (documents received of those expected) for the time box."""
    start, end = datetime.fromisoformat(spec["start"]), datetime.fromisoformat(spec["end"])
    db = _db(spec["uri"], spec["db"])
    began = _begin()

    def progress(documents: int) -> None:
        _progress({"documents_done": documents, "documents": spec["documents"],
                   "seconds": time.perf_counter() - began})

    mongo, where = p95_mongo(db, spec["org"], start, end, progress)
    seconds = time.perf_counter() - began
    _, rss = _usage()
    return {"seconds": seconds, "mongo_p95": where, "peak_rss_mib": rss,
            "p95": {f"{a}|{d}": v for (a, d), v in mongo.items()}}


def fleet(spec: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    """Interleaved rounds of the fleet aggregate, DuckDB then MongoDB (stopped after `timeout`
    s), the p95 of the rounds that finished checked equal."""
    rounds: list[dict[str, Any]] = []
    duck: dict[str, float] = {}
    for n in range(spec["rounds"]):
        d = _child("fleet-duckdb", spec)
        duck = d.pop("p95")
        m = _timed_child("fleet-mongo", {**spec, "org": d["org"], "documents": d["documents"]}, timeout)
        mongo = m.pop("p95", None)
        if mongo is not None:
            if set(duck) != set(mongo):
                raise SystemExit(f"the two sides disagree on the (asset, day) groups: {len(duck)} vs {len(mongo)}")
            m["max_abs_diff"] = max(abs(duck[k] - mongo[k]) for k in duck)
        rounds.append({"duckdb": d, "mongo": m})
        print(f"round {n + 1}: duckdb {d['seconds']:.2f}s, mongo {m}", file=sys.stderr, flush=True)
    out: dict[str, Any] = {"org": rounds[0]["duckdb"]["org"], "groups": len(duck),
                           "documents": rounds[0]["duckdb"]["documents"], "rounds": rounds}
    finished = [r for r in rounds if r["mongo"]["finished"]]
    if finished:
        out["ratio"] = statistics.median(r["mongo"]["seconds"] / r["duckdb"]["seconds"] for r in finished)
    else:
        duck_median = statistics.median(r["duckdb"]["seconds"] for r in rounds)
        last = rounds[-1]["mongo"]
        out["ratio_lower_bound"] = last["seconds"] / duck_median
        out["mongo_extrapolated_seconds"] = _extrapolated(last.get("progress"), "documents_done", "documents")
        if out["mongo_extrapolated_seconds"]:
            out["ratio_extrapolated"] = out["mongo_extrapolated_seconds"] / duck_median
    return out


def mark_synced(uri: str, lake: Path) -> None:
    """A sync of the lake from an empty database: it finds nothing new and records each org
    as synced, as `run_day` requires of a lake it reads."""
    from perf_analytics.sync import sync_snapshots_all_orgs

    empty: MongoClient[dict[str, Any]] = MongoClient(uri)
    try:
        empty.drop_database("bench_lake_empty")
        sync_snapshots_all_orgs(empty["bench_lake_empty"], lake)
    finally:
        empty.close()


def child_mirror_archive(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the lake from the loaded archive without the server: each line as a load stores
    it (`validate_snapshot`, a new ObjectId `_id`), encoded to BSON and held in memory in
    batches of 2,000 as the server's raw replies; then only the sync's own writer is timed
    on them (`in_memory`, as in `sync`). The same snapshots as the database's, not its `_id`s."""
    import bson
    import orjson
    import zstandard
    from bson import ObjectId

    from perf_analytics.schema import validate_snapshot
    from perf_analytics.sync import mirror_documents_all_orgs

    lake = Path(spec["lake"])
    shutil.rmtree(lake, ignore_errors=True)
    began = time.perf_counter()
    batches: list[bytes] = []
    with Path(spec["archive"]).open("rb") as raw:
        reader = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True))
        batch: list[bytes] = []
        for line in reader:
            batch.append(bson.encode({"_id": ObjectId(), **validate_snapshot(orjson.loads(line))}))
            if len(batch) == 2_000:
                batches.append(b"".join(batch))
                batch = []
        if batch:
            batches.append(b"".join(batch))
    encoded = time.perf_counter() - began
    cpu0, held = _usage()
    began = time.perf_counter()
    written = mirror_documents_all_orgs(lake, batches)
    cpu, rss = _usage()
    mark_synced(spec["uri"], lake)
    return {"new": written.new, "from": "archive", "encode_seconds": encoded,
            "held_mib": sum(map(len, batches)) / 2**20, "peak_rss_before_mib": held,
            "in_memory": {"snapshots": written.new, "cpu_seconds": cpu - cpu0,
                          "seconds": time.perf_counter() - began, "peak_rss_mib": rss}}


CHILDREN = {"sync": child_sync, "mirror-archive": child_mirror_archive, "race-lake": child_race_lake, "race-server": child_race_server,
            "fleet-duckdb": child_fleet_duckdb, "fleet-mongo": child_fleet_mongo}


def _command(part: str, spec: dict[str, Any]) -> list[str]:
    return [sys.executable, __file__, "--child", json.dumps({**spec, "part": part})]


def _child(part: str, spec: dict[str, Any]) -> dict[str, Any]:
    # The child's stderr (each round's times) passes straight through, so a long run shows
    # its rounds as they finish and a run stopped early keeps them.
    out = subprocess.run(_command(part, spec), stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    out.check_returncode()
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _timed_child(part: str, spec: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    """Run a child that prints `@begin` when its timed work starts and `@progress {json}`
    as it goes; stop it `timeout` seconds after `@begin` (None: never). The result has
    `finished`; a stopped child's has the time box as `seconds` and its last progress."""
    proc = subprocess.Popen(_command(part, spec), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ.copy())
    seen: dict[str, Any] = {}
    stdout: list[str] = []

    def pump_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            sys.stderr.write(line)
            sys.stderr.flush()
            if line.startswith("@begin"):
                seen["begin"] = time.perf_counter()
            elif line.startswith("@progress "):
                seen["progress"] = json.loads(line.removeprefix("@progress "))
            elif line.startswith("@scan "):
                seen.setdefault("scans", []).append(json.loads(line.removeprefix("@scan ")))

    def pump_stdout() -> None:
        assert proc.stdout is not None
        stdout.extend(proc.stdout)

    readers = [threading.Thread(target=pump_stderr, daemon=True), threading.Thread(target=pump_stdout, daemon=True)]
    for reader in readers:
        reader.start()
    while proc.poll() is None:
        if timeout is not None and "begin" in seen and time.perf_counter() - seen["begin"] > timeout:
            proc.kill()
            proc.wait()
            return {"finished": False, "seconds": timeout, "progress": seen.get("progress"),
                    "scans": seen.get("scans", [])}
        time.sleep(0.5)
    for reader in readers:
        reader.join()
    if proc.returncode != 0:
        raise SystemExit(f"{part} failed with exit code {proc.returncode}")
    result: dict[str, Any] = json.loads("".join(stdout).strip().splitlines()[-1])
    return {"finished": True, **result, "progress": seen.get("progress"), "scans": seen.get("scans", [])}


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
    parser.add_argument("--server-timeout-s", type=float, metavar="T",
                        help="stop the server side of race and fleet T seconds after it starts; the ratio is "
                             "then a lower bound (T / lake), with how far it got and the time extrapolated")
    parser.add_argument("--sync-once", action="store_true",
                        help="sync: only the first sync (no re-syncs, no re-read into memory: each is "
                             "another pass over the collection)")
    parser.add_argument("--fleet-lake", choices=("sync", "archive"), default="sync",
                        help="fleet: mirror the database with a sync (default), or write the loaded archive "
                             "through the sync's writer, without reading the server (a sync of a large fleet "
                             "is one more pass over the collection)")
    parser.add_argument("--sync-from", choices=("server", "archive"), default="server",
                        help="sync: from the server (default), or only the sync's writer on the archive's "
                             "snapshots held in memory (no server: our CPU per snapshot and peak RSS at sizes "
                             "the server cannot serve in time); its lake is then the race's")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(CHILDREN[spec["part"]](spec), default=str))
        return 0

    from perf_analytics.atomic import write_atomic
    from perf_analytics.synth import DEFAULT_START, FleetSpec

    # Each part's result replaces only that part's in the results file: a run of some parts
    # keeps the others' last results. Each is written as soon as its part ends.
    # It is read again before each write, so runs of different parts at once keep each other's.
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "lake.json"
    results: dict[str, Any] = {}

    def record(part: str, result: dict[str, Any]) -> None:
        results[part] = {**result, "args": vars(args), "finished_at": datetime.now(UTC).isoformat()}
        kept = json.loads(path.read_text()) if path.exists() else {}
        kept.pop("args", None)  # the whole run's arguments, as older runs wrote them
        write_atomic(path, json.dumps({**kept, part: results[part]}, indent=2, default=str).encode())
        print(json.dumps({part: results[part]}, default=str), file=sys.stderr, flush=True)

    day_fleet = FleetSpec(orgs=args.orgs, assets=args.assets, days=args.days, interval_s=args.interval, seed=42)
    if "sync" in args.parts or "race" in args.parts:
        uri, name, lake = ensure_data(day_fleet)
        spec = {"uri": uri, "db": name, "lake": str(lake), "rounds": args.rounds, "sync_once": args.sync_once,
                "archive": str(CACHE / f"lake-fleet-{lake.name.removeprefix('lake-')}.ndjson.zst"),
                "day": (DEFAULT_START + timedelta(days=args.days - 1)).isoformat()}
        if "sync" in args.parts or not _synced(lake).exists():
            record("sync", _sync(spec, "mirror-archive" if args.sync_from == "archive" else "sync"))
        if "race" in args.parts:
            record("race", race(spec, args.server_timeout_s))
    if "fleet" in args.parts:
        fleet_data = FleetSpec(orgs=1, assets=args.fleet_assets, days=args.fleet_days, interval_s=args.fleet_interval, seed=42)
        uri, name, lake = ensure_data(fleet_data)
        spec = {"uri": uri, "db": name, "lake": str(lake), "rounds": args.rounds, "sync_once": True,
                "archive": str(CACHE / f"lake-fleet-{lake.name.removeprefix('lake-')}.ndjson.zst"),
                "start": DEFAULT_START.isoformat(),
                "end": (DEFAULT_START + timedelta(days=args.fleet_days)).isoformat()}
        if _synced(lake).exists():
            synced = None
        elif args.fleet_lake == "archive":
            synced = _sync(spec, "mirror-archive")
        else:
            synced = _sync(spec)
        record("fleet", {**fleet(spec, args.server_timeout_s), "sync": synced})
    if "demo" in args.parts:
        from perf_analytics.config import load_settings
        from perf_analytics.store import connect

        settings = load_settings()
        host, port = connect(settings).client.address  # type: ignore[misc]
        record("demo", run_demo(settings.uri or f"mongodb://{host}:{port}/?directConnection=true"))
    print(json.dumps({part: results[part] for part in args.parts if part in results}, indent=2, default=str))
    return 0


def _synced(lake: Path) -> Path:
    """The mark beside a bench lake that its sync finished (a stopped sync leaves a partial lake)."""
    return lake.with_name(lake.name + ".synced")


def _sync(spec: dict[str, Any], part: str = "sync") -> dict[str, Any]:
    lake = Path(spec["lake"])
    _synced(lake).unlink(missing_ok=True)
    result = _child(part, spec)
    _synced(lake).touch()
    return result


if __name__ == "__main__":
    sys.exit(main())
