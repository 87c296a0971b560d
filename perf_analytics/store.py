"""MongoDB access: connecting, indexes, what the server supports, one-snapshot store/get.

Every function that touches tenant data takes an org id and puts it in its filter.
"""

from __future__ import annotations

import os
import re
import socket
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import bson
from bson import ObjectId
from bson.errors import InvalidDocument
from bson.raw_bson import RawBSONDocument
from pymongo import ASCENDING, DESCENDING, MongoClient, UpdateMany, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import (
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    OperationFailure,
    PyMongoError,
    WTimeoutError,
)

from perf_analytics import localdb
from perf_analytics.config import Settings, load_settings
from perf_analytics.errors import (
    ConfigError,
    InvalidArgument,
    ServerError,
    UnsupportedFeature,
    ValidationError,
)
from perf_analytics.schema import (
    ASSETS,
    SNAPSHOTS,
    TIME_WINDOWS,
    asset_id_filter,
    validate_snapshot,
)

Doc = dict[str, Any]
Db = Database[Doc]

KEY_INDEX = "orgId_1_assetId_1_timestamp_-1"
INDEXES: dict[str, tuple[list[tuple[str, int]], bool]] = {
    KEY_INDEX: ([("orgId", ASCENDING), ("assetId", ASCENDING), ("timestamp", DESCENDING)], True),
    "assetId_1_timestamp_-1": ([("assetId", ASCENDING), ("timestamp", DESCENDING)], False),
    "orgId_1_timestamp_-1": ([("orgId", ASCENDING), ("timestamp", DESCENDING)], False),
}
TTL_INDEX = "timestamp_ttl"


def connect(settings: Settings) -> Db:
    """The configured database: MONGODB_URI's server, else the embedded local one.

    Raises:
        ConfigError: the settings name no usable server (a bad URI or timeout).
        ServerError: the server cannot be started or reached (`retryable` says whether to try again).
    """
    uri = settings.uri
    if uri is None:
        uri = localdb.start_server(settings.state_dir, settings=settings).uri
    return connect_uri(uri, settings.db, timeout_ms=settings.server_timeout_ms)


SOCKET_TIMEOUT_MS = 600_000  # far above any single batch or getMore, even on FerretDB


def connect_uri(uri: str, db_name: str, *, timeout_ms: int | None = None) -> Db:
    """The database `db_name` on the server at `uri`, after checking that the server answers.

    How long to wait for the server: `timeout_ms`, else the `server_timeout_ms` setting
    (env PERF_SERVER_TIMEOUT_MS, default 10 s). A request
    the server never answers fails after SOCKET_TIMEOUT_MS (unless the URI sets
    socketTimeoutMS) instead of hanging: a stuck server then ends a load with an error,
    and the re-run resumes from the checkpoint.

    Raises:
        ConfigError: `uri` is not a MongoDB URI, or the timeout setting is not a positive whole number.
        ServerError: the server does not answer (`retryable` True) or refuses the ping (False).
    """
    if timeout_ms is None:
        timeout_ms = load_settings().server_timeout_ms
    options: dict[str, Any] = {"tz_aware": True, "serverSelectionTimeoutMS": timeout_ms}
    if "sockettimeoutms" not in uri.lower():
        options["socketTimeoutMS"] = SOCKET_TIMEOUT_MS
    try:
        client: MongoClient[Doc] = MongoClient(uri, **options)
    except (PyMongoError, ValueError) as exc:
        raise ConfigError(f"invalid MongoDB URI: {exc}") from None
    try:
        client.admin.command("ping")
    except PyMongoError as exc:
        client.close()  # an unclosed client warns (ResourceWarning) when collected
        raise ServerError(
            f"cannot reach MongoDB at {_redact(uri)}: {str(exc).splitlines()[0]}", retryable=is_retryable(exc)
        ) from None
    return client[db_name]


def _redact(uri: str) -> str:
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return uri


@dataclass(frozen=True)
class Capabilities:
    server: str
    ttl_indexes: bool
    time_series: bool
    range_pushdown: bool = True  # a date range filter narrows the scan (uses the index)
    compound_pushdown: bool = True  # `{_id, other}` in an update still uses the _id key
    # A projection costs the server less than the bytes it saves. FerretDB 1.24 applies one
    # in Go after reading each whole document: reading a day with the snapshot schema's
    # projection took 15% longer than without, for the same bytes.
    cheap_projection: bool = True

    def missing(self) -> list[str]:
        out = []
        if not self.ttl_indexes:
            out.append("TTL indexes (expire old snapshots with `retention` instead)")
        if not self.time_series:
            out.append("time-series collections (snapshots stay in a plain collection)")
        if not self.range_pushdown:
            out.append("range-filter pushdown (a time window reads all of an org's snapshots)")
        return out


