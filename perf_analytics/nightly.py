"""The nightly run: sync, then derive every new or stale (org, day), then retention, then the reports.

`run_nightly(db, lake, ...)` is what a scheduler runs (`perf-analytics nightly`,
`pipelines/nightly.py`). It only composes named steps, each a function of its own that a
test can call alone:

```
sync     the snapshot mirror takes what is new on the server (sync.py)
flag     read (org, day) from the mirror and the kept baseline state of the days before it
         (rebuilt where stale), flag anomalies (pipeline.flag_day; anomaly_state.py)
plan     which of the org's days are stale (see below)
rollup   roll the day up, count its flags per bucket, availability (pipeline.rollup_day)
write    replace the day's lake partitions and its baseline state, and the MongoDB sinks when
         asked (pipeline.write_day)
retain   delete from the server the old days the lake verifiably holds (retention.py; opt-in)
report   the day's HTML page beside the lake (report.py)
```

A step that fails is recorded with the words of `StepFailed(step, org, day, cause)`; the
run goes on with the other days and orgs, and ends non-zero. Nothing a failed day
half-wrote is trusted: the day is not recorded as derived, so the next run does it again.

**Where the days run.** The (org, day)s and the reports are tasks (`derive_day`,
`report_day`: each writes only its own day's files, each atomically, and no manifest)
handed to a runner: this process in order (`run_here`), or a Dask cluster
(`Fanout(workers=N)` or `Fanout(scheduler=ADDRESS)`, see perf_analytics.fanout). Either
way this process syncs before handing anything out, and alone writes the record of
derived days and the run's manifest as each task comes back; a task whose worker died
is that day's failure. The lake a fan-out leaves is the serial run's, byte for byte.

**What is stale.** Without being told which dates changed (late snapshots, a bulk load
into old days, a restore), the run finds them from the lake's own manifests. For each
(org, day) it derives, `_manifests/derived/orgId=<org>.json` records the fingerprint of
its inputs: the snapshot part files the mirror lists (`sync.listed_snapshot_files`:
path, rows and the sha256 of their `_id`s) of that day AND of the `history_days` before
it (a late snapshot three days back changes today's flags), plus the settings that
shape the outputs and the toolkit's version. A day is stale when that fingerprint
changed, when it was never derived, or when its last attempt failed. The days looked at
are every day the org's mirror holds, and yesterday. Each (org, day) is a pure function
of (lake, org, day, settings), so the same inputs give the same files, byte for byte,
and the days can fan out to workers.

**One run at a time.** The run holds `_manifests/.nightly.lock`, an flock: a second run
exits at once with `RunLocked`, naming the run that holds it. The kernel releases an
flock when its process ends however it ends (kill -9 included), so a killed run never
leaves a lock to wait out: the next run takes it at once, with no lease to expire and no
clock to trust. The killed run's manifest, left "running", is marked "interrupted", and
the temporary files of the lake's atomic writes that killed writers left (older than the
run, of no running process: `atomic.sweep_temp_files`) are removed and listed in the new
run's record (`swept`).

**The record.** Each run writes `_manifests/runs/<run id>.json` (versioned, replaced
atomically as the run goes): what it was asked, the settings, and one record per step
(step, org, day, status, rows in and out, seconds, error). `list_runs` reads them back.
`listener(event)` gets each event as a dict as it happens (for logs and progress bars).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cache, partial
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import polars as pl

from perf_analytics import __version__
from perf_analytics.anomalies import AnomalyConfig
from perf_analytics.atomic import sweep_temp_files
from perf_analytics.errors import InvalidArgument, PerfAnalyticsError, RunLocked, StepFailed
from perf_analytics.manifest import lake_lock, manifest_path, read_manifest, write_manifest
from perf_analytics.pipeline import (
    DEFAULT_ASSET_BATCH,
    Derived,
    Flagged,
    Written,
    flag_day,
    rollup_day,
    write_day,
)
from perf_analytics.report import report_path, write_report
from perf_analytics.retention import ExportReport, export_snapshots, export_snapshots_all_orgs
from perf_analytics.rollups import WINDOWS
from perf_analytics.store import Db, connect_uri
from perf_analytics.sync import (
    SyncReport,
    listed_snapshot_files,
    mirrored_orgs,
    sync_snapshots,
    sync_snapshots_all_orgs,
)

STEPS = ("sync", "plan", "flag", "rollup", "write", "retain", "report")
RUNS = "runs"
DERIVED = "derived"
LOCK = "nightly"

Listener = Callable[[dict[str, Any]], None]
T = TypeVar("T")


@dataclass(frozen=True)
class NightlyOptions:
    """What a run derives and how. `retain_days` None: no retention (opt-in, see README).

    Raises:
        InvalidArgument: on construction, for an unknown or no window, or a count below 1.
    """

    windows: tuple[str, ...] = WINDOWS
    config: AnomalyConfig = field(default_factory=AnomalyConfig)
    asset_batch: int = DEFAULT_ASSET_BATCH
    to_mongo: bool = False
    retain_days: int | None = None
    reports: bool = True

    def __post_init__(self) -> None:
        unknown = [w for w in self.windows if w not in WINDOWS]
        if unknown or not self.windows:
            raise InvalidArgument(
                f"windows: unknown window {unknown[0] if unknown else '(none)'}; valid: {', '.join(WINDOWS)}"
            )
        if self.asset_batch < 1:
            raise InvalidArgument(f"asset_batch must be at least 1, got {self.asset_batch}")
        if self.retain_days is not None and self.retain_days < 1:
            raise InvalidArgument(f"retain_days must be at least 1, got {self.retain_days}")

    def as_json(self) -> dict[str, Any]:
        return {"windows": list(self.windows), "config": asdict(self.config), "asset_batch": self.asset_batch,
                "to_mongo": self.to_mongo, "retain_days": self.retain_days, "reports": self.reports}

    def output_key(self) -> dict[str, Any]:
        """What shapes a derived day's outputs (the batch size does not: see pipeline.run_day)."""
        return {"windows": list(self.windows), "config": asdict(self.config), "to_mongo": self.to_mongo,
                "version": __version__}


