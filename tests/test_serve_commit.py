"""Group commit in one process against the real server: concurrent requests share one
insert, each learns its own outcome, lastSeen follows, the queue stays bounded."""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from bson import ObjectId
from pymongo import MongoClient, monitoring

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
from perf_analytics.service.payload import (
    Prepared,
    Refusal,
    Unchecked,
    prepare_body,
    prepare_snapshots,
)
from perf_analytics.store import (
    LAST_SEEN_PENDING,
    LAST_SEEN_WRITERS,
    LEASE_MARGIN,
    LEASE_ROUNDS,
    Db,
    Doc,
    probe_capabilities,
    record_pending_last_seen,
    renew_last_seen_lease,
    repair_last_seen,
)
from tests.factories import T0, snapshot
from tests.test_cli import _closed_port


def prepared(db: Db, *minutes: int, asset: str = "asset-1", org: str = "org-a") -> Prepared:
    bodies = [snapshot(orgId=org, assetId=asset, timestamp=(T0 + timedelta(minutes=m)).isoformat()) for m in minutes]
    return prepare_snapshots(bodies, org, db[SNAPSHOTS], max_items=100)


async def _submit_all(committer: GroupCommitter, requests: Sequence[Prepared | Unchecked]) -> list[Any]:
    committer.start()
    try:
        return await asyncio.gather(
            *(committer.submit(p) for p in requests), return_exceptions=True
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
    assert [[o.status for o in outcomes] for outcomes in results] == [
        [INSERTED, INSERTED], [INSERTED], [DUPLICATE], [INSERTED],
    ]
    assert results[0][0] == Outcome(INSERTED, id=requests[0].docs[0]["_id"])
    assert results[2][0] == Outcome(DUPLICATE)
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


def unchecked(db: Db, minute: int, asset: str = "asset-1", org: str = "org-a", **overrides: Any) -> Unchecked:
    """An agent's body (no orgId, no timeWindow, an ISO timestamp) as the service leaves it
    for the committer's batch check."""
    body = snapshot(assetId=asset, timestamp=(T0 + timedelta(minutes=minute)).isoformat().replace("+00:00", "Z"))
    del body["orgId"], body["timeWindow"]
    body.update(overrides)
    text = orjson.dumps(body, option=orjson.OPT_INDENT_2)  # line breaks, as a person would send it
    request = prepare_body(orjson.loads(text), text, org, db[SNAPSHOTS], max_items=100)
    assert isinstance(request, Unchecked)
    return request


def test_plain_snapshots_are_checked_as_columns_and_stored_as_the_record_check_stores_them(db: Db) -> None:
    metrics = Metrics()
    requests: list[Prepared | Unchecked] = [unchecked(db, m) for m in (1, 2, 3)]
    results = asyncio.run(_submit_all(GroupCommitter(db, metrics, columns_from=3), requests))
    assert [[o.status for o in r] for r in results] == [[INSERTED]] * 3
    assert metrics.checks == Counter({"columns": 3})
    for request, (outcome,) in zip(requests, results, strict=True):
        assert isinstance(request, Unchecked) and outcome.id is not None
        stored = db[SNAPSHOTS].find_one({"_id": outcome.id})
        expected = prepare_snapshots(request.payload, "org-a", db[SNAPSHOTS], max_items=1).docs[0]
        assert stored == expected | {"_id": outcome.id}
    assert db[ASSETS].find_one({"_id": "asset-1"}) is None  # an orphan: nothing to move


def test_an_invalid_plain_snapshot_is_refused_as_the_record_check_says_and_its_batch_goes_on(db: Db) -> None:
    db[ASSETS].insert_one({"_id": "asset-1", "orgId": "org-a"})
    bad = unchecked(db, 2, performanceData={**snapshot()["performanceData"], "memory": {"usagePercent": 101}})
    metrics = Metrics()
    committer = GroupCommitter(db, metrics, columns_from=1)
    results = asyncio.run(_submit_all(committer, [unchecked(db, 1), bad, unchecked(db, 3)]))
    assert isinstance(results[1], Refusal)
    with pytest.raises(Refusal) as expected:
        prepare_snapshots(bad.payload, "org-a", db[SNAPSHOTS], max_items=1)
    assert (results[1].status, results[1].body()) == (400, expected.value.body())
    assert [[o.status for o in r] for r in (results[0], results[2])] == [[INSERTED], [INSERTED]]
    assert metrics.checks == Counter({"columns": 2, "record": 1})
    assert sorted(d["timestamp"] for d in db[SNAPSHOTS].find()) == [T0 + timedelta(minutes=m) for m in (1, 3)]
    assert db[ASSETS].find_one({"_id": "asset-1"})["lastSeen"] == T0 + timedelta(minutes=3)  # type: ignore[index]


def test_a_plain_snapshot_sent_twice_in_one_batch_is_stored_once(db: Db) -> None:
    committer = GroupCommitter(db, Metrics(), columns_from=1)
    results = asyncio.run(_submit_all(committer, [unchecked(db, 1), unchecked(db, 1)]))
    assert [[o.status for o in r] for r in results] == [[INSERTED], [DUPLICATE]]
    assert db[SNAPSHOTS].count_documents({}) == 1


def test_fewer_plain_snapshots_of_an_org_than_columns_from_are_checked_one_by_one(db: Db) -> None:
    metrics = Metrics()
    requests: list[Prepared | Unchecked] = [unchecked(db, 1), unchecked(db, 2), unchecked(db, 3, org="org-b")]
    results = asyncio.run(_submit_all(GroupCommitter(db, metrics, columns_from=2), requests))
    assert [[o.status for o in r] for r in results] == [[INSERTED]] * 3
    assert metrics.checks == Counter({"columns": 2, "record": 1})  # org-b's one snapshot alone
    assert db[SNAPSHOTS].count_documents({"orgId": "org-b"}) == 1


def test_requests_checked_while_a_batch_is_at_the_server_keep_batches_within_the_batch_size(db: Db) -> None:
    metrics = Metrics()
    # Three requests of two snapshots, batches of three: a request checked ahead never
    # fits beside another, and none is left waiting.
    requests: list[Prepared | Unchecked] = [prepared(db, m, m + 1) for m in (1, 3, 5)]
    requests += [unchecked(db, m, asset="asset-2") for m in (1, 2, 3, 4)]
    results = asyncio.run(_submit_all(GroupCommitter(db, metrics, max_batch=3, columns_from=1), requests))
    assert [len(r) for r in results] == [2, 2, 2, 1, 1, 1, 1]
    assert all(o.status == INSERTED for r in results for o in r)
    assert metrics.batch_size.total == 10
    assert metrics.batch_size.n >= 4  # 10 snapshots in batches of at most 3
    assert db[SNAPSHOTS].count_documents({}) == 10


def test_a_whole_fleet_waiting_at_once_goes_out_in_two_halves(db: Db) -> None:
    metrics = Metrics()
    requests: list[Prepared | Unchecked] = [unchecked(db, 1, asset=f"asset-{i}") for i in range(8)]
    results = asyncio.run(_submit_all(GroupCommitter(db, metrics, columns_from=2), requests))
    assert all(r[0].status == INSERTED for r in results)
    # The second half was checked while the first was at the server, then sent whole.
    assert (metrics.batch_size.n, metrics.batch_size.total) == (2, 8)
    assert metrics.checks == Counter({"columns": 8, "record": 0})
    assert db[SNAPSHOTS].count_documents({}) == 8


def test_a_round_moves_a_fleet_reporting_at_the_same_seconds_in_few_updates(db: Db, server_uri: str) -> None:
    """Arrival order mixes the seconds (asset 0 at minute 1, asset 1 at minute 2, ...,
    asset 8 at minute 1 again); the round still gives each time's assets one update on a
    server that narrows it by its index (on FerretDB, one update by exact _id per asset:
    `store.move_last_seen`)."""
    from tests.test_store import _watched

    fleet = [f"asset-{i}" for i in range(128)]
    db[ASSETS].insert_many([{"_id": a, "orgId": "org-a"} for a in fleet])
    moment = {a: T0 + timedelta(minutes=1 + i % 8) for i, a in enumerate(fleet)}
    bodies = [snapshot(orgId="org-a", assetId=a, timestamp=moment[a].isoformat()) for a in fleet]
    watched, updates, client = _watched(db, server_uri)
    try:
        request = prepare_snapshots(bodies, "org-a", watched[SNAPSHOTS], max_items=len(bodies))
        results = asyncio.run(_submit_all(GroupCommitter(watched, Metrics()), [request]))
    finally:
        client.close()
    assert [o.status for o in results[0]] == [INSERTED] * len(fleet)
    # Eight times of 16 assets: one update each (in arrival order, 128 one by one).
    assert len(updates.statements) == (8 if probe_capabilities(db).compound_pushdown else len(fleet))
    assert {a["_id"]: a["lastSeen"] for a in db[ASSETS].find()} == moment


def test_a_batch_is_on_record_when_answered_and_its_round_deletes_the_record(db: Db) -> None:
    db[ASSETS].insert_many([{"_id": "asset-1", "orgId": "org-a"}, {"_id": "asset-2", "orgId": "org-b"}])
    committer = GroupCommitter(db, Metrics(), last_seen_seconds=3600)  # no round until stop()

    async def run() -> tuple[list[Doc], list[Doc]]:
        committer.start()
        try:
            requests = [prepared(db, 1, 2), prepared(db, 3, asset="asset-2", org="org-b")]
            await asyncio.gather(*(committer.submit(request) for request in requests))
            return list(db[ASSETS].find()), list(db[LAST_SEEN_PENDING].find())
        finally:
            await committer.stop()

    assets, records = asyncio.run(run())
    # Answered, lastSeen not moved yet: one record per org of the batch, naming its
    # assets, is what a restart would apply.
    assert sorted((r["orgId"], r["assets"]) for r in records) == [("org-a", ["asset-1"]), ("org-b", ["asset-2"])]
    assert all("lastSeen" not in asset for asset in assets)
    assert db[LAST_SEEN_PENDING].count_documents({}) == 0
    assert db[ASSETS].find_one({"_id": "asset-1"})["lastSeen"] == T0 + timedelta(minutes=2)  # type: ignore[index]


class _PendingWrites(monitoring.CommandListener):
    """The write commands sent to `last_seen_pending`, by command name."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command.get(event.command_name) == LAST_SEEN_PENDING and event.command_name in (
            "insert", "update", "delete"
        ):
            self.commands.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def test_batches_of_assets_already_on_record_for_the_round_write_no_record(db: Db, server_uri: str) -> None:
    """The same agents reporting batch after batch cost one record for the round, not one
    per batch; a batch with an asset new to the round writes one more, naming only it."""
    db[ASSETS].insert_many([{"_id": f"asset-{i}", "orgId": "org-a"} for i in (1, 2, 3)])
    writes = _PendingWrites()
    client: MongoClient[dict[str, Any]] = MongoClient(server_uri, tz_aware=True, event_listeners=[writes])
    watched = client[db.name]
    metrics = Metrics()
    committer = GroupCommitter(watched, metrics, last_seen_seconds=3600)  # one round, at stop()

    async def run() -> list[Doc]:
        committer.start()
        try:
            for minute in (1, 2, 3, 4):  # one batch each: every request answered before the next
                await committer.submit(prepared(db, minute, asset="asset-1"))
                await committer.submit(prepared(db, minute, asset="asset-2"))
            await committer.submit(prepared(db, 5, 6, asset="asset-3"))
            return list(db[LAST_SEEN_PENDING].find())
        finally:
            await committer.stop()

    try:
        records = asyncio.run(run())
    finally:
        client.close()
    assert sorted(r["assets"] for r in records) == [["asset-1"], ["asset-2"], ["asset-3"]]
    assert writes.commands.count("insert") == 3  # nine batches
    assert metrics.last_seen_records == 3
    assert "\nperf_serve_last_seen_records_total 3\n" in metrics.render()
    assert writes.commands[-1] == "delete" and db[LAST_SEEN_PENDING].count_documents({}) == 0
    assert {a["_id"]: a["lastSeen"] for a in db[ASSETS].find()} == {
        "asset-1": T0 + timedelta(minutes=4), "asset-2": T0 + timedelta(minutes=4),
        "asset-3": T0 + timedelta(minutes=6),
    }


def test_records_left_by_a_killed_service_are_applied_at_start_within_their_org(db: Db) -> None:
    db[ASSETS].insert_many([
        {"_id": "asset-1", "orgId": "org-a", "lastSeen": T0},
        {"_id": "asset-2", "orgId": "org-b", "lastSeen": T0},
        {"_id": "asset-3", "orgId": "org-b", "lastSeen": T0},
        {"_id": "asset-4", "orgId": "org-a", "lastSeen": T0},
    ])
    db[SNAPSHOTS].insert_many([
        *prepared(db, 5, 7, asset="asset-1").docs,
        *prepared(db, 9, asset="asset-2", org="org-b").docs,
        *prepared(db, 11, asset="asset-3", org="org-b").docs,
        *prepared(db, 13, asset="asset-1", org="org-b").docs,  # another org's snapshot of an asset of that name
    ])
    killed = ObjectId()
    # asset-4: on record, then the service died before its insert: nothing stored moves it.
    record_pending_last_seen(db, killed, {"org-a": ["asset-1", "asset-4"], "org-b": ["asset-2"]})
    # A record of org-a naming org-b's asset moves nothing of org-b.
    record_pending_last_seen(db, killed, {"org-a": ["asset-3"]})

    asyncio.run(_submit_all(GroupCommitter(db, Metrics(), last_seen_seconds=3600), []))

    assert {a["_id"]: a["lastSeen"] for a in db[ASSETS].find()} == {
        "asset-1": T0 + timedelta(minutes=7), "asset-2": T0 + timedelta(minutes=9), "asset-3": T0,
        "asset-4": T0,
    }
    assert db[LAST_SEEN_PENDING].count_documents({}) == 0


def test_a_repair_moves_only_the_assets_of_the_records_org(db: Db) -> None:
    db[ASSETS].insert_many([{"_id": "asset-1", "orgId": "org-a"}, {"_id": "asset-2", "orgId": "org-b"}])
    db[SNAPSHOTS].insert_many([*prepared(db, 1, asset="asset-1").docs,
                               *prepared(db, 2, asset="asset-2", org="org-b").docs])
    records = record_pending_last_seen(db, ObjectId(), {"org-a": ["asset-1"], "org-b": ["asset-2"]})
    assert repair_last_seen(db, [records["org-a"]]) == 1
    assert db[ASSETS].find_one({"_id": "asset-1"})["lastSeen"] == T0 + timedelta(minutes=1)  # type: ignore[index]
    assert "lastSeen" not in db[ASSETS].find_one({"_id": "asset-2"})  # type: ignore[operator]
    assert [r["orgId"] for r in db[LAST_SEEN_PENDING].find()] == ["org-b"]


class _Recording(GroupCommitter):
    """A committer noting, as each batch leaves for the server, how many requests were
    answered; its first batch waits until the second is checked (so the order does not
    hang on which thread finishes first)."""

    def __init__(self, db: Db, answered: list[int], **options: Any) -> None:
        super().__init__(db, Metrics(), **options)
        self.answered = answered
        self.at_dispatch: list[int] = []
        self.checks = 0
        self.second_checked = asyncio.Event()

    async def _check_some(self, batch: list[Any]) -> list[Any]:
        checked = await super()._check_some(batch)
        self.checks += 1
        if self.checks == 2:
            self.second_checked.set()
        return checked

    async def _at_server(self, ready: Sequence[Any]) -> list[Outcome]:
        self.at_dispatch.append(len(self.answered))
        if len(self.at_dispatch) == 1:
            await self.second_checked.wait()
        return await super()._at_server(ready)


def test_the_next_checked_batch_leaves_for_the_server_before_the_last_ones_requests_are_answered(db: Db) -> None:
    answered: list[int] = []
    committer = _Recording(db, answered, max_batch=1)

    async def one(request: Prepared) -> None:
        await committer.submit(request)
        answered.append(1)

    async def run() -> None:
        committer.start()
        try:
            await asyncio.gather(*(one(prepared(db, minute)) for minute in (1, 2, 3)))
        finally:
            await committer.stop()

    asyncio.run(run())
    assert len(answered) == 3 and db[SNAPSHOTS].count_documents({}) == 3
    # The second batch was at the server before the first batch's request had its answer.
    assert committer.at_dispatch[:2] == [0, 0]


class _AssetReads(monitoring.CommandListener):
    """The `find` commands sent to `assets`, by the orgId they filter on."""

    def __init__(self) -> None:
        self.orgs: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find" and event.command.get("find") == ASSETS:
            self.orgs.append(event.command["filter"].get("orgId", "(none)"))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def test_a_round_reads_which_assets_are_its_orgs_once_per_org_and_moves_no_other_orgs_asset(
    db: Db, server_uri: str
) -> None:
    """200 assets of org-a move in four chunks after one org-filtered read (not one per
    chunk); org-a's snapshots naming org-b's asset move nothing of org-b."""
    fleet = [f"asset-{i}" for i in range(200)]
    db[ASSETS].insert_many([{"_id": a, "orgId": "org-a"} for a in fleet])
    db[ASSETS].insert_many([{"_id": "b-1", "orgId": "org-b"}, {"_id": "b-2", "orgId": "org-b"}])
    moment = {a: T0 + timedelta(seconds=i) for i, a in enumerate(fleet)}  # 200 distinct times
    reads = _AssetReads()
    client: MongoClient[dict[str, Any]] = MongoClient(server_uri, tz_aware=True, event_listeners=[reads])
    watched = client[db.name]
    metrics = Metrics()
    try:
        bodies = [snapshot(orgId="org-a", assetId=a, timestamp=t.isoformat()) for a, t in {**moment, "b-1": T0}.items()]
        requests = [prepare_snapshots(bodies, "org-a", watched[SNAPSHOTS], max_items=len(bodies)),
                    prepared(db, 1, asset="b-2", org="org-b")]
        asyncio.run(_submit_all(GroupCommitter(watched, metrics, last_seen_seconds=3600), requests))
    finally:
        client.close()
    assert sorted(reads.orgs) == ["org-a", "org-b"]
    assert {a["_id"]: a["lastSeen"] for a in db[ASSETS].find({"orgId": "org-a"})} == moment
    assert "lastSeen" not in db[ASSETS].find_one({"_id": "b-1"})  # type: ignore[operator]
    assert db[ASSETS].find_one({"_id": "b-2"})["lastSeen"] == T0 + timedelta(minutes=1)  # type: ignore[index]
    assert metrics.orphan_updates == 1


def test_a_worker_starting_beside_a_live_sibling_leaves_the_siblings_pending_records_alone(db: Db) -> None:
    """Two workers of one service: the second, starting while the first holds a record for
    its coming round, repairs nothing of it; the first applies and deletes it itself."""
    db[ASSETS].insert_many([{"_id": "asset-1", "orgId": "org-a"}, {"_id": "asset-2", "orgId": "org-a"}])
    first = GroupCommitter(db, Metrics(), last_seen_seconds=3600)  # one round, at stop()

    async def run() -> tuple[list[Doc], list[Doc]]:
        first.start()
        try:
            await first.submit(prepared(db, 1, 2))
            second = GroupCommitter(db, Metrics(), last_seen_seconds=3600)
            await _submit_all(second, [prepared(db, 3, asset="asset-2")])  # starts, writes, stops
            return list(db[LAST_SEEN_PENDING].find()), list(db[ASSETS].find())
        finally:
            await first.stop()

    records, assets = asyncio.run(run())
    assert [(r["by"], r["assets"]) for r in records] == [(first.id, ["asset-1"])]
    assert {a["_id"]: a.get("lastSeen") for a in assets} == {"asset-1": None, "asset-2": T0 + timedelta(minutes=3)}
    assert db[LAST_SEEN_PENDING].count_documents({}) == 0
    assert db[ASSETS].find_one({"_id": "asset-1"})["lastSeen"] == T0 + timedelta(minutes=2)  # type: ignore[index]
    assert db[LAST_SEEN_WRITERS].count_documents({}) == 0  # both gave up their leases


def test_records_of_a_writer_whose_lease_expired_are_repaired_and_its_lease_removed(db: Db) -> None:
    """A worker killed with -9 renews its lease no more: once it is older than
    LEASE_ROUNDS intervals and the margin, a starting process repairs its records; a live
    writer's records stay."""
    db[ASSETS].insert_many([{"_id": "asset-1", "orgId": "org-a"}, {"_id": "asset-2", "orgId": "org-a"}])
    db[SNAPSHOTS].insert_many([*prepared(db, 5, asset="asset-1").docs, *prepared(db, 6, asset="asset-2").docs])
    killed, alive = ObjectId(), ObjectId()
    renew_last_seen_lease(db, killed, 30)
    renew_last_seen_lease(db, alive, 30)
    expired = datetime.now(UTC) - LEASE_ROUNDS * timedelta(seconds=30) - LEASE_MARGIN - timedelta(seconds=5)
    db[LAST_SEEN_WRITERS].update_one({"_id": killed}, {"$set": {"at": expired}})
    record_pending_last_seen(db, killed, {"org-a": ["asset-1"]})
    kept = record_pending_last_seen(db, alive, {"org-a": ["asset-2"]})

    asyncio.run(_submit_all(GroupCommitter(db, Metrics(), last_seen_seconds=3600), []))

    assert db[ASSETS].find_one({"_id": "asset-1"})["lastSeen"] == T0 + timedelta(minutes=5)  # type: ignore[index]
    assert "lastSeen" not in db[ASSETS].find_one({"_id": "asset-2"})  # type: ignore[operator]
    assert [r["_id"] for r in db[LAST_SEEN_PENDING].find()] == [kept["org-a"]]
    assert [w["_id"] for w in db[LAST_SEEN_WRITERS].find()] == [alive]


def test_records_of_a_writer_of_this_host_that_exited_are_repaired_before_its_lease_expires(db: Db) -> None:
    """A worker killed with -9 and started again: its lease is fresh, but names a process
    that has exited, so the new worker repairs its records at once."""
    db[ASSETS].insert_one({"_id": "asset-1", "orgId": "org-a"})
    db[SNAPSHOTS].insert_many(prepared(db, 5, asset="asset-1").docs)
    killed = ObjectId()
    renew_last_seen_lease(db, killed, 3600)
    gone = subprocess.Popen(["true"])
    gone.wait()  # exited and reaped: its id names no running process
    db[LAST_SEEN_WRITERS].update_one({"_id": killed}, {"$set": {"pid": gone.pid}})
    record_pending_last_seen(db, killed, {"org-a": ["asset-1"]})

    asyncio.run(_submit_all(GroupCommitter(db, Metrics(), last_seen_seconds=3600), []))

    assert db[ASSETS].find_one({"_id": "asset-1"})["lastSeen"] == T0 + timedelta(minutes=5)  # type: ignore[index]
    assert db[LAST_SEEN_PENDING].count_documents({}) == 0
    assert db[LAST_SEEN_WRITERS].count_documents({}) == 0
