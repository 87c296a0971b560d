"""The optional MongoDB sinks for the application's dashboards: `anomaly_flags` and `performance_rollups`.

Both follow one write strategy and one error policy.

**Replace per scope.** A sink holds, for each scope a run writes, exactly what that run
produced, like a lake partition: for flags the scope is (org, UTC day), for rollups
(org, window, UTC day). Each document's `_id` is the hash of its natural key
(`schema.hashed_key`: ids joined into one string would collide across orgs), so a row is
written with a ReplaceOne upsert (unordered bulk writes, in chunks); then the `_id`s the
scope held that the new run did not produce (a disk that vanished, a flag no longer
raised) are deleted. Readers never see a scope empty in between, and a run stopped half
way is completed by running it again. Every query and write is filtered by `orgId`.

**One error policy.** A server error in either sink becomes `SinkError` naming the
collection, the org and the scope; nothing is retried here (the nightly run records the
failed step and the next run redoes the day).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl
from pymongo import ReplaceOne
from pymongo.errors import PyMongoError

from perf_analytics.errors import SinkError
from perf_analytics.rollups import Rollups, rollup_frames
from perf_analytics.schema import hashed_key
from perf_analytics.store import Db, Doc, bulk_write_chunked, is_retryable

ANOMALY_FLAGS = "anomaly_flags"
ROLLUPS_COLLECTION = "performance_rollups"
_DELETE_CHUNK = 1000
_KIND = {"assets": ("asset", None), "disks": ("disk", "disk"), "interfaces": ("interface", "interface")}


def replace_scope(db: Db, collection: str, org_id: str, scope: Mapping[str, Any], docs: Sequence[Doc]) -> int:
    """Make `collection` hold exactly `docs` within `{orgId: org_id, **scope}`: upsert them by
    `_id`, then delete the scope's other documents. Returns the documents written and deleted."""
    where = {"orgId": org_id, **scope}
    coll = db[collection]
    try:
        bulk_write_chunked(coll, [ReplaceOne({"_id": d["_id"], "orgId": org_id}, d, upsert=True) for d in docs])
        produced = {d["_id"] for d in docs}
        # The ids to drop are found by reading the scope's ids, not with `$nin` of the new
        # ones: a day of 1-minute rollups would make that query larger than a document may be.
        gone = [d["_id"] for d in coll.find(where, {"_id": 1}) if d["_id"] not in produced]
        for i in range(0, len(gone), _DELETE_CHUNK):
            coll.delete_many({"orgId": org_id, "_id": {"$in": gone[i : i + _DELETE_CHUNK]}})
    except PyMongoError as exc:
        raise SinkError(
            f"writing {collection} for org {org_id} ({_scope_text(scope)}): {str(exc).splitlines()[0]}",
            retryable=is_retryable(exc),
        ) from None
    return len(docs) + len(gone)


def _scope_text(scope: Mapping[str, Any]) -> str:
    def text(value: Any) -> str:
        if isinstance(value, Mapping):
            return "..".join(text(v) for v in value.values())
        return value.isoformat() if isinstance(value, datetime | date) else str(value)

    return ", ".join(f"{k} {text(v)}" for k, v in scope.items())


def _day_span(day: date) -> dict[str, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return {"$gte": start, "$lt": start + timedelta(days=1)}


def _flag_id(row: Mapping[str, Any]) -> str:
    """The `_id` of a flag: a hash of its natural key."""
    return hashed_key(row["orgId"], row["assetId"], row["metric"], row["detector"], row["start"].isoformat())


def upsert_flags(db: Db, org_id: str, day: date, flags: pl.DataFrame) -> int:
    """Make `anomaly_flags` hold exactly these flags for (org, UTC day): the flags starting
    that day. Rows of other orgs are left out. Returns the documents written and deleted."""
    docs = [{**row, "_id": _flag_id(row), "date": day.isoformat()}
            for row in flags.filter(pl.col("orgId") == org_id).iter_rows(named=True)]
    return replace_scope(db, ANOMALY_FLAGS, org_id, {"start": _day_span(day)}, docs)


def _rollup_docs(org_id: str, window: str, frames: Iterable[tuple[str, pl.DataFrame]]) -> Iterable[Doc]:
    for level, frame in frames:
        kind, name_column = _KIND[level]
        for row in frame.filter(pl.col("orgId") == org_id).iter_rows(named=True):
            name = row[name_column] if name_column else None
            key = hashed_key(org_id, row["assetId"], window, row["bucket"].isoformat(), kind, *([name] if name else []))
            yield {"_id": key, "kind": kind, "window": window, **row}


def upsert_rollups(db: Db, org_id: str, rollups: Mapping[str, Rollups]) -> int:
    """Make `performance_rollups` hold exactly the org's rollups of each (window, UTC day)
    present in `rollups`. Returns the documents written and deleted.

    One document per row with `kind` ("asset", "disk", "interface"), orgId, assetId,
    `window`, `bucket` and, for disks and interfaces, their name: the natural key. Rows of
    other orgs are left out: writing several tenants is the caller's loop.
    """
    by_scope: dict[tuple[str, date], list[Doc]] = {}
    for window, level, frame in rollup_frames(rollups):
        for doc in _rollup_docs(org_id, window, [(level, frame)]):
            by_scope.setdefault((window, doc["bucket"].date()), []).append(doc)
    return sum(
        replace_scope(db, ROLLUPS_COLLECTION, org_id, {"window": window, "bucket": _day_span(day)}, docs)
        for (window, day), docs in sorted(by_scope.items())
    )
