"""The snapshot mirror: copy what is new in `performance_snapshots` into the lake, once, verified.

```
<lake>/snapshots/orgId=<org>/date=<YYYY-MM-DD>/part-<hash>.parquet   zstd, one file per run and partition
<lake>/_manifests/snapshots/orgId=<org>.json                         the org's listed files and mark
<lake>/_manifests/snapshots.json                                     the all-orgs mark
```

**One pass.** A run sends ONE query to the server, for every org at once (or filtered by
`orgId` for `sync_snapshots(..., org_id=...)`), with no server-side sort (FerretDB 1.24
sorts by loading every match into memory). "Not yet in the lake" is the `$or` of:

- `_id >= ObjectId(mark - skew)`: `mark` is the server's clock when the previous run
  started reading; applications insert with `_id: new ObjectId()`, so `_id` time is
  insertion time by the writer's clock, and `skew` (default 10 minutes) covers the
  difference between any writer's clock and the server's. A snapshot inserted after a run
  started has an `_id` time of at least (that start - skew), so the next run finds it;
- `_id` not an ObjectId (older code stored strings): re-read on every run, deduplicated;
- `{orgId, timestamp within the day}` for each mark in `lake_sync_marks`: our own loaders
  (ingest, migrate, restore) keep the `_id`s of the documents they load, which can be
  older than any mark, so after inserting they call `mark_for_sync(db, org, dates)` (or
  `mark_documents_for_sync(db, batch)`).
  A run reads the marks before its query and, once the parts are listed, deletes exactly
  those marks it read, unless a loader re-marked the day since (each mark carries a fresh
  `token`), so a day marked during a run is read again by the next one.
  A mark's `_id` is its (org, day), so loaders marking one day at once leave one mark.

The first run, or `full=True`, reads everything. FerretDB scans the whole collection for
any query (no range pushdown), so there the pass costs a scan per run; on MongoDB the
`_id` range and the marked days are served by indexes (`_id`, `orgId_1_timestamp_-1`).
The non-ObjectId clause is `$not: {$type: "objectId"}` because FerretDB 1.24 refuses a
`$type` list naming every other type (it knows no "decimal" alias).

**Lossless.** Each row holds the typed columns of the snapshot contract
(`frames.arrow_schema()` minus `orgId`, which the path carries, built from the raw BSON
batches by the decoder extraction uses: the native one, else pymongoarrow), `_id` (the ObjectId's 12 bytes; null when the
`_id` is of another type, whose canonical Extended JSON is then in `_idOther`), and
`bson`: the document exactly as the server returned it. `read_lake_documents` gives back
documents whose encoding equals the server's byte for byte, whatever fields or types they
hold. A document the decoder refuses (an off-type value: a string or Decimal128 metric,
a string timestamp) has `typed` false, only the flat fields whose types fit (`assetId`,
a date `timestamp`, ...) and its exact `bson`: readers take the typed columns where `typed`
holds, and report the others as extraction does. Raw BSON was chosen over typed columns plus an Extended
JSON remainder because it is exact by construction (key order, every BSON type) and
costs no CPU beyond slicing the batches the server sent; its size cost is in README.

**Never twice.** Rows are deduplicated by `_id` (the key: the 12 bytes, or `~` and the
Extended JSON): within a run, and against the `_id`s the partition's listed files hold
(only the `_id`/`_idOther` columns are read). A part is named by the hash of its sorted
keys, written atomically (temp file, fsync, rename, fsync of the directory), and listed in
the org's manifest with its row count and that hash (sha256) after all parts are written;
the marks advance only after that. A run records that it has begun
(`_manifests/snapshots.running.json`, removed once its manifests and mark are saved), so
the next run knows when one was killed and only then resolves what it left, in the killed
run's scope: a part no manifest lists is adopted when it reads back whole, its keys hash
to its name and none is already listed; otherwise it is removed, as are hidden temp
files. So the files in a partition never share an `_id`, listed or not, and a lake whose
last run finished costs no directory walk. One run at a time per lake (a lock file under
`_manifests/`).

**Not synced yet.** `unsynced_snapshots(db, lake, org_id=...)` reads, without writing,
the rows the org's next sync would add (same query, same deduplication against the listed
files): the lake's DuckDB views add them for `connect_lake(..., hot=db)`.

**Not covered.** A document with no string `orgId` (or one that cannot be a path
segment) belongs to no tenant: it is counted and listed in the report, not mirrored.
The mirror records documents as first read: an update in place (`doctor --fix`) is not
copied again. Documents inserted with old `_id`s by tools other than ours need
`full=True` (`sync --full`) once.
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import bson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from bson import ObjectId, json_util
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.json_util import CANONICAL_JSON_OPTIONS
from bson.raw_bson import RawBSONDocument
from pymongo.errors import BulkWriteError, OperationFailure
from pymongoarrow.api import Schema
from pymongoarrow.context import PyMongoArrowContext

from perf_analytics.atomic import atomic_path, fsync_dir
from perf_analytics.errors import (
    InvalidArgument,
    LakeError,
    PerfAnalyticsError,
    SyncError,
)
from perf_analytics.frames import Decoder, arrow_schema, native_table_from_raw, raw_decoder
from perf_analytics.lake import SNAPSHOTS as DATASET
from perf_analytics.lake import partition_dir
from perf_analytics.manifest import (
    lake_lock,
    make_dirs,
    manifest_path,
    read_manifest,
    write_manifest,
)
from perf_analytics.schema import SNAPSHOTS, parse_timestamp
from perf_analytics.store import WRITE_CHUNK, Db, Doc, is_duplicate_key

MARKS = "lake_sync_marks"
ALL_ORGS = "all-orgs"
DEFAULT_SKEW = timedelta(minutes=10)
DEFAULT_CHUNK_ROWS = 50_000  # snapshots held (raw and typed) between reading and writing parts
RAW_BATCH_DOCS = 2_000  # documents per server reply (FerretDB takes batchSize literally)
_MARK_ATTEMPTS = 5  # writes of a chunk of marks whose insert met another writer's, at most
MAX_REPORTED = 100  # unplaced documents listed; the count is complete
_HASH_IN_NAME = 20  # hex digits of the key hash in a part's file name

_DOC_LENGTH = struct.Struct("<i")
_OID_FIRST = b"\x07_id\x00"  # a document whose first element is an ObjectId `_id` (the usual case)
_DECODE: CodecOptions[Doc] = CodecOptions(tz_aware=True, tzinfo=UTC, datetime_conversion=DatetimeConversion.DATETIME_AUTO)

Progress = Callable[[str, int], None]


@dataclass(frozen=True)
class Unplaced:
    """A document that belongs to no tenant's partition, and why."""

    id: str  # canonical Extended JSON of its _id
    reason: str