_PROBED: weakref.WeakKeyDictionary[MongoClient[Doc], Capabilities] = weakref.WeakKeyDictionary()


def probe_capabilities(db: Db) -> Capabilities:
    """What the server is and what it supports (asked once per client: hot paths call it)."""
    known = _PROBED.get(db.client)
    if known is None:
        known = _PROBED[db.client] = _probe(db)
    return known


def _probe(db: Db) -> Capabilities:
    info = db.client.admin.command("buildInfo")
    if "ferretdbVersion" in info:
        # FerretDB 1.x answers NotImplemented for TTL options and timeseries collections.
        # FerretDB 1.x: no TTL option, no timeseries collections, and range filters are
        # evaluated after reading every document the equality filters select.
        return Capabilities(
            f"FerretDB {info['ferretdbVersion']}",
            ttl_indexes=False,
            time_series=False,
            range_pushdown=False,
            compound_pushdown=False,
            cheap_projection=False,
        )
    version = str(info.get("version", "?"))
    major = int(version.split(".")[0]) if version[:1].isdigit() else 0
    return Capabilities(f"MongoDB {version}", ttl_indexes=True, time_series=major >= 5)


@dataclass(frozen=True)
class IndexReport:
    created: list[str]
    existing: list[str]
    notes: list[str]


def ensure_indexes(db: Db, *, ttl_days: int | None = None) -> IndexReport:
    """Create the snapshot indexes that are missing; safe to run any number of times.

    Raises:
        InvalidArgument: `ttl_days` is below 1.
        ServerError: an index cannot be built (duplicates stop the unique one; `retryable` False).
    """
    if ttl_days is not None and ttl_days <= 0:
        raise InvalidArgument(f"ttl_days must be a positive number of days, got {ttl_days}")
    coll = db[SNAPSHOTS]
    have = {ix["name"]: ix for ix in coll.list_indexes()}
    created: list[str] = []
    existing: list[str] = []
    notes: list[str] = []
    for name in INDEXES:
        (created if _create_index(coll, name, have) else existing).append(name)
    if ttl_days is not None:
        caps = probe_capabilities(db)
        if not caps.ttl_indexes:
            raise UnsupportedFeature(
                "TTL indexes",
                caps.server,
                "the other indexes are in place; expire old snapshots with `retention` instead",
            )
        seconds = ttl_days * 86400
        if TTL_INDEX in have:
            if have[TTL_INDEX].get("expireAfterSeconds") != seconds:
                db.command("collMod", SNAPSHOTS, index={"name": TTL_INDEX, "expireAfterSeconds": seconds})
                notes.append(f"TTL changed to {ttl_days} days")
            existing.append(TTL_INDEX)
        else:
            coll.create_index("timestamp", name=TTL_INDEX, expireAfterSeconds=seconds)
            created.append(TTL_INDEX)
    return IndexReport(created, existing, notes)


def missing_indexes(db: Db) -> list[str]:
    have = {ix["name"] for ix in db[SNAPSHOTS].list_indexes()}
    return [name for name in INDEXES if name not in have]


def _create_index(coll: Collection[Doc], name: str, have: Mapping[str, Mapping[str, Any]]) -> bool:
    """Create the index `name` of INDEXES unless `have` (the collection's indexes) has it.

    Returns True when it was created. An existing unique index that is not unique, or
    duplicates that stop the unique one from being built, are errors saying what to do.
    """
    keys, unique = INDEXES[name]
    if name in have:
        if unique and not have[name].get("unique"):
            raise ServerError(
                f"index {name} exists but is not unique; drop it and run init again "
                "(duplicates must be removed first: see `doctor`)",
                retryable=False,
            )
        return False
    try:
        coll.create_index(keys, name=name, unique=unique)
    except OperationFailure as exc:
        if unique and is_duplicate_key(exc):
            raise ServerError(
                f"cannot create unique index {name}: duplicate snapshots exist "
                "(remove them first: see `doctor`, then run `perf-analytics init`)",
                retryable=False,
            ) from None
        raise ServerError(f"cannot create index {name}: {exc.details or exc}", retryable=is_retryable(exc)) from None
    return True


# (client, database name) pairs whose key index is known to be in place: `store_snapshot`
# runs once per agent request and should not list the indexes every time.
_KEY_INDEX_SEEN: weakref.WeakKeyDictionary[MongoClient[Doc], set[str]] = weakref.WeakKeyDictionary()


