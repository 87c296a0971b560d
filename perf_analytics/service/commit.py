"""Group commit: concurrent requests' snapshots go to the server in one unordered insert.

Requests queue their validated documents and wait. One writer task takes everything
queued (up to `max_batch` snapshots), sends it as one `insert_many(ordered=False)` from a
thread, and answers each request once the server has acknowledged the batch: an answer
of 200 means the snapshot is stored, so a crash of the service cannot lose an
acknowledged snapshot. While a batch is at the server the next one gathers, so the batch
size follows the load by itself (no timer). A duplicate (same org, asset, timestamp) is
told as such, by the unique key index, as in `ingest`.

A request of one plain snapshot comes as an unchecked JSON line (`payload.Unchecked`):
the writer checks and encodes a batch's lines together as columns, per org, by the
loader's block path, in its thread; a line the columns do not vouch for gets the
per-record check, and a request found invalid is refused (400) before anything of the
batch is sent, so nothing of it is stored. The checking runs while the previous batch is
at the server (a block at a time as requests gather), so the server is not left idle
while the service checks the next batch (see `_write_loop`).

lastSeen follows the inserts: a second task sends one `$max` update per asset for all
batches acknowledged since its last round (`move_last_seen`, as `ingest` does per commit:
assets moving to the same time share one update; which are the org's assets is read once
per round),
at most one round every `last_seen_seconds`, so a fleet costs one update per asset per
round instead of one per snapshot. On FerretDB an update costs 5 to 40 times an insert
(measured: 1,000 `$max` updates 4 to 20 s, 1,000 inserts 0.1 s, on a busy machine), and
SQLite takes one write at a time: with 1,000 agents posting as fast as they could,
updates after every batch cut the acknowledged rate to a third. A round runs in chunks
between insert batches, one round at a time (FerretDB applies concurrent `$max` updates
of one document as read-modify-write). Requests do not wait for it; a stopped service
sends its last round first.

So that a killed service leaves no lastSeen behind, the assets a round will move are on
record before their snapshots are inserted: a batch holding an asset that no record of
the coming round names yet first writes one small document per org naming those assets
(`record_pending_last_seen`, one insert), and the round deletes its records once it has
applied its moves. The same agents report in every round, so a fleet costs about one
such write per round (the first batch or two after a round began), not one per batch:
on FerretDB every write is a commit of its own, and a record before every batch cost a
fifth of the acknowledged rate. A batch holds a lock from its record to its moves, and a
round takes its moves and records under the same lock, so a batch's moves and the record
that covers them always fall in the same round. Each process holds a lease
(`LAST_SEEN_WRITERS`), taken before its first record and renewed every round; at start
and before every round a process applies the records whose writer's lease is gone or
expired (each record names the process that wrote it), never those of a sibling worker
that is alive, whose current round they protect: `repair_last_seen` moves each named
asset to its newest stored snapshot of the record's org. A worker killed with -9 (or a
whole service) and started again takes a new id; its old records are repaired at once,
since the lease names a process of this host that has exited (on another host, once the
lease expires: LEASE_ROUNDS intervals and LEASE_MARGIN). The assets of a batch whose
insert failed midway are moved the same way by the next round before it deletes its
records. A crash at any point thus ends, after a restart, with every asset's lastSeen at
its newest stored snapshot. Recording before the
insert rather than after it also covers a kill between the insert and its answer
(stored, never answered).

The queue is bounded (`max_queue` snapshots): when full, a request is refused at once
(503) rather than waiting without limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from bson import ObjectId
from bson.raw_bson import RawBSONDocument
from pymongo.errors import BulkWriteError, PyMongoError

from perf_analytics.ingest.batches import BlockEncoder
from perf_analytics.schema import SNAPSHOTS
from perf_analytics.service.metrics import Metrics
from perf_analytics.service.payload import Prepared, Refusal, Unchecked, prepare_snapshots
from perf_analytics.store import (
    WRITE_CHUNK,
    Db,
    Doc,
    clear_pending_last_seen,
    end_last_seen_lease,
    left_pending_last_seen_ids,
    move_last_seen,
    owned_assets,
    record_pending_last_seen,
    renew_last_seen_lease,
    repair_last_seen,
    require_key_index,
    settle_last_seen,
    sort_write_errors,
)

log = logging.getLogger("perf_analytics.serve")

INSERTED = "inserted"
DUPLICATE = "duplicate"
REFUSED = "refused"


_ENCODERS = 1000  # orgs whose block encoders are kept
COLUMNS_FROM = 200
"""An org's plain snapshots in one batch from which they are checked as columns: the
block path costs a few milliseconds a batch whatever its size, then about half the
per-record check a snapshot (measured on a busy machine, per snapshot: at 300, 88 µs plus
14 µs on the request side against 163 µs; at 100, no gain; at 20, several times more)."""


_ID_AT = 9  # int32 length, type byte 0x07, "_id\0": the ObjectId's 12 bytes follow


def _vouched(document: bytes, request: Unchecked) -> Ready:
    """A document of the block path: its _id is its first field (`encode_rows` writes it
    first), the rest of its key is the request's, which the columns vouched for as is."""
    payload = request.payload
    return Ready(
        RawBSONDocument(document), ObjectId(document[_ID_AT : _ID_AT + 12]), request.org_id,
        payload["assetId"], datetime.fromisoformat(payload["timestamp"]),
    )


