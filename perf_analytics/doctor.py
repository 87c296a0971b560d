"""Health checks for one org's snapshots, and the repairs that are safe to automate.

`diagnose` looks for what breaks extraction or misleads dashboards: missing indexes,
snapshots stored with off types (an `_id` that is no ObjectId, a string timestamp, a
metric as string or int, a count as string), ids that break the identifier rule, legacy
snapshots still in `assets`, snapshots whose asset does not exist, and assets whose
lastSeen is behind their newest snapshot. With `fix` it creates the indexes,
re-normalises off-type snapshots with the snapshot contract (the kinds and paths come
from `schema.py`), gives each a proper ObjectId `_id` (`schema.repaired_id`) and moves
lastSeen forward; bad ids are only reported (renaming them is the application's call),
legacy documents are left to `migrate`, and orphans to a person.

How it reads depends on the server. MongoDB answers each check's filter from the orgId
index and returns only the few bad documents, so there every check asks the server. A
server that reads the whole collection for every query (FerretDB 1.24) is instead read
once: one pass over the org's snapshots answers the healthy case of every check (see
`_OrgScan`), and only a check that pass finds suspect asks the server its exact question.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bson import ObjectId
from pymongo.errors import OperationFailure

from perf_analytics.errors import InvalidArgument, PerfAnalyticsError, ValidationError
from perf_analytics.migrate import legacy_filter, legacy_org_ids
from perf_analytics.schema import (
    ASSETS,
    ID_RULE,
    OFF_TYPE_KINDS,
    SNAPSHOTS,
    Problem,
    asset_id_filter,
    count_paths,
    is_valid_id,
    metric_paths,
    off_type_kinds,
    repaired_id,
    validate_snapshot,
)
from perf_analytics.store import (
    KEY_INDEX,
    AssetStats,
    Db,
    Doc,
    asset_snapshot_stats,
    count_asset_snapshot,
    ensure_indexes,
    is_duplicate_key,
    missing_indexes,
    probe_capabilities,
    touch_assets,
)

EXAMPLES = 5  # example ids kept per finding
MAX_LISTED = 20  # unrepairable snapshots and assets listed by name; the counts are complete
BATCH_SIZE = 1000
_ID_CHUNK = 1000  # ids per $in when looking assets up
_NOT_IMPLEMENTED = 238

# Snapshots whose `_id` is being replaced: the repaired document waits here while the old
# one is deleted and the new one inserted (both cannot exist at once: they share the
# unique key, and FerretDB 1.24 treats a 24-hex string and its ObjectId as one _id).
REPAIR_JOURNAL = "repair_journal"
REPAIR_PENDING = "_id repair interrupted (kept in repair_journal)"
KINDS = (REPAIR_PENDING, *OFF_TYPE_KINDS)
_DUPLICATE = "another snapshot has the same (orgId, assetId, timestamp)"


@dataclass(frozen=True)
class Kind:
    """One line of a check's breakdown: a kind of problem, how often, a few examples."""

    label: str
    count: int
    examples: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Check:
    """The outcome of one check: how many problems it found and how many `fix` repaired."""

    name: str
    found: int = 0
    fixed: int = 0
    fixable: bool = True
    examples: list[str] = field(default_factory=list)
    kinds: list[Kind] = field(default_factory=list)
    hint: str = ""

    @property
    def remaining(self) -> int:
        return self.found - self.fixed


@dataclass(frozen=True)
class DoctorReport:
    """One org's checks, in the order they ran."""

    org_id: str
    fix: bool
    indexes: Check
    off_type: Check
    invalid_ids: Check
    legacy: Check
    orphaned: Check
    stale_last_seen: Check
    unrepairable: list[Problem] = field(default_factory=list)  # off-type snapshots `fix` left

    @property
    def checks(self) -> list[Check]:
        return [self.indexes, self.off_type, self.invalid_ids, self.legacy, self.orphaned, self.stale_last_seen]

    @property
    def healthy(self) -> bool:
        """True when no check has a problem left (after the repairs, with `fix`)."""
        return all(check.remaining == 0 for check in self.checks)


@dataclass(frozen=True)
class AllOrgsReport:
    """The admin run over every org: the collection-level index check, then each org."""

    fix: bool
    indexes: Check
    orgs: list[DoctorReport]

    @property
    def healthy(self) -> bool:
        return self.indexes.remaining == 0 and all(report.healthy for report in self.orgs)


