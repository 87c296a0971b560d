"""The Parquet lake: Hive partitions written atomically, DuckDB views scoped to one org.

Layout under the lake root (`Settings.lake`, default `data/lake/`), UTC dates, zstd:

```
rollups/window=<w>/orgId=<org>/date=<YYYY-MM-DD>/part-0.parquet             per asset
rollups_disks/window=<w>/orgId=<org>/date=<YYYY-MM-DD>/part-0.parquet       per disk
rollups_interfaces/window=<w>/orgId=<org>/date=<YYYY-MM-DD>/part-0.parquet  per interface
anomalies/orgId=<org>/date=<YYYY-MM-DD>/part-0.parquet
availability/orgId=<org>/date=<YYYY-MM-DD>/part-0.parquet                   per asset and day
snapshots/orgId=<org>/date=<YYYY-MM-DD>/part-<hash>.parquet                 the mirror (`sync`)
```

The rollups are three datasets with the same partitioning rather than one, because the
three levels have different columns; `date` is the bucket's UTC date (a bucket never
straddles two dates). Partition columns live in the path only: they are dropped from the
file, and DuckDB's `hive_partitioning` adds them back with fixed types (`window`, `orgId`
VARCHAR; `date` DATE), so an org named "42" stays a string. Views list them last, in path
order. `window` is an SQL keyword: quote it in queries (`WHERE "window" = '1hour'`). Spark, Trino and Athena read
the same layout.

Derived partitions are replaced whole: `write_partition` writes a hidden temp file in the
partition's directory, fsyncs it, renames it over `part-0.parquet` (atomic on POSIX),
removes any other `part-*.parquet` the partition held, and fsyncs the directory. A crash
leaves either the old or the new partition, plus at worst a hidden `.part-*.tmp` that no
reader lists. A partition holds exactly the rows the last writer passed for it: roll up
whole UTC days, or the partition of a partial day holds a partial day.

`connect_lake(root, org_id=...)` returns an in-memory DuckDB connection whose views
(`rollups`, `rollups_disks`, `rollups_interfaces`, `anomalies`, `availability`, and the
snapshot views) read an explicit list of that org's files, never a glob over all orgs.
The connection is then locked: file access is limited to exactly those files and the
setting cannot be changed back, so SQL on it cannot reach another tenant's data. A view
over a dataset without files yet exists and is empty, with the dataset's columns. The
file list is taken at connect time; reconnect to see partitions written later.
`connect_lake_all_orgs(root)` is the explicitly named admin variant over every org,
without the lock. Both fix DuckDB's memory limit and threads at connect time, and both
raise UnreadableLakeFile, naming the file, for a file DuckDB cannot open.

The snapshot views read the mirror `sync` writes, and only the parts the org's manifest
lists (a killed sync can leave unlisted parts until the next one resolves them):

- `snapshots`: one row per mirrored document in its stored shape (`performanceData` as
  nested structs and lists), `_id` as 24 lowercase hex digits (null when the `_id` is no
  ObjectId: then `_idOther` holds its canonical Extended JSON), `typed` (false when the
  contract's types refused the document), `orgId` and `date`. The exact BSON stays in
  the files (heavy, and not SQL's to decode): `sync.read_lake_documents` gives it back.
- `snapshot_metrics`, `disk_samples`, `interface_samples`: the frames of `frames.py`
  (`snapshots`, `disks`, `interfaces`) with the same columns and values (`_id` as hex
  text), plus `date`, over the `typed` rows only; their SQL is derived from
  `schema.TABLES` as the frames are, so a field added to the contract is a column here.

A filter on `date` opens only that date's files (Hive partition pruning over the listed
files): the view's columns come from one file, the newest date's, whose footer is read
when a query binds; when that part was written under another contract than today's,
every footer is read instead, to unite the columns.

`connect_lake(..., hot=db)` adds to the snapshot views the org's rows the lake lacks yet,
read from the server when connecting (`sync.unsynced_snapshots`: the next sync's own query
and deduplication, held in memory). For an `_id` the lake holds, the lake's row is the
one seen; a query reaches past the last sync, and across what retention removed from the
server. Before the org's first sync, that tail is every snapshot of the org.

The lock still lets SQL write to the org's own files (they are allowed paths), so
`query_lake`, behind `perf-analytics query`, runs only a statement that DuckDB's parser
shows to be a read (`check_read_only`), and names a damaged file it trips over.

The root is a local directory (atomic rename and fsync are filesystem operations).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from perf_analytics import schema
from perf_analytics.atomic import atomic_path, fsync_dir
from perf_analytics.config import DEFAULT_DUCKDB_MEMORY_LIMIT, parse_duckdb_threads
from perf_analytics.errors import (
    ConfigError,
    LakeError,
    NotReadOnly,
    QueryError,
    UnreadableLakeFile,
)
from perf_analytics.frames import column_name, empty_frames, snake
from perf_analytics.manifest import manifest_path
from perf_analytics.rollups import Rollups, compute_availability, compute_rollups
from perf_analytics.schema import COUNT, ID_RULE, PERCENTS, Table, is_valid_id
from perf_analytics.store import Db

PART = "part-0.parquet"
ROLLUP_DATASETS = {"assets": "rollups", "disks": "rollups_disks", "interfaces": "rollups_interfaces"}
ANOMALIES = "anomalies"
# The anomaly flags' baseline state: version=<n>/orgId=<org>/date=<D>/ (see anomaly_state.py).
ANOMALY_STATE = "anomaly_state"
AVAILABILITY = "availability"
SNAPSHOTS = "snapshots"

# Partition keys of each dataset, in path order, with their DuckDB types.
PARTITIONING: dict[str, tuple[tuple[str, str], ...]] = {
    **dict.fromkeys(ROLLUP_DATASETS.values(), (("window", "VARCHAR"), ("orgId", "VARCHAR"), ("date", "DATE"))),
    ANOMALIES: (("orgId", "VARCHAR"), ("date", "DATE")),
    AVAILABILITY: (("orgId", "VARCHAR"), ("date", "DATE")),
    SNAPSHOTS: (("orgId", "VARCHAR"), ("date", "DATE")),
}

ANOMALY_SCHEMA = pa.schema(
    [
        ("orgId", pa.string()),
        ("assetId", pa.string()),
        ("metric", pa.string()),
        ("detector", pa.string()),
        ("start", pa.timestamp("ms", tz="UTC")),
        ("end", pa.timestamp("ms", tz="UTC")),
        ("severity", pa.string()),
        ("score", pa.float64()),
        ("message", pa.string()),
    ]
)

# DuckDB expands these in the paths read_parquet is given (glob) and decodes %xx in Hive
# partition values; a lake root holding one would read other files than those listed.
_ROOT_FORBIDDEN = ("*", "?", "[", "]", "{", "}", "%")


# ---- writing ------------------------------------------------------------------------------


def _check_part(what: str, value: str) -> str:
    """`value` when it may be a path segment: the identifier rule of the snapshot contract
    (org ids, dataset and key names, windows and dates all follow it)."""
    if not is_valid_id(value):
        raise LakeError(f"{what} {value!r} cannot be a partition path segment: use {ID_RULE}")
    return value


def _check_root(root: str | os.PathLike[str]) -> Path:
    """The lake root as a Path, refused when DuckDB would read it as a pattern."""
    text = os.fspath(root)
    found = sorted({c for c in text if c in _ROOT_FORBIDDEN})
    if found:
        raise LakeError(f"lake root {text!r} holds {' '.join(found)}, which DuckDB reads as a pattern; choose another path")
    return Path(text)


def partition_dir(root: str | os.PathLike[str], dataset: str, partition: Mapping[str, str]) -> Path:
    """`<root>/<dataset>/key=value/...` for the partition, keys in the order given."""
    path = _check_root(root) / _check_part("dataset", dataset)
    for key, value in partition.items():
        path /= f"{_check_part('partition key', key)}={_check_part(f'value of {key}', value)}"
    return path


def write_partition(
    root: str | os.PathLike[str], dataset: str, partition: Mapping[str, str], table: pa.Table | pl.DataFrame
) -> Path:
    """Replace the partition's content with `table`, atomically; returns the file written.

    Columns named like the partition keys are dropped (the path carries them).

    Raises:
        LakeError: a partition value that cannot be a path segment.
    """
    directory = partition_dir(root, dataset, partition)
    arrow = table.to_arrow() if isinstance(table, pl.DataFrame) else table
    arrow = arrow.drop_columns([c for c in partition if c in arrow.column_names])
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LakeError(f"cannot create partition directory {directory}: {exc.strerror or exc}") from None
    final = directory / PART
    with atomic_path(final) as tmp:
        # No dictionary pages: a day's rollups are mostly distinct floats, which a dictionary
        # only costs time on, and zstd packs the repeated ids as well. Measured on a day's
        # 1min and 5min rollups of 25 assets: 0.42 of the write time, 0.78 of the bytes.
        pq.write_table(arrow, tmp, compression="zstd", use_dictionary=False)
    stale = [p for p in directory.glob("part-*.parquet") if p.name != PART]
    for path in stale:
        path.unlink()
    if stale:
        fsync_dir(directory)
    return final


def write_rollups(root: str | os.PathLike[str], rollups: Mapping[str, Rollups]) -> list[Path]:
    """Write each window's rollups to `rollups*/window=/orgId=/date=/`, one file per partition.

    Every (window, org, date) present in `rollups` is replaced; others are left alone.
    """
    written: list[Path] = []
    for window, r in rollups.items():
        for level, frame in (("assets", r.assets), ("disks", r.disks), ("interfaces", r.interfaces)):
            dataset = ROLLUP_DATASETS[level]
            dated = frame.with_columns(pl.col("bucket").dt.date().alias("date"))
            for (org, day), part in _partitions(dated):
                written.append(
                    write_partition(root, dataset, {"window": window, "orgId": org, "date": day}, part.drop("date"))
                )
    return written


def write_anomalies(root: str | os.PathLike[str], flags: pl.DataFrame) -> list[Path]:
    """Write anomaly flags to `anomalies/orgId=/date=/` (date: `start`'s UTC date).

    `flags` needs the columns of `ANOMALY_SCHEMA`; each (org, date) present is replaced,
    so pass all of a date's flags at once.
    """
    missing = [name for name in ANOMALY_SCHEMA.names if name not in flags.columns]
    if missing:
        raise LakeError(f"anomaly flags lack column(s) {', '.join(missing)}")
    try:
        table = flags.select(ANOMALY_SCHEMA.names).to_arrow().cast(ANOMALY_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise LakeError(f"anomaly flags do not fit the lake's schema: {exc}") from None
    typed = pl.from_arrow(table)
    assert isinstance(typed, pl.DataFrame)
    dated = typed.with_columns(pl.col("start").dt.date().alias("date"))
    return [
        write_partition(root, ANOMALIES, {"orgId": org, "date": day}, part.drop("date"))
        for (org, day), part in _partitions(dated)
    ]


def write_availability(root: str | os.PathLike[str], availability: pl.DataFrame) -> list[Path]:
    """Write `compute_availability`'s frame to `availability/orgId=/date=/`, replacing each."""
    missing = [c for c in ("orgId", "assetId", "date") if c not in availability.columns]
    if missing:
        raise LakeError(f"availability lacks column(s) {', '.join(missing)}")
    return [
        write_partition(root, AVAILABILITY, {"orgId": org, "date": day}, part)
        for (org, day), part in _partitions(availability)
    ]


def _partitions(frame: pl.DataFrame) -> Iterable[tuple[tuple[str, str], pl.DataFrame]]:
    """(orgId, ISO date) and the rows of each, in key order."""
    if frame.height == 0:
        return
    if frame["orgId"].null_count() or frame["date"].null_count():
        raise LakeError("rows without orgId or date cannot be placed in a partition")
    groups = frame.partition_by(["orgId", "date"], as_dict=True, maintain_order=True)
    for key in sorted(groups, key=lambda k: (str(k[0]), str(k[1]))):
        org, day = key
        yield (str(org), str(day)), groups[key]


# ---- reading ------------------------------------------------------------------------------


def lake_files(root: str | os.PathLike[str], dataset: str, *, org_id: str | None = None) -> list[Path]:
    """The Parquet files of a dataset, sorted; only under `orgId=<org_id>` when given.

    Directories of other orgs are not entered; hidden files (temp files of a crashed
    writer) and files that are not `.parquet` are not listed. A listed directory or file
    whose name breaks the identifier rule (`orgId=*`, a value with `%2F`: written by other
    code) is refused with LakeError: DuckDB would glob or decode it into other rows.
    """
    base = _check_root(root) / _check_part("dataset", dataset)
    wanted = None if org_id is None else f"orgId={_check_part('org id', org_id)}"
    found: list[Path] = []
    for current, dirs, files in os.walk(base):
        dirs[:] = sorted(
            d for d in dirs
            if not d.startswith((".", "_")) and (wanted is None or not d.startswith("orgId=") or d == wanted)
        )
        for d in dirs:
            _check_segment(Path(current) / d)
        if wanted is not None and wanted not in Path(current).relative_to(base).parts:
            continue
        listed = [f for f in files if f.endswith(".parquet") and not f.startswith((".", "_"))]
        found += [_check_segment(Path(current) / f) for f in listed]
    return sorted(found)


def _check_segment(path: Path) -> Path:
    """`path` when its last segment (a file or a `key=value` directory) follows the rule."""
    key, sep, value = path.name.partition("=")
    if not all(is_valid_id(part) for part in ((key, value) if sep else (key,))):
        raise LakeError(f"{path} is not a partition the lake writes ({ID_RULE}); move it out of the lake")
    return path


def _empty_table(dataset: str) -> pa.Table | None:
    """The columns a dataset's view has when it has no files yet (None: no view)."""
    if dataset in ROLLUP_DATASETS.values():
        level = next(k for k, v in ROLLUP_DATASETS.items() if v == dataset)
        frame: pl.DataFrame = getattr(compute_rollups(empty_frames(), windows=["1min"])["1min"], level)
        schema = frame.to_arrow().schema
    elif dataset == ANOMALIES:
        schema = ANOMALY_SCHEMA
    elif dataset == AVAILABILITY:
        schema = compute_availability(empty_frames()).to_arrow().schema
    else:
        return None
    keys = [k for k, _ in PARTITIONING[dataset]]
    fields = [f for f in schema if f.name not in keys]
    fields += [pa.field(k, pa.date32() if t == "DATE" else pa.string()) for k, t in PARTITIONING[dataset]]
    return pa.schema(fields).empty_table()


def _sql_list(paths: Iterable[Path]) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


# ---- the snapshot mirror's views ----------------------------------------------------------

# Views over the mirror that `sync` writes; the flat ones hold the contract's typed rows only.
SNAPSHOT_VIEWS = ("snapshots", "snapshot_metrics", "disk_samples", "interface_samples")
_HOT = "_hot_snapshots"
_EMPTY_SNAPSHOTS = "_empty_snapshots"


def _listed_snapshots(root: str | os.PathLike[str], org_id: str | None) -> tuple[list[Path], pa.Schema]:
    """The snapshot parts the org's manifest lists (every org's when None), by date, and the
    columns a part holds under today's contract.

    Never a directory walk: a killed sync can leave parts no manifest lists, which the next
    sync adopts or removes. A listed path outside its own org's partition is refused.
    """
    from perf_analytics import sync  # sync writes through this module, so it is imported late

    if org_id is None:
        directory = manifest_path(_check_root(root), SNAPSHOTS)
        orgs = sorted(p.name.removeprefix("orgId=").removesuffix(".json") for p in directory.glob("orgId=*.json"))
    else:
        orgs = [org_id]
    found: list[Path] = []
    for org in orgs:
        for part in sync.listed_snapshot_files(root, org_id=org):
            path = Path(root) / part.path
            if path.parent != partition_dir(root, SNAPSHOTS, {"orgId": org, "date": part.date}):
                raise LakeError(f"the snapshot manifest of org {org} lists {part.path}, outside the org's partitions")
            found.append(_check_segment(path).resolve())
    return sorted(found, key=lambda p: (p.parent.name, p.name)), sync.part_schema()


def _snapshot_scan(files: list[Path], current: pa.Schema) -> str:
    """SQL reading the listed parts (without `bson`), the newest date's last part first.

    DuckDB takes the view's columns from the first file of the list and, with a filter on
    `date`, opens no other file outside that date. When that part does not hold today's
    contract (`current`: written by an older sync), every footer is read to unite the columns.
    """
    newest = files[-1]
    try:
        same = pq.read_schema(newest).equals(current, check_metadata=False)
    except (OSError, pa.ArrowException) as exc:
        raise UnreadableLakeFile(newest, _first_line(exc)) from None
    types = ", ".join(f"'{k}': '{t}'" for k, t in PARTITIONING[SNAPSHOTS])
    unite = "" if same else ", union_by_name = true"
    return (
        f"SELECT * EXCLUDE (bson) FROM read_parquet({_sql_list([newest, *files[:-1]])}, "
        f"hive_partitioning = true, hive_types = {{{types}}}{unite})"
    )


def _snapshot_views(
    con: duckdb.DuckDBPyConnection, root: str | os.PathLike[str], org_id: str | None, hot: pa.Table | None
) -> list[Path]:
    """Create the four snapshot views over the listed parts (and `hot`, the unsynced tail).

    `hot` holds only rows the lake lacks (`sync.unsynced_snapshots`), so the union needs no
    deduplication: for an `_id` in both, the lake's row is the one seen. Returns the files.
    """
    files, current = _listed_snapshots(root, org_id)
    sources = [_snapshot_scan(files, current)] if files else []
    if hot is not None:
        con.register(_HOT, hot)
        sources.append(f"SELECT * FROM {_HOT}")
    if not sources:
        keys = [pa.field(k, pa.date32() if t == "DATE" else pa.string()) for k, t in PARTITIONING[SNAPSHOTS]]
        con.register(_EMPTY_SNAPSHOTS, pa.schema([*(f for f in current if f.name != "bson"), *keys]).empty_table())
        sources.append(f"SELECT * FROM {_EMPTY_SNAPSHOTS}")
    rows = " UNION ALL BY NAME ".join(f"({sql})" for sql in sources)
    try:
        for name, sql in zip(SNAPSHOT_VIEWS, _snapshot_view_sql(rows), strict=True):
            con.execute(f"CREATE VIEW {name} AS {sql}")
    except duckdb.Error as exc:
        con.close()
        raise _unreadable_file(exc, files, scan=True) or LakeError(
            f"cannot open the lake's snapshot files: {_first_line(exc)}"
        ) from None
    return files


def _snapshot_view_sql(rows: str) -> list[str]:
    """The SELECTs of SNAPSHOT_VIEWS over `rows` (part-file columns, `orgId`, `date`).

    Derived from the contract (`schema.TABLES`) as the frames are (`frames.py`), with the
    same column names: a field added to the contract is a column here without an edit.
    """
    tables = schema.TABLES
    stored = f"SELECT lower(hex(_id)) AS _id, * EXCLUDE (_id, orgId, date), orgId, date FROM ({rows})"
    metrics = ", ".join(column for t in tables for column in _metric_columns(t))
    flat = (
        f'SELECT _id, orgId, agentId, assetId, "timestamp", timeWindow, {metrics}, date '
        "FROM snapshots WHERE typed"
    )
    items = {t.item: _item_sql(t) for t in tables if t.repeated}
    return [stored, flat, items["disk"], items["interface"]]


def _path_sql(path: str) -> str:
    """The value at a dotted path of a stored document (struct fields all the way)."""
    head, *rest = path.split(".")
    return _ident(head) + "".join(f"[{_literal(name)}]" for name in rest)


def _sql_type(kind: str) -> str:
    if kind == COUNT:
        return "BIGINT"
    return "DOUBLE[]" if kind == PERCENTS else "DOUBLE"


def _metric_columns(table: Table) -> list[str]:
    """A table's columns in `snapshot_metrics`, as `frames._snapshot_columns` makes them."""
    base = _path_sql(table.path)
    if not table.repeated:
        return [f"{base}[{_literal(name)}] AS {_ident(column_name(table, name))}" for name, _, _ in table.fields]
    if not table.sum_prefix:
        return []
    # As in the frames: a snapshot without the list has no sum (null, not 0); an empty list sums to 0.
    return [
        f"CAST(CASE WHEN {base} IS NULL THEN NULL ELSE coalesce(list_sum(list_transform({base}, lambda x: "
        f"x[{_literal(name)}])), 0) END AS {_sql_type(kind)}) AS {_ident(f'{table.sum_prefix}_{snake(name)}')}"
        for name, kind, _ in table.fields
    ]


def _item_sql(table: Table) -> str:
    """One row per object of a repeated table, as `frames._item_frame` makes them."""
    fields = ", ".join(f"item[{_literal(name)}] AS {_ident(column_name(table, name))}" for name, _, _ in table.fields)
    return (
        f"SELECT orgId, assetId, \"timestamp\", item['name'] AS {_ident(table.item)}, {fields}, date FROM ("
        f"SELECT orgId, assetId, \"timestamp\", date, unnest({_path_sql(table.path)}) AS item FROM snapshots WHERE typed"
        ") WHERE item IS NOT NULL"
    )


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _connect(
    root: str | os.PathLike[str], org_id: str | None, *, memory_limit: str, threads: int | None, hot: pa.Table | None = None
) -> tuple[duckdb.DuckDBPyConnection, list[Path]]:
    if not Path(root).is_dir() and Path(root).exists():
        raise LakeError(f"lake root {root} is not a directory")
    # Memory and threads are set here, before any lock: `query` refuses SET statements.
    cpus = (os.cpu_count() or 1) if threads is None else parse_duckdb_threads(threads)
    try:
        con = duckdb.connect(config={"memory_limit": memory_limit, "threads": cpus})
    except duckdb.Error:
        raise ConfigError(
            "duckdb_memory_limit (env PERF_DUCKDB_MEMORY_LIMIT) must be a size such as 4GB or a share of RAM such as 50%"
        ) from None
    # The lake is UTC: timestamps come back in UTC whatever the machine's time zone.
    con.execute("SET TimeZone = 'UTC'")
    every = _snapshot_views(con, root, org_id, hot)
    for dataset, keys in PARTITIONING.items():
        if dataset == SNAPSHOTS:
            continue
        files = [p.resolve() for p in lake_files(root, dataset, org_id=org_id)]
        every += files
        if files:
            types = ", ".join(f"'{k}': '{t}'" for k, t in keys)
            names = ", ".join(f'"{k}"' for k, _ in keys)  # path order, as in the empty views
            try:
                con.execute(
                    f"CREATE VIEW {dataset} AS SELECT * EXCLUDE ({names}), {names} FROM read_parquet("
                    f"{_sql_list(files)}, hive_partitioning = true, hive_types = {{{types}}}, union_by_name = true)"
                )
            except duckdb.Error as exc:
                con.close()
                # The SQL is ours, so a failure here is the files': find the one at fault.
                raise _unreadable_file(exc, files, scan=True) or LakeError(
                    f"cannot open the lake's {dataset} files: {_first_line(exc)}"
                ) from None
        else:
            empty = _empty_table(dataset)
            if empty is not None:
                con.register(f"_empty_{dataset}", empty)
                con.execute(f"CREATE VIEW {dataset} AS SELECT * FROM _empty_{dataset}")
    return con, every


def connect_lake(
    root: str | os.PathLike[str],
    *,
    org_id: str,
    hot: Db | None = None,
    memory_limit: str = DEFAULT_DUCKDB_MEMORY_LIMIT,
    threads: int | None = None,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection over one org's lake partitions only, locked to those files.

    With `hot` (the database), the snapshot views also hold the org's snapshots the lake
    lacks yet (what its next sync would add, read now into memory), so a query reaches past
    the last sync and, with retention, across what is left on the server. `memory_limit`
    ("4GB", or a share of RAM such as "50%") and `threads` (None: every CPU) are fixed
    before the lock. A lake file DuckDB cannot open raises UnreadableLakeFile.

    Raises:
        LakeError: a bad org id or lake root.
        ConfigError: an unusable DuckDB memory limit or thread count.
        UnreadableLakeFile: a lake file DuckDB cannot open.
    """
    return _connect_org(root, org_id, hot=hot, memory_limit=memory_limit, threads=threads)[0]


def _connect_org(
    root: str | os.PathLike[str], org_id: str, *, hot: Db | None, memory_limit: str, threads: int | None
) -> tuple[duckdb.DuckDBPyConnection, list[Path]]:
    _check_part("org id", org_id)
    tail = None
    if hot is not None:
        from perf_analytics.sync import unsynced_snapshots  # sync writes through this module

        tail = unsynced_snapshots(hot, root, org_id=org_id)
    con, files = _connect(root, org_id, memory_limit=memory_limit, threads=threads, hot=tail)
    if files:
        con.execute(f"SET allowed_paths = {_sql_list(files)}")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con, files


def connect_lake_all_orgs(
    root: str | os.PathLike[str], *, memory_limit: str = DEFAULT_DUCKDB_MEMORY_LIMIT, threads: int | None = None
) -> duckdb.DuckDBPyConnection:
    """Admin: a DuckDB connection over every org's partitions (cross-tenant, unlocked).

    Raises:
        LakeError: a bad lake root.
        ConfigError: an unusable DuckDB memory limit or thread count.
        UnreadableLakeFile: a lake file DuckDB cannot open.
    """
    con, _ = _connect(root, None, memory_limit=memory_limit, threads=threads)
    return con


# ---- querying -----------------------------------------------------------------------------


READ_STATEMENTS = "SELECT, WITH, FROM, VALUES, DESCRIBE, SUMMARIZE, SHOW, PIVOT ... IN (...), UNPIVOT, EXPLAIN of these"


def check_read_only(sql: str) -> None:
    """Raise QueryError unless `sql` is one statement that only reads.

    DuckDB's own parser decides: every form of SELECT (the list in READ_STATEMENTS parses
    to one), and EXPLAIN [ANALYZE] of such a statement; EXPLAIN ANALYZE runs what it
    explains, so the explained statement is checked too. A PIVOT without an IN list is
    refused: DuckDB turns it into several statements, the first creating a type, and the
    parser does not say what the others are (an INSERT or COPY around a PIVOT looks the same).
    """
    kind = _write_kind(_one_statement(sql))
    if kind is not None:
        hint = "; name the pivoted values, e.g. PIVOT anomalies ON severity IN ('low', 'high') USING count(*)"
        raise NotReadOnly(kind, READ_STATEMENTS, hint if kind.endswith(_PIVOT_WITHOUT_IN) else "")


def _one_statement(sql: str) -> duckdb.Statement:
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(_first_line(exc)) from None
    if len(statements) != 1:
        raise QueryError(f"give one SQL statement (found {len(statements)})")
    return statements[0]


def _write_kind(statement: duckdb.Statement) -> str | None:
    """None for a read statement, else the name of its kind (COPY, INSERT, EXPLAIN of COPY, ...)."""
    try:
        kind = statement.type
    except ValueError:  # a type that this duckdb's Python API has no name for (UPDATE EXTENSIONS)
        return "a kind without a name"
    if kind == duckdb.StatementType.SELECT:
        return _modifying_node(statement.query)
    if kind == duckdb.StatementType.EXPLAIN:
        inner = _write_kind(_explained(statement.query))
        return None if inner is None else f"EXPLAIN of {inner}"
    if kind == duckdb.StatementType.MULTI:  # only a PIVOT without IN parses to several
        return _PIVOT_WITHOUT_IN
    return kind.name.replace("_", " ")


_PIVOT_WITHOUT_IN = "PIVOT without an IN list"


# Query nodes that only read. DuckDB 2 also parses INSERT, UPDATE, DELETE and COPY ... TO
# inside WITH as a SELECT statement (`WITH x AS (COPY ... TO 'f') SELECT 1` writes 'f'),
# so a SELECT's parse tree is walked for nodes of any other type.
_READ_NODES = frozenset({"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"})


def _modifying_node(sql: str) -> str | None:
    """None if every query node of the SELECT statement `sql` reads, else what the first one does."""
    parser = duckdb.connect()
    try:
        row = parser.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
    finally:
        parser.close()
    tree = json.loads(row[0]) if row else {"error": True}
    if tree["error"]:
        return "a query whose parse tree DuckDB cannot show"
    others = sorted(_node_types(tree) - _READ_NODES)
    return f"{others[0].removesuffix('_NODE').removesuffix('_QUERY')} inside a query" if others else None


def _node_types(tree: object) -> set[str]:
    """The types of the query nodes (`*_NODE`) anywhere in a serialized parse tree."""
    if isinstance(tree, list):
        return set().union(*(_node_types(item) for item in tree))
    if not isinstance(tree, dict):
        return set()
    kind = tree.get("type")
    found = {kind} if isinstance(kind, str) and kind.endswith("_NODE") else set()
    return found.union(*(_node_types(value) for value in tree.values()))


def _explained(sql: str) -> duckdb.Statement:
    """The statement an EXPLAIN statement explains: what follows EXPLAIN [ANALYZE] [(options)].

    Found with DuckDB's tokens, so comments and spacing do not matter. `EXPLAIN (SELECT 1)`
    explains a parenthesised query and `EXPLAIN (ANALYZE) COPY ...` has an option list:
    the text after the parenthesis is taken only when the text from it does not parse.
    """
    tokens = duckdb.tokenize(sql)
    ends = [start for start, _ in tokens[1:]] + [len(sql)]
    words = [
        (start, sql[start:end].strip().upper())
        for (start, kind), end in zip(tokens, ends, strict=True)
        if kind != duckdb.token_type.comment
    ]
    i = 2 if words[1][1] in ("ANALYZE", "ANALYSE") else 1  # words[0] is EXPLAIN
    try:
        return _one_statement(sql[words[i][0] :])
    except QueryError:
        depth = words[i][1].count("(")
        while depth:  # skip the option list, up to its closing parenthesis
            i += 1
            depth += words[i][1].count("(") - words[i][1].count(")")
        i += 1
        return _one_statement(sql[words[i][0] :])


def query_lake(
    root: str | os.PathLike[str],
    sql: str,
    *,
    org_id: str,
    hot: Db | None = None,
    memory_limit: str = DEFAULT_DUCKDB_MEMORY_LIMIT,
    threads: int | None = None,
) -> pa.Table:
    """The rows of one read statement over one org's lake (see `check_read_only`).

    The connection is `connect_lake`'s: that org's files only (plus, with `hot`, its
    snapshots not synced yet), and locked. Failures are
    one-line errors: QueryError for the SQL, UnreadableLakeFile naming a damaged file.

    Raises:
        NotReadOnly: the SQL would do more than read.
        QueryError: the SQL fails.
        UnreadableLakeFile: a lake file DuckDB cannot open.
    """
    check_read_only(sql)
    con, files = _connect_org(root, org_id, hot=hot, memory_limit=memory_limit, threads=threads)
    try:
        return con.sql(sql).to_arrow_table()
    except duckdb.Error as exc:
        # Damaged pages surface as bare errors ("Out of buffer", thrift messages) that name
        # no file: then every file is checked. Other errors are the SQL's, unless they name one.
        scan = type(exc) in (duckdb.Error, duckdb.IOException)
        raise _unreadable_file(exc, files, scan=scan) or QueryError(_first_line(exc)) from None
    finally:
        con.close()


def _unreadable_file(exc: duckdb.Error, files: list[Path], *, scan: bool) -> UnreadableLakeFile | None:
    """The file behind a DuckDB error: one the message names, else (with `scan`) any that fails a read."""
    named = [p for p in files if str(p) in str(exc)]
    for path in named or (files if scan else []):
        reason = _read_failure(path)
        if reason is not None:
            return UnreadableLakeFile(path, reason)
    return None


def _read_failure(path: Path) -> str | None:
    """Why DuckDB cannot read every value of the Parquet file at `path`, or None if it can."""
    if not path.is_file():
        return "it is gone (run again to see the lake as it is now)"
    checker = duckdb.connect()
    try:
        # Hashing every column makes DuckDB decode every page (a count could use the footer).
        checker.execute("SELECT max(hash(COLUMNS(*))) FROM read_parquet(?)", [str(path)]).fetchall()
    except duckdb.Error as exc:
        return _first_line(exc)
    finally:
        checker.close()
    return None


def _first_line(exc: Exception) -> str:
    """The first line of an error message, with characters that are not printable replaced."""
    lines = str(exc).splitlines() or [type(exc).__name__]
    return "".join(c if c.isprintable() else "?" for c in lines[0])
