"""The agents' endpoint under 1,000 simulated agents, against the server's own insert limit.

One run, one database server, three measurements of the same snapshots (a 1.2 kB agent
payload, 1,000 assets of one org, each request a new (asset, timestamp); the timestamp an
ISO 8601 string, as a JSON encoder writes a date):

- the limit: `insert_many` of already validated documents in batches of 1,000 straight
  into the server, nothing else (measured before and after the HTTP runs; the mean is
  the limit);
- `perf-analytics serve`: wrk keeps 1,000 connections (one per simulated agent) each
  POSTing one snapshot at a time, for `--seconds`; group commit, lastSeen rounds, the
  API key cache and the rate limiter all run as in production (the rate set high);
  then once more with `--last-seen-seconds 3600`, so that no lastSeen round but the
  first (small) one falls in the run: the difference is what lastSeen costs;
- the original service's per-request path: a minimal Starlette app under the same
  uvicorn that, per request, validates, `insert_one`s the snapshot and `update_one`s the
  asset's lastSeen (filtered by _id and orgId), under the same wrk load.

Acknowledged snapshots (200s) per second are compared with the limit; p50 and p99 are
wrk's latency over every completed request. After each run the stored snapshots are
counted: every acknowledged one is stored (a few more may be: requests in flight when wrk
stops). Needs `wrk` on PATH (Debian: apt-get install wrk). Results go to
bench/results/serve.json and a markdown table on stdout.

    python bench/bench_serve.py --seconds 60           # 1,000 agents, 60 s per run
    python bench/bench_serve.py --agents 200 --seconds 5   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil

from perf_analytics.config import load_settings
from perf_analytics.schema import ASSETS, SNAPSHOTS, validate_snapshot
from perf_analytics.service.keys import create_api_key
from perf_analytics.store import Db, connect, connect_uri, ensure_indexes, probe_capabilities

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ORG = "org-bench"
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


def fresh_db(db: Db, name: str, agents: int) -> Db:
    target = db.client[name]
    db.client.drop_database(name)
    ensure_indexes(target)
    target[ASSETS].insert_many([{"_id": f"asset-{i}", "orgId": ORG, "name": f"asset {i}"} for i in range(agents)])
    return target


def insert_limit(db: Db, n: int, agents: int) -> float:
    """Docs/s of insert_many of `n` validated snapshots in batches of 1,000."""
    docs = [validate_snapshot(payload(i % agents, i // agents), org_id=ORG) for i in range(n)]
    started = time.perf_counter()
    for i in range(0, n, 1000):
        db[SNAPSHOTS].insert_many(docs[i : i + 1000], ordered=False)
    return n / (time.perf_counter() - started)


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
        server = psutil.Process(proc.pid)
        before = server.cpu_times()
        result = run_wrk(port, key, args.agents, args.seconds, args.threads)
        after = server.cpu_times()
        # The server's own CPU (HTTP, JSON, validation, BSON, pymongo) per acknowledged
        # snapshot: what it costs us whatever the database's speed.
        cpu = (after.user - before.user) + (after.system - before.system)
        result["server_cpu_ms_per_ack"] = 1000 * cpu / max(1, result["requests"] - result["status_errors"])
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


def run_serve(db: Db, name: str, env: dict[str, str], args: argparse.Namespace, *extra: str) -> dict[str, Any]:
    """`perf-analytics serve` on a fresh database under the wrk load."""
    serve_db = fresh_db(db, name, args.agents)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=1000, help="concurrent connections, one per agent")
    parser.add_argument("--seconds", type=int, default=60, help="length of each HTTP run")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--limit-docs", type=int, default=20_000, help="snapshots for each limit measurement")
    parser.add_argument("--workers", type=int, default=1, help="serve --workers")
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

        uri = localdb.start_server(settings.state_dir).uri
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    env = {**os.environ, "MONGODB_URI": uri, "PYTHONPATH": os.pathsep.join(sys.path)}
    out: dict[str, Any] = {"server": probe_capabilities(db).server, "agents": args.agents,
                           "seconds": args.seconds, "machine": platform.platform(), "cpus": os.cpu_count(),
                           "load_before": os.getloadavg()}
    names = [f"bench_serve_{stamp}_{part}" for part in ("limit1", "serve", "deferred", "base", "limit2")]
    try:
        limit_before = insert_limit(fresh_db(db, names[0], args.agents), args.limit_docs, args.agents)
        serve = run_serve(db, names[1], env, args)
        # The same service with lastSeen rounds out of the way (only the first, small one
        # falls in the run): what the lastSeen updates cost.
        deferred = run_serve(db, names[2], env, args, "--last-seen-seconds", "3600")

        base_db = fresh_db(db, names[3], args.agents)
        _, key = create_api_key(base_db, ORG, name="bench")
        port = free_port()
        cmd = [sys.executable, __file__, "--baseline-server", names[3], str(port)]
        base = measure(cmd, env, port, key, args, base_db, drain=False)

        limit_after = insert_limit(fresh_db(db, names[4], args.agents), args.limit_docs, args.agents)
    finally:
        for name in names:
            db.client.drop_database(name)
    limit = (limit_before + limit_after) / 2
    out.update(limit_before=limit_before, limit_after=limit_after, limit=limit, serve=serve,
               serve_last_seen_deferred=deferred, baseline=base,
               share_of_limit=serve["acknowledged_per_s"] / limit,
               ratio_vs_per_request=serve["acknowledged_per_s"] / base["acknowledged_per_s"],
               load_after=os.getloadavg())
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serve.json").write_text(json.dumps(out, indent=2))
    print(f"server: {out['server']}; {args.agents} agents (connections), {args.seconds} s per run; "
          f"load average before {out['load_before'][0]:.1f}, after {out['load_after'][0]:.1f}\n")
    print("| path | acknowledged/s | share of insert limit | p50 ms | p99 ms | server CPU ms per snapshot | acknowledged | stored |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = (("`serve` (group commit, lastSeen rounds every 30 s)", serve),
            ("`serve --last-seen-seconds 3600` (no round but the first)", deferred),
            ("per-request insert + update", base))
    for label, r in rows:
        print(f"| {label} | {r['acknowledged_per_s']:,.0f} | {r['acknowledged_per_s'] / limit:.2f} | "
              f"{r['p50_us'] / 1000:.0f} | {r['p99_us'] / 1000:.0f} | {r['server_cpu_ms_per_ack']:.2f} | "
              f"{r['acknowledged']:,} | {r['stored']:,} |")
    print(f"| server insert limit (`insert_many`, batches of 1,000) | {limit:,.0f} "
          f"({limit_before:,.0f} before, {limit_after:,.0f} after) | 1.00 | | | | | |")
    print(f"\nserve vs per-request: {out['ratio_vs_per_request']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