def diagnose(db: Db, org_id: str, *, fix: bool = False) -> DoctorReport:
    """Check `org_id`'s snapshots and assets; with `fix`, repair what can be repaired safely.

    Every query and write is filtered by `org_id`, except the index check, which is about
    the collection. Repairs run before the lastSeen check, so lastSeen moves to the newest
    snapshot with its timestamp repaired.

    Raises:
        InvalidArgument: no `org_id`.
    """
    if not org_id:
        raise InvalidArgument("an org id is required")
    indexes = diagnose_indexes(db, fix=fix)
    scan = _scan_org(db, org_id) if _scans_per_query(db) else None
    off_type, unrepairable = _check_off_type(db, org_id, fix=fix, scan=scan)
    if scan is not None and fix and off_type.found:
        # The repairs rewrote snapshots (timestamps, _ids): read what they left.
        scan = _scan_org(db, org_id)
    invalid_ids = _check_ids(db, org_id, scan=scan)
    legacy = _check_legacy(db, org_id)
    orphaned, stale = _check_assets(db, org_id, fix=fix, scan=scan)
    return DoctorReport(
        org_id=org_id,
        fix=fix,
        indexes=indexes,
        off_type=off_type,
        invalid_ids=invalid_ids,
        legacy=legacy,
        orphaned=orphaned,
        stale_last_seen=stale,
        unrepairable=unrepairable,
    )


def diagnose_all_orgs(db: Db, *, fix: bool = False) -> AllOrgsReport:
    """Admin call across tenants: `diagnose` every org that has snapshots or legacy documents.

    Lists the distinct orgIds, then runs the per-org checks one org at a time, so each of
    them stays filtered by one org. The index check runs first, once, and also on an
    empty database.
    """
    indexes = diagnose_indexes(db, fix=fix)
    orgs = sorted(
        {org for org in db[SNAPSHOTS].distinct("orgId") if isinstance(org, str) and org}
        | set(legacy_org_ids(db))
    )
    return AllOrgsReport(fix=fix, indexes=indexes, orgs=[diagnose(db, org, fix=fix) for org in orgs])


def diagnose_indexes(db: Db, *, fix: bool = False) -> Check:
    """Which snapshot indexes are missing; with `fix`, create them."""
    name = "missing indexes"
    missing = missing_indexes(db)
    if not missing or not fix:
        hint = "run `perf-analytics doctor --fix` or `init`" if missing else ""
        return Check(name, found=len(missing), examples=missing, hint=hint)
    try:
        created = ensure_indexes(db).created
    except PerfAnalyticsError as exc:
        # Typically duplicate snapshot keys block the unique index: report it and go on
        # with the other checks rather than stop the whole run.
        return Check(name, found=len(missing), examples=missing, hint=str(exc))
    fixed = sum(1 for index in missing if index in created)
    return Check(name, found=len(missing), fixed=fixed, examples=missing)


# -- one pass over an org's snapshots --------------------------------------------------


@dataclass(frozen=True)
class _OrgScan:
    """What one read of all an org's snapshots tells the checks.

    `off_type` and `bad_ids` are conservative: true whenever the server's exact filter
    could match (a document with any off-type kind, an assetId or agentId that is not an
    identifier string, including missing or array values), so a false one answers the
    check with nothing found, and a true one sends the check to the server. `stats` is
    what `store.asset_snapshot_stats` computes, by the same per-document step.
    """

    snapshots: int
    off_type: bool
    bad_ids: bool
    stats: AssetStats


def _scans_per_query(db: Db) -> bool:
    """Whether the server reads the whole collection for every filtered query.

    FerretDB 1.24 does (about 1,500 documents a second), so each check's own query costs
    as much as reading the org's snapshots once, and one pass replaces five or six
    queries. MongoDB answers the checks from the orgId index and returns only the bad
    documents, which is cheaper than shipping every snapshot to the client.
    """
    return probe_capabilities(db).server.startswith("FerretDB")


def _scan_org(db: Db, org_id: str) -> _OrgScan:
    """Read `org_id`'s snapshots once and answer every check's healthy case (`_OrgScan`)."""
    stats: AssetStats = {}
    snapshots = 0
    off_type = bad_ids = False
    # No projection: every field's type is checked, and FerretDB applies one after
    # reading the whole document anyway.
    for doc in db[SNAPSHOTS].find({"orgId": org_id}, batch_size=BATCH_SIZE):
        snapshots += 1
        off_type = off_type or bool(off_type_kinds(doc))
        bad_ids = bad_ids or not (is_valid_id(doc.get("assetId")) and is_valid_id(doc.get("agentId")))
        count_asset_snapshot(stats, doc)
    return _OrgScan(snapshots, off_type, bad_ids, stats)