def require_key_index(db: Db) -> bool:
    """Make sure the unique (orgId, assetId, timestamp) index exists before a write.

    That index is what makes storing a snapshot twice store it once; without it every
    re-run of a load would store every snapshot again. Missing, it is created (only it:
    the other indexes serve reads and come with `perf-analytics init`), and True is
    returned. When it cannot be built because duplicates are already stored, or exists
    without being unique, a ServerError says what to run; nothing is written.
    """
    seen = _KEY_INDEX_SEEN.setdefault(db.client, set())
    if db.name in seen:
        return False
    coll = db[SNAPSHOTS]
    created = _create_index(coll, KEY_INDEX, {ix["name"]: ix for ix in coll.list_indexes()})
    seen.add(db.name)
    return created


DUPLICATE_KEY_CODES = frozenset({11000, 11001})
_RETRYABLE_LABELS = ("RetryableWriteError", "TransientTransactionError", "ResumableChangeStreamError")


def is_retryable(error: PyMongoError) -> bool:
    """Whether the call that raised `error` may succeed if made again unchanged: the server
    was unreachable, timed out or labelled the error transient. An authentication failure
    or a refused command is not (something must change first)."""
    if isinstance(error, ConnectionFailure | ExecutionTimeout | WTimeoutError):
        return True
    return any(error.has_error_label(label) for label in _RETRYABLE_LABELS)



def is_duplicate_key(error: PyMongoError | Mapping[str, Any]) -> bool:
    """Whether a server error (an exception, or one `writeErrors` entry) is a duplicate key.

    MongoDB answers code 11000 (11001 on old servers). FerretDB 1.24 answers 11000 on
    inserts, but on updates, replaces and index builds its SQLite backend answers an
    InternalError naming the "UNIQUE constraint" instead.
    """
    if isinstance(error, PyMongoError):
        code = getattr(error, "code", None)
        message = str(error)
    else:
        code = error.get("code")
        message = str(error.get("errmsg", ""))
    return code in DUPLICATE_KEY_CODES or "UNIQUE constraint failed" in message


_INDEX_IN_MESSAGE = re.compile(r"index: (\S+)")


def duplicate_key_index(error: PyMongoError | Mapping[str, Any]) -> str | None:
    """The name of the unique index a duplicate-key error names, or None if it names none.

    MongoDB's errors say it twice: errmsg "E11000 duplicate key error collection: db.c
    index: <name> dup key: {...}", and keyPattern (4.2+). FerretDB 1.24 gives neither (its
    errmsg stops after the collection name, the same for a clash on _id as on the key
    index); the caller must then ask the collection (see `duplicates_of`).
    """
    details: Mapping[str, Any] = (
        (getattr(error, "details", None) or {}) if isinstance(error, PyMongoError) else error
    )
    pattern = details.get("keyPattern")
    if isinstance(pattern, Mapping):
        keys = [(k, int(v)) for k, v in pattern.items() if isinstance(v, int | float)]
        if keys == [("_id", 1)]:
            return "_id_"
        for name, (index_keys, _unique) in INDEXES.items():
            if keys == index_keys:
                return name
    found = _INDEX_IN_MESSAGE.search(str(details.get("errmsg", "")))
    return found.group(1) if found else None


def duplicates_of(
    db: Db, docs: Sequence[Mapping[str, Any]], errors: Sequence[Mapping[str, Any]]
) -> list[ValidationError | None]:
    """For documents an insert refused with a duplicate-key error each: None when the
    snapshot is already stored (a clash on the unique key index: a true duplicate), else
    why it was refused although its snapshot is not stored.

    `errors[i]` is the write error of `docs[i]`. An error that names the key index is a
    duplicate. One that names `_id_` or no index (FerretDB) is looked up: the snapshot is
    a duplicate only if its org has its (assetId, timestamp) stored; otherwise its _id is
    another snapshot's (of this or another org), and it is not a duplicate. A clash on
    any other unique index is never one.
    """
    verdict: list[ValidationError | None] = [None] * len(docs)
    unsure: dict[str, list[int]] = {}
    for i, (doc, error) in enumerate(zip(docs, errors, strict=True)):
        index = duplicate_key_index(error)
        if index == KEY_INDEX:
            continue
        if index not in (None, "_id_"):
            verdict[i] = ValidationError("", f"duplicate key on unique index {index}: {error_text(error)}")
            continue
        unsure.setdefault(doc["orgId"], []).append(i)
    for org_id, positions in unsure.items():
        stored = present_keys(db, org_id, [docs[i] for i in positions])
        for i in positions:
            if snapshot_key(docs[i]) not in stored:
                verdict[i] = ValidationError("_id", f"{docs[i]['_id']!r} is already the id of another snapshot")
    return verdict