@dataclass
class SyncReport:
    """What one run did. `already` counts rows read that the lake held (or read twice)."""

    scope: str  # the org id, or "all-orgs"
    full: bool
    since: datetime | None  # lower bound of the _id range read (None: everything)
    mark: datetime | None = None  # the new high-water mark
    marks_read: int = 0  # day marks of loaders folded into the query
    read: int = 0
    new: int = 0
    already: int = 0
    unplaced_count: int = 0
    unplaced: list[Unplaced] = field(default_factory=list)
    partitions: int = 0  # partitions that gained a part
    files: int = 0  # part files written
    adopted: int = 0  # unlisted parts of a killed run, verified and listed
    removed: int = 0  # unlisted parts that failed verification, removed
    seconds: float = 0.0


@dataclass(frozen=True)
class PartFile:
    """One listed part: its path under the lake root, partition date, rows, sha256 of its keys."""

    path: str
    date: str
    rows: int
    ids_sha256: str


@dataclass
class _OrgState:
    """An org's manifest in memory, plus the keys of the partitions this run touched."""

    org_id: str
    mark: datetime | None
    files: list[PartFile]
    dirty: bool = False
    keys: dict[str, pa.Array] = field(default_factory=dict)

    def listed(self, day: str) -> list[PartFile]:
        return [f for f in self.files if f.date == day]


# ---- marks -------------------------------------------------------------------------------


def _day(value: date | datetime | str) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidArgument(f"mark date {value.isoformat()} must be timezone-aware (UTC)")
        return value.astimezone(UTC).date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise InvalidArgument(f"mark date {value!r} is not a YYYY-MM-DD date") from None


def mark_for_sync(db: Db, org_id: str, dates: Iterable[date | datetime | str]) -> int:
    """Tell the next sync to re-read `org_id`'s snapshots of these UTC days.

    For loaders that insert documents with `_id`s they did not just create (ingest of an
    archive with `_id`s, migrate, restore), which the `_id` range cannot find. Call it
    after the insert returns (duplicates included) and before the load's checkpoint
    advances, with the days of the batch's timestamps: a mark then always follows the
    documents it covers. One upsert per day, all in one round trip; returns the days marked.

    Raises:
        InvalidArgument: no `org_id`, or a day that is not a YYYY-MM-DD date or is naive.
    """
    if not org_id or not isinstance(org_id, str):
        raise InvalidArgument("an org id is required to mark days for sync")
    return _upsert_marks(db, {(org_id, _day(d)) for d in dates})


def mark_documents_for_sync(db: Db, docs: Iterable[Mapping[str, Any]]) -> int:
    """`mark_for_sync` for the (orgId, UTC day) of each of `docs`, in one round trip.

    For a loader's batch of validated documents (string `orgId`, date `timestamp`); every
    mark is filtered by its own org. Returns the (org, day) pairs marked.
    """
    days: set[tuple[str, str]] = set()
    for doc in docs:
        org, stamp = doc.get("orgId"), doc.get("timestamp")
        if not isinstance(org, str) or not org or not isinstance(stamp, datetime):
            raise InvalidArgument(f"document {doc.get('_id')!r} has no string orgId and date timestamp to mark")
        days.add((org, _day(stamp)))
    return _upsert_marks(db, days)


def _mark_id(org_id: str, day: str) -> str:
    """The `_id` of the mark of (org, day): one key per day, so a second mark cannot be inserted.

    The day is the last 10 characters, so the key is unambiguous whatever the org id holds.
    """
    return f"{org_id}/{day}"