@dataclass
class StepRecord:
    """One step's outcome; `org`/`day` None for the steps of the whole run (an all-orgs sync)."""

    step: str
    org: str | None
    day: str | None
    status: str  # "ok" or "failed"
    rows_in: int = 0
    rows_out: int = 0
    seconds: float = 0.0
    error: str | None = None
    worker: str | None = None  # the Dask worker's address, when the step ran on one
    # The flag step's values that could be no reading of their metric and were left out
    # (per asset, metric and reason, with their count; at most DROPPED_LISTED series).
    dropped: list[dict[str, Any]] | None = None


@dataclass
class RunResult:
    """What one run did; `manifest` is where its record is."""

    run_id: str
    manifest: Path
    orgs: list[str] = field(default_factory=list)
    derived: list[tuple[str, str]] = field(default_factory=list)
    reports: list[Path] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[StepRecord]:
        return [s for s in self.steps if s.status == "failed"]

    @property
    def dropped(self) -> int:
        """How many values the flag steps left out as no reading of their metric."""
        return sum(row["count"] for s in self.steps for row in s.dropped or ())

    def summary(self) -> str:
        """One line for people: orgs, days derived, failures, reports, dropped values, seconds."""
        dropped = f", {self.dropped:,} value(s) dropped (see the run record)" if self.dropped else ""
        return (f"nightly {self.run_id}: {len(self.orgs)} org(s), {len(self.derived)} day(s) derived, "
                f"{len(self.failed)} failed, {len(self.reports)} report(s){dropped}, {self.seconds:.1f} s")


# ---- the steps ---------------------------------------------------------------------------


def sync(db: Db, lake: str | Path, org_id: str | None = None) -> SyncReport:
    """Mirror what is new on the server: one org's snapshots, or every org's in one pass."""
    return sync_snapshots_all_orgs(db, lake) if org_id is None else sync_snapshots(db, lake, org_id=org_id)


