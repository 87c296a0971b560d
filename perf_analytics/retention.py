"""Retention: delete from the database only the old snapshots the lake verifiably holds; restore.

```
<lake>/_manifests/retention/orgId=<org>.json   per day: what was verified, deleted, restored (versioned)
<lake>/_manifests/.retention.lock              one export or restore per lake at a time
```

**Export** (`export_snapshots(db, lake, org_id=...)`, `export_snapshots_all_orgs`) works in
whole UTC days: the cutoff is the start of the UTC day `older_than_days` before `now`,
and a day is old when it ends at or before the cutoff. A run

1. syncs (`sync_snapshots` / `sync_snapshots_all_orgs`), so the lake holds what is new;
2. reads the `_id`s of the old snapshots from the server in ONE projected query
   (`{timestamp: {$lt: cutoff}}`, and `orgId` for an org run; FerretDB 1.24 scans the
   collection for any query, so one query for every day and org costs one scan) and
   groups them by (org, day): the server's set S of each old day;
3. for each old day, right before it joins the delete, reads the lake's side:
   every part file the org's manifest lists for the day, its `bson` column, each
   document's key (`sync.document_key`, the key `ids_sha256` hashes). Each file must give
   its listed row count and hash (so the lake still holds exactly the documents that
   were listed, and a restore can give them back); their union is L;
4. deletes S only when S is a subset of L: `S == L` (equal counts, equal hashes) is the
   usual case, and `S ⊊ L` is a day whose delete was interrupted (or whose server copy
   lost snapshots another way), which loses nothing by being deleted further. A day
   whose server holds a key the lake lacks is kept and reported (it needs a sync; one
   inserted with an old `_id` and never marked needs `sync --full`).

The delete removes exactly the verified `_id`s: `delete_many({orgId, _id: {$in: chunk}})`,
or the `$or` of one such clause per org when a chunk spans orgs (an `_id` is never
deleted outside its tenant), in chunks of `delete_chunk` (5,000) gathered across the
verified days. Measured on FerretDB 1.24: every delete scans the collection (one delete of
1,500 `_id`s among 6,000 snapshots: 5.0 s; one `$or` delete of 4,500 across three orgs:
3.7 s), so one delete per chunk instead of one per (org, day) took an export of 5,760
snapshots in four (org, day)s from 16 s of deletes to 6.4 s. A snapshot written into the
day after the server's set was read is not in S and so is never deleted; it is in the
lake after the next sync and deleted by the next export.

**Crash safety.** Once a day verifies, its record in the org's retention manifest is
saved (atomically) as `deleting`, with the verified counts and hashes; once its chunks
are deleted, as `deleted`. A run killed between verify and delete, or during the
delete, leaves the day with S ⊆ L (the lake only gains files), so the re-run verifies it
again and deletes what is left; a day left `deleting` whose server side is already empty
is recorded `deleted`. A dry run writes nothing (no sync, no record, no lock file); a
day the lake does not cover yet is `needs sync` there, as the export would sync first.
Nothing is lost (only what the lake holds is deleted) and nothing is duplicated (the
lake deduplicates by `_id`; the database only loses documents).

**Restore** (`restore_snapshots(db, lake, org_id=..., start=..., end=...)`) reads the org's
listed files of those days, checks each file as export does and that every document's
`orgId` is the org asked for (refusing before writing anything otherwise), inserts the
raw BSON back unordered (same `_id`, fields, types and key order), counts duplicates
(already present by `_id` or by the unique (orgId, assetId, timestamp) key) instead of
failing, marks the days for sync (`mark_for_sync`) and records them `restored`.

**Status** (`retention_status`, `retention_status_all_orgs`) reads the `_id`s and
timestamps of the scope from the server (one projected query: FerretDB 1.24 has no
`$dateToString` for a `$group` by day) and the `_id` columns of the listed files, and
puts each day in one state: `database` (the lake lists no file for it), `both` (the lake
holds every snapshot the server has of it), `lake` (the server holds none and a
verified export deleted them) or `unverified` (the server holds snapshots the lake lacks,
or the server's copies went without a verified export: a TTL index, a manual delete).

**Not covered.** Verification compares `_id`s, as the mirror lists them: a snapshot
changed in place after it was mirrored (`doctor --fix`) is deleted, and a restore gives
it back as first mirrored. Days are those of a date `timestamp`: a snapshot whose timestamp is
not a date (`doctor` finds it) is never deleted by retention and not counted by status.
Export and status hold the keys of the snapshots they read in memory (53 bytes an
ObjectId, measured).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from bson import ObjectId, json_util
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.json_util import CANONICAL_JSON_OPTIONS
from bson.raw_bson import RawBSONDocument
from pymongo.errors import BulkWriteError

from perf_analytics.errors import (
    InvalidArgument,
    LakeError,
    NotFound,
    RetentionError,
)
from perf_analytics.lake import SNAPSHOTS as LAKE_SNAPSHOTS
from perf_analytics.lake import partition_dir
from perf_analytics.manifest import lake_lock, manifest_path, read_manifest, write_manifest
from perf_analytics.schema import SNAPSHOTS
from perf_analytics.store import Db, is_duplicate_key
from perf_analytics.sync import (
    ALL_ORGS,
    PartFile,
    SyncReport,
    document_key,
    ids_sha256,
    listed_snapshot_files,
    mark_for_sync,
    mirrored_orgs,
    partition_keys,
    sync_snapshots,
    sync_snapshots_all_orgs,
)

DATASET = "retention"
DEFAULT_OLDER_THAN_DAYS = 30
DELETE_CHUNK = 5_000  # _ids per delete: FerretDB scans the collection once per delete
INSERT_CHUNK = 1_000  # documents per restore insert
KEY_BATCH_DOCS = 10_000  # projected documents per server reply

# A dry run's outcome for a day the lake does not cover yet (the export syncs before it verifies).
NEEDS_SYNC = "needs sync"

# States of a day's record in the retention manifest.
DELETING = "deleting"
DELETED = "deleted"
RESTORED = "restored"

_DAY = timedelta(days=1)
_READ: CodecOptions[RawBSONDocument] = CodecOptions(
    document_class=RawBSONDocument, tz_aware=True, tzinfo=UTC, datetime_conversion=DatetimeConversion.DATETIME_AUTO
)

Progress = Callable[[str, int], None]


# ---- reports -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DayOutcome:
    """What an export did with one old (org, day)."""

    org_id: str
    date: str
    outcome: str  # "deleted", "kept"; on a dry run "would delete", "needs sync" or "kept"
    database_rows: int  # the server's snapshots of the day when read
    lake_rows: int  # the rows the lake lists for the day
    deleted: int = 0
    reason: str = ""  # why a kept day was kept


@dataclass
class ExportReport:
    """What one export did; `days` lists every old day the server still held."""

    scope: str  # the org id, or "all-orgs"
    cutoff: datetime  # snapshots of days before this instant were considered
    dry_run: bool
    sync: SyncReport | None = None  # None on a dry run (which writes nothing)
    days: list[DayOutcome] = field(default_factory=list)
    deleted: int = 0
    finished: int = 0  # days a killed run left `deleting` whose delete had completed
    no_tenant: int = 0  # old snapshots without a string orgId: belong to no org's lake
    seconds: float = 0.0

    @property
    def kept(self) -> list[DayOutcome]:
        return [d for d in self.days if d.outcome == "kept"]


@dataclass
class RestoreReport:
    """What one restore wrote back."""

    org_id: str
    start: str
    end: str
    days: list[str] = field(default_factory=list)  # days the lake held in the range
    read: int = 0
    inserted: int = 0
    already: int = 0  # present already, by _id or by (orgId, assetId, timestamp)
    seconds: float = 0.0


@dataclass(frozen=True)
class DayStatus:
    """Where one (org, day) of snapshots lives."""

    org_id: str
    date: str
    state: str  # "database", "both", "lake" or "unverified"
    database_rows: int
    lake_rows: int
    note: str = ""


# ---- the retention manifest --------------------------------------------------------------


def _manifest(lake: Path, org_id: str) -> Path:
    return manifest_path(lake, DATASET, f"orgId={org_id}.json")


def _records(lake: Path, org_id: str) -> dict[str, dict[str, Any]]:
    data = read_manifest(_manifest(lake, org_id)) or {}
    days = data.get("days", {})
    return {str(k): dict(v) for k, v in days.items()} if isinstance(days, dict) else {}


class _Manifests:
    """The retention manifests of the orgs a run touches, saved after each change."""

    def __init__(self, lake: Path) -> None:
        self.lake = lake
        self.orgs: dict[str, dict[str, dict[str, Any]]] = {}

    def days(self, org_id: str) -> dict[str, dict[str, Any]]:
        if org_id not in self.orgs:
            self.orgs[org_id] = _records(self.lake, org_id)
        return self.orgs[org_id]

    def record(self, org_id: str, day: str, **values: Any) -> None:
        days = self.days(org_id)
        days[day] = {**days.get(day, {}), **values}
        write_manifest(_manifest(self.lake, org_id), {"dataset": DATASET, "orgId": org_id, "days": dict(sorted(days.items()))})


# ---- the server side ---------------------------------------------------------------------


@dataclass
class _ServerDay:
    """The server's snapshots of one (org, day): their keys, and the `_id`s that are no ObjectId."""

    keys: list[bytes] = field(default_factory=list)
    others: dict[bytes, Any] = field(default_factory=dict)

    def ids(self, keys: Iterable[bytes]) -> list[Any]:
        return [self.others[k] if k in self.others else ObjectId(k) for k in keys]


