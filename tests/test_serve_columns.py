"""The agents' route over real HTTP with every plain snapshot checked as columns
(`ServiceOptions(columns_from=1)`): the application under uvicorn in this process, a real
client on loopback, the test server behind it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import uvicorn

from perf_analytics.schema import SNAPSHOTS
from perf_analytics.service.app import ServiceOptions, create_app, open_database
from perf_analytics.service.keys import create_api_key
from perf_analytics.service.payload import prepare_snapshots
from perf_analytics.store import Db
from tests.test_serve import ROUTE, START_TIMEOUT_S, agent_snapshot, bearer, free_port, unique


@pytest.fixture
def columns_service(db: Db, server_uri: str) -> Iterator[tuple[str, str]]:
    """(base URL, an org-a key) of the service for `db`, checking every plain snapshot as columns."""
    _, key = create_api_key(db, "org-a")
    port = free_port()
    app = create_app(open_database(server_uri, db.name, 2000), ServiceOptions(columns_from=1))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the service did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", key
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def _checks(url: str) -> dict[str, float]:
    """Snapshots checked so far, by path, from /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=60).text
    return {"columns": 0, "record": 0} | {
        line.split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines() if line.startswith("perf_serve_checks_total{")
    }


def test_a_snapshot_checked_as_columns_is_stored_as_the_record_check_stores_it(
    db: Db, columns_service: tuple[str, str]
) -> None:
    url, key = columns_service
    body = agent_snapshot(unique("cols"))
    del body["timeWindow"]
    answer = httpx.post(f"{url}{ROUTE}", content=orjson.dumps(body), headers=bearer(key), timeout=60)
    assert answer.status_code == 200, answer.text
    assert _checks(url) == {"columns": 1, "record": 0}
    doc: dict[str, Any] | None = db[SNAPSHOTS].find_one({"assetId": body["assetId"]})
    assert doc is not None and str(doc["_id"]) == answer.json()["id"]
    expected = prepare_snapshots(body, "org-a", db[SNAPSHOTS], max_items=1).docs[0]
    assert doc == expected | {"_id": doc["_id"]}


def test_a_body_sent_in_chunks_is_read_whole(db: Db, columns_service: tuple[str, str]) -> None:
    url, key = columns_service
    body = agent_snapshot(unique("chunks"))
    text = orjson.dumps(body)
    chunks = iter([text[i : i + 100] for i in range(0, len(text), 100)])  # no Content-Length: chunked
    answer = httpx.post(f"{url}{ROUTE}", content=chunks, headers=bearer(key), timeout=60)
    assert answer.status_code == 200, answer.text
    assert db[SNAPSHOTS].count_documents({"assetId": body["assetId"]}) == 1


def test_a_bad_snapshot_checked_in_a_batch_gets_its_400_and_nothing_is_stored(
    db: Db, columns_service: tuple[str, str]
) -> None:
    url, key = columns_service
    body = agent_snapshot(unique("bad-cols"))
    body["performanceData"]["cpu"]["usage"] = 250
    answer = httpx.post(f"{url}{ROUTE}", content=orjson.dumps(body), headers=bearer(key), timeout=60)
    assert answer.status_code == 400
    assert answer.json()["field"] == "performanceData.cpu.usage"
    assert _checks(url) == {"columns": 0, "record": 1}
    assert db[SNAPSHOTS].count_documents({"assetId": body["assetId"]}) == 0
