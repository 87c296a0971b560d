"""Move legacy snapshots that older code wrote into `assets` over to performance_snapshots.

Older code stored each snapshot as a document in `assets` (it carries performanceData and
timestamp). For one org at a time, `migrate_legacy_snapshots` normalises each such
document with the snapshot contract, inserts it into performance_snapshots under its own
_id (an ObjectId: `schema.repaired_id`, as `doctor` repairs ids), checks by the unique key (orgId, assetId, timestamp) that it is there, moves the
asset's lastSeen forward, and only then deletes it from `assets`. Each step is safe to
repeat, so a crash at any point is finished by the next run, and a run after a
successful one moves nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pymongo.errors import BulkWriteError

from perf_analytics.errors import InvalidArgument, ServerError, ValidationError
from perf_analytics.schema import ASSETS, SNAPSHOTS, Problem, repaired_id, validate_snapshot
from perf_analytics.store import (
    KEY_INDEX,
    Db,
    Doc,
    ensure_indexes,
    is_duplicate_key,
    missing_indexes,
    present_keys,
    snapshot_key,
    touch_assets,
)
from perf_analytics.sync import mark_documents_for_sync

DEFAULT_BATCH_SIZE = 1000
_MAX_REASON_CHARS = 300


def legacy_filter(org_id: str) -> Doc:
    """The filter for `org_id`'s legacy snapshot documents in `assets`."""
    return {"orgId": org_id, "performanceData": {"$exists": True}, "timestamp": {"$exists": True}}


@dataclass(frozen=True)
class MigrateReport:
    """What one org's migration did (or, with dry_run, would do).

    `moved` counts the documents removed from `assets` (or that would be), of which
    `already_present` were already in performance_snapshots: a crashed earlier run, or
    the same snapshot stored both ways. `left` are the documents that stay in `assets`.
    """

    org_id: str
    dry_run: bool
    moved: int = 0
    already_present: int = 0
    left: list[Problem] = field(default_factory=list)  # documents that stay in `assets`, and why
    unknown_assets: list[str] = field(default_factory=list)
    created_indexes: list[str] = field(default_factory=list)

    @property
    def inserted(self) -> int:
        return self.moved - self.already_present

    @property
    def ok(self) -> bool:
        """True when no legacy document is (or would be) left behind in `assets`."""
        return not self.left


def migrate_legacy_snapshots(
    db: Db, org_id: str, *, dry_run: bool = False, batch_size: int = DEFAULT_BATCH_SIZE
) -> MigrateReport:
    """Move `org_id`'s legacy snapshot documents from `assets` to performance_snapshots.

    Per batch: normalise (coercing the string numbers and dates older code wrote), insert
    unordered keeping each _id (as an ObjectId; a duplicate key means "already there"), verify presence by
    (orgId, assetId, timestamp), move lastSeen forward with `$max`, then delete the verified
    documents by _id and orgId. Documents that fail validation or verification stay in
    `assets` and are listed in the report. A real run first creates the snapshot indexes
    if the unique one is missing. With `dry_run` nothing is written.

    Raises:
        InvalidArgument: no `org_id`, or `batch_size` below 1.
        ServerError: documents moved but still in `assets` (a concurrent writer; `retryable` True).
    """
    if not org_id:
        raise InvalidArgument("an org id is required")
    if batch_size <= 0:
        raise InvalidArgument(f"batch size must be positive, got {batch_size}")
    # The unique (orgId, assetId, timestamp) index is what turns a second copy of a
    # snapshot into a duplicate-key error instead of a duplicate; a real run creates it.
    created: list[str] = []
    if not dry_run and KEY_INDEX in missing_indexes(db):
        created = ensure_indexes(db).created
    moved = already = 0
    left: list[Problem] = []
    orphans: set[str] = set()
    for batch in _legacy_batches(db, org_id, dry_run=dry_run, batch_size=batch_size, left=left):
        valid: list[Doc] = []
        raw_ids: dict[Any, Any] = {}  # stored _id -> the legacy document's _id in assets
        for raw in batch:
            try:
                valid.append(_normalise(raw, org_id))
            except ValidationError as exc:
                left.append(Problem(raw["_id"], f"invalid: {exc}"))
                continue
            raw_ids[valid[-1]["_id"]] = raw["_id"]
        if dry_run:
            present = present_keys(db, org_id, valid)
            moved += len(valid)
            already += sum(1 for doc in valid if snapshot_key(doc) in present)
            continue
        duplicates, failed = _insert(db, valid)
        present = present_keys(db, org_id, valid)
        verified: list[Doc] = []
        for doc in valid:
            if snapshot_key(doc) in present:
                verified.append(doc)
            elif doc["_id"] in failed:
                left.append(Problem(raw_ids[doc["_id"]], f"insert failed: {failed[doc['_id']]}"))
            else:
                left.append(
                    Problem(
                        raw_ids[doc["_id"]],
                        "not found in performance_snapshots after insert: its _id belongs "
                        "to another snapshot",
                    )
                )
        if not verified:
            continue
        newest: dict[str, datetime] = {}
        for doc in verified:
            if doc["assetId"] not in newest or doc["timestamp"] > newest[doc["assetId"]]:
                newest[doc["assetId"]] = doc["timestamp"]
        # The moved snapshots keep their old _ids, which the next sync's _id range cannot
        # find: mark their days. Marks and lastSeen go before the delete: a crash in
        # between leaves the document in assets, and the re-run repeats both (idempotent)
        # and then deletes it.
        mark_documents_for_sync(db, verified)
        orphans |= touch_assets(db, org_id, newest)
        result = db[ASSETS].delete_many({"_id": {"$in": [raw_ids[doc["_id"]] for doc in verified]}, "orgId": org_id})
        moved += result.deleted_count
        already += sum(1 for doc in verified if doc["_id"] in duplicates)
    return MigrateReport(
        org_id=org_id,
        dry_run=dry_run,
        moved=moved,
        already_present=already,
        left=left,
        unknown_assets=sorted(orphans),
        created_indexes=created,
    )