def _server_days(db: Db, query: Mapping[str, Any]) -> tuple[dict[tuple[str, str], _ServerDay], int]:
    """The keys of the matching snapshots by (org, UTC day of a date timestamp); and how many had no org."""
    days: dict[tuple[str, str], _ServerDay] = {}
    no_tenant = 0
    projection = {"_id": 1, "orgId": 1, "timestamp": 1}
    cursor = db[SNAPSHOTS].find_raw_batches(dict(query), projection, batch_size=KEY_BATCH_DOCS)
    with cursor:
        for doc in _documents(cursor):
            org, stamp = doc.get("orgId"), doc.get("timestamp")
            if not isinstance(stamp, datetime):
                continue  # off-type timestamp: doctor's to repair, not retention's to delete
            if not isinstance(org, str) or not org:
                no_tenant += 1
                continue
            day = days.setdefault((org, stamp.astimezone(UTC).date().isoformat()), _ServerDay())
            key = document_key(bytes(doc.raw))
            day.keys.append(key)
            if not isinstance(doc["_id"], ObjectId):
                day.others[key] = doc["_id"]
    return days, no_tenant


def _documents(cursor: Iterable[Any]) -> Iterator[RawBSONDocument]:
    """The documents of a raw-batch cursor (each reply is its documents' bytes, end to end)."""
    for reply in cursor:
        batch: bytes = reply
        offset = 0
        while offset < len(batch):
            end = offset + int.from_bytes(batch[offset : offset + 4], "little")
            yield RawBSONDocument(batch[offset:end], codec_options=_READ)
            offset = end