# -- off-type snapshots -------------------------------------------------------------


def off_type_filter(db: Db, org_id: str) -> Doc:
    """The server-side filter for `org_id`'s off-type snapshots: one `$type` clause per field.

    `$type` on a path through an array ("performanceData.disk.usagePercent") matches when
    any element matches, in MongoDB and, as checked against FerretDB 1.24, there too; so
    metrics inside disk[], network.interfaces[] and cpu.perCore need no client-side scan.
    Only positive `$type` lists are used on those paths: FerretDB evaluates `$not` over
    array paths element by element, unlike MongoDB (`_id` and `timestamp` are never
    arrays, so `$not` is safe there). FerretDB rejects the "decimal" alias (it stores no
    Decimal128), so that type is only asked of MongoDB. One clause per path, with every
    wrong type in it, keeps FerretDB's per-document filter cost down; the few documents
    found are sorted into kinds by the contract's `off_type_kinds`.
    """
    bad_metric = ["string", "int", "long", "bool", "object"]
    bad_count = ["string", "double", "bool", "object"]
    if not probe_capabilities(db).server.startswith("FerretDB"):
        bad_metric.append("decimal")
        bad_count.append("decimal")
    clauses: list[Doc] = [{"_id": {"$not": {"$type": "objectId"}}}, {"timestamp": {"$not": {"$type": "date"}}}]
    clauses += [{path: {"$type": bad_metric}} for path in metric_paths()]
    clauses += [{path: {"$type": bad_count}} for path in count_paths()]
    return {"orgId": org_id, "$or": clauses}


def _off_type_batches(db: Db, query: Doc, *, fix: bool, skip: Sequence[Any]) -> Iterator[list[Doc]]:
    """The off-type documents in batches.

    Read-only: one cursor. With fix, repaired documents stop matching, so each batch is a
    fresh query minus those left unrepaired (`skip` grows as the caller records them); no
    cursor stays open across the writes and no assumption is made about _id's type.
    """
    if not fix:
        batch: list[Doc] = []
        for doc in db[SNAPSHOTS].find(query, sort=[("_id", 1)], batch_size=BATCH_SIZE):
            batch.append(doc)
            if len(batch) == BATCH_SIZE:
                yield batch
                batch = []
        if batch:
            yield batch
        return
    while True:
        page = dict(query)
        if skip:
            page["_id"] = {"$nin": list(skip)}
        batch = list(db[SNAPSHOTS].find(page, sort=[("_id", 1)], limit=BATCH_SIZE))
        if not batch:
            return
        yield batch


def _check_off_type(db: Db, org_id: str, *, fix: bool, scan: _OrgScan | None) -> tuple[Check, list[Problem]]:
    counts: dict[str, int] = dict.fromkeys(KINDS, 0)
    examples: dict[str, list[str]] = {kind: [] for kind in KINDS}
    found = repaired = 0
    skip: list[Any] = []
    seen: set[Any] = set()
    unrepairable: list[Problem] = []
    # Without the unique index (it could not be created) the server would accept a
    # repaired timestamp that duplicates another snapshot's key, so check it here.
    check_key = fix and KEY_INDEX in missing_indexes(db)

    def count(kind: str, doc_id: Any) -> None:
        counts[kind] += 1
        if len(examples[kind]) < EXAMPLES:
            examples[kind].append(str(doc_id))

    def leave(doc_id: Any, reason: str) -> None:
        skip.append(doc_id)
        if len(unrepairable) < MAX_LISTED:
            unrepairable.append(Problem(doc_id, reason))

    # First what an interrupted run left half done, so its old document is gone (or goes
    # now) before the scan below could count it again.
    for entry in list(db[REPAIR_JOURNAL].find({"orgId": org_id}, sort=[("_id", 1)])):
        found += 1
        count(REPAIR_PENDING, entry["_id"])
        if fix:
            reason = _finish_id_repair(db, org_id, entry)
            if reason is None:
                repaired += 1
            else:
                leave(entry["oldId"], reason)
    # A pass that saw no off-type snapshot answers for the server's filter (a superset of it).
    suspect = scan is None or scan.off_type
    for batch in _off_type_batches(db, off_type_filter(db, org_id), fix=fix, skip=skip) if suspect else ():
        for doc in batch:
            doc_id = doc["_id"]
            if doc_id in seen:
                # Repaired, yet still matching: the repair and the checks disagree. Never
                # loop on it; report it so the disagreement gets fixed.
                repaired -= 1
                leave(doc_id, "still off-type after repair")
                continue
            seen.add(doc_id)
            found += 1
            for kind in off_type_kinds(doc):
                count(kind, doc_id)
            if not fix:
                continue
            reason = _repair(db, org_id, doc, check_key=check_key)
            if reason is None:
                repaired += 1
            else:
                leave(doc_id, reason)
    kinds = [Kind(kind, counts[kind], examples[kind]) for kind in KINDS if counts[kind]]
    check = Check(
        "off-type snapshots",
        found=found,
        fixed=repaired,
        examples=[e for kind in kinds for e in kind.examples][:EXAMPLES],
        kinds=kinds,
        hint=_off_type_hint(found - repaired, fix=fix),
    )
    return check, unrepairable


