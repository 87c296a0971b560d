"""The agents' endpoint when things break: the database going away and coming back, and
the service killed (SIGKILL) while agents are posting.

What clients were told is compared with what is stored: every snapshot answered 200 is
stored, and none is stored twice, whatever the service or the database went through.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from perf_analytics import localdb
from perf_analytics.schema import ASSETS, SNAPSHOTS
from perf_analytics.service.keys import create_api_key
from perf_analytics.store import LAST_SEEN_PENDING, Db, connect_uri, ensure_indexes
from tests.test_serve import ROUTE, ServiceProcess, agent_snapshot, bearer, post, start_service


@pytest.fixture
def private_server(tmp_path: Path) -> Iterator[tuple[Path, localdb.LocalServer]]:
    """A database server of this test's own, which the test may stop and start again."""
    if os.environ.get("MONGODB_URI"):
        pytest.fail("this test stops its own server; run it without MONGODB_URI")
    state = tmp_path / "db"
    server = localdb.start_server(state)
    try:
        yield state, server
    finally:
        localdb.stop_server(state)


def _stored_keys(db: Db, org: str) -> list[tuple[str, datetime]]:
    return [(d["assetId"], d["timestamp"]) for d in db[SNAPSHOTS].find({"orgId": org}, {"assetId": 1, "timestamp": 1})]


@pytest.mark.slow
def test_the_service_answers_503_while_the_database_is_away_and_recovers(
    private_server: tuple[Path, localdb.LocalServer], tmp_path: Path
) -> None:
    state, server = private_server
    db = connect_uri(server.uri, "serve_outage")
    ensure_indexes(db)
    db[ASSETS].insert_one({"_id": "outage-1", "orgId": "org-a"})
    _, key = create_api_key(db, "org-a")
    _, unseen_key = create_api_key(db, "org-a")
    db.client.close()
    service = start_service(server.uri, "serve_outage", tmp_path)
    try:
        # Four distinct minutes from one reading of the clock: read apart, two could fall on
        # one minute when the clock crosses a minute during the test.
        now = datetime.now(UTC).replace(second=0, microsecond=0)
        before, during, after, earliest = (
            agent_snapshot("outage-1", timestamp=(now - timedelta(minutes=m)).isoformat()) for m in (3, 2, 1, 4)
        )
        assert post(service, key, before).status_code == 200

        localdb.stop_server(state)
        down = post(service, key, during)
        assert (down.status_code, down.json()["error"]) == (503, "db_unavailable")
        health = httpx.get(f"{service.url}/healthz", timeout=60)
        assert (health.status_code, health.json()["status"]) == (503, "unavailable")
        # A key the service has not seen yet cannot be checked: 503 (retry), not 401 (give up).
        assert post(service, unseen_key, during).status_code == 503
        reading = httpx.get(f"{service.url}{ROUTE}", params={"assetId": "outage-1"}, headers=bearer(key), timeout=60)
        assert reading.status_code == 503

        localdb.start_server(state, port=server.port)
        for _ in range(60):  # the agent retries until its snapshot is stored
            retried = post(service, key, during)
            if retried.status_code == 200:
                break
            time.sleep(0.5)
        assert retried.status_code == 200, retried.text
        assert post(service, key, after).status_code == 200
        assert post(service, unseen_key, earliest).status_code == 200
        assert httpx.get(f"{service.url}/healthz", timeout=60).status_code == 200
    finally:
        assert service.stop()
    log = service.log()
    assert key not in log and unseen_key not in log and server.uri not in log

    db = connect_uri(server.uri, "serve_outage")
    try:
        keys = _stored_keys(db, "org-a")
        assert len(keys) == len(set(keys)) == 4
        newest = datetime.fromisoformat(after["timestamp"])
        assert db[ASSETS].find_one({"_id": "outage-1"})["lastSeen"] == newest  # type: ignore[index]
    finally:
        db.client.close()


CLIENTS = 16  # concurrent agents
PER_CLIENT = 40  # snapshots each agent has to send, at most
KILL_AFTER = 150  # acknowledged snapshots before the service is killed


def _load_snapshots(run: str) -> list[list[dict[str, Any]]]:
    """Per client, the snapshots it sends in order: its own asset, one a minute."""
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(days=1)
    return [
        [
            {**agent_snapshot(f"{run}-{c}"), "timestamp": (start + timedelta(minutes=i)).isoformat()}
            for i in range(PER_CLIENT)
        ]
        for c in range(CLIENTS)
    ]