@dataclass(frozen=True)
class SortedWriteErrors:
    """An unordered insert's write errors, by position in the batch sent."""

    duplicates: list[int]  # snapshots already stored (a clash on the unique key index)
    refused: dict[int, tuple[str, str]]  # position -> (field, reason): not stored


def sort_write_errors(
    db: Db, details: Mapping[str, Any], doc_at: Callable[[int], Mapping[str, Any]]
) -> SortedWriteErrors:
    """Sort a BulkWriteError's `details` into duplicates and refusals.

    Only a clash on the unique key index is a duplicate (the snapshot is stored). A clash
    on _id (another snapshot, perhaps of another org, holds the document's _id) or on any
    other unique index, and every other write error, is a refusal with the server's
    reason. `doc_at(i)` is the document at position i of the batch: only those with a
    duplicate-key error are asked for (see `duplicates_of`), so a caller holding encoded
    documents decodes just them.
    """
    refused: dict[int, tuple[str, str]] = {}
    clashes: list[tuple[int, Mapping[str, Any]]] = []
    for err in details.get("writeErrors", []):
        if is_duplicate_key(err):
            clashes.append((err["index"], err))
        else:
            refused[err["index"]] = ("", f"refused by the server: {error_text(err)}")
    verdicts = duplicates_of(db, [doc_at(i) for i, _ in clashes], [err for _, err in clashes])
    duplicates: list[int] = []
    for (i, _), clash in zip(clashes, verdicts, strict=True):
        if clash is None:
            duplicates.append(i)
        else:
            refused[i] = (clash.field, clash.reason)
    return SortedWriteErrors(duplicates, refused)


def error_text(error: PyMongoError | Mapping[str, Any], limit: int = 300) -> str:
    """The first line of a server error (an exception or a write error), at most `limit` chars."""
    message = str(error) if isinstance(error, PyMongoError) else str(error.get("errmsg") or error)
    return (message.splitlines() or [""])[0][:limit]


def snapshot_key(doc: Mapping[str, Any]) -> tuple[str, datetime]:
    """(assetId, timestamp): with the orgId, what identifies a snapshot."""
    return (doc["assetId"], doc["timestamp"])


def present_keys(db: Db, org_id: str, docs: Sequence[Mapping[str, Any]]) -> set[tuple[str, datetime]]:
    """Which of `docs`' (assetId, timestamp) keys performance_snapshots holds for `org_id`.

    One query: a superset by assetId and timestamp, narrowed to exact pairs here.
    """
    if not docs:
        return set()
    wanted = {snapshot_key(doc) for doc in docs}
    query = {
        "orgId": org_id,
        "assetId": {"$in": sorted({asset for asset, _ in wanted})},
        "timestamp": {"$in": sorted({moment for _, moment in wanted})},
    }
    found = {
        (doc["assetId"], doc["timestamp"])
        for doc in db[SNAPSHOTS].find(query, {"_id": 0, "assetId": 1, "timestamp": 1})
    }
    return wanted & found


# FerretDB 1.24 (SQLite) never answers an update command of 100 statements or more
# (UpdateOne and ReplaceOne batches, 200 documents: 99 statements answer in 0.45 s, 100
# and 101 still had no answer after 15 s). Every bulk update goes out in chunks below that.
WRITE_CHUNK = 64


def bulk_write_chunked(collection: Collection[Doc], ops: Sequence[Any]) -> int:
    """Unordered `bulk_write` of `ops` in chunks of WRITE_CHUNK; returns how many were sent."""
    for i in range(0, len(ops), WRITE_CHUNK):
        collection.bulk_write(list(ops[i : i + WRITE_CHUNK]), ordered=False)
    return len(ops)


def owned_assets(db: Db, org_id: str, asset_ids: Iterable[str]) -> dict[str, list[Any]]:
    """Of `asset_ids`, those that are assets of `org_id`, each with the `_id` values that
    name it in `assets` (one org-filtered read).

    A 24-hex assetId may name both an ObjectId asset and a string asset of the same text;
    each found is listed. The _id values are compared themselves, not their text:
    str(ObjectId) is lower-case hex, so an upper-case assetId would otherwise look like an
    orphan.
    """
    candidates: dict[str, list[Any]] = {}
    for asset_id in asset_ids:
        f = asset_id_filter(asset_id)
        candidates[asset_id] = f["$in"] if isinstance(f, dict) else [f]
    if not candidates:
        return {}
    ids = [value for values in candidates.values() for value in values]
    found = {d["_id"] for d in db[ASSETS].find({"orgId": org_id, "_id": {"$in": ids}}, {"_id": 1})}
    owned = {asset_id: [v for v in values if v in found] for asset_id, values in candidates.items()}
    return {asset_id: values for asset_id, values in owned.items() if values}