def flag(lake: str | Path, org_id: str, day: date, options: NightlyOptions) -> Flagged:
    """The day's anomaly flags, from the day and its history in the mirror (nothing written)."""
    return flag_day(lake, org_id, day, config=options.config, asset_batch=options.asset_batch)


def rollup(flagged: Flagged, options: NightlyOptions) -> Derived:
    """The flagged day's rollups and availability (nothing written; the flags are not touched)."""
    return rollup_day(flagged, windows=options.windows)


def write(lake: str | Path, flagged: Flagged, derived: Derived, sink: Db | None) -> Written:
    """Replace the day's lake partitions, and its documents in the MongoDB sinks when `sink`."""
    return write_day(lake, flagged, derived, sink=sink)


def retain(db: Db, lake: str | Path, older_than_days: int, org_id: str | None = None) -> ExportReport:
    """Delete from the server the snapshots of days older than `older_than_days` that the lake verifiably holds."""
    if org_id is None:
        return export_snapshots_all_orgs(db, lake, older_than_days=older_than_days)
    return export_snapshots(db, lake, org_id=org_id, older_than_days=older_than_days)


def report(lake: str | Path, org_id: str, day: date) -> Path:
    """Write the day's HTML report to its default place beside the lake."""
    return write_report(lake, org_id, day)


# ---- what is stale -----------------------------------------------------------------------


def _derived_path(lake: str | Path, org_id: str) -> Path:
    return manifest_path(lake, DERIVED, f"orgId={org_id}.json")


def derived_days(lake: str | Path, org_id: str) -> dict[str, str]:
    """The org's days recorded as derived, each with the fingerprint of its inputs."""
    data = read_manifest(_derived_path(lake, org_id)) or {}
    days = data.get("days", {})
    return {str(d): str(v["inputs"]) for d, v in days.items()}


def _save_derived(lake: str | Path, org_id: str, days: dict[str, str]) -> None:
    # Nothing of the run (no id, no clock) goes in: the same inputs give the same file.
    write_manifest(_derived_path(lake, org_id),
                   {"orgId": org_id, "days": {d: {"inputs": days[d]} for d in sorted(days)}})


def input_fingerprints(
    lake: str | Path, org_id: str, days: Sequence[date], options: NightlyOptions
) -> dict[str, str]:
    """Per day, the sha256 of what its outputs are derived from: the listed snapshot files
    of the day and of the `history_days` before it, and the settings that shape outputs."""
    files = listed_snapshot_files(lake, org_id=org_id)
    reach = math.ceil(options.config.history_days)
    settings = json.dumps(options.output_key(), sort_keys=True, default=str)
    out = {}
    for day in days:
        first = (day - timedelta(days=reach)).isoformat()
        inputs = [(f.path, f.rows, f.ids_sha256) for f in files if first <= f.date <= day.isoformat()]
        text = json.dumps({"day": day.isoformat(), "files": inputs, "settings": settings}, sort_keys=True)
        out[day.isoformat()] = hashlib.sha256(text.encode()).hexdigest()
    return out


def stale_days(lake: str | Path, org_id: str, options: NightlyOptions, *, yesterday: date) -> list[date]:
    """The org's days to derive: every day its mirror holds and yesterday, less those whose
    recorded inputs are those of now."""
    held = {date.fromisoformat(f.date) for f in listed_snapshot_files(lake, org_id=org_id)}
    candidates = sorted(held | {yesterday})
    now = input_fingerprints(lake, org_id, candidates, options)
    recorded = derived_days(lake, org_id)
    return [d for d in candidates if recorded.get(d.isoformat()) != now[d.isoformat()]]


# ---- the run -----------------------------------------------------------------------------


def _new_run_id(now: datetime) -> str:
    """The start to the microsecond, then a random part: ids sort as the runs started."""
    return f"{now:%Y%m%dT%H%M%S.%fZ}-{secrets.token_hex(3)}"


def _runs_dir(lake: str | Path) -> Path:
    return manifest_path(lake, RUNS)


def list_runs(lake: str | Path, *, last: int | None = None) -> list[dict[str, Any]]:
    """The run manifests of the lake, newest first (run ids sort by their start)."""
    paths = sorted(_runs_dir(lake).glob("*.json"), reverse=True)
    runs = []
    for path in paths[:last] if last is not None else paths:
        data = read_manifest(path)
        if data is not None:
            runs.append(data)
    return runs