def _repair(db: Db, org_id: str, doc: Doc, *, check_key: bool) -> str | None:
    """Re-normalise one off-type snapshot; return why not, or None when repaired.

    The `_id` is not validated here: a document with an ObjectId `_id` is replaced in
    place, any other goes through `_repair_id`.
    """
    try:
        fixed = validate_snapshot({k: v for k, v in doc.items() if k != "_id"}, org_id=org_id, coerce=True)
    except ValidationError as exc:
        return f"invalid: {exc}"
    if (check_key or not isinstance(doc["_id"], ObjectId)) and _key_taken(db, org_id, doc, fixed):
        return _DUPLICATE
    if not isinstance(doc["_id"], ObjectId):
        return _repair_id(db, org_id, doc["_id"], fixed)
    # Without _id: FerretDB 1.24 skips a replacement that carries _id and differs only in
    # numeric type (long 4e9 vs double 4e9), answering nModified 0.
    try:
        db[SNAPSHOTS].replace_one({"_id": doc["_id"], "orgId": org_id}, fixed)
    except OperationFailure as exc:
        if not is_duplicate_key(exc):
            raise
        return _DUPLICATE
    return None


def _key_taken(db: Db, org_id: str, doc: Doc, fixed: Doc) -> bool:
    """Whether another snapshot than `doc` already has `fixed`'s (orgId, assetId, timestamp)."""
    key = {"orgId": org_id, "assetId": fixed["assetId"], "timestamp": fixed["timestamp"]}
    return db[SNAPSHOTS].find_one({**key, "_id": {"$ne": doc["_id"]}}, {"_id": 1}) is not None


def _repair_id(db: Db, org_id: str, old_id: Any, fixed: Doc) -> str | None:
    """Store `fixed` under an ObjectId instead of `old_id` (see `schema.repaired_id`).

    The old and the new document cannot both exist (same unique key), so the new one is
    first written to the repair journal, then the old one deleted, the new one inserted,
    and the journal entry removed. A crash anywhere leaves the journal entry, and the next
    `doctor --fix` finishes it; no step loses the snapshot.
    """
    new_id, extra = repaired_id(org_id, old_id)
    if db[SNAPSHOTS].find_one({"_id": new_id, "orgId": org_id}, {"_id": 1}) is not None:
        return f"its new _id {new_id} is already another snapshot's"
    entry = {"_id": new_id, "orgId": org_id, "oldId": old_id, "doc": {"_id": new_id, **fixed, **extra}}
    db[REPAIR_JOURNAL].replace_one({"_id": new_id, "orgId": org_id}, entry, upsert=True)
    return _finish_id_repair(db, org_id, entry)


def _finish_id_repair(db: Db, org_id: str, entry: Doc) -> str | None:
    """Complete one journalled `_id` repair; each step may already have been done."""
    db[SNAPSHOTS].delete_one({"_id": entry["oldId"], "orgId": org_id})
    try:
        db[SNAPSHOTS].insert_one(entry["doc"])
    except OperationFailure as exc:
        if not is_duplicate_key(exc):
            raise
        if db[SNAPSHOTS].find_one({"_id": entry["_id"], "orgId": org_id}, {"_id": 1}) is None:
            return f"{_DUPLICATE}; the repaired document is kept in {REPAIR_JOURNAL} under _id {entry['_id']}"
    db[REPAIR_JOURNAL].delete_one({"_id": entry["_id"], "orgId": org_id})
    return None


def _off_type_hint(remaining: int, *, fix: bool) -> str:
    if not remaining:
        return ""
    return "could not be repaired: see the list; fix or delete by hand" if fix else "run `perf-analytics doctor --fix`"


# -- legacy snapshots, orphans, lastSeen ----------------------------------------------