def move_last_seen(db: Db, org_id: str, last_seen: Mapping[str, datetime], owned: Mapping[str, Sequence[Any]]) -> None:
    """Move lastSeen forward, with `$max` (never backwards), for each asset of `last_seen`
    that `owned` lists, by the `_id` values it lists; the others are left alone.

    `owned` is what `owned_assets` read for this same org, shortly before (a lastSeen
    round reads it once for all its chunks, so every chunk is not one more read of the
    collection on a server without index pushdown).

    On a server that narrows compound filters by its indexes, assets given the same time
    (a fleet reporting at the same second) share one `UpdateMany` of their _ids filtered by
    orgId, and the others get one `UpdateOne` each by `{_id, orgId}`. FerretDB 1.x reads and
    decodes the whole collection for both `{_id, orgId}` and `$in`, but leaves `{_id}` alone
    to SQLite, so there every asset gets its own `UpdateOne` by the `_id` value the
    org-filtered read returned for this org (1,000 assets among 2,000: 0.7-0.9 s, against
    4.9-5.3 s grouped by time; on a server without the _id path index of
    `localdb.index_id_paths`, 6.2-8.7 s against 9.5-11.7 s). _id values are unique in the
    collection, so the update can reach no other org's asset unless, between that read and
    the update, the asset left this org: deleted and created again under the same _id in
    another org, or given another orgId. `touch_assets` reads right before; a lastSeen
    round reads once for all its chunks, so there that stretch is the round (seconds).
    FerretDB itself finds a document and then writes it back by _id, so `{_id, orgId}`
    would shorten that stretch there, not close it.
    """
    now = datetime.now(UTC)
    scoped = probe_capabilities(db).compound_pushdown
    by_time: dict[datetime, list[Any]] = {}
    for asset_id, seen in last_seen.items():
        by_time.setdefault(seen, []).extend(owned.get(asset_id, ()))
    ops: list[UpdateOne | UpdateMany] = []
    for seen, values in by_time.items():
        update = {"$max": {"lastSeen": seen}, "$set": {"updatedAt": now}}
        if scoped and len(values) > 1:
            ops.append(UpdateMany({"_id": {"$in": values}, "orgId": org_id}, update))
        else:
            ops.extend(UpdateOne({"_id": value, "orgId": org_id} if scoped else {"_id": value}, update)
                       for value in values)
    bulk_write_chunked(db[ASSETS], ops)


def touch_assets(db: Db, org_id: str, last_seen: Mapping[str, datetime]) -> set[str]:
    """Move each asset's lastSeen forward to the given time; return the ids with no asset:
    one org-filtered read (`owned_assets`), then the moves (`move_last_seen`)."""
    if not last_seen:
        return set()
    owned = owned_assets(db, org_id, last_seen)
    move_last_seen(db, org_id, last_seen, owned)
    return set(last_seen) - set(owned)


def settle_last_seen(db: Db, org_id: str, asset_ids: Iterable[str]) -> set[str]:
    """Move each of `asset_ids`' lastSeen to its newest stored snapshot of `org_id`
    (`newest_stored`, then `touch_assets`): what a repair does for assets whose moves may
    be lost. Returns the ids with no asset."""
    return touch_assets(db, org_id, newest_stored(db, org_id, asset_ids))


LAST_SEEN_PENDING = "last_seen_pending"
"""Write-ahead records of lastSeen moves not yet applied, `{_id, orgId, by, assets: [assetId,
...]}` (`by`: the `perf-analytics serve` process that wrote it). A service names an asset
here before it inserts the first snapshot of that asset whose move goes into its next
lastSeen round, and deletes the records once that round applied its moves; a record left
behind (a killed service) is applied by `repair_last_seen`."""


def record_pending_last_seen(db: Db, by: ObjectId, assets: Mapping[str, Iterable[str]]) -> dict[str, ObjectId]:
    """Record, in one insert, the assets whose lastSeen is about to move, one document per
    org; return each org's document id (what `clear_pending_last_seen` deletes)."""
    records = {org_id: ObjectId() for org_id in assets}
    if records:
        db[LAST_SEEN_PENDING].insert_many(
            [{"_id": records[org_id], "orgId": org_id, "by": by, "assets": sorted(ids)} for org_id, ids in assets.items()]
        )
    return records