def _holder(lake: str | Path) -> str:
    """Who holds the lock, from the newest manifest still running (for the message)."""
    running = [r for r in list_runs(lake, last=20) if r.get("status") == "running"]
    if not running:
        return ""
    r = running[0]
    return f" (run {r['runId']}, pid {r.get('pid')} on {r.get('host')}, started {r.get('startedAt')})"


@contextmanager
def nightly_lock(lake: str | Path) -> Iterator[None]:
    """Hold the lake's nightly lock for the block; raises RunLocked when a run holds it."""

    def locked(message: str) -> RunLocked:
        return RunLocked(message + _holder(lake))

    with lake_lock(lake, LOCK, locked, who="nightly run"):
        yield


class _Run:
    """The state of one run: its manifest, the records, the events."""

    def __init__(self, lake: str | Path, run_id: str, asked: dict[str, Any], options: NightlyOptions,
                 listener: Listener | None) -> None:
        self.lake = lake
        self.started = time.monotonic()
        self.saved = self.started
        self.listener = listener
        self.result = RunResult(run_id, _runs_dir(lake) / f"{run_id}.json")
        self.head = {"runId": run_id, "startedAt": datetime.now(UTC).isoformat(), "host": socket.gethostname(),
                     "pid": os.getpid(), "asked": asked, "settings": options.as_json()}

    def emit(self, event: str, **fields: Any) -> None:
        if self.listener is not None:
            self.listener({"event": event, "run_id": self.result.run_id, **fields})

    def save(self, status: str) -> None:
        r = self.result
        orgs: dict[str, dict[str, Any]] = {}
        for org in r.orgs:
            mine = [s for s in r.steps if s.org == org]
            orgs[org] = {"status": "failed" if any(s.status == "failed" for s in mine) else "ok",
                         "derived": sorted(d for o, d in r.derived if o == org),
                         "failed": sorted({s.day for s in mine if s.status == "failed" and s.day})}
        body = {**self.head, "status": status, "seconds": round(time.monotonic() - self.started, 3),
                "finishedAt": None if status == "running" else datetime.now(UTC).isoformat(),
                "orgs": orgs, "steps": [asdict(s) for s in r.steps],
                "summary": r.summary() if status != "running" else None}
        write_manifest(r.manifest, body)
        self.saved = time.monotonic()

    def save_now_and_then(self) -> None:
        """Save the running record when the last save is a few seconds old: a backfill has
        thousands of steps, and rewriting the record after each would cost more than they do."""
        if time.monotonic() - self.saved >= _SAVE_EVERY_S:
            self.save("running")

    def record(self, record: StepRecord) -> None:
        """Keep a step's record and announce it."""
        self.result.steps.append(record)
        self.emit("step", **{k: v for k, v in asdict(record).items()
                             if v is not None or k not in ("error", "worker", "dropped")})


_SAVE_EVERY_S = 5.0


def _timed(name: str, org: str | None, day: date | None, work: Callable[[], T],
           counts: Callable[[T], tuple[int, int]]) -> tuple[T | None, StepRecord]:
    """Run one step and record it. A failure is recorded (as StepFailed words it) and
    gives None instead of a value: one org's failure must not stop the others."""
    began = time.monotonic()
    record = StepRecord(name, org, day.isoformat() if day else None, "ok")
    value: T | None
    try:
        value = work()
        record.rows_in, record.rows_out = counts(value)
    except Exception as exc:  # noqa: BLE001 - a step's failure is the run's to record, not to crash on
        value, record.status, record.error = None, "failed", str(StepFailed(name, org, day, exc))
    record.seconds = round(time.monotonic() - began, 3)
    return value, record


def _attempt(run: _Run, name: str, org: str | None, day: date | None, work: Callable[[], T],
             counts: Callable[[T], tuple[int, int]]) -> T | None:
    """A step of the coordinating process, recorded; None when it failed (the run goes on)."""
    outcome = _timed(name, org, day, work, counts)
    run.record(outcome[1])
    return outcome[0]


