"""The agents' endpoint under 1,000 simulated agents, against the server's own insert limit.

One run, one database server, three measurements of the same snapshots (a 1.2 kB agent
payload, 1,000 assets of one org, each request a new (asset, timestamp); the timestamp an
ISO 8601 string, as a JSON encoder writes a date):

- the limit: `insert_many` of already validated documents in batches of 1,000 straight
  into a fresh collection, nothing else, measured before and after EVERY HTTP run (limit,
  HTTP, limit, HTTP, ..., limit): each HTTP run is compared with the mean of the two
  limits around it, so a machine whose speed drifts compares like with like; each limit
  inserts as many snapshots as the run before it stored (inserting slows as a collection
  grows), so the first, before any run, only estimates and the first run is compared with
  the limit after it (`--limit-docs N`: N every time);
- `perf-analytics serve`: wrk keeps 1,000 connections (one per simulated agent) each
  POSTing one snapshot at a time, for `--seconds`; group commit, lastSeen rounds (the
  first 30 s after start, so a run of 40 s holds one), their pending records, the API key
  cache and the rate limiter all run as in production (the rate set high); then once more
  with `--last-seen-seconds 3600`, so that no lastSeen round falls in the run: the
  difference is what lastSeen costs. Both are run `--rounds` times, alternating, with
  `--before DIR` (an earlier checkout) and each `--also OPTIONS` (the service with extra
  options, e.g. `--workers 2`) in the same rounds; the share of the limit reported is the
  median of the rounds' shares;
- the original service's per-request path: a minimal Starlette app under the same
  uvicorn that, per request, validates, `insert_one`s the snapshot and `update_one`s the
  asset's lastSeen (filtered by _id and orgId), under the same wrk load (once).

Acknowledged snapshots (200s) per second are compared with the limit; p50 and p99 are
wrk's latency over every completed request. Where the time goes: the CPU per acknowledged
snapshot of the HTTP server (with its workers), of the database server and of wrk (and,
for each limit, of the database server and the inserting client together): on a machine
short of CPU these share the cores, so their sum against the limit's bounds the share;
and, from the service's /metrics, its mean batch, the mean time a batch spends at the
database and the share of the run with a batch there (with workers, one worker's). After
each run the stored snapshots are counted: every acknowledged one is stored (a few more
may be: requests in flight when wrk stops). Needs `wrk` on PATH (Debian: apt-get install
wrk). Results go to bench/results/serve.json and a markdown table on stdout.

    python bench/bench_serve.py --seconds 40 --rounds 3     # 1,000 agents, 40 s per run
    python bench/bench_serve.py --agents 200 --seconds 5 --rounds 1   # a quick look
    python bench/bench_serve.py --seconds 40 --rounds 3 --before ../main --also "--workers 2"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
from pymongo import UpdateOne

from perf_analytics.config import load_settings
from perf_analytics.schema import ASSETS, SNAPSHOTS, validate_snapshot
from perf_analytics.service.keys import create_api_key
from perf_analytics.store import (
    WRITE_CHUNK,
    Db,
    bulk_write_chunked,
    connect,
    connect_uri,
    ensure_indexes,
    move_last_seen,
    owned_assets,
    probe_capabilities,
)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ORG = "org-bench"
FIRST_LIMIT_DOCS = 20_000  # the first limit, before any run has said how many a run stores
BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z; each request adds one second per asset

PAYLOAD: dict[str, Any] = {
    "agentId": "AGENT",
    "assetId": "ASSET",
    "timestamp": "TIME",
    "timeWindow": "1min",
    "performanceData": {
        "cpu": {"usage": 37.5, "temperature": 55.0, "frequency": 2400.0, "perCore": [30.0, 45.0, 41.5, 33.0]},
        "memory": {"usagePercent": 50.0, "usedBytes": 4e9, "totalBytes": 8e9, "availableBytes": 4e9, "swapUsed": 0.0},
        "disk": [
            {"name": "C:", "usagePercent": 40.0, "totalBytes": 5e11, "usedBytes": 2e11, "freeBytes": 3e11,
             "readBytesPerSec": 1000.0, "writeBytesPerSec": 2000.0, "readOpsPerSec": 10.0, "writeOpsPerSec": 20.0},
            {"name": "D:", "usagePercent": 10.0, "totalBytes": 1e12, "usedBytes": 1e11, "freeBytes": 9e11,
             "readBytesPerSec": 10.0, "writeBytesPerSec": 20.0, "readOpsPerSec": 1.0, "writeOpsPerSec": 2.0},
        ],
        "network": {"totalUsage": 1500.0, "interfaces": [
            {"name": "eth0", "bytesRecvPerSec": 1000.0, "bytesSentPerSec": 500.0,
             "packetsRecvPerSec": 10.0, "packetsSentPerSec": 5.0}]},
        "system": {"uptime": 3600.0, "processCount": 120, "threadCount": 1500},
    },
}

# wrk's Lua: each thread walks its share of the agents; request n of a thread is agent
# (n mod share) at second (n div share), so no two requests share (asset, timestamp).
WRK_SCRIPT = """
local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
local n = 0
function init(args)
  share = tonumber(args[1]); template = args[2]
  local key = os.getenv("BENCH_KEY")  -- not an argument: the process list shows those
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. key
end
function request()
  local agent = tid * share + (n %% share)
  local stamp = os.date("!%%Y-%%m-%%dT%%H:%%M:%%SZ", %(base)d + math.floor(n / share))
  local body = string.format(template, agent, agent, stamp)
  n = n + 1
  return wrk.format(nil, nil, nil, body)
