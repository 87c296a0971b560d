"""Bulk loading of snapshot archives into performance_snapshots.

Records stream out of the archives, are validated one by one, and go to the server in
unordered batches; the unique (orgId, assetId, timestamp) index turns a record loaded
before into a counted duplicate, so loading twice adds nothing. Writer threads insert
batches while the main thread parses the next ones; in batch order, each batch's rejects
are written, and every `commit_seconds` one `$max` lastSeen update per asset is made and
then a checkpoint records how far the load got.

Killed at any point and run again with the same arguments, the load resumes after the
last checkpoint; batches inserted since are inserted again and meet only duplicates, and
their lastSeen updates are made again. The collections, and the rejects file, end exactly as
after one clean run.

An archive that becomes unreadable part-way (cut, corrupt) gives one reject at the byte
where its content broke; the load goes on with the next archives, but no checkpoint is
saved past the damage, and unless partial loads are allowed it ends with IncompleteLoad.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import bson
import orjson
from bson import CodecOptions, ObjectId
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.errors import AutoReconnect, BulkWriteError, OperationFailure, PyMongoError

from perf_analytics.errors import (
    CheckpointError,
    DamagedArchive,
    IncompleteLoad,
    InvalidArgument,
    ServerError,
    ValidationError,
)
from perf_analytics.ingest import checkpoint as ckpt
from perf_analytics.ingest.batches import BlockEncoder, LastSeen, add_seen
from perf_analytics.ingest.options import LoadOptions
from perf_analytics.ingest.readers import (
    Archive,
    Record,
    RecordBlock,
    open_archive,
    parse_line,
    record_as_text,
)
from perf_analytics.schema import SNAPSHOTS, validate_snapshot
from perf_analytics.store import (
    Db,
    check_nesting,
    encode_document,
    error_text,
    is_retryable,
    require_key_index,
    sort_write_errors,
    touch_assets,
)

ProgressFn = Callable[[int, int], None]  # (archive bytes read so far, records read so far)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CODEC: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=True)
_MILLISECOND = timedelta(milliseconds=1)
_FIRST_REJECTS = 10  # rejects a summary shows (the rejects file has them all)


def _as_dict(doc: bytes | dict[str, Any]) -> dict[str, Any]:
    """A batch's document as a dict (an encoded one decoded: only for the rare record the
    server refuses or finds already stored)."""
    return doc if isinstance(doc, dict) else bson.decode(doc, codec_options=_CODEC)


@dataclass
class IngestSummary:
    """What a load did, counted over the whole load (a resumed one includes the committed
    part), and where it fell short (damaged archives, a checkpoint set aside)."""

    read: int = 0
    inserted: int = 0
    duplicates: int = 0
    rejected: int = 0
    orphaned: int = 0
    seconds: float = 0.0
    archives: list[str] = field(default_factory=list)
    orphan_assets: list[str] = field(default_factory=list)
    rejects_path: str | None = None
    resumed_from: int = 0  # records skipped because a previous run had committed them
    # Archives unreadable from some byte on: archive, position, records read before,
    # file bytes read, file size, reason.
    damaged: list[dict[str, Any]] = field(default_factory=list)
    set_aside: str | None = None  # how a checkpoint of another load of these archives differed
    first_rejects: list[dict[str, str]] = field(default_factory=list)  # position, field, reason
    dry_run: bool = False  # checked and encoded only: nothing was sent or written but rejects
    valid: int = 0  # records that passed every check of the client (a dry run's "would insert")
    cpu_seconds: float = 0.0  # the process's CPU time over the load, every thread

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def counts(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("read", "inserted", "duplicates", "rejected", "orphaned")}

    def describe(self) -> str:
        """The summary as lines for a person: counts and rate, then where the load fell short
        (damaged archives, a checkpoint set aside, rejects, assets not found)."""
        s = self
        rate = s.read / s.seconds if s.seconds else 0.0
        if s.dry_run:
            cpu = f"{s.cpu_seconds / s.read * 1e6:,.1f} µs of client CPU a record" if s.read else "no records"
            lines = [
                f"dry run, nothing written: read {s.read:,} · valid {s.valid:,} · rejected {s.rejected:,} · "
                f"{s.seconds:.1f}s ({rate:,.0f} docs/s; {cpu})"
            ]
            lines += [f"rejected {r['position']}: {r['field'] or 'record'}: {r['reason']}" for r in s.first_rejects]
            if s.rejected > len(s.first_rejects):
                lines.append(f"... {s.rejected - len(s.first_rejects):,} more")
        else:
            lines = [
                f"read {s.read:,} · inserted {s.inserted:,} · duplicates {s.duplicates:,} · "
                f"rejected {s.rejected:,} · orphaned {s.orphaned:,} · {s.seconds:.1f}s ({rate:,.0f} docs/s)"
            ]
        if s.set_aside:
            lines.append(f"started from the beginning: the checkpoint found for these archives was of a load with other settings ({s.set_aside})")
        if s.resumed_from:
            lines.append(f"resumed an interrupted load after {s.resumed_from:,} committed records")
        for d in s.damaged:
            lines.append(
                f"damaged: {d['archive']} unreadable from {d['position']} of its content, after "
                f"{d['records_before']:,} records (file read to byte {d['file_bytes_read']:,} of {d['file_bytes']:,})"
            )
        if s.rejected and s.rejects_path:
            lines.append(f"rejected records and reasons: {s.rejects_path}")
        if s.orphan_assets:
            shown = ", ".join(s.orphan_assets[:5]) + (" ..." if len(s.orphan_assets) > 5 else "")
            lines.append(f"{len(s.orphan_assets)} asset(s) not found in assets (snapshots kept): {shown}")
        return "\n".join(lines)


@dataclass
class _Batch:
    archive_index: int
    records_done: int  # records of this archive covered once this batch commits
    # Encoded by the block path (bytes), or validated one by one (a dict, encoded when sent).
    docs: list[bytes | dict[str, Any]] = field(default_factory=list)
    positions: list[str] = field(default_factory=list)  # parallel to docs
    last_seen: LastSeen = field(default_factory=dict)  # of docs: what moves lastSeen
    rejects: list[tuple[Record, str, str]] = field(default_factory=list)  # record, field, reason
    read: int = 0
    seq: int = -1  # order of the batch in the load, set by the writer
    damaged: bool = False  # holds the reject standing for an archive's unreadable rest


class _Writer:
    """Inserts batches on `workers` threads; books them strictly in batch order.

    Inserts of different batches may run at once (the unique key makes their order
    irrelevant). Without a database (a dry run) each batch is only encoded: nothing is
    sent, no lastSeen moves, no checkpoint is kept. lastSeen updates, rejects, totals and the checkpoint advance only over
    the contiguous prefix of inserted batches, one batch at a time, so the checkpoint
    never claims a batch whose predecessors are not in, and the rejects file keeps
    archive order.
    """

    def __init__(
        self,
        db: Db | None,
        cp: ckpt.LoadCheckpoint | None,
        cp_dir: Path | None,
        rejects: IO[bytes] | None,
        summary: IngestSummary,
        archives: Sequence[Path],
        workers: int = 2,
        commit_seconds: float = 10.0,
    ) -> None:
        self.db = db
        self.cp = cp
        self.cp_dir = cp_dir
        self.rejects = rejects
        self.summary = summary
        self.archives = archives
        self.queue: queue.Queue[_Batch | None] = queue.Queue(maxsize=2 * workers)
        self.error: BaseException | None = None
        self.orphans: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._failed = threading.Lock()  # guards `error`, set once
        self._finished: dict[int, tuple[_Batch, int, int]] = {}
        self._next_seq = 0  # next batch number handed out by put()
        self._next_done = 0  # next batch number whose bookkeeping is due
        self.commit_seconds = commit_seconds
        self._committed_at = time.monotonic()
        self._booked: _Batch | None = None  # the last batch booked since the last commit
        self.damaged = False  # a damaged archive was booked: no checkpoint may go past it
        self._pending: dict[tuple[str, str], int] = {}  # newest timestamp per asset, epoch ms
        self._pending_docs: dict[tuple[str, str], int] = {}  # documents per asset
        self._offline: MongoClient[Any] | None = None
        self.threads = [
            threading.Thread(target=self._run, name=f"ingest-writer-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self.threads:
            thread.start()

    def put(self, batch: _Batch) -> None:
        batch.seq = self._next_seq
        self._next_seq += 1
        while self.error is None:
            try:
                self.queue.put(batch, timeout=0.2)
                return
            except queue.Full:
                continue
        self._raise()

    def close(self) -> None:
        """Commit what is queued, stop the threads, and raise what they met.

        Each writer stops at the first end marker it takes, whichever writer it was put for,
        so one marker goes in per writer started, not per writer seen alive: a writer that
        took a marker and stopped while the markers were being put must not cost another
        writer its own (that writer would wait for it forever, and so would the join).
        """
        for _ in self.threads:
            self._put_end_marker()
        for thread in self.threads:
            thread.join()
        self.threads = []
        if self._offline is not None:
            self._offline.close()
            self._offline = None
        self._raise()
        with self._lock:
            self._commit()

    def _put_end_marker(self) -> None:
        """Queue one end marker, waiting for room only while a writer is left to make it."""
        while any(thread.is_alive() for thread in self.threads):
            try:
                self.queue.put(None, timeout=0.2)
                return
            except queue.Full:
                continue

    def _raise(self) -> None:
        if self.error is None:
            return
        if isinstance(self.error, PyMongoError):
            raise ServerError(
                f"the server failed during the load: {self.error}", retryable=is_retryable(self.error)
            ) from self.error
        raise self.error

    def _run(self) -> None:
        try:
            while (batch := self.queue.get()) is not None:
                if self.error is not None:
                    continue  # drain: after a failure nothing more is committed
                inserted, duplicates = self._insert(batch)
                with self._lock:
                    self._finished[batch.seq] = (batch, inserted, duplicates)
                    self._advance()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread by _raise
            with self._failed:
                # The first failure is the one to report: the other writer's, if it fails
                # too, is most often the same cause met a moment later.
                if self.error is None:
                    self.error = exc
            while self.queue.get() is not None:  # let put() and close() finish
                pass

    def _insert(self, batch: _Batch) -> tuple[int, int]:
        """Insert the batch; return (inserted, duplicates).

        Every other record the server refuses becomes a reject with its reason, and
        leaves `batch.docs`, so that only what is stored, or was stored before, moves
        lastSeen. Documents too large to store are rejected before anything is sent.
        """
        sendable: list[int] = []
        raw: list[RawBSONDocument] = []
        refused: dict[int, tuple[str, str]] = {}  # position in batch.docs -> (field, reason)
        # Records that bring their own _id (a mongodump, an export) may be older than any
        # sync mark: the next sync has to be told about their days (see sync.py).
        own_ids = [i for i, doc in enumerate(batch.docs) if isinstance(doc, dict) and "_id" in doc]
        for i, doc in enumerate(batch.docs):
            if isinstance(doc, bytes):
                raw.append(RawBSONDocument(doc))
                sendable.append(i)
                continue
            doc.setdefault("_id", ObjectId())
            try:
                raw.append(encode_document(doc, self._collection(), nesting_checked=True))  # _classify did
                sendable.append(i)
            except ValidationError as exc:
                refused[i] = (exc.field, exc.reason)
        if self.db is None:
            inserted, duplicates = 0, 0
            self.summary.valid += len(raw)
        else:
            inserted, duplicates = self._send(sendable, raw, batch.docs, refused)
            if own_ids:
                # Imported here: sync's module loads pymongoarrow, pandas and polars (about
                # 100 MiB and a second of start-up) that a load of agent payloads never needs.
                from perf_analytics.sync import mark_documents_for_sync

                mark_documents_for_sync(self.db, [_as_dict(batch.docs[i]) for i in own_ids if i not in refused])
        if refused:
            for i, (field_path, reason) in sorted(refused.items()):
                batch.rejects.append((Record(-1, batch.positions[i], payload=_as_dict(batch.docs[i])), field_path, reason))
            batch.docs = [d for i, d in enumerate(batch.docs) if i not in refused]
            batch.last_seen = {}
            for doc in map(_as_dict, batch.docs):  # rare: only what is stored moves lastSeen
                add_seen(batch.last_seen, doc["orgId"], doc["assetId"], _millis(doc["timestamp"]))
        return inserted, duplicates

    def _collection(self) -> Collection[Any]:
        """The collection whose codec options encode documents: for a dry run, that of a
        client that never connects (the defaults a load's client has)."""
        if self.db is not None:
            return self.db[SNAPSHOTS]
        if self._offline is None:
            self._offline = MongoClient(connect=False)
        return self._offline["offline"][SNAPSHOTS]

    def _send(
        self, positions: list[int], raw: list[RawBSONDocument], docs: list[bytes | dict[str, Any]],
        refused: dict[int, tuple[str, str]],
    ) -> tuple[int, int]:
        """Insert `raw` (the encoded `docs[positions]`) unordered; return (inserted, duplicates).

        Refused documents go into `refused`. A batch the server refuses as a whole (an
        error that is not one per document, or a connection it drops while the server
        still answers: FerretDB 1.24 does that for a NaN anywhere in a document) is split
        in halves until the record at fault stands alone and is refused by itself. When a
        batch of several is refused to the last record, the fault is not in the records:
        the error ends the load (the re-run resumes from the checkpoint).
        """
        if not positions:
            return 0, 0
        assert self.db is not None  # a dry run sends nothing
        try:
            self.db[SNAPSHOTS].insert_many(raw, ordered=False)
            return len(raw), 0
        except BulkWriteError as exc:
            return self._sort_write_errors(exc.details, positions, docs, refused)
        except (OperationFailure, AutoReconnect) as exc:
            if isinstance(exc, AutoReconnect):
                self.db.client.admin.command("ping")  # a server that is gone ends the load here
            if len(positions) == 1:
                refused[positions[0]] = ("", f"refused by the server: {error_text(exc)}")
                return 0, 0
            half = len(positions) // 2
            first = self._send(positions[:half], raw[:half], docs, refused)
            second = self._send(positions[half:], raw[half:], docs, refused)
            if all(p in refused for p in positions):
                raise
            return first[0] + second[0], first[1] + second[1]

    def _sort_write_errors(
        self, details: Mapping[str, Any], positions: list[int], docs: list[bytes | dict[str, Any]],
        refused: dict[int, tuple[str, str]],
    ) -> tuple[int, int]:
        """Count the duplicates among an insert's write errors; put the rest in `refused`
        (`sort_write_errors` says which is which)."""
        assert self.db is not None  # only a load that sent something has write errors
        sorted_errors = sort_write_errors(self.db, details, lambda i: _as_dict(docs[positions[i]]))
        for i, why in sorted_errors.refused.items():
            refused[positions[i]] = why
        return int(details.get("nInserted", 0)), len(sorted_errors.duplicates)

    def _write_rejects(self, batch: _Batch) -> None:
        room = _FIRST_REJECTS - len(self.summary.first_rejects)
        self.summary.first_rejects += [
            {"position": rec.position, "field": field_path, "reason": reason} for rec, field_path, reason in batch.rejects[:room]
        ]
        if self.rejects is None or not batch.rejects:
            return
        source = str(self.archives[batch.archive_index])
        lines = [
            orjson.dumps(
                {
                    "source": source,
                    "position": rec.position,
                    "field": field_path,
                    "reason": reason,
                    "record": record_as_text(rec),
                }
            )
            + b"\n"
            for rec, field_path, reason in batch.rejects
        ]
        self.rejects.write(b"".join(lines))
        self.rejects.flush()

    def _sync_rejects(self) -> int:
        """Make the rejects file durable (the checkpoint about to be saved counts its
        bytes, and a resume cuts it back to them); return its length."""
        if self.rejects is None:
            return 0
        self.rejects.flush()
        os.fsync(self.rejects.fileno())
        return self.rejects.tell()

    def _advance(self) -> None:
        """Book every finished batch that is next in order (called with the lock held).

        Rejects are written and totals counted per batch; lastSeen updates and the
        checkpoint go out together once per `commit_seconds` (and at the end), so a fleet
        of many assets costs one update per asset per interval, not per batch. The
        checkpoint is saved only after those updates: a crash before it makes the re-run
        redo the batches since the last one (duplicates, then the same updates).
        """
        while self._next_done in self._finished:
            batch, inserted, duplicates = self._finished.pop(self._next_done)
            self._next_done += 1
            self.damaged = self.damaged or batch.damaged
            for key, (newest, count) in batch.last_seen.items():
                seen = self._pending.get(key)
                if seen is None or newest > seen:
                    self._pending[key] = newest
                self._pending_docs[key] = self._pending_docs.get(key, 0) + count
            self._write_rejects(batch)
            s = self.summary
            s.read += batch.read
            s.inserted += inserted
            s.duplicates += duplicates
            s.rejected += len(batch.rejects)
            self._booked = batch
            if time.monotonic() - self._committed_at >= self.commit_seconds:
                self._commit()

    def _commit(self) -> None:
        """lastSeen updates for what was booked, then the checkpoint (lock held)."""
        if self._booked is None:
            return
        if self.db is None or self.cp is None or self.cp_dir is None:  # a dry run: nothing to move or keep
            self._pending.clear()
            self._pending_docs.clear()
            self._booked = None
            return
        # lastSeen updates run one at a time, in order: some servers (FerretDB) apply
        # concurrent `$max` updates of one document as read-modify-write and lose one.
        # Duplicates count too: after a crash they may be the records whose update was lost.
        per_org: dict[str, dict[str, datetime]] = {}
        for (org, asset), seen in self._pending.items():
            per_org.setdefault(org, {})[asset] = _EPOCH + timedelta(milliseconds=seen)
        for org, last_seen in per_org.items():
            missing = touch_assets(self.db, org, last_seen)
            self.orphans.update((org, a) for a in missing)
            self.summary.orphaned += sum(self._pending_docs[(org, a)] for a in missing)
        self._pending.clear()
        self._pending_docs.clear()
        if not self.damaged:  # past a damaged archive the last checkpoint stays where it is
            self.cp.rejects_bytes = self._sync_rejects()
            self.cp.counts = self.summary.counts()
            self.cp.archive_index = self._booked.archive_index
            self.cp.records_done = self._booked.records_done
            ckpt.save_checkpoint(self.cp_dir, self.cp)
        self._booked = None
        self._committed_at = time.monotonic()


def ingest_archives(
    db: Db,
    paths: Sequence[str | Path],
    org_id: str,
    *,
    options: LoadOptions | None = None,
    progress: ProgressFn | None = None,
) -> IngestSummary:
    """Load one organisation's snapshots from archives; records of any other org are rejected.

    `options` (default `LoadOptions()`) and `progress` mean what they mean for
    `ingest_archives_all_orgs`.

    Raises:
        InvalidArgument: no `org_id`, no archive, a missing file, or a rejects file that is one of the archives.
        IncompleteLoad: a damaged archive, unless `options.allow_partial`.
        CheckpointError: the saved load state cannot be used.
        ServerError: the server fails during the load.
    """
    if not org_id:
        raise InvalidArgument("an org id is required (ingest_archives_all_orgs loads every org)")
    return _ingest(db, paths, org_id, options or LoadOptions(), progress)


def ingest_archives_all_orgs(
    db: Db,
    paths: Sequence[str | Path],
    *,
    options: LoadOptions | None = None,
    progress: ProgressFn | None = None,
) -> IngestSummary:
    """Admin load across tenants: each record goes to the org it names.

    Records naming no org are rejected. Every write is still filtered by the record's
    own orgId (assets of one org are never touched by another org's snapshots).
    `options` (default `LoadOptions()`) says where rejects go, how the archives are read,
    how many records are sent at once and where the checkpoint of an interrupted load is
    kept. `progress(bytes_read, records_read)` follows the load.

    Raises:
        InvalidArgument: no archive, a missing file, or a rejects file that is one of the archives.
        IncompleteLoad: a damaged archive, unless `options.allow_partial`.
        CheckpointError: the saved load state cannot be used.
        ServerError: the server fails during the load.
    """
    return _ingest(db, paths, None, options or LoadOptions(), progress)


def validate_archives(
    paths: Sequence[str | Path],
    org_id: str | None = None,
    *,
    options: LoadOptions | None = None,
    progress: ProgressFn | None = None,
) -> IngestSummary:
    """Read, check and encode archives exactly as a load with the same `options` does, and send nothing.

    No server is needed: nothing is inserted, no lastSeen moves, no checkpoint is read or
    kept (the options' checkpoint, resume, workers and commit settings are not used). The
    summary counts what was read, what passed (`valid`: what a load would send) and what
    was rejected, with the first rejects; with `options.rejects` every rejected record goes
    to that file, as in a load. Duplicates cannot be known without the server.
    `summary.cpu_seconds` is the client's own cost. `org_id` rejects other orgs' records.

    Raises:
        InvalidArgument: no archive, a missing file, or a rejects file that is one of the archives.
        IncompleteLoad: a damaged archive, unless `options.allow_partial`, as in a load.
    """
    opts = options or LoadOptions()
    archives = _archive_paths(paths)
    rejects_path = _rejects_path(opts.rejects, archives)
    summary = IngestSummary(
        archives=[str(p) for p in archives], rejects_path=str(rejects_path) if rejects_path else None, dry_run=True
    )
    started, cpu = time.perf_counter(), time.process_time()
    rejects_fh = _open_rejects(rejects_path, 0)
    writer = _Writer(None, None, None, rejects_fh, summary, archives, workers=1, commit_seconds=0.0)
    try:
        _read_all(archives, 0, 0, writer, opts, org_id=org_id, progress=progress)
        writer.close()
    finally:
        writer.close()
        if rejects_fh is not None:
            rejects_fh.close()
    summary.seconds = round(time.perf_counter() - started, 3)
    summary.cpu_seconds = round(time.process_time() - cpu, 3)
    if summary.damaged and not opts.allow_partial:
        raise IncompleteLoad(_incomplete(summary), summary)
    return summary


def _archive_paths(paths: Sequence[str | Path]) -> list[Path]:
    """The archives to read, each an existing file."""
    archives = [Path(p) for p in paths]
    if not archives:
        raise InvalidArgument("no archive given")
    for p in archives:
        if not p.is_file():
            raise InvalidArgument(f"{p}: no such file")
    return archives


def _ingest(
    db: Db,
    paths: Sequence[str | Path],
    org_id: str | None,
    options: LoadOptions,
    progress: ProgressFn | None,
) -> IngestSummary:
    """Load snapshot archives; return what was read, inserted, skipped and rejected.

    `org_id` restricts the load to one organisation; None loads every org (admin).
    With `options.resume` an interrupted identical load continues where it stopped;
    a checkpoint of these archives with other settings is set aside (summary.set_aside).
    A damaged archive (unreadable from some byte on) raises IncompleteLoad at the end and
    keeps the checkpoint before the damage, unless `options.allow_partial` accepts the load
    as it is. `options.workers` batches are sent to the server at once (the server parses
    documents on each connection in parallel; bookkeeping stays in order). lastSeen updates
    and the checkpoint are committed every `options.commit_seconds` (0: after every batch).
    """
    # Without the unique key index a re-run (or a resume after a kill) would store every
    # snapshot again: it is created here if missing, before anything is written.
    require_key_index(db)
    archives = _archive_paths(paths)
    rejects_path = _rejects_path(options.rejects, archives)
    cp_dir = Path(options.checkpoint_dir)
    identity = ckpt.load_identity(ckpt.server_identity(db.client), db.name, archives, org=org_id, fmt=options.fmt,
                                  compression=options.compression, rejects=rejects_path)
    started, cpu = time.perf_counter(), time.process_time()
    summary = IngestSummary(
        archives=[str(p) for p in archives], rejects_path=str(rejects_path) if rejects_path else None
    )

    cp, summary.set_aside = ckpt.open_checkpoint(cp_dir, identity, resume=options.resume)
    for key in summary.counts():
        setattr(summary, key, cp.counts.get(key, 0))
    summary.resumed_from = summary.read
    rejects_fh = _open_rejects(rejects_path, cp.rejects_bytes)
    writer = _Writer(db, cp, cp_dir, rejects_fh, summary, archives, options.workers, options.commit_seconds)
    try:
        _read_all(archives, cp.archive_index, cp.records_done, writer, options, org_id=org_id, progress=progress)
        writer.close()
    finally:
        writer.close()  # on an error: commit what was queued, then let the error through
        if rejects_fh is not None:
            rejects_fh.close()
    if options.allow_partial or not summary.damaged:
        ckpt.clear_checkpoint(cp_dir, cp.run)
    summary.orphan_assets = sorted(f"{org}/{asset}" for org, asset in writer.orphans)
    summary.seconds = round(time.perf_counter() - started, 3)
    summary.cpu_seconds = round(time.process_time() - cpu, 3)
    if summary.damaged and not options.allow_partial:
        raise IncompleteLoad(_incomplete(summary), summary)
    return summary


def _incomplete(summary: IngestSummary) -> str:
    """The one line saying which archives broke where, and how to accept the partial load."""
    where = "; ".join(f"{Path(d['archive']).name} unreadable from {d['position']}" for d in summary.damaged)
    n = len(summary.damaged)
    return (
        f"{n} damaged archive{'s' if n > 1 else ''} ({where}): the load is incomplete; what came before "
        "the damage is loaded. Load an intact copy, or pass --allow-partial to accept what was readable"
    )


def _read_all(
    archives: Sequence[Path],
    first: int,
    skip: int,
    writer: _Writer,
    options: LoadOptions,
    *,
    org_id: str | None,
    progress: ProgressFn | None,
) -> None:
    """Parse and validate every record into batches for the writer, archive by archive."""
    done_bytes = sum(p.stat().st_size for p in archives[:first])
    read = 0
    encoder = BlockEncoder(org_id)
    for index in range(first, len(archives)):
        path = archives[index]
        start = skip if index == first else 0
        archive = open_archive(path, fmt=options.fmt, compression=options.compression, skip=start)
        try:
            for block in archive.blocks(options.batch_size):
                batch = _Batch(index, block.first_index)
                _classify_block(block, batch, org_id, encoder)
                read += len(block.items)
                batch.records_done = block.first_index + len(block.items)
                if block.error is not None:
                    record = _damaged_record(archive, block.error, batch.records_done)
                    _classify(record, batch, org_id)
                    batch.damaged = True
                    writer.summary.damaged.append(_damage(archive, record))
                    batch.records_done += 1
                    batch.read += 1
                    read += 1
                writer.put(batch)
                if progress is not None:
                    progress(done_bytes + archive.counter.consumed, writer.summary.resumed_from + read)
        finally:
            archive.close()
        writer.put(_Batch(index + 1, 0))  # checkpoints "this archive is finished"
        done_bytes += path.stat().st_size
        if progress is not None:
            progress(done_bytes, writer.summary.resumed_from + read)


def _damaged_record(archive: Archive, exc: BaseException, index: int) -> Record:
    """The record standing for the unreadable rest of an archive (a cut or corrupt
    compressed stream, a broken JSON array, a cut BSON document or line), at the byte of
    the decompressed content where it broke."""
    offset = exc.offset if isinstance(exc, DamagedArchive) else None
    reason = exc.reason if isinstance(exc, DamagedArchive) else str(exc) or type(exc).__name__
    return Record(index, f"byte {offset if offset is not None else archive.content.consumed}",
                  error=f"archive damaged, unreadable from here on: {reason}", damaged=True)


def _damage(archive: Archive, record: Record) -> dict[str, Any]:
    """How far a damaged archive could be read, for the summary."""
    return {
        "archive": str(archive.path),
        "position": record.position,
        "records_before": record.index,
        "file_bytes_read": archive.counter.consumed,
        "file_bytes": archive.path.stat().st_size,
        "reason": record.error,
    }


def _classify_block(block: RecordBlock, batch: _Batch, org_id: str | None, encoder: BlockEncoder) -> None:
    """Put a block's records into the batch's documents or its rejects, in their order:
    the lines the block path encodes as they are, the others one by one."""
    lines = [item for item in block.items if isinstance(item, bytes)]
    encoded = encoder.encode(lines) if lines else None
    batch.read += len(block.items)
    if encoded is not None and len(lines) == len(block.items) and all(encoded.vouched):
        batch.docs.extend(encoded.documents)
        batch.positions.extend([f"line {n}" for n in block.line_numbers])
        _merge_seen(batch.last_seen, encoded.last_seen)
        return
    vouched = encoded.vouched if encoded is not None else []
    line = 0  # of the block's raw lines
    done = 0  # of the encoded documents
    for i, item in enumerate(block.items):
        if not isinstance(item, bytes):
            _classify(item, batch, org_id)
            continue
        position = f"line {block.line_numbers[i]}"
        if vouched[line]:
            assert encoded is not None
            batch.docs.append(encoded.documents[done])
            batch.positions.append(position)
            done += 1
        else:
            _classify(parse_line(block.first_index + i, position, item), batch, org_id)
        line += 1
    if encoded is not None:
        _merge_seen(batch.last_seen, encoded.last_seen)


def _merge_seen(into: LastSeen, seen: LastSeen) -> None:
    if not into:  # a batch's first block, the usual case: its entries are the batch's own
        into.update(seen)
        return
    for (org, asset), (newest, count) in seen.items():
        add_seen(into, org, asset, newest, count)


def _millis(moment: datetime) -> int:
    return (moment - _EPOCH) // _MILLISECOND


def _classify(record: Record, batch: _Batch, org_id: str | None) -> None:
    """Put one record into the batch's documents or its rejects."""
    if record.error is not None:
        batch.rejects.append((record, "", record.error))
        return
    try:
        doc = validate_snapshot(record.payload)
        if org_id is not None and doc["orgId"] != org_id:
            raise ValidationError(
                "orgId", f"record belongs to org {doc['orgId']!r}; this load is for org {org_id!r}"
            )
        check_nesting(doc)  # before anything recursive (BSON encoding) sees the document
    except ValidationError as exc:
        batch.rejects.append((record, exc.field, exc.reason))
        return
    batch.docs.append(doc)
    batch.positions.append(record.position)
    add_seen(batch.last_seen, doc["orgId"], doc["assetId"], _millis(doc["timestamp"]))


def _rejects_path(rejects: str | Path | None, archives: Sequence[Path]) -> Path | None:
    """The rejects file, which must not be one of the archives (opening it empties it)."""
    if not rejects:
        return None
    path = Path(rejects)
    for archive in archives:
        if path.resolve() == archive.resolve() or (path.exists() and path.samefile(archive)):
            raise InvalidArgument(f"the rejects file {path} is one of the archives to load; name another file")
    return path


def _open_rejects(path: Path | None, keep_bytes: int) -> IO[bytes] | None:
    """Open the rejects file: emptied for a new load, cut back to the checkpoint on resume.

    A resume whose rejects file is gone or shorter than the checkpoint counted is refused:
    the rejects of the committed part would be lost (or padded with zero bytes)."""
    if path is None:
        return None
    if keep_bytes:
        size = path.stat().st_size if path.exists() else None
        if size is None or size < keep_bytes:
            found = "is missing" if size is None else f"has {size:,} bytes"
            raise CheckpointError(
                f"the rejects file {path} {found}, but the interrupted load being resumed wrote "
                f"{keep_bytes:,} bytes to it; restore it, or pass --restart to load everything again"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = path.open("r+b" if keep_bytes else "wb")
    fh.truncate(keep_bytes)
    fh.seek(0, 2)
    return fh