async def _agents_until_killed(service: ServiceProcess, key: str, plan: list[list[dict[str, Any]]]) -> list[
    tuple[str, str, str]
]:
    """Every client posts its snapshots one after another; after KILL_AFTER answers of 200
    the service gets SIGKILL. Returns (asset, timestamp, what the client was told) of
    every snapshot sent: "ok", or "unknown" when the connection broke."""
    told: list[tuple[str, str, str]] = []
    acked = 0
    killed = asyncio.Event()

    async def agent(client: httpx.AsyncClient, snapshots: list[dict[str, Any]]) -> None:
        nonlocal acked
        for body in snapshots:
            try:
                answer = await client.post(ROUTE, content=orjson.dumps(body))
            except httpx.TransportError:
                told.append((body["assetId"], body["timestamp"], "unknown"))
                return
            assert answer.status_code == 200, answer.text
            told.append((body["assetId"], body["timestamp"], "ok"))
            acked += 1
            if acked >= KILL_AFTER and not killed.is_set():
                killed.set()
                os.kill(service.proc.pid, signal.SIGKILL)

    async with httpx.AsyncClient(base_url=service.url, headers=bearer(key), timeout=60) as client:
        await asyncio.gather(*(agent(client, snapshots) for snapshots in plan))
    assert killed.is_set(), "the load ended before the service was killed: raise PER_CLIENT"
    return told


def _killed_under_load(
    server_uri: str, db: Db, tmp_path: Path, key: str, plan: list[list[dict[str, Any]]], *args: str
) -> list[tuple[str, str, str]]:
    """Start a service (with `args`), load it with `plan` until it is killed with kill -9
    mid-load; what the clients were told."""
    service = start_service(server_uri, db.name, tmp_path, *args)
    try:
        told = asyncio.run(_agents_until_killed(service, key, plan))
    finally:
        service.kill()
    assert service.proc.returncode == -signal.SIGKILL
    return told


@pytest.mark.slow
def test_kill_9_under_load_loses_no_acknowledged_snapshot_and_stores_none_twice(
    server_uri: str, db: Db, tmp_path: Path
) -> None:
    _, key = create_api_key(db, "org-a")
    run = uuid.uuid4().hex[:6]
    plan = _load_snapshots(run)
    told = _killed_under_load(server_uri, db, tmp_path, key, plan)

    stored = _stored_keys(db, "org-a")
    assert len(stored) == len(set(stored)), "a snapshot is stored twice"
    stored_set = {(asset, moment.isoformat()) for asset, moment in stored}
    acknowledged = {(asset, moment) for asset, moment, what in told if what == "ok"}
    assert len(acknowledged) >= KILL_AFTER
    assert acknowledged <= stored_set, f"{len(acknowledged - stored_set)} acknowledged snapshot(s) lost"

    # Each agent sends again, as one array, what was not acknowledged, to a new service:
    # everything is then stored exactly once.
    service = start_service(server_uri, db.name, tmp_path)
    try:
        with httpx.Client(base_url=service.url, headers=bearer(key), timeout=60) as client:
            for snapshots in plan:
                pending = [b for b in snapshots if (b["assetId"], b["timestamp"]) not in acknowledged]
                if pending:
                    answer = client.post(ROUTE, content=orjson.dumps(pending))
                    assert answer.status_code == 200, answer.text
                    assert answer.json()["inserted"] + answer.json()["duplicates"] == len(pending)
    finally:
        assert service.stop()
    stored = _stored_keys(db, "org-a")
    assert len(stored) == len(set(stored)) == CLIENTS * PER_CLIENT


def _newest_stored(db: Db, org: str) -> dict[str, datetime]:
    """Each asset's newest stored snapshot: the lastSeen a clean run gives it."""
    newest: dict[str, datetime] = {}
    for asset, moment in _stored_keys(db, org):
        newest[asset] = max(moment, newest.get(asset, moment))
    return newest


@pytest.mark.slow
def test_a_restart_after_kill_9_moves_every_last_seen_to_its_newest_stored_snapshot(
    server_uri: str, db: Db, tmp_path: Path
) -> None:
    _, key = create_api_key(db, "org-a")
    run = uuid.uuid4().hex[:6]
    plan = _load_snapshots(run)
    db[ASSETS].insert_many([{"_id": f"{run}-{c}", "orgId": "org-a"} for c in range(CLIENTS)])
    db[ASSETS].insert_one({"_id": f"{run}-b", "orgId": "org-b", "lastSeen": datetime(2020, 1, 1, tzinfo=UTC)})
    # No lastSeen round for an hour: every acknowledged move is still pending at the kill.
    slow_rounds = ("--last-seen-seconds", "3600")
    _killed_under_load(server_uri, db, tmp_path, key, plan, *slow_rounds)
    newest = _newest_stored(db, "org-a")
    assert len(newest) == CLIENTS
    before = {a["_id"]: a.get("lastSeen") for a in db[ASSETS].find({"orgId": "org-a"})}
    assert before != newest, "the kill left no lastSeen behind: nothing to repair"

    # A new service, with no request at all, applies what the killed one left.
    service = start_service(server_uri, db.name, tmp_path, *slow_rounds)
    assert service.stop()
    assert {a["_id"]: a.get("lastSeen") for a in db[ASSETS].find({"orgId": "org-a"})} == newest
    assert "pending record(s) left by an unfinished batch" in service.log()
    assert db[LAST_SEEN_PENDING].count_documents({}) == 0
    untouched = db[ASSETS].find_one({"_id": f"{run}-b"})
    assert untouched is not None and untouched["lastSeen"] == datetime(2020, 1, 1, tzinfo=UTC)