def _upsert_marks(db: Db, days: set[tuple[str, str]]) -> int:
    """Mark each (org, day), WRITE_CHUNK days a round trip; returns the days marked.

    An upsert is a find, then an insert when nothing was found: two loaders marking the
    same day at once (the ingest writer threads do, for the batches of one archive) can
    both find nothing. The `_id` each inserts is the day's own key (`_mark_id`), so the
    server refuses the second insert as a duplicate key, and that chunk is written again:
    its upserts now find the first writer's marks. Marks written before keys were used
    (ObjectId `_id`s) are found by the filter and updated the same way.
    """
    ordered = sorted(days)
    for start in range(0, len(ordered), WRITE_CHUNK):
        chunk = ordered[start : start + WRITE_CHUNK]
        attempt = 1
        while not _try_upsert_marks(db, chunk):
            if attempt == _MARK_ATTEMPTS:
                org, day = chunk[0]
                raise SyncError(
                    f"sync marks of {len(chunk)} day(s) from {org} {day} were taken by other writers "
                    f"{_MARK_ATTEMPTS} times running; run the command again (ingest, restore or migrate all mark this way)"
                )
            attempt += 1
    return len(ordered)


def _try_upsert_marks(db: Db, chunk: Sequence[tuple[str, str]]) -> bool:
    """Upsert the marks of `chunk` in one command; False when another writer inserted one first.

    The command is sent as it is (not through `bulk_write`): FerretDB 1.24's reply to an
    update that meets a duplicate key lacks `nModified`, which pymongo's bulk result needs,
    and stops at the failing statement even when unordered, so the caller writes the whole
    chunk again (marking a day twice only gives it a fresh token).
    """
    now = datetime.now(UTC)
    updates = [
        {
            "q": {"orgId": org, "date": day},
            # A fresh token on every mark: a sync deletes a mark only if it still holds the
            # token that sync read, so a day re-marked during a run survives it.
            "u": {"$set": {"token": ObjectId(), "markedAt": now}, "$setOnInsert": {"_id": _mark_id(org, day)}},
            "upsert": True,
        }
        for org, day in chunk
    ]
    reply = db.command("update", MARKS, updates=updates, ordered=False)
    errors = reply.get("writeErrors") or []
    concern = reply.get("writeConcernError")
    if concern or not all(is_duplicate_key(e) for e in errors):
        raise BulkWriteError({"writeErrors": errors, "writeConcernErrors": [concern] if concern else []})
    return not errors


def _read_marks(db: Db, org_id: str | None) -> list[Doc]:
    return list(db[MARKS].find({} if org_id is None else {"orgId": org_id}))


def _clear_marks(db: Db, marks: Sequence[Doc]) -> None:
    for start in range(0, len(marks), 500):
        chunk = marks[start : start + 500]
        db[MARKS].delete_many({"$or": [{"_id": m["_id"], "token": m.get("token")} for m in chunk]})


# ---- the query ---------------------------------------------------------------------------


def _server_time(db: Db) -> datetime:
    """The server's clock (the high-water mark is in the server's time); the host's if unsaid."""
    try:
        now = db.client.admin.command("hello").get("localTime")
    except OperationFailure:  # a server older than `hello` (MongoDB < 4.4)
        now = None
    if not isinstance(now, datetime):
        return datetime.now(UTC)
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def _is_mark(mark: Doc) -> bool:
    """A mark as `mark_for_sync` writes it (anything else in the collection is ignored)."""
    day = mark.get("date")
    try:
        return isinstance(mark.get("orgId"), str) and isinstance(day, str) and _day(day) == day
    except InvalidArgument:
        return False


def _query(org_id: str | None, since: datetime | None, marks: Sequence[Doc]) -> Doc:
    scope: Doc = {} if org_id is None else {"orgId": org_id}
    if since is None:
        return scope
    clauses: list[Doc] = [
        {"_id": {"$gte": ObjectId.from_datetime(since)}},
        {"_id": {"$not": {"$type": "objectId"}}},
    ]
    for org, day in sorted({(m["orgId"], m["date"]) for m in marks if _is_mark(m)}):
        lo = datetime.fromisoformat(day).replace(tzinfo=UTC)
        clauses.append({"orgId": org, "timestamp": {"$gte": lo, "$lt": lo + timedelta(days=1)}})
    return {**scope, "$or": clauses}


def _chunks(cursor: Iterable[Any], chunk_rows: int) -> Iterator[list[bytes]]:
    """The cursor's documents, one bytes object each, in lists of about `chunk_rows`."""
    docs: list[bytes] = []
    for raw in cursor:
        batch: bytes = raw
        offset = 0
        while offset < len(batch):
            end = offset + _DOC_LENGTH.unpack_from(batch, offset)[0]
            docs.append(batch[offset:end])
            offset = end
        if len(docs) >= chunk_rows:
            yield docs
            docs = []
    if docs:
        yield docs


# ---- rows --------------------------------------------------------------------------------


def _typed_schema() -> Schema:
    return Schema({f.name: f.type for f in arrow_schema(with_id=False)})


