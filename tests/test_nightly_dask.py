"""The nightly run on Dask: real local clusters of worker processes, the real server, real lakes.

The fan-out must not change a byte of what the lake holds, and a worker that dies while
it writes a day must leave a run that says so and a lake the next run completes.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import dask
import pytest
from bson import ObjectId
from click.testing import CliRunner
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

from perf_analytics.cli import app
from perf_analytics.config import Settings
from perf_analytics.nightly import Fanout, NightlyOptions, derived_days, list_runs, run_nightly
from perf_analytics.schema import SNAPSHOTS, validate_snapshot
from perf_analytics.store import Db
from perf_analytics.synth import DEFAULT_START, FleetSpec, generate_fleet

DAY1 = DEFAULT_START.date()
DAY2 = DAY1 + timedelta(days=1)
TODAY = DAY2 + timedelta(days=1)
ORGS = ("org-01", "org-02", "org-03")
ROLLUP_SINK = "performance_rollups"


# Each test starts a cluster of worker processes and runs the nightly two or three times:
# minutes on a busy 2-core machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _load(db: Db) -> None:
    docs = [{"_id": ObjectId(), **validate_snapshot(p)}
            for p in generate_fleet(FleetSpec(orgs=len(ORGS), assets=2, days=2, interval_s=600, seed=7))]
    db[SNAPSHOTS].insert_many(docs)


def _lake_files(lake: Path) -> dict[str, bytes]:
    """What the lake holds for readers: every Parquet file (the mirror and the derived
    datasets) and the record of derived days; not the run records or the sync's marks,
    which carry the time of the run."""
    files = [p for p in lake.rglob("*") if p.is_file() and not p.name.startswith(".")]
    kept = [p for p in files if p.suffix == ".parquet" or p.parent.name == "derived"]
    return {str(p.relative_to(lake)): p.read_bytes() for p in sorted(kept)}


def _cli(settings: Settings, lake: Path, *args: str) -> tuple[int, str, str]:
    base = ["--uri", str(settings.uri), "--db", settings.db, "--lake", str(lake)]
    r = CliRunner().invoke(app, [*base, *args])
    return r.exit_code, r.stdout, r.stderr


def test_two_workers_leave_the_serial_runs_lake_byte_for_byte(db: Db, settings: Settings, tmp_path: Path) -> None:
    _load(db)
    serial_lake = Path(settings.lake)
    serial = run_nightly(db, serial_lake, dates=[DAY1, DAY2])
    assert serial.failed == [] and len(serial.derived) == len(ORGS) * 2

    fanned_lake = tmp_path / "fanned" / "lake"
    code, out, err = _cli(settings, fanned_lake, "nightly", "--from", DAY1.isoformat(), "--to", DAY2.isoformat(),
                          "--workers", "2", "--log-format", "json")
    assert code == 0, err
    assert "3 org(s), 6 day(s) derived, 0 failed, 6 report(s)" in out
    expected = _lake_files(serial_lake)
    assert any(k.startswith("rollups/window=1min/orgId=org-03/") for k in expected)
    assert any(k.startswith("_manifests/derived/") for k in expected)
    assert _lake_files(fanned_lake) == expected
    assert len(list((fanned_lake.parent / "reports").rglob("*.html"))) == len(ORGS) * 2

    run = list_runs(fanned_lake, last=1)[0]
    assert run["asked"]["fanout"] == {"workers": 2, "scheduler": None}
    on_workers = [s for s in run["steps"] if s["step"] in ("flag", "rollup", "write", "report")]
    assert on_workers and all(s["worker"] and s["worker"].startswith("tcp://") for s in on_workers)
    syncs = [s for s in run["steps"] if s["step"] == "sync"]
    assert len(syncs) == 1 and syncs[0]["worker"] is None  # once, in the coordinating process


def test_workers_write_the_mongodb_sinks_through_their_own_client(db: Db, settings: Settings) -> None:
    db[SNAPSHOTS].insert_many([{"_id": ObjectId(), **validate_snapshot(p)}
                               for p in generate_fleet(FleetSpec(orgs=1, assets=2, days=1, interval_s=3600, seed=7))])
    code, _, err = _cli(settings, Path(settings.lake), "nightly", "--date", DAY1.isoformat(), "--workers", "1",
                        "--to-mongo", "--windows", "1day", "--no-report")
    assert code == 0, err
    rollups = list(db[ROLLUP_SINK].find({"kind": "asset"}))
    assert sorted(d["assetId"] for d in rollups) == sorted(db[SNAPSHOTS].distinct("assetId"))
    assert {d["window"] for d in rollups} == {"1day"}


class KillOnceWhileWriting(WorkerPlugin):
    """On each worker process: the first write of rollups to start while `marker` exists
    removes the marker and kills its own worker (SIGKILL), after the day's anomaly
    partition is written and before its rollups are: a worker lost half way through a day."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def setup(self, worker: Any) -> None:
        from perf_analytics import pipeline

        original = pipeline.write_rollups
        marker = Path(self.marker)

        def write_rollups(*args: Any, **kwargs: Any) -> Any:
            try:
                marker.unlink()
            except FileNotFoundError:
                return original(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
            raise AssertionError("unreachable: the worker is gone")

        pipeline.write_rollups = write_rollups


@pytest.fixture
def strict_cluster(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Two worker processes whose scheduler gives up on a task at its first lost worker
    (Dask's own setting), and a marker file that kills one worker once."""
    marker = tmp_path / "kill-once"
    marker.touch()
    with (dask.config.set({"distributed.scheduler.allowed-failures": 0}),
          LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
          Client(cluster) as client):
        client.register_plugin(KillOnceWhileWriting(str(marker)))
        yield cluster.scheduler_address, marker


def test_a_worker_killed_mid_day_fails_that_day_and_the_next_run_completes_the_lake(
    db: Db, settings: Settings, tmp_path: Path, strict_cluster: tuple[str, Path]
) -> None:
    address, marker = strict_cluster
    _load(db)
    serial_lake = tmp_path / "serial" / "lake"
    no_reports = NightlyOptions(reports=False)
    assert run_nightly(db, serial_lake, today=TODAY, options=no_reports).failed == []

    lake = Path(settings.lake)
    broken = run_nightly(db, lake, today=TODAY, options=no_reports, fanout=Fanout(scheduler=address))
    assert not marker.exists()  # a worker was killed
    # The task that was writing is lost, and so is any task already sent to that worker.
    lost = broken.failed
    assert lost and {f.step for f in lost} == {"derive"}
    (worker,) = {f.worker for f in lost}  # one worker died, and the record names it
    assert worker is not None and worker.startswith("tcp://")
    assert all(f.error is not None and "KilledWorker" in f.error and worker in f.error for f in lost)
    lost_days = sorted((f.org, f.day) for f in lost)
    assert len(broken.derived) == len(ORGS) * 2 - len(lost_days)
    assert all(day not in derived_days(lake, org) for org, day in lost_days)
    record = list_runs(lake, last=1)[0]
    assert record["status"] == "failed"
    assert {o: r["failed"] for o, r in record["orgs"].items()} == {
        o: [d for org, d in lost_days if org == o] for o in ORGS}

    again = run_nightly(db, lake, today=TODAY, options=no_reports, fanout=Fanout(scheduler=address))
    assert again.failed == [] and sorted(again.derived) == lost_days
    assert _lake_files(lake) == _lake_files(serial_lake)


def test_workers_and_a_scheduler_are_asked_one_way(settings: Settings) -> None:
    code, _, err = _cli(settings, Path(settings.lake), "nightly", "--workers", "2", "--scheduler", "tcp://x:8786")
    assert code == 1 and err == "Error: give --workers N or --scheduler ADDRESS, not both\n"


def test_an_unreachable_scheduler_is_one_error_line_and_no_run(settings: Settings) -> None:
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):  # Dask's own setting
        code, _, err = _cli(settings, Path(settings.lake), "nightly", "--scheduler", "tcp://127.0.0.1:9")
    assert code == 1
    assert err.startswith("Error: cannot reach the Dask scheduler at tcp://127.0.0.1:9: ") and err.count("\n") == 1
    assert list_runs(settings.lake) == []