# ---- the lake side -----------------------------------------------------------------------


def _file_documents(lake: Path, f: PartFile) -> tuple[list[bytes], list[bytes]]:
    """A listed file's documents and their keys, checked against its manifest entry."""
    try:
        docs: list[bytes] = pq.read_table(lake / f.path, columns=["bson"]).column("bson").to_pylist()
    except (OSError, pa.ArrowException) as exc:
        raise RetentionError(f"listed file {f.path} cannot be read: {exc}") from None
    keys = [document_key(raw) for raw in docs]
    if len(keys) != f.rows or ids_sha256(keys) != f.ids_sha256:
        raise RetentionError(f"listed file {f.path} no longer holds the {f.rows} snapshots its manifest lists")
    return docs, keys


def _lake_keys(lake: Path, files: Sequence[PartFile]) -> list[bytes]:
    """The union of the day's listed files' keys, each file checked (RetentionError if one fails)."""
    keys: list[bytes] = []
    for f in files:
        keys += _file_documents(lake, f)[1]
    return keys


def _by_day(files: Iterable[PartFile]) -> dict[str, list[PartFile]]:
    out: dict[str, list[PartFile]] = {}
    for f in files:
        out.setdefault(f.date, []).append(f)
    return out


# ---- export ------------------------------------------------------------------------------