def clear_pending_last_seen(db: Db, org_id: str, ids: Sequence[ObjectId]) -> None:
    """Delete an org's pending records whose moves are applied.

    Filtered by orgId too, except where a compound filter scans the whole collection
    (FerretDB 1.x, as in `touch_assets`): there the ids alone, which are unique and were
    written for this org, narrow the delete.
    """
    if ids:
        scoped = probe_capabilities(db).compound_pushdown
        db[LAST_SEEN_PENDING].delete_many({"_id": {"$in": list(ids)}, **({"orgId": org_id} if scoped else {})})


LAST_SEEN_WRITERS = "last_seen_writers"
"""The lease of each `perf-analytics serve` process that writes pending records, `{_id: its
id (the records' `by`), at: when it last renewed, every: its round interval in seconds,
host, pid}`. A writer takes its lease before its first record and renews it every round;
a process that stops deletes it. Records whose writer holds a live lease are that
writer's to apply and delete: another process (a sibling worker, a restarted one)
repairs only the records of a writer whose lease is gone, expired, or held by a process
of this host that no longer runs (a worker killed with -9: repaired at once by the
worker started in its place, not an expiry later) (`left_pending_last_seen_ids`)."""

LEASE_ROUNDS = 3
"""Rounds a writer may miss before its lease expires."""
LEASE_MARGIN = timedelta(seconds=60)
"""Beyond LEASE_ROUNDS intervals: a long round (a lease is renewed before each round, so
renewals come an interval and a round apart) and clocks of two machines that differ a
little do not expire a live lease."""


def renew_last_seen_lease(db: Db, by: ObjectId, every: float) -> None:
    """Take or renew the lease of writer `by`, whose rounds come every `every` seconds."""
    lease = {"at": datetime.now(UTC), "every": every, "host": socket.gethostname(), "pid": os.getpid()}
    db[LAST_SEEN_WRITERS].update_one({"_id": by}, {"$set": lease}, upsert=True)


def end_last_seen_lease(db: Db, by: ObjectId) -> None:
    """Give up the lease of writer `by` (it has applied and deleted its records)."""
    db[LAST_SEEN_WRITERS].delete_one({"_id": by})


def left_pending_last_seen_ids(db: Db, *, me: ObjectId) -> list[ObjectId]:
    """The ids of the pending records that a gone writer left: written by another process
    than `me` whose lease (`LAST_SEEN_WRITERS`) is missing, was last renewed more than
    LEASE_ROUNDS of its intervals plus LEASE_MARGIN ago, or names a process of this host
    that has exited. The leases of such writers are deleted. A record of a live writer, a
    sibling worker in the middle of its round, is left to that writer. (A process id
    reused by another process looks alive: its lease then expires by time.)

    A writer takes its lease before it writes its first record, so a record without a
    lease is one whose writer stopped (or one written before leases existed).
    """
    now, host = datetime.now(UTC), socket.gethostname()
    expired: set[Any] = set()
    live: set[Any] = set()
    for lease in db[LAST_SEEN_WRITERS].find():
        at = lease.get("at")
        at = at.replace(tzinfo=UTC) if isinstance(at, datetime) and at.tzinfo is None else at
        every = lease.get("every")
        exited = lease.get("host") == host and isinstance(lease.get("pid"), int) and not localdb.process_alive(lease["pid"])
        if not exited and isinstance(at, datetime) and isinstance(every, int | float) and (
            now - at <= LEASE_ROUNDS * timedelta(seconds=every) + LEASE_MARGIN
        ):
            live.add(lease["_id"])
        else:
            expired.add(lease["_id"])
    left = [doc["_id"] for doc in db[LAST_SEEN_PENDING].find({}, {"_id": 1, "by": 1})
            if doc.get("by") != me and doc.get("by") not in live]
    if expired:
        db[LAST_SEEN_WRITERS].delete_many({"_id": {"$in": sorted(expired, key=str)}})
    return left


AssetStats = dict[Any, tuple[int, datetime | None]]
"""Per assetId: how many snapshots, and the newest BSON-date timestamp (None when none is a date)."""

_NOT_IMPLEMENTED = 238  # the server's code for an operator it does not implement