def _size(batch: list[_Pending]) -> int:
    """Snapshots in `batch`."""
    return sum(item.size for item in batch)


def _answer(answers: list[tuple[_Pending, list[Outcome]]]) -> None:
    """Hand each request its outcomes (a request whose client went away is not answered)."""
    for item, outcomes in answers:
        if not item.future.done():
            item.future.set_result(outcomes)


class QueueFull(Exception):
    """The queue holds `max_queue` snapshots already."""


class DatabaseUnavailable(Exception):
    """The server could not be reached, or failed, while this request's batch was sent."""


@dataclass(frozen=True)
class Outcome:
    """What became of one snapshot: inserted (under `id`), duplicate (stored before) or
    refused (why)."""

    status: str
    reason: str = ""
    id: ObjectId | None = None


@dataclass(frozen=True)
class Ready:
    """One checked snapshot: its BSON, its id, and the key that moves lastSeen."""

    raw: RawBSONDocument
    id: ObjectId
    org_id: str
    asset_id: str
    timestamp: datetime

    @classmethod
    def of(cls, doc: Doc, raw: RawBSONDocument) -> Ready:
        return cls(raw, doc["_id"], doc["orgId"], doc["assetId"], doc["timestamp"])

    def key(self) -> dict[str, Any]:
        """What `duplicates_of` reads of a document."""
        return {"_id": self.id, "orgId": self.org_id, "assetId": self.asset_id, "timestamp": self.timestamp}


@dataclass(frozen=True)
class _Round:
    """A lastSeen round's work: each asset's newest time, the pending records that cover
    these moves and the assets they name (per org), and the assets of batches whose
    insert failed midway (per org)."""

    work: Mapping[tuple[str, str], datetime]
    records: Mapping[str, list[ObjectId]]
    named: Mapping[str, set[str]]
    doubtful: Mapping[str, set[str]]


@dataclass
class _Pending:
    request: Prepared | Unchecked
    future: asyncio.Future[list[Outcome]]
    ready: list[Ready] = field(default_factory=list)

    @property
    def size(self) -> int:
        return 1 if isinstance(self.request, Unchecked) else len(self.request.docs)