def cutoff_of(now: datetime, older_than_days: int) -> datetime:
    """The start of the UTC day `older_than_days` before `now`: days before it are old.

    Raises:
        InvalidArgument: a naive `now`, or `older_than_days` below 1.
    """
    if now.tzinfo is None:
        raise InvalidArgument(f"now {now.isoformat()} must be timezone-aware (UTC)")
    if older_than_days < 1:
        raise InvalidArgument("older_than_days must be at least 1 (today's snapshots are never old)")
    day = (now.astimezone(UTC) - older_than_days * _DAY).date()
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


class _Export:
    """One export run: the report, the manifests, the progress callback."""

    def __init__(self, db: Db, lake: Path, report: ExportReport, delete_chunk: int, progress: Progress | None) -> None:
        self.db = db
        self.lake = lake
        self.report = report
        self.delete_chunk = delete_chunk
        self.progress = progress
        self.manifests = _Manifests(lake)
        self.files: dict[str, dict[str, list[PartFile]]] = {}
        self.verified = 0
        self.pending: list[tuple[str, str, _ServerDay, int]] = []  # verified, recorded, not yet deleted

    def tell(self, stage: str, count: int) -> None:
        if self.progress is not None:
            self.progress(stage, count)

    def listed(self, org_id: str, day: str) -> list[PartFile]:
        if org_id not in self.files:
            self.files[org_id] = _by_day(listed_snapshot_files(self.lake, org_id=org_id))
        return self.files[org_id].get(day, [])

    def finish_interrupted(self, org_ids: Iterable[str], held: Mapping[tuple[str, str], _ServerDay]) -> None:
        """Record `deleted` for days a killed run left `deleting` whose server side is empty now."""
        cutoff_day = self.report.cutoff.date().isoformat()
        for org in org_ids:
            for day, rec in sorted(self.manifests.days(org).items()):
                if rec.get("state") == DELETING and day < cutoff_day and (org, day) not in held:
                    self.manifests.record(org, day, state=DELETED, deleted_at=_now())
                    self.report.finished += 1

    def day(self, org: str, day: str, server: _ServerDay) -> None:
        """Verify one old day against the lake and delete what the lake holds (or say why not)."""
        files = self.listed(org, day)
        lake_rows = sum(f.rows for f in files)
        kept = DayOutcome(org, day, "kept", len(server.keys), lake_rows)
        # A dry run does not sync: what the lake lacks may be what the export's sync brings.
        unsynced = DayOutcome(org, day, NEEDS_SYNC, len(server.keys), lake_rows) if self.report.dry_run else kept
        if not files:
            self.report.days.append(_with(unsynced, "the lake lists no file of this day"))
            return
        try:
            lake_keys = _lake_keys(self.lake, files)
        except RetentionError as exc:
            self.report.days.append(_with(kept, str(exc)))
            return
        missing = len(set(server.keys).difference(lake_keys))
        if missing:
            hint = "" if self.report.dry_run else " (inserted with an old _id and not marked? sync --full)"
            self.report.days.append(_with(unsynced, f"{missing} snapshot(s) in the database are not in the lake{hint}"))
            return
        self.verified += 1
        self.tell("verified", self.verified)
        if self.report.dry_run:
            self.report.days.append(DayOutcome(org, day, "would delete", len(server.keys), lake_rows))
            return
        self.manifests.record(
            org, day, state=DELETING, verified_at=_now(),
            database_rows=len(server.keys), database_sha256=ids_sha256(server.keys),
            lake_rows=len(lake_keys), lake_sha256=ids_sha256(lake_keys),
        )
        self.pending.append((org, day, server, lake_rows))
        if sum(len(s.keys) for _, _, s, _ in self.pending) >= self.delete_chunk:
            self.flush()

    def flush(self) -> None:
        """Delete the verified days waiting, in chunks that may span days and orgs, then record them."""
        ids = [(org, i) for org, _, server, _ in self.pending for i in server.ids(server.keys)]
        for start in range(0, len(ids), self.delete_chunk):
            by_org: dict[str, list[Any]] = {}
            for org, i in ids[start : start + self.delete_chunk]:
                by_org.setdefault(org, []).append(i)
            # Each _id stays paired with its org: a chunk never deletes across tenants by _id alone.
            clauses = [{"orgId": org, "_id": {"$in": chunk}} for org, chunk in by_org.items()]
            query = clauses[0] if len(clauses) == 1 else {"$or": clauses}
            self.report.deleted += self.db[SNAPSHOTS].delete_many(query).deleted_count
            self.tell("deleted", self.report.deleted)
        for org, day, server, lake_rows in self.pending:
            self.manifests.record(org, day, state=DELETED, deleted_at=_now(), deleted=len(server.keys))
            self.report.days.append(DayOutcome(org, day, "deleted", len(server.keys), lake_rows, len(server.keys)))
        self.pending = []