end
function done(summary, latency, requests)
  local s = summary
  io.write(string.format(
    "RESULT {\\"requests\\": %%d, \\"duration_us\\": %%d, \\"status_errors\\": %%d, \\"connect\\": %%d, " ..
    "\\"read\\": %%d, \\"write\\": %%d, \\"timeout\\": %%d, \\"p50_us\\": %%d, \\"p99_us\\": %%d, \\"max_us\\": %%d}\\n",
    s.requests, s.duration, s.errors.status, s.errors.connect, s.errors.read, s.errors.write,
    s.errors.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def template() -> str:
    """The payload as a Lua format string: agent and asset numbers, then the timestamp."""
    text = orjson.dumps(PAYLOAD).decode().replace("%", "%%")
    return (text.replace('"AGENT"', '"agent-%d"').replace('"ASSET"', '"asset-%d"')
            .replace('"timestamp":"TIME"', '"timestamp":"%s"'))


def payload(agent: int, second: int) -> dict[str, Any]:
    moment = datetime.fromtimestamp(BASE_MS / 1000 + second, UTC)
    return dict(PAYLOAD, agentId=f"agent-{agent}", assetId=f"asset-{agent}",
                timestamp=moment.isoformat().replace("+00:00", "Z"))


# The embedded server's state directory when the bench runs on it (set by main), else None.
EMBEDDED: str | None = None


def fresh_db(db: Db, name: str, agents: int, *, id_paths: bool = True) -> Db:
    """A new database `name` with the indexes and `agents` assets of ORG.

    On the embedded server, `id_paths` then indexes its collections' _id paths as a command
    of ours does when it starts on it (`localdb.index_id_paths`); the checkout of `--before`
    predates that, and its runs go without.
    """
    target = db.client[name]
    db.client.drop_database(name)
    ensure_indexes(target)
    target[ASSETS].insert_many([{"_id": f"asset-{i}", "orgId": ORG, "name": f"asset {i}"} for i in range(agents)])
    if EMBEDDED is not None and id_paths:
        from perf_analytics import localdb

        localdb.index_id_paths(EMBEDDED, live_rows=localdb.LIVE_INDEX_ROWS)
    return target


def database_process(uri: str) -> psutil.Process | None:
    """The process listening on the URI's loopback port (the database server), if this
    machine runs it and it may be inspected."""
    port = int(uri.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return psutil.Process(conn.pid)
    except (psutil.Error, OSError):
        return None
    return None


def cpu_seconds(process: psutil.Process | None) -> float:
    """User + system CPU seconds of `process` so far (0 when unknown)."""
    if process is None:
        return 0.0
    times = process.cpu_times()
    return float(times.user + times.system)


def insert_limit(db: Db, n: int, agents: int, server: psutil.Process | None) -> tuple[float, float]:
    """Docs/s of insert_many of `n` validated snapshots in batches of 1,000, and the CPU
    milliseconds per document of the database server and this client together."""
    docs = [validate_snapshot(payload(i % agents, i // agents), org_id=ORG) for i in range(n)]
    cpu = cpu_seconds(server) + time.process_time()
    started = time.perf_counter()
    for i in range(0, n, 1000):
        db[SNAPSHOTS].insert_many(docs[i : i + 1000], ordered=False)
    seconds = time.perf_counter() - started
    return n / seconds, 1000 * (cpu_seconds(server) + time.process_time() - cpu) / n


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not answer")


def run_wrk(port: int, key: str, agents: int, seconds: int, threads: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(WRK_SCRIPT % {"base": BASE_MS // 1000})
        script = fh.name
    try:
        done = subprocess.run(
            ["wrk", "-t", str(threads), "-c", str(agents), "-d", f"{seconds}s", "--timeout", "30s", "-s", script,
             f"http://127.0.0.1:{port}/api/agent/performance", "--", str(agents // threads), template()],
            capture_output=True, text=True, check=True, env={**os.environ, "BENCH_KEY": key},
        )
    finally:
        Path(script).unlink()
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    result["acknowledged"] = result["requests"] - result["status_errors"]
    result["acknowledged_per_s"] = result["acknowledged"] / (result["duration_us"] / 1e6)
    return result


def measure(cmd: list[str], env: dict[str, str], port: int, key: str, args: argparse.Namespace,
            db: Db, *, drain: bool = True) -> dict[str, Any]:
    """Start a server, load it with wrk, stop it, count what it stored.

    `drain`: SIGTERM, so the server answers what it holds (the service writes its queue
    and a last lastSeen round); else SIGKILL (the per-request path holds minutes of work
    at 1,000 connections). What a server stores after wrk stopped is not counted as
    acknowledged either way.
    """
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", proc)
        # The server and its worker processes, the database server, wrk (a child, waited for).
        servers = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        before = [sum(cpu_seconds(p) for p in servers), cpu_seconds(args.database), _children_cpu()]
        result = run_wrk(port, key, args.agents, args.seconds, args.threads)
        result.update(batch_metrics(port, result["duration_us"] / 1e6))
        after = [sum(cpu_seconds(p) for p in servers), cpu_seconds(args.database), _children_cpu()]
        # CPU per acknowledged snapshot of each side: the HTTP server's own (HTTP, JSON,
        # validation, BSON, pymongo: what it costs us whatever the database's speed), the
        # database's, the load generator's. On a machine short of CPU they share the cores.
        acked = max(1, result["requests"] - result["status_errors"])
        for name, b, a in zip(("server", "database", "wrk"), before, after, strict=True):
            result[f"{name}_cpu_ms_per_ack"] = 1000 * (a - b) / acked
    finally:
        proc.send_signal(signal.SIGTERM if drain else signal.SIGKILL)
        try:
            _, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    result["stored"] = db[SNAPSHOTS].count_documents({"orgId": ORG})
    result["every_acknowledged_stored"] = result["stored"] >= result["acknowledged"]
    if proc.returncode not in (0, -signal.SIGTERM, -signal.SIGKILL):
        result["server_stderr_tail"] = err.decode(errors="replace")[-500:]
    return result


def batch_metrics(port: int, seconds: float) -> dict[str, float]:
    """From the service's /metrics (one process's, when there are workers): the mean batch,
    the mean time of a batch at the database, and the share of the run with a batch there
    (its inserts' seconds over the run's). Empty for a server without /metrics."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    except httpx.HTTPError:
        return {}
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if " " in line and not line.startswith("#"))
    try:
        batches = float(values["perf_serve_batch_size_count"])
        snapshots = float(values["perf_serve_batch_size_sum"])
        insert_s = float(values["perf_serve_insert_seconds_sum"])
    except KeyError:
        return {}
    return {"mean_batch": snapshots / max(1.0, batches), "mean_insert_ms": 1000 * insert_s / max(1.0, batches),
            "database_busy": insert_s / seconds}


def _children_cpu() -> float:
    """CPU seconds of this process's children that have been waited for (wrk)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_serve(db: Db, name: str, env: dict[str, str], args: argparse.Namespace, extra: Sequence[str] = (),
              *, id_paths: bool = True) -> dict[str, Any]:
    """`perf-analytics serve` on a fresh database under the wrk load (the package that
    `env`'s PYTHONPATH finds)."""
    serve_db = fresh_db(db, name, args.agents, id_paths=id_paths)
    _, key = create_api_key(serve_db, ORG, name="bench")
    port = free_port()
    cmd = [sys.executable, "-m", "perf_analytics.cli", "--db", name, "serve", "--port", str(port),
           "--workers", str(args.workers), "--rate", "1000000", "--burst", "1000000", *extra]
    result = measure(cmd, env, port, key, args, serve_db)
    print(f"serve {' '.join(extra)}: {json.dumps(result)}", file=sys.stderr)
    return result


# -- the original per-request path, as a server of its own --------------------------------


def baseline_app(uri: str, db_name: str) -> Any:
    """Per request: validate, insert_one, update_one of lastSeen (the original service)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    db = connect_uri(uri, db_name)

    def store(body: bytes) -> str:
        doc = validate_snapshot(orjson.loads(body), org_id=ORG)
        db[SNAPSHOTS].insert_one(doc)
        db[ASSETS].update_one({"_id": doc["assetId"], "orgId": ORG},
                              {"$max": {"lastSeen": doc["timestamp"]}, "$set": {"updatedAt": datetime.now(UTC)}})
        return str(doc["_id"])

    async def post(request: Request) -> JSONResponse:
        return JSONResponse({"id": await asyncio.to_thread(store, await request.body())})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def lifespan(app: Starlette) -> Any:
        # The original service had a connection per concurrent request (a pool of 100).
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(32))
        yield

    from contextlib import asynccontextmanager

    return Starlette(routes=[Route("/api/agent/performance", post, methods=["POST"]),
                             Route("/healthz", health)], lifespan=asynccontextmanager(lifespan))


def round_times(agents: int, threads: int) -> dict[str, datetime]:
    """A lastSeen round's work as the wrk load leaves it: each thread's agents at one of
    two consecutive seconds (its walk was part-way through a second), in arrival order
    (the threads' agents interleaved)."""
    share = agents // threads
    base = datetime.fromtimestamp(BASE_MS / 1000, UTC) + timedelta(seconds=30)
    times: dict[str, datetime] = {}
    for n in range(share):
        for t in range(threads):
            # Thread t has walked (t + 1) / (threads + 1) of its agents into the next second.
            ahead = n < share * (t + 1) // (threads + 1)
            times[f"asset-{t * share + n}"] = base + timedelta(seconds=2 * t + (1 if ahead else 0))
    return times


def one_by_one(db: Db, items: list[tuple[str, datetime]]) -> None:
    """lastSeen as `touch_assets` moved it before assets shared updates: per WRITE_CHUNK
    assets in arrival order, the org-filtered read of which are assets, then one `$max`
    UpdateOne by _id each (FerretDB's way: it cannot narrow `{_id, orgId}`)."""
    for i in range(0, len(items), WRITE_CHUNK):
        chunk = dict(items[i : i + WRITE_CHUNK])
        found = {d["_id"] for d in db[ASSETS].find({"orgId": ORG, "_id": {"$in": list(chunk)}}, {"_id": 1})}
        now = datetime.now(UTC)
        bulk_write_chunked(db[ASSETS], [
            UpdateOne({"_id": a}, {"$max": {"lastSeen": t}, "$set": {"updatedAt": now}})
            for a, t in chunk.items() if a in found])


def last_seen_rounds(db: Db, args: argparse.Namespace) -> dict[str, Any]:
    """One lastSeen round of every agent's asset, the service's way (one org-filtered read
    for the round, then in order of time WRITE_CHUNK assets a `move_last_seen`, so on
    MongoDB a second's assets share an update) against the org-filtered read and one `$max`
    UpdateOne per asset, WRITE_CHUNK assets at a time in arrival order (the way before,
    `one_by_one`), alternating, on the same assets (and as many of another org beside
    them); each round moves every asset one minute on. The share is the median of the
    rounds' time ratios."""
    target = fresh_db(db, f"bench_serve_rounds_{datetime.now(UTC):%Y%m%d%H%M%S}", args.agents)
    target[ASSETS].insert_many([{"_id": f"other-{i}", "orgId": "org-other"} for i in range(args.agents)])
    times = round_times(args.agents, args.threads)
    seconds: dict[str, list[float]] = {"grouped": [], "one by one": []}
    try:
        for r in range(args.rounds):
            for way in seconds:
                moved = {a: t + timedelta(minutes=2 * r + (way == "grouped")) for a, t in times.items()}
                started = time.perf_counter()
                if way == "grouped":
                    items = sorted(moved.items(), key=lambda item: item[1])
                    owned = owned_assets(target, ORG, moved)
                    for i in range(0, len(items), WRITE_CHUNK):
                        move_last_seen(target, ORG, dict(items[i : i + WRITE_CHUNK]), owned)
                else:
                    one_by_one(target, list(moved.items()))
                seconds[way].append(time.perf_counter() - started)
                print(f"round of {args.agents} assets, {way}: {seconds[way][-1]:.2f} s "
                      f"(load {os.getloadavg()[0]:.1f})", file=sys.stderr)
        stored = {a["_id"]: a["lastSeen"] for a in target[ASSETS].find({"orgId": ORG})}
        last = {a: t + timedelta(minutes=2 * (args.rounds - 1) + 1) for a, t in times.items()}
        assert stored == last, "a round left lastSeen other than its newest time"
    finally:
        db.client.drop_database(target.name)
    ratios = [one / grouped for one, grouped in zip(seconds["one by one"], seconds["grouped"], strict=True)]
    return {"seconds": seconds, "ratios": ratios, "median_ratio": statistics.median(ratios),
            "distinct_times": len(set(times.values()))}


class Interleaved:
    """HTTP runs, each between two measurements of the insert limit on a fresh database.

    The limit is measured first, then after every HTTP run; run i is compared with the
    mean of limits i and i + 1 (the machine as it was around that run). Inserting gets
    slower as a collection grows (on FerretDB about a quarter slower from 20,000 to 80,000
    snapshots), so each limit after a run inserts as many snapshots as that run stored
    (`--limit-docs 0`, the default): a run is compared with the server filling a collection
    as large. The first limit, before any run, inserts 20,000 and only estimates: the first
    run is compared with the limit after it alone. `--limit-docs N` inserts N every time.
    """

    def __init__(self, db: Db, stamp: str, args: argparse.Namespace) -> None:
        self.db = db
        self.stamp = stamp
        self.args = args
        self.names: list[str] = []
        self.limits: list[float] = []
        self.limit_cpu: list[float] = []  # CPU ms per document of database and client, each limit
        self.limit_docs: list[int] = []  # snapshots each limit inserted
        self.runs: list[tuple[str, dict[str, Any]]] = []

    def name(self, part: str) -> str:
        name = f"bench_serve_{self.stamp}_{len(self.names)}_{re.sub(r'[^A-Za-z0-9]+', '_', part).strip('_')}"
        self.names.append(name)
        return name

    def limit(self, docs: int) -> None:
        docs_per_s, cpu_ms = insert_limit(fresh_db(self.db, self.name("limit"), self.args.agents),
                                          docs, self.args.agents, self.args.database)
        self.limits.append(docs_per_s)
        self.limit_cpu.append(cpu_ms)
        self.limit_docs.append(docs)
        print(f"limit of {docs:,}: {docs_per_s:,.0f}/s, {cpu_ms:.2f} CPU ms a snapshot "
              f"(load {os.getloadavg()[0]:.1f})", file=sys.stderr)

    def run(self, label: str, measure_run: Any) -> None:
        """`measure_run(name)` (an HTTP run on a database of that name), then a limit."""
        matched = self.args.limit_docs == 0
        if not self.limits:
            self.limit(FIRST_LIMIT_DOCS if matched else self.args.limit_docs)
        result = measure_run(self.name(label))
        result["load_after"] = os.getloadavg()[0]
        self.runs.append((label, result))
        self.limit(max(1000, result["stored"]) if matched else self.args.limit_docs)
        around = self.limits[-1:] if matched and len(self.runs) == 1 else self.limits[-2:]
        result["limit_around"] = around
        result["share_of_limit"] = result["acknowledged_per_s"] / statistics.fmean(around)
        print(f"{label}: {result['share_of_limit']:.2f} of the limit", file=sys.stderr)

    def of(self, label: str) -> list[dict[str, Any]]:
        return [result for run_label, result in self.runs if run_label == label]

    def drop(self) -> None:
        for name in self.names:
            self.db.client.drop_database(name)


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds of one kind of run."""
    keys = ["share_of_limit", "acknowledged_per_s", "p50_us", "p99_us", "server_cpu_ms_per_ack",
            "database_cpu_ms_per_ack", "wrk_cpu_ms_per_ack"]
    keys += [key for key in ("mean_batch", "mean_insert_ms", "database_busy") if all(key in r for r in results)]
    return {key: statistics.median(r[key] for r in results) for key in keys} | {
        "shares": [round(r["share_of_limit"], 3) for r in results],
        "every_acknowledged_stored": all(r["every_acknowledged_stored"] for r in results),
        "acknowledged": sum(r["acknowledged"] for r in results), "stored": sum(r["stored"] for r in results),
    }


def _batches(r: dict[str, Any]) -> str:
    """The batch column of a row: mean size, mean ms at the database, share of the run with a batch there."""
    if "mean_batch" not in r:
        return ""
    return f"{r['mean_batch']:.0f}, {r['mean_insert_ms']:.0f}, {r['database_busy']:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=1000, help="concurrent connections, one per agent")
    parser.add_argument("--seconds", type=int, default=40, help="length of each HTTP run")
    parser.add_argument("--rounds", type=int, default=3, help="serve runs of each kind (with and without lastSeen)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--limit-docs", type=int, default=0,
                        help="snapshots for each limit measurement (0: as many as the run before it stored)")
    parser.add_argument("--workers", type=int, default=1, help="serve --workers")
    parser.add_argument("--no-baseline", action="store_true", help="skip the per-request path")
    parser.add_argument("--last-seen-only", action="store_true",
                        help="only time lastSeen rounds of every asset, grouped against one update per asset")
    parser.add_argument("--no-id-paths", action="store_true",
                        help="on the embedded server, leave the collections without the _id path index "
                             "(localdb.index_id_paths), as before it existed")
    parser.add_argument("--before", metavar="DIR",
                        help="also serve each round from the checkout at DIR (an earlier commit), lastSeen on")
    parser.add_argument("--also", action="append", default=[], metavar="OPTIONS",
                        help="also serve each round with these extra options (e.g. '--max-batch 2000'); repeatable")
    parser.add_argument("--baseline-server", nargs=2, metavar=("DB", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:
        import uvicorn

        db_name, port = args.baseline_server
        uvicorn.run(baseline_app(os.environ["MONGODB_URI"], db_name), host="127.0.0.1", port=int(port),
                    access_log=False, log_level="warning")
        return 0
    if shutil.which("wrk") is None:
        print("wrk is not on PATH (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    settings = load_settings()
    db = connect(settings)
    uri = settings.uri or os.environ.get("MONGODB_URI") or ""
    if not uri:
        from perf_analytics import localdb

        global EMBEDDED
        uri = localdb.start_server(settings.state_dir).uri
        EMBEDDED = None if args.no_id_paths else settings.state_dir
    args.database = database_process(uri)
    if args.last_seen_only:
        rounds = last_seen_rounds(db, args)
        print(f"server: {probe_capabilities(db).server}; a lastSeen round of {args.agents} assets at "
              f"{rounds['distinct_times']} distinct times, {args.rounds} round(s) of each way, load average "
              f"{os.getloadavg()[0]:.1f}: one update per asset takes {rounds['median_ratio']:.2f}x the time of "
              f"the grouped round (median; each round {', '.join(f'{x:.2f}' for x in rounds['ratios'])}; "
              f"grouped {', '.join(f'{x:.2f}' for x in rounds['seconds']['grouped'])} s, one by one "
              f"{', '.join(f'{x:.2f}' for x in rounds['seconds']['one by one'])} s)")
        return 0
    env = {**os.environ, "MONGODB_URI": uri, "PYTHONPATH": os.pathsep.join(sys.path)}
    out: dict[str, Any] = {"server": probe_capabilities(db).server, "agents": args.agents,
                           "seconds": args.seconds, "rounds": args.rounds, "machine": platform.platform(),
                           "cpus": os.cpu_count(), "load_before": os.getloadavg()}
    runs = Interleaved(db, datetime.now(UTC).strftime("%Y%m%d%H%M%S"), args)

    def per_request(name: str) -> dict[str, Any]:
        base_db = fresh_db(db, name, args.agents)
        _, key = create_api_key(base_db, ORG, name="bench")
        port = free_port()
        cmd = [sys.executable, __file__, "--baseline-server", name, str(port)]
        return measure(cmd, env, port, key, args, base_db, drain=False)

    before_env = {**env, "PYTHONPATH": os.pathsep.join([str(Path(args.before or ".").resolve()), *sys.path])}
    try:
        for _ in range(args.rounds):
            runs.run("serve", lambda name: run_serve(db, name, env, args))
            # The same service with lastSeen rounds out of the way (the first would come an
            # hour after start): what the lastSeen updates cost.
            runs.run("deferred", lambda name: run_serve(db, name, env, args, ["--last-seen-seconds", "3600"]))
            if args.before:
                runs.run("before", lambda name: run_serve(db, name, before_env, args, id_paths=False))
            for options in args.also:
                runs.run(options, partial(run_serve, db, env=env, args=args, extra=options.split()))
        if not args.no_baseline:
            runs.run("base", per_request)
    finally:
        runs.drop()
    serve, deferred = summary(runs.of("serve")), summary(runs.of("deferred"))
    base = runs.of("base")
    if args.before:
        out["serve_before"] = summary(runs.of("before"))
    out.update(limits=runs.limits, limit_cpu_ms=runs.limit_cpu, limit_docs=runs.limit_docs, runs=runs.runs, serve=serve, serve_last_seen_deferred=deferred,
               baseline=base[0] if base else None, share_of_limit=serve["share_of_limit"],
               load_after=os.getloadavg())
    if base:
        out["ratio_vs_per_request"] = serve["acknowledged_per_s"] / base[0]["acknowledged_per_s"]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serve.json").write_text(json.dumps(out, indent=2))
    print(f"server: {out['server']}; {args.agents} agents (connections), {args.seconds} s per run, "
          f"{args.rounds} round(s); load average before {out['load_before'][0]:.1f}, "
          f"after {out['load_after'][0]:.1f}\n")
    print("| path | share of insert limit (median; each round) | acknowledged/s | p50 ms | p99 ms "
          "| CPU ms per snapshot: server / database / wrk | batches: mean size, ms each, share of the run "
          "| every acknowledged stored |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    rows = [("`serve` (group commit, lastSeen rounds every 30 s, the first 30 s after start)", serve),
            ("`serve --last-seen-seconds 3600` (no lastSeen round in the run)", deferred)]
    if args.before:
        rows.append((f"`serve` of {args.before}", summary(runs.of("before"))))
    rows += [(f"`serve {options}`", summary(runs.of(options))) for options in args.also]
    if base:
        rows.append(("per-request insert + update", summary(base)))
    for label, r in rows:
        print(f"| {label} | {r['share_of_limit']:.2f} ({', '.join(f'{x:.2f}' for x in r['shares'])}) | "
              f"{r['acknowledged_per_s']:,.0f} | {r['p50_us'] / 1000:.0f} | {r['p99_us'] / 1000:.0f} | "
              f"{r['server_cpu_ms_per_ack']:.2f} / {r['database_cpu_ms_per_ack']:.2f} / "
              f"{r['wrk_cpu_ms_per_ack']:.2f} | {_batches(r)} | {'yes' if r['every_acknowledged_stored'] else 'NO'} |")
    print(f"| server insert limit (`insert_many`, batches of 1,000), each measurement as snapshots/s (snapshots "
          f"inserted; CPU ms per snapshot: database and client) | "
          f"{', '.join(f'{x:,.0f} ({n:,})' for x, n in zip(runs.limits, runs.limit_docs, strict=True))} | | | | "
          f"{', '.join(f'{x:.2f}' for x in runs.limit_cpu)} | | |")
    if base:
        print(f"\nserve vs per-request: {out['ratio_vs_per_request']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