def _mark_interrupted(lake: str | Path) -> None:
    """Under the lock no run is running: a manifest still saying so is of a killed run."""
    for path in sorted(_runs_dir(lake).glob("*.json")):
        data = read_manifest(path)
        if data is not None and data.get("status") == "running":
            write_manifest(path, {**data, "status": "interrupted"})


# ---- the unit of work: one (org, day), here or on a worker --------------------------------


@dataclass(frozen=True)
class SinkAddress:
    """Where a worker connects for the MongoDB sinks: a connected `Db` does not cross
    processes, its address does."""

    uri: str
    db: str


@cache
def _connected(uri: str, db_name: str) -> Db:
    """One client per process and address, kept for the tasks that follow on a worker."""
    return connect_uri(uri, db_name)


def _sink_db(sink: Db | SinkAddress | None) -> Db | None:
    return _connected(sink.uri, sink.db) if isinstance(sink, SinkAddress) else sink


def derive_day(lake: str | Path, org_id: str, day: date, options: NightlyOptions,
               sink: Db | SinkAddress | None = None) -> list[StepRecord]:
    """Flag, roll up and write one (org, day): the unit of work the run hands out, to this
    process or to a worker. It writes only the day's own partitions (each atomically) and
    no manifest, and raises nothing for a step's failure: the failed step is the last
    record, and the coordinating process decides what the day's outcome means."""
    records: list[StepRecord] = []

    def step(name: str, work: Callable[[], T], counts: Callable[[T], tuple[int, int]]) -> T | None:
        outcome = _timed(name, org_id, day, work, counts)
        records.append(outcome[1])
        return outcome[0]

    flagged = step("flag", partial(flag, lake, org_id, day, options),
                   lambda f: (f.result.snapshots, 0 if f.flags is None else f.flags.height))
    if flagged is None:
        return records
    records[-1].dropped = _dropped_rows(flagged.result.dropped)
    derived = step("rollup", partial(rollup, flagged, options),
                   lambda d: (flagged.result.snapshots,
                              sum(r.assets.height + r.disks.height + r.interfaces.height for r in d.rollups.values())
                              + d.availability.height))
    if derived is None:
        return records
    step("write", lambda: write(lake, flagged, derived, _sink_db(sink)),
         lambda w: (len(w.paths), len(w.paths) + w.sink_writes))
    return records


DROPPED_LISTED = 100


def _dropped_rows(dropped: pl.DataFrame) -> list[dict[str, Any]] | None:
    """The day's dropped values for the run record: the series with the most first."""
    if dropped.is_empty():
        return None
    rows = dropped.sort(["count", "assetId", "metric", "reason"], descending=[True, False, False, False])
    return rows.head(DROPPED_LISTED).select("assetId", "metric", "reason", "count").to_dicts()


def report_day(lake: str | Path, org_id: str, day: date) -> list[StepRecord]:
    """Write one (org, day)'s report: a unit of work like `derive_day`."""
    return [_timed("report", org_id, day, partial(report, lake, org_id, day), lambda _: (1, 1))[1]]


class Job(NamedTuple):
    """What a task does: `derive` (flag, rollup, write) or `report`, for an org and day. A
    task that never came back (its worker died) is recorded as a failure of `step`."""

    step: str
    org: str
    day: date


Task = Callable[[], list[StepRecord]]
Outcome = list[StepRecord] | BaseException
Runner = Callable[[Sequence[tuple[Job, Task]]], Iterator[tuple[Job, Outcome]]]


def run_here(tasks: Sequence[tuple[Job, Task]]) -> Iterator[tuple[Job, Outcome]]:
    """The serial runner: each task in this process, in order."""
    for job, task in tasks:
        yield job, task()