def _with(outcome: DayOutcome, reason: str) -> DayOutcome:
    return DayOutcome(outcome.org_id, outcome.date, outcome.outcome, outcome.database_rows, outcome.lake_rows,
                      outcome.deleted, reason)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _export(
    db: Db,
    lake: str | os.PathLike[str],
    org_id: str | None,
    *,
    older_than_days: int,
    now: datetime | None,
    dry_run: bool,
    delete_chunk: int,
    progress: Progress | None,
) -> ExportReport:
    started = time.monotonic()
    if delete_chunk <= 0:
        raise InvalidArgument("the delete chunk must be a positive number of snapshots")
    cutoff = cutoff_of(now or datetime.now(UTC), older_than_days)
    root = Path(lake)
    if org_id is not None:
        partition_dir(root, LAKE_SNAPSHOTS, {"orgId": org_id})
    report = ExportReport(scope=org_id or ALL_ORGS, cutoff=cutoff, dry_run=dry_run)
    run = _Export(db, root, report, delete_chunk, progress)
    if dry_run:  # writes nothing, not even a lock file: what the lake holds now decides
        _verify_and_delete(run, org_id)
    else:
        with lake_lock(root, DATASET, RetentionError, who="retention run"):
            if org_id is None:
                report.sync = sync_snapshots_all_orgs(db, root, progress=progress)
            else:
                report.sync = sync_snapshots(db, root, org_id=org_id, progress=progress)
            _verify_and_delete(run, org_id)
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _verify_and_delete(run: _Export, org_id: str | None) -> None:
    query: dict[str, Any] = {"timestamp": {"$lt": run.report.cutoff}}
    if org_id is not None:
        query = {"orgId": org_id, **query}
    held, run.report.no_tenant = _server_days(run.db, query)
    held = {where: day for where, day in held.items() if _is_segment(run.lake, where[0])}
    if not run.report.dry_run:
        orgs = [org_id] if org_id is not None else sorted({o for o, _ in held} | set(_retention_orgs(run.lake)))
        run.finish_interrupted(orgs, held)
    run.tell("days", len(held))
    for (org, day), server in sorted(held.items()):
        run.day(org, day, server)
    run.flush()
    run.report.days.sort(key=lambda d: (d.org_id, d.date))


def _is_segment(lake: Path, org_id: str) -> bool:
    """Whether `org_id` can name a lake partition (a snapshot whose org cannot was never mirrored)."""
    try:
        partition_dir(lake, LAKE_SNAPSHOTS, {"orgId": org_id})
    except LakeError:
        return False
    return True


def _retention_orgs(lake: Path) -> list[str]:
    directory = manifest_path(lake, DATASET)
    if not directory.is_dir():
        return []
    return sorted(p.name.removeprefix("orgId=").removesuffix(".json") for p in directory.glob("orgId=*.json"))