def asset_snapshot_stats(db: Db, org_id: str, asset_ids: Iterable[str] | None = None) -> AssetStats:
    """Per assetId of `org_id`'s snapshots (of `asset_ids` only, when given): how many, and
    the newest BSON-date timestamp.

    One `$group` on servers with a `$max` accumulator. FerretDB 1.24 has none (and no
    `$first`), and sorts without an index, so one find_one per asset would scan the
    collection once per asset; there this is one projected scan reduced here instead.
    """
    match: Doc = {"orgId": org_id}
    if asset_ids is not None:
        match["assetId"] = {"$in": sorted(set(asset_ids))}
        if not match["assetId"]["$in"]:
            return {}
    newest_date = {"$max": {"$cond": [{"$eq": [{"$type": "$timestamp"}, "date"]}, "$timestamp", None]}}
    pipeline: list[Doc] = [{"$match": match}, {"$group": {"_id": "$assetId", "n": {"$sum": 1}, "newest": newest_date}}]
    try:
        return {row["_id"]: (row["n"], row["newest"]) for row in db[SNAPSHOTS].aggregate(pipeline)}
    except OperationFailure as exc:
        if exc.code != _NOT_IMPLEMENTED:
            raise
    stats: AssetStats = {}
    for doc in db[SNAPSHOTS].find(match, {"_id": 0, "assetId": 1, "timestamp": 1}, batch_size=1000):
        count_asset_snapshot(stats, doc)
    return stats


def count_asset_snapshot(stats: AssetStats, doc: Doc) -> None:
    """Add one snapshot to its assetId's (count, newest BSON-date timestamp) in `stats`."""
    asset_id, moment = doc.get("assetId"), doc.get("timestamp")
    count, newest = stats.get(asset_id, (0, None))
    if isinstance(moment, datetime) and (newest is None or moment > newest):
        newest = moment
    stats[asset_id] = (count + 1, newest)


def newest_stored(db: Db, org_id: str, asset_ids: Iterable[str]) -> dict[str, datetime]:
    """Each of `asset_ids`' newest stored snapshot time in `org_id` (an asset with none is
    left out): `asset_snapshot_stats` of those assets. On FerretDB that reads every stored
    snapshot of the assets, so it is for repairs, not for every round."""
    return {asset: newest for asset, (_, newest) in asset_snapshot_stats(db, org_id, asset_ids).items()
            if newest is not None}


def repair_last_seen(db: Db, ids: Sequence[ObjectId]) -> int:
    """Apply the pending records `ids` and delete them; return how many were applied.

    A record names assets whose lastSeen a service was about to move when it stopped:
    each moves to its newest stored snapshot of the record's org (`settle_last_seen`,
    with `$max`, so applying a record twice is harmless and a crash during
    the repair is not), one read per org. The records are deleted once their moves are
    acknowledged.
    """
    per_org: dict[str, tuple[list[ObjectId], set[str]]] = {}
    for start in range(0, len(ids), WRITE_CHUNK):
        for record in db[LAST_SEEN_PENDING].find({"_id": {"$in": list(ids[start : start + WRITE_CHUNK])}}):
            mine, assets = per_org.setdefault(record["orgId"], ([], set()))
            mine.append(record["_id"])
            assets.update(record.get("assets", []))
    applied = 0
    for org_id, (mine, assets) in per_org.items():
        settle_last_seen(db, org_id, assets)
        clear_pending_last_seen(db, org_id, mine)
        applied += len(mine)
    return applied


MAX_NESTING = 100  # MongoDB stores documents of at most 100 levels of objects and arrays
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024  # MongoDB's largest document, as BSON


def check_nesting(doc: Mapping[str, Any], limit: int = MAX_NESTING) -> None:
    """Raise ValidationError if `doc` nests objects and arrays deeper than `limit` levels.

    The document itself is level 1. The walk is iterative and stops at the first branch
    over the limit, so a record nested thousands deep costs no more than `limit` steps
    down and never hits Python's recursion limit (as BSON encoding and JSON printing do
    at about 1,000 and 500 levels). The field named is the path to that branch. This runs
    for every record of a load, so the walk only counts levels (a few µs a snapshot);
    the path is traced only for a document found too deep.
    """
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        for child in value.values() if isinstance(value, dict) else value:
            if isinstance(child, dict | list):
                if depth >= limit:
                    raise ValidationError(
                        _path_deeper_than(doc, limit), f"nested deeper than {limit} levels of objects and arrays"
                    )
                stack.append((child, depth + 1))


def _path_deeper_than(doc: Mapping[str, Any], limit: int, keep: int = 4) -> str:
    """The first `keep` steps of the path to a container below level `limit` of `doc`
    (which has one), as `a.b[0].c...`: the rest repeats the same few keys."""
    stack: list[tuple[Any, int, tuple[str, ...]]] = [(doc, 1, ())]
    while stack:
        value, depth, path = stack.pop()
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in items:
            if isinstance(child, dict | list):
                step = f"[{key}]" if isinstance(value, list) else (f".{key}" if path else str(key))
                if depth >= limit:
                    steps = (*path, step)
                    return "".join(steps[:keep]) + ("..." if len(steps) > keep else "")
                stack.append((child, depth + 1, (*path, step) if len(path) <= keep else path))
    return ""