@dataclass(frozen=True)
class Fanout:
    """Where the (org, day) tasks run: a local Dask cluster of `workers` processes, or the
    existing Dask cluster whose scheduler is at `scheduler` (see perf_analytics.fanout).

    Raises:
        InvalidArgument: on construction, unless exactly one of the two is given, or for
            `workers` below 1.
    """

    workers: int | None = None
    scheduler: str | None = None

    def __post_init__(self) -> None:
        if (self.workers is None) == (self.scheduler is None):
            raise InvalidArgument("give exactly one of workers and scheduler")
        if self.workers is not None and self.workers < 1:
            raise InvalidArgument(f"workers must be at least 1, got {self.workers}")

    def as_json(self) -> dict[str, Any]:
        return {"workers": self.workers, "scheduler": self.scheduler}


@contextmanager
def _runner(fanout: Fanout | None, lake: Path) -> Iterator[Runner]:
    """This process, or the Dask cluster (Dask is imported only when asked for)."""
    if fanout is None:
        yield run_here
        return
    from perf_analytics.fanout import dask_runner

    with dask_runner(fanout, lake) as runner:
        yield runner


def _outcome_records(job: Job, outcome: Outcome) -> list[StepRecord]:
    """The task's records; for a task that never came back (its worker died, the cluster
    went away), one failed record naming the worker when Dask knows it."""
    if not isinstance(outcome, BaseException):
        return outcome
    worker = getattr(getattr(outcome, "last_worker", None), "address", None)
    # Dask's messages run over several lines; a record's error is one.
    error = " ".join(str(StepFailed(job.step, job.org, job.day, outcome)).split())
    return [StepRecord(job.step, job.org, job.day.isoformat(), "failed", error=error, worker=worker)]


# ---- the run -----------------------------------------------------------------------------


Plan = tuple[list[date], dict[str, str], dict[str, str]]


def _plan(lake: str | Path, org: str, days: Sequence[date] | None, options: NightlyOptions,
          yesterday: date) -> Plan:
    """The org's days to derive, their inputs' fingerprints, and the days recorded as derived."""
    todo = list(days) if days is not None else stale_days(lake, org, options, yesterday=yesterday)
    return todo, input_fingerprints(lake, org, todo, options), derived_days(lake, org)


def _plan_orgs(run: _Run, lake: str | Path, days: Sequence[date] | None, options: NightlyOptions,
               yesterday: date) -> dict[str, Plan]:
    """Each org's plan (an org whose plan fails is recorded and left out). The days about
    to be derived are taken out of the record first: until its task succeeds, a day is
    not derived, whatever it was before (a run killed half way redoes it)."""
    plans: dict[str, Plan] = {}
    for org in run.result.orgs:
        planned = _attempt(run, "plan", org, None, partial(_plan, lake, org, days, options, yesterday),
                           lambda p: (0, len(p[0])))
        if planned is None:
            continue
        todo, _, recorded = planned
        run.emit("plan", org=org, days=[d.isoformat() for d in todo])
        if any(recorded.pop(d.isoformat(), None) is not None for d in todo):
            _save_derived(lake, org, recorded)
        plans[org] = planned
    return plans


def _derive(run: _Run, lake: str | Path, plans: dict[str, Plan], options: NightlyOptions,
            sink: Db | SinkAddress | None, runner: Runner) -> None:
    """Hand out every planned (org, day); record each day that succeeded as it comes back.
    Only this process writes the record (`_manifests/derived/`), under the run's lock."""
    tasks = [(Job("derive", org, day), partial(derive_day, lake, org, day, options, sink))
             for org, (todo, _, _) in plans.items() for day in todo]
    for job, outcome in runner(tasks):
        records = _outcome_records(job, outcome)
        for record in records:
            run.record(record)
        if all(r.status == "ok" for r in records):
            _, fingerprints, recorded = plans[job.org]
            key = job.day.isoformat()
            recorded[key] = fingerprints[key]
            _save_derived(lake, job.org, recorded)
            run.result.derived.append((job.org, key))
        run.save_now_and_then()