def export_snapshots(
    db: Db,
    lake: str | os.PathLike[str],
    *,
    org_id: str,
    older_than_days: int = DEFAULT_OLDER_THAN_DAYS,
    now: datetime | None = None,
    dry_run: bool = False,
    delete_chunk: int = DELETE_CHUNK,
    progress: Progress | None = None,
) -> ExportReport:
    """Sync `org_id`, then delete its snapshots of days before the cutoff that the lake verifiably holds.

    The cutoff is the start of the UTC day `older_than_days` before `now` (default: the
    clock). `dry_run` writes nothing (no sync, no delete) and reports what the lake as it
    stands would let go. `progress(stage, count)` gets the sync's stages, then "days" (old
    days found), "verified" (days verified so far, before their delete) and "deleted"
    (snapshots deleted so far, after each chunk). See the module docstring.

    Raises:
        InvalidArgument: no `org_id`, a naive `now` or `older_than_days` below 1.
        RetentionError: another run holds the lake.
        SyncError: the sync before it fails.
    """
    if not org_id:
        raise InvalidArgument("an org id is required (export_snapshots_all_orgs exports every org)")
    return _export(db, lake, org_id, older_than_days=older_than_days, now=now, dry_run=dry_run,
                   delete_chunk=delete_chunk, progress=progress)


def export_snapshots_all_orgs(
    db: Db,
    lake: str | os.PathLike[str],
    *,
    older_than_days: int = DEFAULT_OLDER_THAN_DAYS,
    now: datetime | None = None,
    dry_run: bool = False,
    delete_chunk: int = DELETE_CHUNK,
    progress: Progress | None = None,
) -> ExportReport:
    """Admin run across tenants: `export_snapshots` for every org, with one sync and one server query.

    Raises:
        InvalidArgument: a naive `now` or `older_than_days` below 1.
        RetentionError: another run holds the lake.
        SyncError: the sync before it fails.
    """
    return _export(db, lake, None, older_than_days=older_than_days, now=now, dry_run=dry_run,
                   delete_chunk=delete_chunk, progress=progress)


# ---- restore -----------------------------------------------------------------------------


def _iso(value: date | str, what: str) -> str:
    if isinstance(value, date):
        return value.isoformat()
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise InvalidArgument(f"{what} {value!r} is not a YYYY-MM-DD date") from None


def restore_snapshots(
    db: Db,
    lake: str | os.PathLike[str],
    *,
    org_id: str,
    start: date | str,
    end: date | str,
    progress: Progress | None = None,
) -> RestoreReport:
    """Write `org_id`'s snapshots of the UTC days `start`..`end` (inclusive) back from the lake.

    Every listed file of those days is checked (rows and key hash as listed, every
    document of `org_id`) before anything is written; then the exact documents are
    inserted unordered, duplicates counted, the days marked for sync and recorded
    `restored`. `progress(stage, count)` gets "checked" (files) and "inserted" (snapshots
    sent so far). Safe to run again: what is back already is counted, not doubled.

    Raises:
        InvalidArgument: no `org_id`, a day that is not YYYY-MM-DD, or `start` after `end`.
        NotFound: the lake holds none of the org's snapshots of those days.
        RetentionError: a listed file fails its check, or the server refuses a document.
    """
    started = time.monotonic()
    if not org_id:
        raise InvalidArgument("an org id is required to restore snapshots")
    first, last = _iso(start, "start"), _iso(end, "end")
    if first > last:
        raise InvalidArgument(f"start {first} is after end {last}")
    root = Path(lake)
    partition_dir(root, LAKE_SNAPSHOTS, {"orgId": org_id})
    report = RestoreReport(org_id, first, last)
    with lake_lock(root, DATASET, RetentionError, who="retention run"):
        files = [f for f in listed_snapshot_files(root, org_id=org_id) if first <= f.date <= last]
        if not files:
            raise NotFound(f"the lake holds no snapshots of org {org_id} from {first} to {last}")
        for i, f in enumerate(files, 1):
            _check_tenant(root, f, org_id)
            if progress is not None:
                progress("checked", i)
        manifests = _Manifests(root)
        for day, day_files in sorted(_by_day(files).items()):
            read, inserted = _restore_day(db, root, day_files, report, progress)
            mark_for_sync(db, org_id, [day])
            manifests.record(org_id, day, state=RESTORED, restored_at=_now(), restored=inserted, lake_rows=read)
            report.days.append(day)
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _check_tenant(lake: Path, f: PartFile, org_id: str) -> None:
    """Refuse a file holding a document of another org (or of none): it must not enter this tenant."""
    docs, _ = _file_documents(lake, f)
    for raw in docs:
        doc = RawBSONDocument(raw, codec_options=_READ)
        if doc.get("orgId") != org_id:
            shown = json_util.dumps(doc.get("_id"), json_options=CANONICAL_JSON_OPTIONS)
            raise RetentionError(
                f"{f.path} holds snapshot {shown} of orgId {doc.get('orgId')!r}, not {org_id!r}: "
                "nothing was restored"
            )