def migrate_all_orgs(
    db: Db, *, dry_run: bool = False, batch_size: int = DEFAULT_BATCH_SIZE
) -> list[MigrateReport]:
    """Admin call across tenants: migrate every org that has legacy snapshots in `assets`.

    Lists the distinct orgIds of legacy documents and runs `migrate_legacy_snapshots` for
    each, so every read and write is still filtered by one org. Legacy documents without
    an orgId belong to no org and are not touched.

    Raises:
        InvalidArgument: `batch_size` below 1.
        ServerError: documents moved but still in `assets` (a concurrent writer; `retryable` True).
    """
    return [
        migrate_legacy_snapshots(db, org_id, dry_run=dry_run, batch_size=batch_size)
        for org_id in legacy_org_ids(db)
    ]


def legacy_org_ids(db: Db) -> list[str]:
    """Admin call across tenants: the orgIds that have legacy snapshots in `assets`."""
    query = {"performanceData": {"$exists": True}, "timestamp": {"$exists": True}}
    return sorted(org for org in db[ASSETS].distinct("orgId", query) if isinstance(org, str) and org)


def _legacy_batches(
    db: Db, org_id: str, *, dry_run: bool, batch_size: int, left: Sequence[Problem]
) -> Iterator[list[Doc]]:
    """The org's legacy documents in batches of at most `batch_size`.

    A dry run only reads, so one cursor walks the collection. A real run deletes what it
    moved, so each batch is a fresh query for what is still there, minus the documents
    already left behind (`left` grows as the caller reports them). That needs no
    assumption about the type of _id, and no cursor stays open across the writes.
    """
    if dry_run:
        batch: list[Doc] = []
        for doc in db[ASSETS].find(legacy_filter(org_id), sort=[("_id", 1)], batch_size=batch_size):
            batch.append(doc)
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch
        return
    seen: set[Any] = set()
    while True:
        query = legacy_filter(org_id)
        skipped = [item.id for item in left]
        if skipped:
            query["_id"] = {"$nin": skipped}
        batch = list(db[ASSETS].find(query, sort=[("_id", 1)], limit=batch_size))
        if not batch:
            return
        again = [doc["_id"] for doc in batch if doc["_id"] in seen]
        if again:
            # Verified but not deleted: only a concurrent writer explains it. Stop rather
            # than loop; the next run picks these up again.
            raise ServerError(
                f"legacy snapshot(s) {', '.join(map(str, again[:5]))} of org {org_id!r} "
                "were moved but are still in assets; run migrate again",
                retryable=True,
            )
        seen.update(doc["_id"] for doc in batch)
        yield batch


def _normalise(raw: Doc, org_id: str) -> Doc:
    """A legacy document as a snapshot: the contract's normalisation, and an ObjectId `_id`
    as `doctor` gives one (`schema.repaired_id`: the same on every run, the old value kept
    in `originalId` unless it was a 24-hex string)."""
    doc = validate_snapshot({k: v for k, v in raw.items() if k != "_id"}, org_id=org_id, coerce=True)
    new_id, extra = repaired_id(org_id, raw["_id"])
    return {"_id": new_id, **doc, **extra}


def _insert(db: Db, docs: list[Doc]) -> tuple[set[Any], dict[Any, str]]:
    """Insert unordered; return the _ids that hit a duplicate key and the other failures."""
    if not docs:
        return set(), {}
    try:
        db[SNAPSHOTS].insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        duplicates: set[Any] = set()
        failed: dict[Any, str] = {}
        for error in exc.details.get("writeErrors", []):
            doc_id = docs[error["index"]]["_id"]
            if is_duplicate_key(error):
                duplicates.add(doc_id)
            else:
                failed[doc_id] = str(error.get("errmsg", error))[:_MAX_REASON_CHARS]
        return duplicates, failed
    return set(), {}
