"""The agents' endpoint as agents meet it: a real `perf-analytics serve` process on
loopback, a real HTTP client, the test server behind it.

Two services run for the module: `svc` with the defaults, `tight` with small bounds
(body, items, queue, rate) and no key cache. Each test uses its own assets, so they
share the services without seeing each other's snapshots.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from perf_analytics.schema import ASSETS, SNAPSHOTS
from perf_analytics.service.keys import create_api_key, revoke_api_key
from perf_analytics.store import Db, connect_uri, ensure_indexes
from tests.factories import snapshot

ROUTE = "/api/agent/performance"
START_TIMEOUT_S = 120.0  # a loaded machine may take long to import the stack; no test waits on it otherwise


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServiceProcess:
    """A `perf-analytics serve` child process, its port and its log file."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> bool:
        """SIGTERM (queued snapshots and the last lastSeen round are written); True when the
        service shut down cleanly (uvicorn exits by the signal it handled, or 0)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=120) in (0, -signal.SIGTERM)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=60)


def start_service(uri: str, db_name: str, log_dir: Path, *args: str, port: int | None = None) -> ServiceProcess:
    """Start the service against `db_name` (the URI goes by environment) and wait until it answers."""
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERF_")}
    env["MONGODB_URI"] = uri
    log_path = log_dir / f"serve-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "perf_analytics.cli", "--db", db_name, "serve", "--port", str(port), *args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )
    service = ServiceProcess(proc, port, log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}:\n{service.log()}")
        try:
            httpx.get(f"{service.url}/healthz", timeout=10)
            return service
        except httpx.TransportError:
            time.sleep(0.1)
    service.kill()
    raise AssertionError(f"serve did not answer within {START_TIMEOUT_S:.0f}s:\n{service.log()}")


def agent_snapshot(asset: str, minutes_ago: int = 1, **overrides: Any) -> dict[str, Any]:
    """A valid agent body (no orgId: the key decides) from `minutes_ago` minutes ago."""
    moment = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=minutes_ago)
    body = snapshot(assetId=asset, timestamp=moment.isoformat().replace("+00:00", "Z"))
    del body["orgId"]
    body.update(overrides)
    return body


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Setup:
    db: Db
    uri: str
    key_a: str
    key_b: str
    svc: ServiceProcess
    tight: ServiceProcess


@pytest.fixture(scope="module")
def setup(server_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    db = connect_uri(server_uri, name)
    ensure_indexes(db)
    _, key_a = create_api_key(db, "org-a", name="fleet a")
    _, key_b = create_api_key(db, "org-b")
    logs = tmp_path_factory.mktemp("serve")
    svc = start_service(server_uri, name, logs)
    tight = start_service(
        server_uri, name, logs, "--max-body", "4096", "--max-items", "3", "--queue", "2",
        "--rate", "0.001", "--burst", "3", "--key-cache-seconds", "0", "--access-log",
    )
    try:
        yield Setup(db, server_uri, key_a, key_b, svc, tight)
    finally:
        for service in (svc, tight):
            service.stop()
        db.client.drop_database(name)
        db.client.close()


def stored(db: Db, org: str, asset: str) -> list[dict[str, Any]]:
    return list(db[SNAPSHOTS].find({"orgId": org, "assetId": asset}).sort("timestamp", -1))


def post(service: ServiceProcess, key: str | None, body: Any, **kwargs: Any) -> httpx.Response:
    headers = bearer(key) if key else {}
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return httpx.post(f"{service.url}{ROUTE}", content=content, headers=headers, timeout=60, **kwargs)


def get(service: ServiceProcess, key: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{service.url}{ROUTE}", params=params, headers=bearer(key), timeout=60)


# -- storing and reading -----------------------------------------------------------------


def test_a_posted_snapshot_is_stored_for_the_keys_org_and_read_back_newest_first(setup: Setup) -> None:
    asset = unique("read")
    older, newer = agent_snapshot(asset, minutes_ago=2), agent_snapshot(asset, minutes_ago=1)
    ids = []
    for body in (older, newer):
        answer = post(setup.svc, setup.key_a, body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["duplicate"] is False
        ids.append(answer.json()["id"])

    answer = get(setup.svc, setup.key_a, assetId=asset, timeWindow="1hour", limit=60)
    assert answer.status_code == 200
    rows = answer.json()
    assert [row["_id"] for row in rows] == ids[::-1]
    assert [row["timestamp"] for row in rows] == [newer["timestamp"], older["timestamp"]]
    assert {row["orgId"] for row in rows} == {"org-a"}
    assert rows[0]["performanceData"]["cpu"]["usage"] == 37.5
    assert [str(doc["_id"]) for doc in stored(setup.db, "org-a", asset)] == ids[::-1]
    assert get(setup.svc, setup.key_a, assetId=asset, limit=1).json()[0]["_id"] == ids[1]


def test_an_agent_body_without_a_time_window_is_stored_as_one_minute(setup: Setup) -> None:
    asset = unique("window")
    body = agent_snapshot(asset)
    del body["timeWindow"]
    answer = post(setup.svc, setup.key_a, body)
    assert answer.status_code == 200, answer.text
    assert [doc["timeWindow"] for doc in stored(setup.db, "org-a", asset)] == ["1min"]
    wrong = post(setup.svc, setup.key_a, agent_snapshot(unique("window"), timeWindow="2min"))
    assert wrong.status_code == 400 and wrong.json()["field"] == "timeWindow"


def test_a_snapshot_sent_twice_is_stored_once_and_the_second_answer_says_duplicate(setup: Setup) -> None:
    body = agent_snapshot(unique("dup"))
    first, second = post(setup.svc, setup.key_a, body), post(setup.svc, setup.key_a, body)
    assert (first.status_code, first.json()["duplicate"]) == (200, False)
    assert second.status_code == 200
    assert second.json() == {"id": None, "duplicate": True}
    assert len(stored(setup.db, "org-a", body["assetId"])) == 1


def test_an_array_is_stored_with_each_snapshots_outcome(setup: Setup) -> None:
    asset = unique("array")
    known = agent_snapshot(asset, minutes_ago=3)
    assert post(setup.svc, setup.key_a, known).status_code == 200
    bodies = [agent_snapshot(asset, minutes_ago=2), known, agent_snapshot(asset, minutes_ago=1)]
    answer = post(setup.svc, setup.key_a, bodies)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert (result["inserted"], result["duplicates"]) == (2, 1)
    assert [r["duplicate"] for r in result["results"]] == [False, True, False]
    assert len(stored(setup.db, "org-a", asset)) == 3


# -- keys, orgs and tenants ----------------------------------------------------------------


def test_requests_without_a_valid_key_get_401(setup: Setup) -> None:
    body = agent_snapshot(unique("nokey"))
    key_id = setup.key_a.split("_")[1]
    forged = f"pak_{key_id}_{'A' * 43}"  # a real key id with a wrong secret
    for key in (None, "not-a-key", forged, setup.key_a + "x"):
        answer = post(setup.svc, key, body)
        assert answer.status_code == 401, key
        assert answer.json()["error"] in {"missing_key", "unknown_key"}
    assert stored(setup.db, "org-a", body["assetId"]) == []
    with_header = httpx.post(f"{setup.svc.url}{ROUTE}", content=orjson.dumps(body),
                             headers={"X-API-Key": setup.key_a}, timeout=60)
    assert with_header.status_code == 200


def test_a_key_of_one_org_can_neither_write_nor_read_another_orgs_asset(setup: Setup) -> None:
    asset = unique("tenant")
    body = agent_snapshot(asset)
    a = post(setup.svc, setup.key_a, body)
    assert a.status_code == 200
    # The same asset id and time under org B is B's own snapshot, not a duplicate of A's.
    b = post(setup.svc, setup.key_b, body)
    assert (b.status_code, b.json()["duplicate"]) == (200, False)
    seen_by_b = get(setup.svc, setup.key_b, assetId=asset).json()
    assert [(row["_id"], row["orgId"]) for row in seen_by_b] == [(b.json()["id"], "org-b")]

    other = agent_snapshot(asset, minutes_ago=5, orgId="org-b")
    refused = post(setup.svc, setup.key_a, other)
    assert refused.status_code == 403
    assert refused.json()["error"] == "wrong_org"
    mixed = post(setup.svc, setup.key_a, [agent_snapshot(asset, minutes_ago=6), other])
    assert mixed.status_code == 403
    read_other = get(setup.svc, setup.key_a, assetId=asset, orgId="org-b")
    assert read_other.status_code == 403
    assert len(stored(setup.db, "org-b", asset)) == 1
    assert len(stored(setup.db, "org-a", asset)) == 1


def test_a_body_naming_the_keys_own_org_or_a_null_org_is_accepted(setup: Setup) -> None:
    for org in ("org-a", None):
        asset = unique("own")
        answer = post(setup.svc, setup.key_a, agent_snapshot(asset, orgId=org))
        assert answer.status_code == 200, answer.text
        assert len(stored(setup.db, "org-a", asset)) == 1


def test_a_revoked_key_is_refused_once_no_cache_holds_it(setup: Setup) -> None:
    record, key = create_api_key(setup.db, "org-a", name="to revoke")
    asset = unique("revoked")
    assert post(setup.tight, key, agent_snapshot(asset, minutes_ago=2)).status_code == 200
    revoke_api_key(setup.db, record.id)
    answer = post(setup.tight, key, agent_snapshot(asset, minutes_ago=1))
    assert answer.status_code == 401
    assert len(stored(setup.db, "org-a", asset)) == 1


# -- bad bodies -----------------------------------------------------------------------------


def _deep(levels: int) -> dict[str, Any]:
    inner: Any = 1
    for _ in range(levels):
        inner = {"k": inner}
    return inner  # type: ignore[no-any-return]


BAD_BODIES: dict[str, tuple[Any, str, str, str]] = {
    # name: (body, error, field, words in the reason)
    "truncated JSON": (b'{"agentId": "agent-1", "assetId": "x", "timest', "invalid_json", "", "not valid JSON"),
    "not UTF-8": (b'{"agentId": "\xff\xfe"}', "invalid_json", "", "not valid JSON"),
    "a number": (b"42", "invalid_snapshot", "", "expected an object"),
    "a string metric": ({"performanceData.cpu.usage": "high"}, "invalid_snapshot", "performanceData.cpu.usage",
                        "expected a number"),
    "a percentage over 100": ({"performanceData.cpu.usage": 250}, "invalid_snapshot", "performanceData.cpu.usage",
                              "outside [0, 100]"),
    "a missing section": ({"performanceData.memory": None}, "invalid_snapshot", "performanceData.memory",
                          "is required"),
    "an array for an object": ({"performanceData.system": [1, 2]}, "invalid_snapshot", "performanceData.system",
                               "expected an object"),
    "a bad timestamp": ({"timestamp": "yesterday"}, "invalid_snapshot", "timestamp", "not an ISO-8601 date"),
    "an asset id with a slash": ({"assetId": "../org-b"}, "invalid_snapshot", "assetId", "not an identifier"),
    "an id of its own": ({"_id": "65f000000000000000000001"}, "invalid_snapshot", "_id", "assigned by the service"),
    "nesting 150 deep": ({"extra": _deep(150)}, "invalid_snapshot", "extra.k.k.k...", "nested deeper than 100"),
    "nesting 100,000 deep": (b"[" * 100_000 + b"]" * 100_000, "invalid_json", "", "not valid JSON"),
    "a number for an id": ({"agentId": 12345}, "invalid_snapshot", "agentId", "expected a string"),
    "NaN": (b'{"agentId": NaN}', "invalid_json", "", "not valid JSON"),
    "an empty array": (b"[]", "invalid_snapshot", "", "holds no snapshot"),
}


def _body(spec: Any, asset: str) -> Any:
    """The bytes as given, or a valid snapshot with dotted paths set (None: removed)."""
    if isinstance(spec, bytes):
        return spec
    body = agent_snapshot(asset)
    for path, value in spec.items():
        *parents, last = path.split(".")
        target = body
        for part in parents:
            target = target[part]
        if value is None:
            del target[last]
        else:
            target[last] = value
    return body


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_a_bad_body_gets_400_with_field_and_reason_and_stores_nothing(setup: Setup, name: str) -> None:
    spec, error, field, words = BAD_BODIES[name]
    asset = unique("bad")
    answer = post(setup.svc, setup.key_a, _body(spec, asset))
    assert answer.status_code == 400, answer.text
    result = answer.json()
    assert result["error"] == error
    assert words in (result.get("reason") or result["message"])
    if field:
        assert result["field"] == field
    assert stored(setup.db, "org-a", asset) == []
    assert post(setup.svc, setup.key_a, agent_snapshot(asset)).status_code == 200  # the service lives on


def test_one_bad_snapshot_refuses_the_whole_array_naming_it(setup: Setup) -> None:
    asset = unique("bad-array")
    bad = agent_snapshot(asset, minutes_ago=2)
    bad["performanceData"]["memory"]["usedBytes"] = -1
    answer = post(setup.svc, setup.key_a, [agent_snapshot(asset, minutes_ago=3), bad, agent_snapshot(asset)])
    assert answer.status_code == 400
    assert answer.json()["errors"] == [
        {"index": 1, "field": "performanceData.memory.usedBytes", "reason": "must be >= 0, got -1"}
    ]
    assert stored(setup.db, "org-a", asset) == []


def test_a_body_over_the_limit_gets_413(setup: Setup) -> None:
    asset = unique("large")
    padded = agent_snapshot(asset, padding="x" * 5000)
    assert post(setup.tight, setup.key_a, padded).status_code == 413
    # Without a Content-Length (chunked), the body is cut off as it streams in.
    chunks = [orjson.dumps(padded)[i : i + 1000] for i in range(0, 6000, 1000)]
    streamed = httpx.post(f"{setup.tight.url}{ROUTE}", content=iter(chunks), headers=bearer(setup.key_b), timeout=60)
    assert streamed.status_code == 413
    assert streamed.json()["error"] == "too_large"
    huge = post(setup.svc, setup.key_a, agent_snapshot(asset, padding="x" * (2 * 1024 * 1024)))
    assert huge.status_code == 413
    assert stored(setup.db, "org-a", asset) == []


def test_more_snapshots_in_one_body_than_allowed_gets_413(setup: Setup) -> None:
    _, key = create_api_key(setup.db, "org-a")
    asset = unique("items")
    answer = post(setup.tight, key, [agent_snapshot(asset, minutes_ago=m) for m in range(1, 5)])
    assert answer.status_code == 413
    assert answer.json()["error"] == "too_many_snapshots"


def test_a_key_over_its_rate_gets_429_and_other_keys_go_on(setup: Setup) -> None:
    _, key = create_api_key(setup.db, "org-a")
    _, other = create_api_key(setup.db, "org-a")
    asset = unique("rate")
    answers = [post(setup.tight, key, agent_snapshot(asset, minutes_ago=m)).status_code for m in range(1, 5)]
    assert answers == [200, 200, 200, 429]
    limited = post(setup.tight, key, agent_snapshot(asset, minutes_ago=9))
    assert limited.json()["error"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    assert post(setup.tight, other, agent_snapshot(asset, minutes_ago=8)).status_code == 200
    assert len(stored(setup.db, "org-a", asset)) == 4


def test_a_full_queue_is_503_at_once(setup: Setup) -> None:
    _, key = create_api_key(setup.db, "org-a")
    asset = unique("queue")
    answer = post(setup.tight, key, [agent_snapshot(asset, minutes_ago=m) for m in range(1, 4)])
    assert answer.status_code == 503
    assert answer.json()["error"] == "queue_full"
    assert stored(setup.db, "org-a", asset) == []


# -- reading --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "assetId"),
        ({"assetId": "a/b"}, "assetId"),
        ({"assetId": "a", "timeWindow": "2hours"}, "timeWindow"),
        ({"assetId": "a", "limit": "0"}, "limit"),
        ({"assetId": "a", "limit": "ten"}, "limit"),
        ({"assetId": "a", "limit": "1001"}, "limit"),
    ],
)
def test_a_bad_query_gets_400_naming_the_parameter(setup: Setup, params: dict[str, str], field: str) -> None:
    answer = get(setup.svc, setup.key_a, **params)
    assert answer.status_code == 400
    assert answer.json()["field"] == field


def test_get_needs_a_key_too(setup: Setup) -> None:
    answer = httpx.get(f"{setup.svc.url}{ROUTE}", params={"assetId": "a"}, timeout=60)
    assert answer.status_code == 401


# -- health, metrics, logs ------------------------------------------------------------------


def test_healthz_says_ok_when_the_database_answers_and_the_key_index_is_there(setup: Setup) -> None:
    answer = httpx.get(f"{setup.svc.url}/healthz", timeout=60)
    assert (answer.status_code, answer.json()) == (200, {"status": "ok"})


def _metric_values(text: str) -> dict[str, float]:
    """Each sample of a Prometheus text scrape, by name and labels."""
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines() if line and not line.startswith("#")
    }


def test_metrics_count_requests_rejects_batches_and_the_queue(setup: Setup) -> None:
    assert post(setup.svc, setup.key_a, agent_snapshot(unique("metrics"))).status_code == 200
    assert post(setup.svc, setup.key_a, b"{").status_code == 400
    answer = httpx.get(f"{setup.svc.url}/metrics", timeout=60)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    values = _metric_values(answer.text)
    assert values['perf_serve_requests_total{method="POST",route="/api/agent/performance",status="200"}'] >= 1
    assert values['perf_serve_rejects_total{reason="invalid_json"}'] >= 1
    assert values['perf_serve_snapshots_total{outcome="inserted"}'] >= 1
    assert values["perf_serve_batch_size_count"] >= 1
    assert values['perf_serve_batch_size_bucket{le="+Inf"}'] == values["perf_serve_batch_size_count"]
    assert values["perf_serve_insert_seconds_count"] == values["perf_serve_batch_size_count"]
    assert values["perf_serve_queue_depth"] == 0


def _scrape(service: ServiceProcess) -> dict[str, float]:
    return _metric_values(httpx.get(f"{service.url}/metrics", timeout=60).text)


def test_requests_in_flight_do_not_keep_the_cyclic_collector_running(setup: Setup) -> None:
    """The service's objects die by reference counting; a request's live until its batch
    is answered. Under Python's default thresholds every 700 allocations walked all the
    requests in flight (and the oldest generation paused everything for 60-170 ms under
    1,000 agents): 400 requests, 100 at a time, must not set the collector off more than
    twice (GC_THRESHOLDS)."""
    gen0 = 'python_gc_collections_total{generation="0"}'
    before = _scrape(setup.svc)[gen0]
    asset = unique("gc")

    async def agents() -> list[int]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=setup.svc.url, headers=bearer(setup.key_a), timeout=120,
                                     limits=limits) as client:
            answers = await asyncio.gather(*(
                client.post(ROUTE, content=orjson.dumps(agent_snapshot(asset, minutes_ago=minute)))
                for minute in range(1, 401)
            ))
        return [answer.status_code for answer in answers]

    assert asyncio.run(agents()) == [200] * 400
    after = _scrape(setup.svc)
    assert after[gen0] - before <= 2
    assert setup.db[SNAPSHOTS].count_documents({"orgId": "org-a", "assetId": asset}) == 400


def test_no_key_and_no_database_uri_appear_in_the_log(setup: Setup) -> None:
    key_id = setup.key_a.split("_")[1]
    post(setup.tight, setup.key_a, agent_snapshot(unique("log")))
    post(setup.tight, f"pak_{key_id}_{'B' * 43}", agent_snapshot(unique("log")))
    log = setup.tight.log() + setup.svc.log()
    assert f'"POST {ROUTE} HTTP/1.1"' in setup.tight.log()  # the access log is on, and says little
    for secret in (setup.key_a, setup.key_b, setup.key_a.split("_", 2)[2], setup.uri):
        assert secret not in log


def test_the_keys_are_stored_only_as_salted_hashes(setup: Setup) -> None:
    docs = list(setup.db["api_keys"].find())
    assert len(docs) >= 2
    text = repr(docs)
    for key in (setup.key_a, setup.key_b):
        # The secret is what follows "<prefix>_<id>_"; it may itself hold "_".
        secret = key.split("_", 2)[2]
        assert len(secret) >= 40 and secret not in text
    assert len({bytes(doc["salt"]) for doc in docs}) == len(docs)


def test_the_last_seen_of_an_asset_moves_to_its_newest_snapshot_by_the_time_the_service_stops(
    server_uri: str, db: Db, tmp_path: Path
) -> None:
    db[ASSETS].insert_one({"_id": "seen-1", "orgId": "org-a"})
    _, key = create_api_key(db, "org-a")
    service = start_service(server_uri, db.name, tmp_path, "--workers", "2")
    try:
        bodies = [agent_snapshot("seen-1", minutes_ago=m) for m in (3, 1, 2)]
        for body in bodies:
            assert post(service, key, body).status_code == 200
    finally:
        assert service.stop()
    newest = max(datetime.fromisoformat(b["timestamp"]) for b in bodies)
    assert db[ASSETS].find_one({"_id": "seen-1"})["lastSeen"] == newest  # type: ignore[index]
    assert db[SNAPSHOTS].count_documents({"orgId": "org-a", "assetId": "seen-1"}) == 3


def test_a_malformed_uri_is_one_error_line_that_does_not_repeat_it() -> None:
    from click.testing import CliRunner

    from perf_analytics.cli import app

    uri = "mongodb://user:secret@127.0.0.1:notaport/"
    result = CliRunner().invoke(app, ["--uri", uri, "serve", "--port", str(free_port())])
    assert result.exit_code == 1
    assert result.stderr == "Error: invalid MongoDB URI\n"