class GroupCommitter:
    """The writer and lastSeen tasks of one service process (see the module docstring)."""

    def __init__(
        self, db: Db, metrics: Metrics, *, max_batch: int = 1000, max_queue: int = 20_000,
        last_seen_seconds: float = 30.0, columns_from: int = COLUMNS_FROM,
    ) -> None:
        self.db = db
        self.columns_from = columns_from
        self.last_seen_seconds = last_seen_seconds
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._queue: deque[_Pending] = deque()
        self._queued = 0  # snapshots queued, checked or not, until their batch is answered
        self._unchecked = 0  # snapshots in _queue (not taken for checking yet)
        self._wake = asyncio.Event()
        # The coming round: its moves, its pending records and the assets they name (per
        # org), the assets of batches whose insert failed midway; `_lock` guards all four
        # from a batch's record to its moves (see the module docstring).
        self._last_seen: dict[tuple[str, str], datetime] = {}
        self._records: dict[str, list[ObjectId]] = {}
        self._named: dict[str, set[str]] = {}
        self._doubtful: dict[str, set[str]] = {}
        self._lock = asyncio.Lock()
        self._unsettled: list[ObjectId] = []  # records that a gone process left, to repair
        self.id = ObjectId()  # on this process's records and its lease
        self._leased = False  # the lease is taken (before the first record)
        # One renewal at a time: two concurrent upserts of one new lease may both insert it.
        self._lease_lock = asyncio.Lock()
        self._closing = False  # no new requests
        self._written = asyncio.Event()  # the writer has committed the last queued request
        self._batch_done = asyncio.Event()  # set after every batch
        self._tasks: list[asyncio.Task[None]] = []
        self._encoders: dict[str, BlockEncoder] = {}
        metrics.queue_depth = lambda: self._queued

    def start(self) -> None:
        """Start both tasks; the lastSeen task first applies the pending records that a
        stopped or killed service left."""
        self._tasks = [asyncio.create_task(self._write_loop()), asyncio.create_task(self._touch_loop())]

    async def stop(self) -> None:
        """Commit what is queued, send the last lastSeen round, end both tasks."""
        self._closing = True
        self._wake.set()
        await self._tasks[0]
        self._written.set()
        await self._tasks[1]

    async def submit(self, request: Prepared | Unchecked) -> list[Outcome]:
        """Queue one request's snapshots; return their outcomes once their batch is acknowledged.

        Raises QueueFull at once when the queue is full, the request's Refusal when an
        unchecked snapshot is invalid (nothing of it is stored), DatabaseUnavailable when
        the batch could not be written (some of it may be stored: a retry meets duplicates).
        """
        pending = _Pending(request, asyncio.get_running_loop().create_future())
        if self._closing or self._queued + pending.size > self.max_queue:
            raise QueueFull
        if isinstance(request, Prepared):
            pending.ready = [Ready.of(doc, raw) for doc, raw in zip(request.docs, request.raws, strict=True)]
            self.metrics.checks["record"] += len(pending.ready)
        self._queue.append(pending)
        self._queued += pending.size
        self._unchecked += pending.size
        self._wake.set()
        return await pending.future

    def _take(self, room: int, *, at_least_one: bool = False) -> list[_Pending]:
        """Whole requests from the queue, up to `room` snapshots (and at least one request
        when `at_least_one`: a request larger than a batch goes alone)."""
        batch: list[_Pending] = []
        size = 0
        while self._queue and (size + self._queue[0].size <= room or (at_least_one and not batch)):
            item = self._queue.popleft()
            batch.append(item)
            size += item.size
        self._unchecked -= size
        return batch

    async def _write_loop(self) -> None:
        """Send batches one at a time; while one is at the server, check what gathers.

        The server stays busy: when a batch is acknowledged, the next one has been checked
        (a block of at least `columns_from` snapshots at a time, as columns) and goes out
        at once. When every agent waits at once (as many requests queued as agents), the
        first half goes out and the other half is checked while it is at the server; the
        fleet then keeps to two alternating halves instead of one wave that leaves the
        server idle while the service reads, checks and answers it.
        """
        checked: list[_Pending] = []
        while True:
            if checked:
                batch, checked = checked, []
            elif self._queue:
                room = self.max_batch
                if self._unchecked >= 2 * self.columns_from:
                    room = min(room, (self._unchecked + 1) // 2)
                batch = await self._check_some(self._take(room, at_least_one=True))
            elif self._closing:
                return
            else:
                await self._wake.wait()
                self._wake.clear()
                continue
            sending = asyncio.create_task(self._commit(batch))
            while not sending.done():  # _commit sets _wake when it is done, as submit does
                room = self.max_batch - _size(checked)
                ahead = self._take(room) if room > 0 and self._unchecked >= min(self.columns_from, room) else []
                if ahead:
                    checked += await self._check_some(ahead)
                    continue
                await self._wake.wait()
                self._wake.clear()
            await sending

    async def _commit(self, batch: list[_Pending]) -> None:
        answers: list[tuple[_Pending, list[Outcome]]] = []
        try:
            answers = await self._send(batch)
        finally:
            self._queued -= _size(batch)
            self._batch_done.set()
            self._wake.set()
        if answers:
            # After the writer's wake-up: the next batch leaves for the server before these
            # requests write their answers (hundreds of sends), not after.
            asyncio.get_running_loop().call_soon(_answer, answers)

    async def _check_some(self, batch: list[_Pending]) -> list[_Pending]:
        """The requests of `batch` that pass the check (see `_check`); the others are
        answered with their refusal (or a 500 for a bug)."""
        try:
            invalid, columns = await asyncio.to_thread(self._check, batch)
        except Exception as exc:  # a bug: the requests get a 500, the writer lives on
            log.exception("batch of %d request(s) not checked", len(batch))
            self._fail(batch, exc)
            self._queued -= _size(batch)
            return []
        unchecked = sum(isinstance(item.request, Unchecked) for item in batch)
        self.metrics.checks["columns"] += columns
        self.metrics.checks["record"] += unchecked - columns
        for item, refusal in invalid:
            self._queued -= item.size
            if not item.future.done():
                item.future.set_exception(refusal)
        return [item for item in batch if item.ready]

    async def _send(self, batch: list[_Pending]) -> list[tuple[_Pending, list[Outcome]]]:
        batch = [item for item in batch if item.ready]
        ready = [one for item in batch for one in item.ready]
        if not ready:
            return []
        async with self._lock:
            return await self._write(batch, ready)

    async def _write(self, batch: list[_Pending], ready: list[Ready]) -> list[tuple[_Pending, list[Outcome]]]:
        """Record the batch's new assets, insert it, keep its moves for the round; return
        each request's outcomes (a failed batch's requests are failed here, and [] returned)."""
        started = time.perf_counter()
        named = False
        try:
            # Before the insert: whatever of the batch gets stored is on record (see the module docstring).
            await self._name(ready)
            named = True
            outcomes = await self._at_server(ready)
        except Exception as exc:
            if named:  # stored in part, perhaps: the round moves these assets to what is stored
                for one in ready:
                    self._doubtful.setdefault(one.org_id, set()).add(one.asset_id)
            if isinstance(exc, PyMongoError):
                # The type only: a server error's text may name hosts, never a key or the URI.
                log.warning("batch of %d snapshot(s) not written: %s", len(ready), type(exc).__name__)
                self._fail(batch, DatabaseUnavailable())
            else:  # a bug: the requests get a 500, the writer lives on
                log.exception("batch of %d snapshot(s) failed", len(ready))
                self._fail(batch, exc)
            return []
        self.metrics.insert_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(len(ready))
        answers = []
        start = 0
        for item in batch:
            answers.append((item, list(outcomes[start : start + len(item.ready)])))
            start += len(item.ready)
        for one, outcome in zip(ready, outcomes, strict=True):
            self.metrics.snapshots[outcome.status] += 1
            if outcome.status != REFUSED:
                # Duplicates too: after a crash they may be the snapshots whose round was lost.
                key = (one.org_id, one.asset_id)
                seen = self._last_seen.get(key)
                if seen is None or one.timestamp > seen:
                    self._last_seen[key] = one.timestamp
        return answers

    async def _at_server(self, ready: Sequence[Ready]) -> list[Outcome]:
        """`_insert` from a thread."""
        return await asyncio.to_thread(self._insert, ready)

    async def _name(self, ready: Sequence[Ready]) -> None:
        """Put on record, in one write, the assets of `ready` that no record of the coming
        round names yet (none, when the same agents report again)."""
        new: dict[str, set[str]] = {}
        for one in ready:
            if one.asset_id not in self._named.get(one.org_id, ()):
                new.setdefault(one.org_id, set()).add(one.asset_id)
        if not new:
            return
        if not self._leased:  # a record without a lease would count as left by a gone process
            await self._take_lease()
        records = await asyncio.to_thread(record_pending_last_seen, self.db, self.id, new)
        self.metrics.last_seen_records += len(records)
        for org_id, record in records.items():
            self._records.setdefault(org_id, []).append(record)
            self._named.setdefault(org_id, set()).update(new[org_id])

    @staticmethod
    def _fail(batch: list[_Pending], exc: Exception) -> None:
        for item in batch:
            if not item.future.done():
                item.future.set_exception(exc)

    def _check(self, batch: list[_Pending]) -> tuple[list[tuple[_Pending, Refusal]], int]:
        """Check and encode the batch's unchecked requests (in a thread), filling their
        `ready`; return the invalid ones with their refusals, and how many the columns
        vouched for.

        The lines of each org go through the loader's block path together; a line its
        columns do not vouch for is checked on its own by `prepare_snapshots`, which
        accepts it or says why not exactly as for any other body.
        """
        per_org: dict[str, list[_Pending]] = {}
        for item in batch:
            if isinstance(item.request, Unchecked):
                per_org.setdefault(item.request.org_id, []).append(item)
        invalid: list[tuple[_Pending, Refusal]] = []
        columns = 0
        collection = self.db[SNAPSHOTS]
        for org_id, items in per_org.items():
            requests = [cast(Unchecked, item.request) for item in items]
            verdicts: list[bool] = [False] * len(requests)
            documents: Iterator[bytes] = iter(())
            if len(requests) >= self.columns_from:
                encoded = self._encoder(org_id).encode([request.line for request in requests])
                verdicts, documents = encoded.vouched, iter(encoded.documents)
            for item, request, vouched in zip(items, requests, verdicts, strict=True):
                if vouched:
                    item.ready = [_vouched(next(documents), request)]
                    columns += 1
                    continue
                try:
                    prepared = prepare_snapshots(request.payload, org_id, collection, max_items=1)
                except Refusal as refusal:
                    invalid.append((item, refusal))
                    continue
                item.ready = [Ready.of(prepared.docs[0], prepared.raws[0])]
        return invalid, columns

    def _encoder(self, org_id: str) -> BlockEncoder:
        """The block encoder of an org (kept: it builds its contract tables once, native or Arrow)."""
        encoder = self._encoders.get(org_id)
        if encoder is None:
            if len(self._encoders) >= _ENCODERS:
                self._encoders.clear()
            encoder = self._encoders[org_id] = BlockEncoder(org_id)
        return encoder

    def _insert(self, ready: Sequence[Ready]) -> list[Outcome]:
        """Insert unordered (in a thread); the outcome of each document, in order.

        A server refuses a bad document with a write error of its own. An error for the
        whole batch (the loader's case: FerretDB dropping the connection over a NaN,
        which orjson never parses) is raised and answered like a server that is down.
        """
        require_key_index(self.db)
        try:
            self.db[SNAPSHOTS].insert_many([one.raw for one in ready], ordered=False)
        except BulkWriteError as exc:
            return self._sort(exc.details, ready)
        return [Outcome(INSERTED, id=one.id) for one in ready]

    def _sort(self, details: Mapping[str, Any], ready: Sequence[Ready]) -> list[Outcome]:
        """Each document's outcome from a BulkWriteError's details, sorted as the loader
        sorts them (`sort_write_errors`)."""
        outcomes = [Outcome(INSERTED, id=one.id) for one in ready]
        sorted_errors = sort_write_errors(self.db, details, lambda i: ready[i].key())
        for i in sorted_errors.duplicates:
            outcomes[i] = Outcome(DUPLICATE)
        for i, (_field, reason) in sorted_errors.refused.items():
            outcomes[i] = Outcome(REFUSED, reason)
        return outcomes

    async def _touch_loop(self) -> None:
        """Apply what a gone process left, then one round per interval (the first one
        interval after start) and the last one once the writer is done; renew the lease
        after each wait, before its round (renewals come an interval and a round apart; a
        lease lasts LEASE_ROUNDS intervals and LEASE_MARGIN), and give it up at the end."""
        await self._renew()
        await self._settle_leftover()
        while True:
            # stop() cuts the wait short for the last round.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._written.wait(), timeout=self.last_seen_seconds)
            final = self._written.is_set()
            await self._renew()
            await self._settle_leftover()
            async with self._lock:  # between batches: each batch's moves and record fall on one side
                coming = _Round(self._last_seen, self._records, self._named, self._doubtful)
                self._last_seen, self._records, self._named, self._doubtful = {}, {}, {}, {}
            if coming.work or coming.records or coming.doubtful:
                await self._round(coming)
            if final:
                break
        if not (self._records or self._doubtful):  # a failed last round's records stay under the lease until it expires
            with contextlib.suppress(PyMongoError):
                await asyncio.to_thread(end_last_seen_lease, self.db, self.id)

    async def _renew(self) -> None:
        """Renew this process's lease (a server that does not answer: tried again next time)."""
        try:
            await self._take_lease()
        except PyMongoError as exc:
            log.warning("lastSeen lease not renewed: %s", type(exc).__name__)

    async def _take_lease(self) -> None:
        """Take or renew this process's lease (`renew_last_seen_lease`), one renewal at a time."""
        async with self._lease_lock:
            await asyncio.to_thread(renew_last_seen_lease, self.db, self.id, self.last_seen_seconds)
            self._leased = True

    async def _settle_leftover(self) -> None:
        """List and apply the records that a gone process left (`left_pending_last_seen_ids`)."""
        try:
            left = await asyncio.to_thread(left_pending_last_seen_ids, self.db, me=self.id)
        except PyMongoError as exc:
            log.warning("pending lastSeen records not listed: %s", type(exc).__name__)
        else:
            self._unsettled += [record for record in left if record not in self._unsettled]
        if self._unsettled:
            await self._repair()

    async def _repair(self) -> None:
        """Apply the records a gone process left (`repair_last_seen`); kept for the next round if the server fails."""
        unsettled, self._unsettled = self._unsettled, []
        try:
            applied = await asyncio.to_thread(repair_last_seen, self.db, unsettled)
        except PyMongoError as exc:
            self._unsettled += unsettled
            log.warning("lastSeen repair of %d record(s) failed: %s", len(unsettled), type(exc).__name__)
            return
        if applied:  # a warning: a service stopped uncleanly
            log.warning("lastSeen: applied %d pending record(s) left by an unfinished batch", applied)

    async def _round(self, coming: _Round) -> None:
        """One lastSeen round, WRITE_CHUNK assets at a time, letting the writer insert one
        batch between chunks while requests wait: a server that takes one write at a time
        (FerretDB on SQLite) would otherwise hold every request for the whole round.

        Which of the round's assets belong to their org is read once per org for the
        whole round (`owned_assets`), not once per chunk: on FerretDB every such read
        decodes the whole assets collection (31 ms at 1,000 assets, against 45 ms for a
        chunk's 64 updates on the embedded server). The assets go in order of org and
        time, so that on MongoDB the assets of a fleet reporting at the same second fall in
        the same chunks and move in one update there (`move_last_seen`); in arrival order a
        chunk holds a few of each second. On a server without compound pushdown (FerretDB)
        each asset moves by the _id value that read returned (see `move_last_seen`): an
        asset that leaves its org during the round (seconds), deleted and created again
        under the same _id in another org or given another orgId, is the case that read
        does not cover. The assets of a batch whose insert failed midway then move to their
        newest stored snapshot.
        Once every move is acknowledged, the round's pending records are deleted; a round
        that fails goes back, whole, into the next one."""
        try:
            owned = await asyncio.to_thread(self._owned, coming.work)
        except PyMongoError as exc:
            self._keep(coming)
            log.warning("lastSeen round for %d asset(s) failed: %s", len(coming.work), type(exc).__name__)
            return
        items = sorted(coming.work.items(), key=lambda item: (item[0][0], item[1]))
        for start in range(0, len(items), WRITE_CHUNK):
            try:
                await asyncio.to_thread(self._move, dict(items[start : start + WRITE_CHUNK]), owned)
            except PyMongoError as exc:
                self._keep(_Round(dict(items[start:]), coming.records, coming.named, coming.doubtful))
                log.warning("lastSeen round for %d asset(s) failed: %s", len(items) - start, type(exc).__name__)
                return
            if self._queue and not self._written.is_set():
                self._batch_done.clear()
                await self._batch_done.wait()
        try:
            await asyncio.to_thread(self._settle, coming)
        except PyMongoError as exc:  # the moves are applied; the repair and the deletes are tried again
            self._keep(_Round({}, coming.records, coming.named, coming.doubtful))
            log.warning("lastSeen records not settled: %s", type(exc).__name__)

    def _settle(self, coming: _Round) -> None:
        """Move the round's doubtful assets to what is stored, then delete its records."""
        for org_id, assets in coming.doubtful.items():
            settle_last_seen(self.db, org_id, assets)
        for org_id, ids in coming.records.items():
            clear_pending_last_seen(self.db, org_id, ids)

    def _keep(self, failed: _Round) -> None:
        """Put a failed round back into the coming one: its times (the newest wins), its
        records with the assets they name (deleted after the coming round), its doubtful
        assets."""
        for org_id, ids in failed.records.items():
            self._records.setdefault(org_id, []).extend(ids)
        for org_id, assets in failed.named.items():
            self._named.setdefault(org_id, set()).update(assets)
        for org_id, assets in failed.doubtful.items():
            self._doubtful.setdefault(org_id, set()).update(assets)
        for key, seen in failed.work.items():
            known = self._last_seen.get(key)
            if known is None or seen > known:
                self._last_seen[key] = seen

    def _owned(self, work: Mapping[tuple[str, str], datetime]) -> dict[str, dict[str, list[Any]]]:
        """Per org, which of the round's assets are assets of that org (`owned_assets`,
        one read per org); the others are counted as orphans."""
        per_org: dict[str, list[str]] = {}
        for org, asset in work:
            per_org.setdefault(org, []).append(asset)
        owned = {org: owned_assets(self.db, org, assets) for org, assets in per_org.items()}
        self.metrics.orphan_updates += sum(len(assets) - len(owned[org]) for org, assets in per_org.items())
        return owned

    def _move(self, work: Mapping[tuple[str, str], datetime], owned: Mapping[str, Mapping[str, list[Any]]]) -> None:
        """One chunk of a round: each org's moves (`move_last_seen`) of the assets `owned` lists."""
        per_org: dict[str, dict[str, datetime]] = {}
        for (org, asset), seen in work.items():
            per_org.setdefault(org, {})[asset] = seen
        for org, last_seen in per_org.items():
            move_last_seen(self.db, org, last_seen, owned[org])