def _report_step(run: _Run, lake: str | Path, days: Sequence[date], runner: Runner) -> None:
    """The reports of the run's days, for each org whose day is derived and current."""
    tasks = []
    for org in run.result.orgs:
        try:
            current = derived_days(lake, org)
        except PerfAnalyticsError:
            continue  # the plan step has recorded why
        tasks += [(Job("report", org, day), partial(report_day, lake, org, day))
                  for day in days if day.isoformat() in current]
    for job, outcome in runner(tasks):
        records = _outcome_records(job, outcome)
        for record in records:
            run.record(record)
        if all(r.status == "ok" for r in records):
            run.result.reports.append(report_path(lake, job.org, job.day))


def run_nightly(
    db: Db,
    lake: str | Path,
    *,
    orgs: Sequence[str] | None = None,
    dates: Sequence[date] | None = None,
    options: NightlyOptions | None = None,
    today: date | None = None,
    listener: Listener | None = None,
    fanout: Fanout | None = None,
    sink_at: SinkAddress | None = None,
) -> RunResult:
    """One scheduled run over the lake: sync, derive, retain, report (see the module docstring).

    `orgs` None: every org (one all-orgs sync, then each org the mirror holds). `dates`
    None: yesterday (of `today`, default the UTC clock) plus every stale day; given: those
    days, derived again whatever the record says. `fanout`: the (org, day) tasks and the
    reports run on a Dask cluster (perf_analytics.fanout) instead of this process; with
    `options.to_mongo` the workers connect to `sink_at`. Returns, failed steps included
    (`RunResult.failed`).

    Raises:
        RunLocked: another run holds the lake.
        InvalidArgument: `fanout` with `options.to_mongo` but no `sink_at`.
    """
    opts = options or NightlyOptions()
    if fanout is not None and opts.to_mongo and sink_at is None:
        raise InvalidArgument("writing to MongoDB from workers needs the database's address (sink_at)")
    yesterday = (today or datetime.now(UTC).date()) - timedelta(days=1)
    asked = {"orgs": list(orgs) if orgs is not None else None,
             "dates": [d.isoformat() for d in dates] if dates is not None else None,
             "yesterday": yesterday.isoformat(), **({"fanout": fanout.as_json()} if fanout is not None else {})}
    # Workers may run on other hosts: they get the lake's absolute path.
    root = Path(lake).absolute()
    began = time.time()
    with nightly_lock(root), _runner(fanout, root) as runner:
        _mark_interrupted(root)
        swept = sweep_temp_files(root, older_than=began)
        run = _Run(root, _new_run_id(datetime.now(UTC)), asked, opts, listener)
        run.head["swept"] = [p.relative_to(root).as_posix() for p in swept]
        run.save("running")
        run.emit("start", asked=asked, swept=len(swept))
        _sync_step(run, db, root, orgs)
        run.result.orgs = list(orgs) if orgs is not None else mirrored_orgs(root)
        sink = (sink_at if fanout is not None else db) if opts.to_mongo else None
        _derive(run, root, _plan_orgs(run, root, dates, opts, yesterday), opts, sink, runner)
        run.save("running")
        if opts.retain_days is not None:
            days_kept = opts.retain_days
            for scope in (orgs if orgs is not None else [None]):
                _attempt(run, "retain", scope, None, partial(retain, db, root, days_kept, scope),
                         lambda e: (len(e.days), e.deleted))
        if opts.reports:
            _report_step(run, root, dates or [yesterday], runner)
        run.result.seconds = round(time.monotonic() - run.started, 3)
        run.save("failed" if run.result.failed else "ok")
        run.emit("end", summary=run.result.summary(), failed=len(run.result.failed), seconds=run.result.seconds)
    return run.result


def _sync_step(run: _Run, db: Db, lake: str | Path, orgs: Sequence[str] | None) -> None:
    """One all-orgs pass (or one per asked org). When the all-orgs pass fails (one org's
    damaged mirror stops it), each org is synced alone, so the others still get their
    new snapshots and only the damaged org fails."""
    if orgs is None and _attempt(run, "sync", None, None, partial(sync, db, lake, None), _sync_counts) is not None:
        return
    for org in orgs if orgs is not None else mirrored_orgs(lake):
        _attempt(run, "sync", org, None, partial(sync, db, lake, org), _sync_counts)


def _sync_counts(r: SyncReport) -> tuple[int, int]:
    return r.read, r.new