def part_schema() -> pa.Schema:
    """The columns of a snapshot part file (the partition keys are in its path)."""
    typed = [f for f in arrow_schema(with_id=False) if f.name != "orgId"]
    return pa.schema(
        [("_id", pa.binary(12)), ("_idOther", pa.string()), *typed, ("typed", pa.bool_()), ("bson", pa.binary())]
    )


def _typed(docs: Sequence[bytes], schema: Schema) -> pa.Table:
    """The contract's columns of `docs`, one row each, in order, and `typed`: whether they hold it.

    pymongoarrow refuses a whole build for one off-type value, so a refused build is
    halved until the refused documents are alone (k refused among n: ~k*log2(n) builds);
    a refused document keeps only its flat fields that have the contract's types.
    """
    try:
        context = PyMongoArrowContext(schema, codec_options=_DECODE)
        context.process_bson_stream(b"".join(docs))
        table: pa.Table = context.finish()
        table = table.cast(schema.to_arrow())
        return table.append_column("typed", pa.array([True] * table.num_rows, pa.bool_()))
    except TypeError:
        if len(docs) == 1:
            return _flat_only(docs[0], schema)
    mid = len(docs) // 2
    return pa.concat_tables([_typed(docs[:mid], schema), _typed(docs[mid:], schema)])


def _typed_rows(docs: Sequence[bytes], schema: Schema, decoder: Decoder | None = None) -> pa.Table:
    """`_typed`'s rows, by `decoder` (default: the native one when installed, see `frames`).

    The native decoder reads each document once and names the refused ones, which get
    `_flat_only` rows in their places; no build is repeated.
    """
    if (decoder or raw_decoder()) == "pymongoarrow":
        return _typed(docs, schema)
    table, refused = native_table_from_raw(docs, with_id=False)
    table = table.append_column("typed", pa.array([True] * table.num_rows, pa.bool_()))
    if not refused:
        return table
    out = {i for i, _ in refused}
    places = [i for i in range(len(docs)) if i not in out] + [i for i, _ in refused]
    rows = pa.concat_tables([table, *(_flat_only(docs[i], schema) for i, _ in refused)])
    return rows.take(pc.sort_indices(pa.array(places)))


def _flat_only(raw: bytes, schema: Schema) -> pa.Table:
    """The row of a document pymongoarrow refused: the flat fields whose types fit, `typed` false."""
    doc = bson.decode(raw, codec_options=_DECODE)
    row = {name: doc.get(name) for name in ("orgId", "agentId", "assetId", "timeWindow")}
    row = {name: value if isinstance(value, str) else None for name, value in row.items()}
    stamp = doc.get("timestamp")
    table = pa.Table.from_pylist([{**row, "timestamp": stamp if isinstance(stamp, datetime) else None}],
                                 schema=schema.to_arrow())
    return table.append_column("typed", pa.array([False], pa.bool_()))


def _id_of(raw: bytes) -> tuple[bytes | None, str | None]:
    """(ObjectId bytes, None) or (None, canonical Extended JSON of the `_id`)."""
    if raw[4:9] == _OID_FIRST:
        return raw[9:21], None
    value = bson.decode(raw, codec_options=_DECODE).get("_id")
    if isinstance(value, ObjectId):
        return value.binary, None
    return None, json_util.dumps(value, json_options=CANONICAL_JSON_OPTIONS)


def _key(oid: bytes | None, other: str | None) -> bytes:
    """An ObjectId's 12 bytes; any other `_id` as "~" and its canonical Extended JSON, made
    13 bytes long where it would be 12, so the two kinds never meet (that text never ends
    in "~", so the padded key is no other id's key either)."""
    if oid is not None:
        return oid
    key = b"~" + (other or "null").encode()
    return key + b"~" if len(key) == 12 else key


def _keys(table: pa.Table) -> list[bytes]:
    return [_key(i, o) for i, o in zip(table.column("_id").to_pylist(), table.column("_idOther").to_pylist(), strict=True)]


def ids_sha256(keys: Iterable[bytes]) -> str:
    """sha256 over the sorted keys, each length-prefixed: the same set gives the same hash."""
    digest = hashlib.sha256()
    for k in sorted(keys):
        digest.update(len(k).to_bytes(4, "big"))
        digest.update(k)
    return digest.hexdigest()


def _decoded_placement(raw: bytes) -> tuple[str, str] | str:
    """(org, day) of a document the typed columns could not place, or why it has none."""
    doc = bson.decode(raw, codec_options=_DECODE)
    org = doc.get("orgId")
    if not isinstance(org, str):
        return f"orgId is {type(org).__name__}, not a string: the document belongs to no tenant"
    day = _decoded_day(doc)
    if day is None:
        return "no date: timestamp is not a date and _id is not an ObjectId"
    return org, day


def _decoded_day(doc: Doc) -> str | None:
    """The UTC day of an off-type document: its timestamp if it reads as one, else its _id's time."""
    ts = doc.get("timestamp")
    if isinstance(ts, datetime):
        return ts.astimezone(UTC).date().isoformat()
    try:
        return parse_timestamp(ts).date().isoformat()
    except PerfAnalyticsError:
        pass
    oid = doc.get("_id")
    return oid.generation_time.date().isoformat() if isinstance(oid, ObjectId) else None


