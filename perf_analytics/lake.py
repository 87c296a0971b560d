"""The Parquet lake: Hive partitions written atomically, DuckDB views scoped to one org.

Layout under the lake root (`Settings.lake`, default `data/lake/`), UTC dates, zstd:

```
rollups/window=<w>/orgId=<org>/date=<YYYY-MM-DD>/part-0.parquet             per asset
rollups_disks/window=<w>/orgId=<org>/date=<YYYY-MM-DD>/part-0.parquet       per disk
rollups_interfaces/window=<w>/orgId=<org>/date=<YYYY-MM-DD>/part-0.parquet  per interface
anomalies/orgId=<org>/date=<YYYY-MM-DD>/part-0.parquet
availability/orgId=<org>/date=<YYYY-MM-DD>/part-0.parquet                   per asset and day
snapshots/orgId=<org>/date=<YYYY-MM-DD>/part-<id>.parquet                   (retention's)
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
(`rollups`, `rollups_disks`, `rollups_interfaces`, `anomalies`, `availability`, and
`snapshots` when that
dataset has files) read an explicit list of that org's files, never a glob over all orgs.
The connection is then locked: file access is limited to exactly those files and the
setting cannot be changed back, so SQL on it cannot reach another tenant's data. A view
over a dataset without files yet exists and is empty, with the dataset's columns. The
file list is taken at connect time; reconnect to see partitions written later.
`connect_lake_all_orgs(root)` is the explicitly named admin variant over every org,
without the lock.

The root is a local directory (atomic rename and fsync are filesystem operations).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from perf_analytics.atomic import atomic_path, fsync_dir
from perf_analytics.errors import PerfAnalyticsError
from perf_analytics.frames import empty_frames
from perf_analytics.rollups import Rollups, compute_availability, compute_rollups
from perf_analytics.schema import ID_RULE, is_valid_id

PART = "part-0.parquet"
ROLLUP_DATASETS = {"assets": "rollups", "disks": "rollups_disks", "interfaces": "rollups_interfaces"}
ANOMALIES = "anomalies"
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


class LakeError(PerfAnalyticsError):
    """A lake operation cannot be done: a bad partition value, a missing column, a bad root."""


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
        pq.write_table(arrow, tmp, compression="zstd")
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


def _connect(root: str | os.PathLike[str], org_id: str | None) -> tuple[duckdb.DuckDBPyConnection, list[Path]]:
    if not Path(root).is_dir() and Path(root).exists():
        raise LakeError(f"lake root {root} is not a directory")
    con = duckdb.connect()
    # The lake is UTC: timestamps come back in UTC whatever the machine's time zone.
    con.execute("SET TimeZone = 'UTC'")
    every: list[Path] = []
    for dataset, keys in PARTITIONING.items():
        files = [p.resolve() for p in lake_files(root, dataset, org_id=org_id)]
        every += files
        if files:
            types = ", ".join(f"'{k}': '{t}'" for k, t in keys)
            names = ", ".join(f'"{k}"' for k, _ in keys)  # path order, as in the empty views
            con.execute(
                f"CREATE VIEW {dataset} AS SELECT * EXCLUDE ({names}), {names} FROM read_parquet("
                f"{_sql_list(files)}, hive_partitioning = true, hive_types = {{{types}}}, union_by_name = true)"
            )
        else:
            empty = _empty_table(dataset)
            if empty is not None:
                con.register(f"_empty_{dataset}", empty)
                con.execute(f"CREATE VIEW {dataset} AS SELECT * FROM _empty_{dataset}")
    return con, every


def connect_lake(root: str | os.PathLike[str], *, org_id: str) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection over one org's lake partitions only, locked to those files."""
    _check_part("org id", org_id)
    con, files = _connect(root, org_id)
    if files:
        con.execute(f"SET allowed_paths = {_sql_list(files)}")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def connect_lake_all_orgs(root: str | os.PathLike[str]) -> duckdb.DuckDBPyConnection:
    """Admin: a DuckDB connection over every org's partitions (cross-tenant, unlocked)."""
    con, _ = _connect(root, None)
    return con