def _restore_day(
    db: Db, lake: Path, files: Sequence[PartFile], report: RestoreReport, progress: Progress | None
) -> tuple[int, int]:
    read = inserted = 0
    for f in files:
        docs, _ = _file_documents(lake, f)
        for start in range(0, len(docs), INSERT_CHUNK):
            chunk = docs[start : start + INSERT_CHUNK]
            done, already = _insert(db, chunk)
            read += len(chunk)
            inserted += done
            report.read += len(chunk)
            report.inserted += done
            report.already += already
            if progress is not None:
                progress("inserted", report.read)
    return read, inserted


def _insert(db: Db, raws: Sequence[bytes]) -> tuple[int, int]:
    """Insert exact documents unordered; (inserted, duplicates). Any other write error is raised."""
    docs = [RawBSONDocument(raw, codec_options=_READ) for raw in raws]
    try:
        db[SNAPSHOTS].insert_many(docs, ordered=False)  # its inserted_ids leaves raw documents out
        return len(docs), 0
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        other = [e for e in errors if not is_duplicate_key(e)]
        if other:
            raise RetentionError(f"the server refused a restored snapshot: {other[0].get('errmsg')}") from None
        return int(exc.details.get("nInserted", 0)), len(errors)


# ---- status ------------------------------------------------------------------------------


def retention_status(db: Db, lake: str | os.PathLike[str], *, org_id: str) -> list[DayStatus]:
    """Each day of `org_id`'s snapshots, by date, with where it lives (see the module docstring).

    Raises:
        InvalidArgument: no `org_id`.
    """
    if not org_id:
        raise InvalidArgument("an org id is required (retention_status_all_orgs covers every org)")
    partition_dir(lake, LAKE_SNAPSHOTS, {"orgId": org_id})
    held, _ = _server_days(db, {"orgId": org_id})
    return _status(Path(lake), [org_id], held)


def retention_status_all_orgs(db: Db, lake: str | os.PathLike[str]) -> list[DayStatus]:
    """Admin view across tenants: `retention_status` of every org the server or the lake knows."""
    root = Path(lake)
    held, _ = _server_days(db, {})
    held = {where: day for where, day in held.items() if _is_segment(root, where[0])}
    orgs = sorted({o for o, _ in held} | set(mirrored_orgs(root)) | set(_retention_orgs(root)))
    return _status(root, orgs, held)


def _status(lake: Path, orgs: Sequence[str], held: Mapping[tuple[str, str], _ServerDay]) -> list[DayStatus]:
    out: list[DayStatus] = []
    for org in orgs:
        files = _by_day(listed_snapshot_files(lake, org_id=org))
        records = _records(lake, org)
        days = sorted({d for o, d in held if o == org} | set(files))
        for day in days:
            server = held.get((org, day), _ServerDay())
            lake_rows = sum(f.rows for f in files.get(day, []))
            out.append(_day_status(lake, org, day, server, lake_rows, records.get(day, {})))
    return out


def _day_status(lake: Path, org: str, day: str, server: _ServerDay, lake_rows: int, record: Mapping[str, Any]) -> DayStatus:
    rows = len(server.keys)
    if not lake_rows:
        return DayStatus(org, day, "database", rows, 0, "not in the lake yet (sync)")
    if not rows:
        if record.get("state") in (DELETING, DELETED):
            return DayStatus(org, day, "lake", 0, lake_rows, f"deleted after verification {record.get('verified_at', '')}")
        return DayStatus(org, day, "unverified", 0, lake_rows, "the database copies went without a verified export")
    missing = len(set(server.keys).difference(partition_keys(lake, org_id=org, day=day)))
    if missing:
        return DayStatus(org, day, "unverified", rows, lake_rows, f"{missing} snapshot(s) in the database are not in the lake")
    return DayStatus(org, day, "both", rows, lake_rows)