def encode_document(
    doc: Mapping[str, Any], collection: Collection[Doc], *, nesting_checked: bool = False
) -> RawBSONDocument:
    """`doc` as the BSON that an insert into `collection` sends, if a server can store it.

    Raises ValidationError when it nests deeper than MAX_NESTING, cannot be encoded (an
    integer over 64 bits, a key with a NUL byte), or is larger than MAX_DOCUMENT_BYTES:
    MongoDB refuses those, and FerretDB stores some of them, so the check is ours.
    Encoding here is not extra work: pymongo sends the bytes as they are. A caller that
    has already run `check_nesting` on `doc` says so with `nesting_checked` (the walk
    costs about as much as validating the record).
    """
    if not nesting_checked:
        check_nesting(doc)
    options = collection.codec_options
    try:
        data = bson.encode(doc, codec_options=options)
    except (InvalidDocument, OverflowError, ValueError) as exc:
        raise ValidationError("", f"cannot be stored as BSON: {exc}") from None
    if len(data) > MAX_DOCUMENT_BYTES:
        sizes = {key: len(bson.encode({key: value}, codec_options=options)) for key, value in doc.items()}
        largest = max(sizes, key=sizes.__getitem__)
        raise ValidationError(
            largest,
            f"the document is {len(data):,} bytes as BSON, over the limit of {MAX_DOCUMENT_BYTES:,} "
            f"({largest} alone is {sizes[largest]:,})",
        )
    return RawBSONDocument(data)


@dataclass(frozen=True)
class StoreResult:
    inserted: bool  # False: a snapshot with this (orgId, assetId, timestamp) was already stored
    orphaned: bool  # the org has no asset with this id
    id: Any


def store_snapshot(db: Db, org_id: str, snapshot: Mapping[str, Any]) -> StoreResult:
    """Validate and store one agent snapshot for `org_id`, then move the asset's lastSeen.

    Storing the same snapshot twice stores it once (the unique key decides; it is created
    first if missing, see `require_key_index`). A snapshot whose _id another snapshot
    holds, or that nests too deep or is too large to store, raises ValidationError.

    Raises:
        ValidationError: the payload breaks the contract, or its _id is another snapshot's.
        UnsupportedFeature: the server cannot hold the unique key index.
    """
    require_key_index(db)
    doc = validate_snapshot(snapshot, org_id=org_id)
    doc.setdefault("_id", ObjectId())
    raw = encode_document(doc, db[SNAPSHOTS])
    try:
        db[SNAPSHOTS].insert_one(raw)
        inserted, doc_id = True, doc["_id"]
    except DuplicateKeyError as exc:
        clash = duplicates_of(db, [doc], [exc.details or {}])[0]
        if clash is not None:
            # Not a duplicate: nothing of this snapshot is stored, so lastSeen stays.
            raise clash from None
        inserted = False
        existing = db[SNAPSHOTS].find_one(
            {"orgId": org_id, "assetId": doc["assetId"], "timestamp": doc["timestamp"]}, {"_id": 1}
        )
        doc_id = existing["_id"] if existing is not None else None
    orphans = touch_assets(db, org_id, {doc["assetId"]: doc["timestamp"]})
    return StoreResult(inserted=inserted, orphaned=bool(orphans), id=doc_id)


def get_asset_performance(
    db: Db,
    asset_id: str,
    org_id: str,
    time_window: str = "1hour",
    limit: int = 60,
    *,
    now: datetime | None = None,
) -> list[Doc]:
    """The asset's snapshots of the last `time_window`, newest first, at most `limit`.

    Raises:
        InvalidArgument: an unknown `time_window` or a `limit` below 1.
    """
    if time_window not in TIME_WINDOWS:
        raise InvalidArgument(f"unknown time window {time_window!r}; valid: {', '.join(TIME_WINDOWS)}")
    if limit <= 0:
        raise InvalidArgument(f"limit must be positive, got {limit}")
    end = now or datetime.now(UTC)
    start = end - TIME_WINDOWS[time_window]
    cursor = (
        db[SNAPSHOTS]
        .find({"orgId": org_id, "assetId": asset_id, "timestamp": {"$gte": start, "$lte": end}})
        .sort("timestamp", DESCENDING)
        .limit(limit)
    )
    return list(cursor)

