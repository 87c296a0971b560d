"""Group commit in one process against the real server: concurrent requests share one
insert, each learns its own outcome, lastSeen follows, the queue stays bounded."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from perf_analytics.schema import ASSETS, SNAPSHOTS
from perf_analytics.service.app import open_database
from perf_analytics.service.commit import (
    DUPLICATE,
    INSERTED,
    DatabaseUnavailable,
    GroupCommitter,
    Outcome,
    QueueFull,
)
from perf_analytics.service.metrics import Metrics
from perf_analytics.service.payload import Prepared, prepare_snapshots
from perf_analytics.store import Db
from tests.factories import T0, snapshot
from tests.test_cli import _closed_port


def prepared(db: Db, *minutes: int, asset: str = "asset-1", org: str = "org-a") -> Prepared:
    bodies = [snapshot(orgId=org, assetId=asset, timestamp=(T0 + timedelta(minutes=m)).isoformat()) for m in minutes]
    return prepare_snapshots(bodies, org, db[SNAPSHOTS], max_items=100)


async def _submit_all(committer: GroupCommitter, requests: list[Prepared]) -> list[Any]:
    committer.start()
    try:
        return await asyncio.gather(
            *(committer.submit(p.docs, p.raws) for p in requests), return_exceptions=True
        )
    finally:
        await committer.stop()


def test_requests_queued_together_share_one_insert_and_each_gets_its_outcomes(db: Db) -> None:
    db[ASSETS].insert_many([{"_id": "asset-1", "orgId": "org-a"}, {"_id": "asset-2", "orgId": "org-b"}])
    metrics = Metrics()
    requests = [
        prepared(db, 1, 2),
        prepared(db, 3),
        prepared(db, 3),  # the same snapshot as the request before, in the same batch
        prepared(db, 5, asset="asset-2", org="org-b"),
    ]
    results = asyncio.run(_submit_all(GroupCommitter(db, metrics), requests))
    assert results == [
        [Outcome(INSERTED), Outcome(INSERTED)],
        [Outcome(INSERTED)],
        [Outcome(DUPLICATE)],
        [Outcome(INSERTED)],
    ]
    assert (metrics.batch_size.n, metrics.batch_size.total) == (1, 5)
    assert db[SNAPSHOTS].count_documents({}) == 4
    # lastSeen: each asset's newest snapshot, under its own org only.
    assert db[ASSETS].find_one({"_id": "asset-1"})["lastSeen"] == T0 + timedelta(minutes=3)  # type: ignore[index]
    assert db[ASSETS].find_one({"_id": "asset-2"})["lastSeen"] == T0 + timedelta(minutes=5)  # type: ignore[index]


def test_batches_hold_whole_requests_up_to_the_batch_size(db: Db) -> None:
    metrics = Metrics()
    requests = [prepared(db, 1, 2), prepared(db, 3, 4), prepared(db, 5)]
    results = asyncio.run(_submit_all(GroupCommitter(db, metrics, max_batch=3), requests))
    assert all(isinstance(r, list) for r in results)
    assert (metrics.batch_size.n, metrics.batch_size.total) == (2, 5)


def test_a_request_beyond_the_queue_bound_is_refused_at_once(db: Db) -> None:
    requests = [prepared(db, 1, 2), prepared(db, 3)]
    results = asyncio.run(_submit_all(GroupCommitter(db, Metrics(), max_queue=2), requests))
    assert isinstance(results[0], list)
    assert isinstance(results[1], QueueFull)
    assert db[SNAPSHOTS].count_documents({}) == 2


def test_an_unreachable_database_fails_the_batch_as_unavailable(db: Db) -> None:
    gone = open_database(f"mongodb://127.0.0.1:{_closed_port()}/?directConnection=true", "x", 200)
    try:
        results = asyncio.run(_submit_all(GroupCommitter(gone, Metrics()), [prepared(db, 1)]))
    finally:
        gone.client.close()
    assert isinstance(results[0], DatabaseUnavailable)


def test_last_seen_never_moves_backwards(db: Db) -> None:
    later = T0 + timedelta(hours=1)
    db[ASSETS].insert_one({"_id": "asset-1", "orgId": "org-a", "lastSeen": later})
    asyncio.run(_submit_all(GroupCommitter(db, Metrics()), [prepared(db, 1)]))
    assert db[ASSETS].find_one({"_id": "asset-1"})["lastSeen"] == later  # type: ignore[index]