@dataclass
class _Rows:
    """One chunk of documents as part rows (`orgId` still a column), placed by partition."""

    table: pa.Table
    places: dict[tuple[str, str], list[int]]  # (org, day): row indexes
    unplaced: list[tuple[tuple[bytes | None, str | None], str]]  # (id, reason) of the others


def _part_rows(lake: Path, docs: Sequence[bytes], schema: Schema) -> _Rows:
    """The rows of `docs` as part files hold them, each placed in its (org, day) or refused."""
    typed = _typed_rows(docs, schema)
    ids = [_id_of(raw) for raw in docs]
    orgs = typed.column("orgId").to_pylist()
    days = pc.strftime(typed.column("timestamp"), format="%Y-%m-%d").to_pylist()
    rows = _Rows(typed, {}, [])
    for i, raw in enumerate(docs):
        org, day = orgs[i], days[i]
        where = (org, day) if isinstance(org, str) and day is not None else _decoded_placement(raw)
        if isinstance(where, str):
            rows.unplaced.append((ids[i], where))
        else:
            rows.places.setdefault(where, []).append(i)
    for org, day in list(rows.places):
        try:
            partition_dir(lake, DATASET, {"orgId": org, "date": day})
        except LakeError as exc:
            rows.unplaced += [(ids[i], str(exc)) for i in rows.places.pop((org, day))]
    table = typed.append_column("bson", pa.array(docs, pa.binary()))
    table = table.add_column(0, "_idOther", pa.array([o for _, o in ids], pa.string()))
    rows.table = table.add_column(0, "_id", pa.array([i for i, _ in ids], pa.binary(12)))
    return rows


# ---- the lake side -----------------------------------------------------------------------


def _org_manifest(lake: Path, org_id: str) -> Path:
    return manifest_path(lake, DATASET, f"orgId={org_id}.json")


def _load_org(lake: Path, org_id: str) -> _OrgState:
    data = read_manifest(_org_manifest(lake, org_id)) or {}
    mark = data.get("mark")
    files = [PartFile(f["path"], f["date"], int(f["rows"]), f["ids_sha256"]) for f in data.get("files", [])]
    return _OrgState(org_id, datetime.fromisoformat(mark) if mark else None, files)


def _save_org(lake: Path, state: _OrgState) -> None:
    write_manifest(
        _org_manifest(lake, state.org_id),
        {
            "dataset": DATASET,
            "orgId": state.org_id,
            "mark": state.mark.isoformat() if state.mark else None,
            "files": [vars(f) for f in sorted(state.files, key=lambda f: (f.date, f.path))],
        },
    )
    state.dirty = False


def _all_orgs_mark(lake: Path) -> datetime | None:
    data = read_manifest(manifest_path(lake, f"{DATASET}.json")) or {}
    return datetime.fromisoformat(data["mark"]) if data.get("mark") else None


def _file_keys(path: Path) -> list[bytes]:
    return _keys(pq.read_table(path, columns=["_id", "_idOther"]))


def _partition_keys(lake: Path, state: _OrgState, day: str) -> pa.Array:
    """Keys the partition's listed files hold (read once per run, then kept up to date)."""
    if day not in state.keys:
        keys: list[bytes] = []
        for f in state.listed(day):
            try:
                keys += _file_keys(lake / f.path)
            except (OSError, pa.ArrowException) as exc:
                raise SyncError(f"the manifest of org {state.org_id} lists {f.path}, which cannot be read: {exc}") from None
        state.keys[day] = pa.array(keys, pa.binary())
    return state.keys[day]


def _add_keys(state: _OrgState, day: str, keys: Sequence[bytes]) -> None:
    state.keys[day] = pa.concat_arrays([state.keys[day], pa.array(keys, pa.binary())])


def _adopt(lake: Path, state: _OrgState, day: str, path: Path) -> PartFile | None:
    """An unlisted part left by a killed run, listed if it verifies; None if it does not."""
    try:
        keys = _file_keys(path)
        rows = pq.read_metadata(path).num_rows
    except (OSError, pa.ArrowException):
        return None
    digest = ids_sha256(keys)
    if len(keys) != rows or len(set(keys)) != rows or path.name != f"part-{digest[:_HASH_IN_NAME]}.parquet":
        return None
    if pc.any(pc.is_in(pa.array(keys, pa.binary()), value_set=_partition_keys(lake, state, day))).as_py():
        return None
    _add_keys(state, day, keys)
    return PartFile(path.relative_to(lake).as_posix(), day, rows, digest)


def _recover(lake: Path, state: _OrgState, report: SyncReport) -> None:
    """Resolve what a killed run left in the org's partitions: adopt or remove unlisted parts."""
    base = lake / DATASET / f"orgId={state.org_id}"
    listed = {f.path for f in state.files}
    for directory in sorted(base.glob("date=*")):
        day = directory.name.removeprefix("date=")
        touched = False
        for tmp in directory.glob(".part-*.tmp"):
            tmp.unlink()
            touched = True
        for path in sorted(directory.glob("part-*.parquet")):
            if path.relative_to(lake).as_posix() in listed:
                continue
            entry = _adopt(lake, state, day, path)
            if entry is None:
                path.unlink()
                report.removed += 1
                touched = True
            else:
                state.files.append(entry)
                state.dirty = True
                report.adopted += 1
        if touched:
            fsync_dir(directory)


