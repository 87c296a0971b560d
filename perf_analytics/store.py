"""MongoDB access: connecting, indexes, what the server supports, one-snapshot store/get.

Every function that touches tenant data takes an org id and puts it in its filter.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, MongoClient, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError

from perf_analytics import localdb
from perf_analytics.config import Settings
from perf_analytics.errors import ConfigError, ServerError, UnsupportedFeature, ValidationError
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
SERVER_TIMEOUT_ENV = "PERF_SERVER_TIMEOUT_MS"
DEFAULT_SERVER_TIMEOUT_MS = 10_000


def connect(settings: Settings) -> Db:
    """The configured database: MONGODB_URI's server, else the embedded local one."""
    uri = settings.uri
    if uri is None:
        uri = localdb.start_server(settings.state_dir).uri
    return connect_uri(uri, settings.db)


SOCKET_TIMEOUT_MS = 600_000  # far above any single batch or getMore, even on FerretDB


def connect_uri(uri: str, db_name: str) -> Db:
    """The database `db_name` on the server at `uri`, after checking that the server answers.

    How long to wait for the server: env PERF_SERVER_TIMEOUT_MS, default 10 s. A request
    the server never answers fails after SOCKET_TIMEOUT_MS (unless the URI sets
    socketTimeoutMS) instead of hanging: a stuck server then ends a load with an error,
    and the re-run resumes from the checkpoint.
    """
    timeout_ms = _server_timeout_ms()
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
        raise ServerError(f"cannot reach MongoDB at {_redact(uri)}: {str(exc).splitlines()[0]}") from None
    return client[db_name]


def _server_timeout_ms() -> int:
    raw = os.environ.get(SERVER_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_SERVER_TIMEOUT_MS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"{SERVER_TIMEOUT_ENV} must be a positive whole number of milliseconds, got {raw!r}")
    return value


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
    """Create the snapshot indexes that are missing; safe to run any number of times."""
    if ttl_days is not None and ttl_days <= 0:
        raise ConfigError("--ttl-days must be a positive number of days")
    coll = db[SNAPSHOTS]
    have = {ix["name"]: ix for ix in coll.list_indexes()}
    created, existing, notes = [], [], []
    for name, (keys, unique) in INDEXES.items():
        if name in have:
            if unique and not have[name].get("unique"):
                raise ServerError(
                    f"index {name} exists but is not unique; drop it and run init again "
                    "(duplicates must be removed first: see `doctor`)"
                )
            existing.append(name)
            continue
        try:
            coll.create_index(keys, name=name, unique=unique)
        except OperationFailure as exc:
            # MongoDB answers DuplicateKeyError; FerretDB/SQLite an InternalError naming the
            # UNIQUE constraint. Both mean the same thing to the user.
            if unique and (isinstance(exc, DuplicateKeyError) or "UNIQUE constraint failed" in str(exc)):
                raise ServerError(
                    f"cannot create unique index {name}: duplicate snapshots exist "
                    "(remove them first: see `doctor`)"
                ) from None
            raise ServerError(f"cannot create index {name}: {exc.details or exc}") from None
        created.append(name)
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


# FerretDB 1.24 (SQLite) never answers an update command of more than 100 statements
# (seen with UpdateOne and ReplaceOne batches; 100 answer at once, 101 hang). Every
# bulk update goes out in chunks below that.
WRITE_CHUNK = 64


def bulk_write_chunked(collection: Collection[Doc], ops: Sequence[Any]) -> int:
    """Unordered `bulk_write` of `ops` in chunks of WRITE_CHUNK; returns how many were sent."""
    for i in range(0, len(ops), WRITE_CHUNK):
        collection.bulk_write(list(ops[i : i + WRITE_CHUNK]), ordered=False)
    return len(ops)


def touch_assets(db: Db, org_id: str, last_seen: Mapping[str, datetime]) -> set[str]:
    """Move each asset's lastSeen forward to the given time; return the ids with no asset.

    One org-filtered read finds which of the ids are assets of this org; only those are
    updated, with `$max`, which never moves lastSeen backwards. The updates filter by
    orgId too, except on servers that cannot narrow a compound filter (FerretDB 1.x scans
    the whole collection for `{_id, orgId}` but uses the key for `{_id}`: 11 ms against
    0.7 ms an update at 700 assets). There they filter by the `_id` values that the
    org-filtered read just returned, which are unique and belong to this org.
    """
    if not last_seen:
        return set()
    candidates: dict[str, list[Any]] = {}
    for asset_id in last_seen:
        f = asset_id_filter(asset_id)
        candidates[asset_id] = f["$in"] if isinstance(f, dict) else [f]
    ids = [value for values in candidates.values() for value in values]
    # Compare the _id values themselves, not their text: str(ObjectId) is lower-case hex,
    # so an upper-case assetId would otherwise look like an orphan.
    found = {d["_id"] for d in db[ASSETS].find({"orgId": org_id, "_id": {"$in": ids}}, {"_id": 1})}
    present = {asset_id for asset_id, values in candidates.items() if any(v in found for v in values)}
    now = datetime.now(UTC)
    # One update per _id found, by exact _id: a 24-hex id may name both an ObjectId asset
    # and a string asset of the same text, and an equality on _id is what servers index
    # (FerretDB scans the whole collection for an `$in` on _id in an update).
    scoped = probe_capabilities(db).compound_pushdown
    ops = [
        UpdateOne(
            {"_id": value, "orgId": org_id} if scoped else {"_id": value},
            {"$max": {"lastSeen": seen}, "$set": {"updatedAt": now}},
        )
        for asset_id, seen in last_seen.items()
        for value in candidates[asset_id]
        if value in found
    ]
    bulk_write_chunked(db[ASSETS], ops)
    return set(last_seen) - present


@dataclass(frozen=True)
class StoreResult:
    inserted: bool  # False: a snapshot with this (orgId, assetId, timestamp) was already stored
    orphaned: bool  # the org has no asset with this id
    id: Any


def store_snapshot(db: Db, org_id: str, snapshot: Mapping[str, Any]) -> StoreResult:
    """Validate and store one agent snapshot for `org_id`, then move the asset's lastSeen.

    Storing the same snapshot twice stores it once (the unique key decides).
    """
    doc = validate_snapshot(snapshot, org_id=org_id)
    try:
        result = db[SNAPSHOTS].insert_one(doc)
        inserted, doc_id = True, result.inserted_id
    except DuplicateKeyError:
        inserted = False
        existing = db[SNAPSHOTS].find_one(
            {"orgId": org_id, "assetId": doc["assetId"], "timestamp": doc["timestamp"]}, {"_id": 1}
        )
        if existing is None:
            # The clash is on _id, not on the snapshot key: nothing of this snapshot is stored.
            raise ValidationError("_id", f"{doc['_id']!r} is already the id of another snapshot") from None
        doc_id = existing["_id"]
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
    """The asset's snapshots of the last `time_window`, newest first, at most `limit`."""
    if time_window not in TIME_WINDOWS:
        raise ConfigError(f"unknown time window {time_window!r}; valid: {', '.join(TIME_WINDOWS)}")
    if limit <= 0:
        raise ConfigError(f"limit must be positive, got {limit}")
    end = now or datetime.now(UTC)
    start = end - TIME_WINDOWS[time_window]
    cursor = (
        db[SNAPSHOTS]
        .find({"orgId": org_id, "assetId": asset_id, "timestamp": {"$gte": start, "$lte": end}})
        .sort("timestamp", DESCENDING)
        .limit(limit)
    )
    return list(cursor)