def _check_ids(db: Db, org_id: str, *, scan: _OrgScan | None) -> Check:
    """Snapshots whose orgId, assetId or agentId breaks the identifier rule.

    Such ids cannot become lake paths or sink keys safely; renaming them changes what
    the application knows them by, so this is reported, never repaired.
    """
    snapshots = db[SNAPSHOTS]
    if not is_valid_id(org_id):
        total = scan.snapshots if scan is not None else snapshots.count_documents({"orgId": org_id})
        kinds = [Kind("orgId", total, [repr(org_id)])] if total else []
    elif scan is not None and not scan.bad_ids:
        total, kinds = 0, []
    else:
        bad = {name: [v for v in snapshots.distinct(name, {"orgId": org_id}) if not is_valid_id(v)]
               for name in ("assetId", "agentId")}
        kinds = [
            Kind(name, snapshots.count_documents({"orgId": org_id, name: {"$in": values}}),
                 [repr(v) for v in values[:EXAMPLES]])
            for name, values in bad.items() if values
        ]
        clauses: list[Doc] = [{name: {"$in": values}} for name, values in bad.items() if values]
        total = snapshots.count_documents({"orgId": org_id, "$or": clauses}) if clauses else 0
    return Check(
        "ids outside the rule",
        found=total,
        fixable=False,
        kinds=kinds,
        examples=[e for kind in kinds for e in kind.examples][:EXAMPLES],
        hint=f"ids must use {ID_RULE}; rename them in the application's data" if total else "",
    )


def _check_legacy(db: Db, org_id: str) -> Check:
    query = legacy_filter(org_id)
    count = db[ASSETS].count_documents(query)
    if not count:
        return Check("legacy snapshots in assets", fixable=False)
    found = db[ASSETS].find(query, {"_id": 1}, sort=[("_id", 1)], limit=EXAMPLES)
    return Check(
        "legacy snapshots in assets",
        found=count,
        fixable=False,
        examples=[str(doc["_id"]) for doc in found],
        hint=f"not repaired by doctor: run `perf-analytics migrate --org {org_id}`",
    )


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    return (items[i : i + size] for i in range(0, len(items), size))


def _check_assets(db: Db, org_id: str, *, fix: bool, scan: _OrgScan | None) -> tuple[Check, Check]:
    """Orphaned snapshots (no asset in the org) and assets whose lastSeen lags.

    An assetId matches an asset the way `store.touch_assets` matches it: a 24-hex id
    names the ObjectId or the string _id, compared as values (not as text).
    """
    stats = scan.stats if scan is not None else asset_snapshot_stats(db, org_id)
    named = sorted(a for a in stats if isinstance(a, str))
    candidates = {asset_id: _id_values(asset_id) for asset_id in named}
    last_seen: dict[Any, Any] = {}
    all_ids = [v for values in candidates.values() for v in values]
    for chunk in _chunks(all_ids, _ID_CHUNK):
        query = {"orgId": org_id, "_id": {"$in": list(chunk)}}
        for asset in db[ASSETS].find(query, {"_id": 1, "lastSeen": 1}):
            last_seen[asset["_id"]] = asset.get("lastSeen")

    orphans = sorted(
        (a for a in stats if a not in candidates or not any(v in last_seen for v in candidates[a])),
        key=repr,
    )
    orphaned = Check(
        "orphaned snapshots",
        found=sum(stats[a][0] for a in orphans),
        fixable=False,
        kinds=[Kind(str(a), stats[a][0]) for a in orphans[:MAX_LISTED]],
        examples=[str(a) for a in orphans[:EXAMPLES]],
        hint=(
            f"{len(orphans)} assetId(s) with no asset in org {org_id}: "
            "create the assets or delete their snapshots"
            if orphans
            else ""
        ),
    )

    stale: dict[str, datetime] = {}
    for asset_id in named:
        newest = stats[asset_id][1]
        seen = [last_seen[v] for v in candidates[asset_id] if v in last_seen]
        if newest is None or not seen:
            continue
        if any(not isinstance(value, datetime) or value < newest for value in seen):
            stale[asset_id] = newest
    fixed = 0
    if fix and stale:
        missing = touch_assets(db, org_id, stale)
        fixed = len(stale) - len(missing)
    stale_check = Check(
        "stale lastSeen",
        found=len(stale),
        fixed=fixed,
        examples=sorted(stale)[:EXAMPLES],
        hint="run `perf-analytics doctor --fix`" if len(stale) > fixed else "",
    )
    return orphaned, stale_check


def _id_values(asset_id: str) -> list[Any]:
    f = asset_id_filter(asset_id)
    return list(f["$in"]) if isinstance(f, dict) else [f]