def _lake_orgs(lake: Path) -> list[str]:
    base = lake / DATASET
    found = {p.name.removeprefix("orgId=") for p in base.glob("orgId=*") if p.is_dir()} if base.is_dir() else set()
    manifests = manifest_path(lake, DATASET)
    if manifests.is_dir():
        found |= {p.name.removeprefix("orgId=").removesuffix(".json") for p in manifests.glob("orgId=*.json")}
    return sorted(found)


# ---- one chunk ---------------------------------------------------------------------------


class _Run:
    """The state of one sync run: org manifests in memory, counts, the progress callback."""

    def __init__(self, lake: Path, report: SyncReport, progress: Progress | None) -> None:
        self.lake = lake
        self.report = report
        self.progress = progress
        self.orgs: dict[str, _OrgState] = {}
        self.partitions: set[tuple[str, str]] = set()
        self.schema = _typed_schema()

    def tell(self, stage: str, count: int) -> None:
        if self.progress is not None:
            self.progress(stage, count)

    def org(self, org_id: str) -> _OrgState:
        if org_id not in self.orgs:
            self.orgs[org_id] = _load_org(self.lake, org_id)
        return self.orgs[org_id]

    def store(self, docs: list[bytes]) -> None:
        """Place, deduplicate and write one chunk of raw documents as parts."""
        rows = _part_rows(self.lake, docs, self.schema)
        for ident, reason in rows.unplaced:
            self._unplaced(ident, reason)
        table = rows.table.drop_columns(["orgId"])
        for (org, day), indexes in sorted(rows.places.items()):
            self._write(org, day, table.take(indexes))

    def _unplaced(self, ident: tuple[bytes | None, str | None], reason: str) -> None:
        oid, other = ident
        shown = json_util.dumps(ObjectId(oid), json_options=CANONICAL_JSON_OPTIONS) if oid else str(other)
        self.report.unplaced_count += 1
        if len(self.report.unplaced) < MAX_REPORTED:
            self.report.unplaced.append(Unplaced(shown, reason))

    def _write(self, org: str, day: str, rows: pa.Table) -> None:
        state = self.org(org)
        keys = _keys(rows)
        first: dict[bytes, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        held = pc.is_in(pa.array(list(first), pa.binary()), value_set=_partition_keys(self.lake, state, day))
        keep = [i for i, inside in zip(first.values(), held.to_pylist(), strict=True) if not inside]
        self.report.already += len(keys) - len(keep)
        if not keep:
            return
        part = rows.take(keep)
        part = part.take(pc.sort_indices(part, sort_keys=[("assetId", "ascending"), ("timestamp", "ascending")]))
        new_keys = [keys[i] for i in keep]
        digest = ids_sha256(new_keys)
        directory = partition_dir(self.lake, DATASET, {"orgId": org, "date": day})
        make_dirs(directory)
        path = directory / f"part-{digest[:_HASH_IN_NAME]}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(part.cast(part_schema()), tmp, compression="zstd")
        _add_keys(state, day, new_keys)
        state.files.append(PartFile(path.relative_to(self.lake).as_posix(), day, len(keep), digest))
        state.dirty = True
        self.partitions.add((org, day))
        self.report.new += len(keep)
        self.report.files += 1
        self.tell("part", self.report.files)


# ---- the runs ----------------------------------------------------------------------------


def _check_options(skew: timedelta, chunk_rows: int) -> None:
    if skew < timedelta(0):
        raise InvalidArgument("the clock skew margin cannot be negative")
    if chunk_rows <= 0:
        raise InvalidArgument("chunk rows must be a positive number of snapshots")


def _journal(lake: Path) -> Path:
    """Present while a run may have parts no manifest lists yet (from its start to its commit)."""
    return manifest_path(lake, f"{DATASET}.running.json")


def _resume(run: _Run, org_id: str | None) -> None:
    """Adopt or remove what a killed run left, then record that this run has begun.

    Partitions are only listed when a run did not finish (its journal is still there):
    the killed run's scope, and this run's. A finished lake costs no directory walk.
    """
    journal = _journal(run.lake)
    killed = read_manifest(journal)
    if killed is not None:
        scopes = {killed.get("scope"), org_id or ALL_ORGS}
        orgs = _lake_orgs(run.lake) if ALL_ORGS in scopes else sorted(o for o in scopes if isinstance(o, str))
        for org in orgs:
            _recover(run.lake, run.org(org), run.report)
    write_manifest(journal, {"dataset": DATASET, "scope": org_id or ALL_ORGS})


def _since(marks: Sequence[datetime | None], skew: timedelta) -> datetime | None:
    """Lower bound of the `_id` range to read: the latest run's start minus `skew` (None: all)."""
    known = [m for m in marks if m is not None]
    return max(known) - skew if known else None


def _read_new(db: Db, run: _Run, org_id: str | None, *, skew: timedelta, full: bool, chunk_rows: int) -> list[Doc]:
    """The one query: place and write what is new; returns the loaders' marks it covered."""
    report = run.report
    marks_at = [run.org(org_id).mark] if org_id is not None else []
    report.since = None if full else _since([*marks_at, _all_orgs_mark(run.lake)], skew)
    # Marks first, then the query: every mark read covers documents already inserted.
    marks = _read_marks(db, org_id)
    report.marks_read = len(marks)
    report.mark = _server_time(db)
    cursor = db[SNAPSHOTS].find_raw_batches(_query(org_id, report.since, marks), batch_size=RAW_BATCH_DOCS)
    with cursor:
        for docs in _chunks(cursor, chunk_rows):
            report.read += len(docs)
            run.tell("read", report.read)
            run.store(docs)
    return marks


def _list_parts(run: _Run) -> int:
    """Save the manifest of each org whose parts changed: its new parts become listed."""
    saved = 0
    for state in run.orgs.values():
        if state.dirty:
            _save_org(run.lake, state)
            saved += 1
            run.tell("manifest", saved)
    return saved


def _end_journal(lake: Path) -> None:
    """The run's parts are all listed: the next run need not look for unlisted ones."""
    journal = _journal(lake)
    journal.unlink()
    fsync_dir(journal.parent)


def _commit(db: Db, run: _Run, org_id: str | None, marks: Sequence[Doc]) -> None:
    """List the parts (org manifests), then advance the marks, then clear the loaders' marks."""
    mark = run.report.mark
    assert mark is not None
    if org_id is not None:
        state = run.org(org_id)
        state.mark = mark
        state.dirty = True
    saved = _list_parts(run)
    if org_id is None:
        write_manifest(manifest_path(run.lake, f"{DATASET}.json"), {"dataset": DATASET, "mark": mark.isoformat()})
    run.tell("mark", saved)
    _end_journal(run.lake)
    _clear_marks(db, marks)
    run.tell("cleared", len(marks))


def _sync(
    db: Db,
    lake: str | os.PathLike[str],
    org_id: str | None,
    *,
    skew: timedelta,
    full: bool,
    chunk_rows: int,
    progress: Progress | None,
) -> SyncReport:
    _check_options(skew, chunk_rows)
    started_at = time.monotonic()
    root = Path(lake)
    if org_id is not None:
        partition_dir(root, DATASET, {"orgId": org_id})  # refuses an org id that is no path segment
    report = SyncReport(scope=org_id or ALL_ORGS, full=full, since=None)
    run = _Run(root, report, progress)
    with lake_lock(root, DATASET, SyncError, who="sync"):
        _resume(run, org_id)
        marks = _read_new(db, run, org_id, skew=skew, full=full, chunk_rows=chunk_rows)
        _commit(db, run, org_id, marks)
    report.partitions = len(run.partitions)
    report.seconds = round(time.monotonic() - started_at, 3)
    return report


def sync_snapshots(
    db: Db,
    lake: str | os.PathLike[str],
    *,
    org_id: str,
    skew: timedelta = DEFAULT_SKEW,
    full: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress | None = None,
) -> SyncReport:
    """Copy `org_id`'s snapshots that the lake lacks into `lake/snapshots/orgId=<org>/`.

    One query, filtered by `orgId`; see the module docstring for what is read and why
    nothing is missed or written twice. `full=True` reads all of the org's snapshots
    (still deduplicated). `progress(stage, count)` is called with "read" (snapshots read
    so far, before they are written), "part" (part files in place, not yet listed),
    "manifest" (manifests saved), "mark" (high-water mark saved) and "cleared" (loaders'
    marks removed): the points where a run can stop and be resumed.

    Raises:
        InvalidArgument: no `org_id`, a negative skew or `chunk_rows` below 1.
        SyncError: another run holds the lake, or a listed file is gone.
    """
    if not org_id:
        raise InvalidArgument("an org id is required (sync_snapshots_all_orgs mirrors every org)")
    return _sync(db, lake, org_id, skew=skew, full=full, chunk_rows=chunk_rows, progress=progress)


def sync_snapshots_all_orgs(
    db: Db,
    lake: str | os.PathLike[str],
    *,
    skew: timedelta = DEFAULT_SKEW,
    full: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress | None = None,
) -> SyncReport:
    """Admin run across tenants: every org's new snapshots, in one query for all of them.

    Raises:
        InvalidArgument: a negative skew or `chunk_rows` below 1.
        SyncError: another run holds the lake, or a listed file is gone.
    """
    return _sync(db, lake, None, skew=skew, full=full, chunk_rows=chunk_rows, progress=progress)


def mirror_documents_all_orgs(
    lake: str | os.PathLike[str],
    documents: Iterable[bytes],
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress | None = None,
) -> SyncReport:
    """Admin write across tenants: put these raw BSON documents into the mirror as a sync
    puts what it reads, without a server.

    Each item of `documents` is one encoded document or several back to back (a raw batch
    as `find_raw_batches` gives), `_id` included, as the server would hold it. Each
    document goes to its org's and day's partition through the sync's own writer: the
    same placement, deduplication by `_id` (within the call and against the listed
    files), typed columns, part files and org manifests, under the lake's sync lock, with
    the same recovery if the call is killed. No mark moves, so the next sync still reads
    everything new on the server (and skips what this call wrote, by `_id`). For lakes
    built without a server: benchmarks, tests, documents exported elsewhere.
    `progress(stage, count)` as for `sync_snapshots` ("read", "part", "manifest").
    """
    _check_options(DEFAULT_SKEW, chunk_rows)
    started_at = time.monotonic()
    root = Path(lake)
    report = SyncReport(scope=ALL_ORGS, full=False, since=None)
    run = _Run(root, report, progress)
    with lake_lock(root, DATASET, SyncError, who="sync"):
        _resume(run, None)
        for docs in _chunks(documents, chunk_rows):
            report.read += len(docs)
            run.tell("read", report.read)
            run.store(docs)
        _list_parts(run)
        _end_journal(root)
    report.partitions = len(run.partitions)
    report.seconds = round(time.monotonic() - started_at, 3)
    return report


# ---- reading the mirror ------------------------------------------------------------------


def mirrored_orgs(lake: str | os.PathLike[str]) -> list[str]:
    """The orgs the lake has a snapshot manifest or partition directory for, sorted."""
    return _lake_orgs(Path(lake))


def document_key(raw: bytes) -> bytes:
    """The key the mirror lists a document under, from its raw BSON (see `ids_sha256`)."""
    return _key(*_id_of(raw))


def partition_keys(lake: str | os.PathLike[str], *, org_id: str, day: date | str) -> list[bytes]:
    """The keys of the `_id`s the listed files of the org's day hold (their `_id` columns)."""
    partition_dir(lake, DATASET, {"orgId": org_id})
    state = _load_org(Path(lake), org_id)
    keys: list[bytes] = _partition_keys(Path(lake), state, _day(day)).to_pylist()
    return keys


def listed_snapshot_files(lake: str | os.PathLike[str], *, org_id: str) -> list[PartFile]:
    """The org's part files the manifest lists (what the lake's views may read), by date."""
    partition_dir(lake, DATASET, {"orgId": org_id})
    state = _load_org(Path(lake), org_id)
    return sorted(state.files, key=lambda f: (f.date, f.path))


def unsynced_snapshots(db: Db, lake: str | os.PathLike[str], *, org_id: str, skew: timedelta = DEFAULT_SKEW) -> pa.Table:
    """The rows the next `sync_snapshots(db, lake, org_id=...)` would add, read now; the lake is not touched.

    The sync's own query (from the org's marks and the loaders' day marks) and its
    deduplication by `_id` against the files each partition's manifest lists, so a document
    the lake holds is never among them. Columns: `part_schema()` without `bson`, plus
    `orgId` and `date` (the partition's). For the lake's views over the not-yet-synced
    tail; before the org's first sync, that is all of its snapshots.
    """
    _check_options(skew, DEFAULT_CHUNK_ROWS)
    root = Path(lake)
    partition_dir(root, DATASET, {"orgId": org_id})
    state = _load_org(root, org_id)
    query = _query(org_id, _since([state.mark, _all_orgs_mark(root)], skew), _read_marks(db, org_id))
    typed = _typed_schema()
    out = pa.schema([*(f for f in part_schema() if f.name != "bson"), ("orgId", pa.string()), ("date", pa.date32())])
    found: list[pa.Table] = [out.empty_table()]
    with db[SNAPSHOTS].find_raw_batches(query, batch_size=RAW_BATCH_DOCS) as cursor:
        for docs in _chunks(cursor, DEFAULT_CHUNK_ROWS):
            rows = _part_rows(root, docs, typed)
            for (_, day), indexes in sorted(rows.places.items()):
                part = rows.table.take(indexes)
                held = pc.is_in(pa.array(_keys(part), pa.binary()), value_set=_partition_keys(root, state, day))
                part = part.filter(pc.invert(held)).select(out.names[:-1])
                found.append(part.append_column("date", pa.array([date.fromisoformat(day)] * part.num_rows, pa.date32())).cast(out))
    return pa.concat_tables(found)


def last_synced(lake: str | os.PathLike[str], *, org_id: str) -> datetime | None:
    """The server's clock when the latest sync covering `org_id` began reading (its own run
    or an all-orgs run); None when none has, so an empty mirror is told from an unsynced one."""
    partition_dir(lake, DATASET, {"orgId": org_id})
    marks = [_load_org(Path(lake), org_id).mark, _all_orgs_mark(Path(lake))]
    known = [m for m in marks if m is not None]
    return max(known) if known else None


def read_lake_documents(
    lake: str | os.PathLike[str], *, org_id: str, dates: Iterable[date | str] | None = None
) -> Iterator[RawBSONDocument]:
    """The org's mirrored documents, exactly as the server held them, one listed part at a time.

    Each is a RawBSONDocument: `.raw` is the server's encoding, and it reads like a dict.
    """
    wanted = None if dates is None else {_day(d) for d in dates}
    codec: CodecOptions[RawBSONDocument] = CodecOptions(document_class=RawBSONDocument, tz_aware=True, tzinfo=UTC)
    for f in listed_snapshot_files(lake, org_id=org_id):
        if wanted is not None and f.date not in wanted:
            continue
        column = pq.read_table(Path(lake) / f.path, columns=["bson"]).column("bson")
        for raw in column.to_pylist():
            yield RawBSONDocument(raw, codec_options=codec)
