"""The nightly run against the real server and a real lake: staleness, failures, the lock, the record, the logs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from bson import ObjectId

from perf_analytics.config import Settings
from perf_analytics.errors import MirrorError, StepFailed
from perf_analytics.lake import ANOMALIES, partition_dir
from perf_analytics.nightly import (
    NightlyOptions,
    derived_days,
    flag,
    list_runs,
    rollup,
    run_nightly,
    stale_days,
    write,
)
from perf_analytics.schema import SNAPSHOTS, validate_snapshot
from perf_analytics.sinks import replace_scope
from perf_analytics.store import Db
from perf_analytics.sync import listed_snapshot_files, sync_snapshots_all_orgs
from perf_analytics.synth import DEFAULT_START, FleetSpec, generate_fleet
from tests.conftest import Cli

DAY1 = DEFAULT_START.date()
DAY2 = DAY1 + timedelta(days=1)
DAY3 = DAY1 + timedelta(days=2)



def _load(db: Db, *, days: int, orgs: int = 2) -> None:
    docs = [{"_id": ObjectId(), **validate_snapshot(p)}
            for p in generate_fleet(FleetSpec(orgs=orgs, assets=2, days=days, interval_s=300, seed=11))]
    db[SNAPSHOTS].insert_many(docs)


def _cli(cli: Cli, *args: str) -> tuple[int, str, str]:
    r = cli(*args)
    return r.exit_code, r.stdout, r.stderr


def _lake_bytes(lake: Path) -> dict[str, bytes]:
    """Every derived file of the lake and the derived-state manifests: what a re-run must not change."""
    files = [p for p in lake.rglob("*.parquet") if p.relative_to(lake).parts[0] != "snapshots"]
    files += list((lake / "_manifests" / "derived").glob("*.json"))
    return {str(p.relative_to(lake)): p.read_bytes() for p in sorted(files)}


@pytest.mark.slow
def test_a_run_derives_every_day_then_only_what_a_late_snapshot_changed(db: Db, settings: Settings) -> None:
    lake = Path(settings.lake)
    _load(db, days=3)
    first = run_nightly(db, lake, today=DAY3 + timedelta(days=1))
    assert first.failed == []
    every = {(org, d.isoformat()) for org in ("org-01", "org-02") for d in (DAY1, DAY2, DAY3)}
    assert set(first.derived) == every
    assert sorted(p.name for p in first.reports) == [f"{DAY3}.html"] * 2
    assert (lake.parent / "reports" / "org-01" / f"{DAY3}.html").is_file()
    steps = {s.step for s in first.steps}
    assert steps == {"sync", "plan", "flag", "rollup", "write", "report"}

    again = run_nightly(db, lake, today=DAY3 + timedelta(days=1))
    assert again.derived == [] and again.failed == []

    # A late snapshot of org-01's first day: that day and the two whose history holds it.
    late = next(s for s in db[SNAPSHOTS].find({"orgId": "org-01"}).sort("timestamp", 1).limit(1))
    db[SNAPSHOTS].insert_one({**late, "_id": ObjectId(), "timestamp": late["timestamp"] + timedelta(seconds=30)})
    options = NightlyOptions()
    sync_snapshots_all_orgs(db, lake)
    assert stale_days(lake, "org-01", options, yesterday=DAY3) == [DAY1, DAY2, DAY3]
    assert stale_days(lake, "org-02", options, yesterday=DAY3) == []
    third = run_nightly(db, lake, today=DAY3 + timedelta(days=1))
    assert sorted(third.derived) == [("org-01", d.isoformat()) for d in (DAY1, DAY2, DAY3)]
    runs = list_runs(lake)
    assert [r["runId"] for r in runs] == [third.run_id, again.run_id, first.run_id]
    assert runs[0]["status"] == "ok" and runs[0]["version"] == 1
    assert runs[0]["orgs"]["org-01"]["derived"] == [DAY1.isoformat(), DAY2.isoformat(), DAY3.isoformat()]
    flagged = [s for s in runs[0]["steps"] if s["step"] == "flag"]
    assert all(s["status"] == "ok" and s["rows_in"] > 0 and s["seconds"] >= 0 for s in flagged)


@pytest.mark.slow
def test_values_the_flags_leave_out_are_in_the_run_record_and_its_summary(db: Db, settings: Settings) -> None:
    """A percentage another application wrote as a byte rate is counted where the operator looks."""
    docs = [{"_id": ObjectId(), **validate_snapshot(p)}
            for p in generate_fleet(FleetSpec(orgs=1, assets=2, days=1, interval_s=300, seed=11))]
    victim = docs[0]["assetId"]
    bad = [d for d in docs if d["assetId"] == victim][:3]
    for doc in bad:
        doc["performanceData"]["memory"]["usagePercent"] = 52_000.0
    db[SNAPSHOTS].insert_many(docs)
    result = run_nightly(db, settings.lake, today=DAY1 + timedelta(days=1))
    assert result.failed == [] and result.dropped == 3
    assert "3 value(s) dropped" in result.summary()
    flag_step = next(s for s in list_runs(settings.lake)[0]["steps"] if s["step"] == "flag")
    assert flag_step["dropped"] == [
        {"assetId": victim, "metric": "memory.usagePercent", "reason": "outside 0-100 for a percentage", "count": 3}
    ]


@pytest.mark.slow
def test_the_same_date_twice_gives_the_same_lake_byte_for_byte_and_json_logs(cli: Cli, db: Db, settings: Settings) -> None:
    lake = Path(settings.lake)
    _load(db, days=2)
    code, out, err = _cli(cli, "nightly", "--date", DAY2.isoformat())
    assert code == 0, err
    assert out.startswith("nightly ") and "2 org(s), 2 day(s) derived, 0 failed, 2 report(s)" in out
    before = _lake_bytes(lake)
    assert any(k.startswith("anomalies/orgId=org-02/date=") for k in before)
    code, out, err = _cli(cli, "nightly", "--date", DAY2.isoformat(), "--log-format", "json")
    assert code == 0, err
    assert _lake_bytes(lake) == before
    events = [json.loads(line) for line in err.splitlines()]
    run_id = events[0]["run_id"]
    assert {e["run_id"] for e in events} == {run_id}
    write_step = next(e for e in events if e["event"] == "step" and e["step"] == "write" and e["org"] == "org-02")
    assert write_step["day"] == DAY2.isoformat() and write_step["status"] == "ok"
    assert write_step["rows_out"] > 0 and "seconds" in write_step
    assert events[-1]["event"] == "end" and events[-1]["failed"] == 0
    code, out, _ = _cli(cli, "runs", "--last", "1")
    assert code == 0 and out.startswith(run_id) and f"ok          {DAY2}" in out
    code, out, _ = _cli(cli, "runs", "--json")
    runs = json.loads(out)
    assert len(runs) == 2 and runs[0]["runId"] == run_id


@pytest.mark.slow
def test_a_broken_org_fails_alone_and_the_next_run_redoes_only_it(cli: Cli, db: Db, settings: Settings, tmp_path: Path) -> None:
    lake = Path(settings.lake)
    _load(db, days=2)
    sync_snapshots_all_orgs(db, lake)
    part = next(f for f in listed_snapshot_files(lake, org_id="org-02") if f.date == DAY1.isoformat())
    aside = tmp_path / "aside.parquet"
    shutil.move(lake / part.path, aside)  # org-02's mirror is damaged: a listed part is gone

    code, out, err = _cli(cli, "nightly")  # yesterday (the clock's) and every stale day
    assert code == 1
    assert err.startswith("Error: ") and err.count("\n") == 1 and "org-02" in err
    assert "0 failed" not in out
    run = list_runs(lake, last=1)[0]
    assert run["status"] == "failed"
    syncs = {s["org"]: s["status"] for s in run["steps"] if s["step"] == "sync"}
    assert syncs == {None: "failed", "org-01": "ok", "org-02": "failed"}
    assert run["orgs"]["org-01"]["status"] == "ok" and run["orgs"]["org-02"]["status"] == "failed"
    flags_failed = {s["day"] for s in run["steps"] if s["step"] == "flag" and s["status"] == "failed"}
    assert flags_failed == {DAY1.isoformat(), DAY2.isoformat()}
    assert set(run["orgs"]["org-02"]["failed"]) >= flags_failed
    assert "MirrorError" not in json.dumps(run) and "which is missing" in json.dumps(run)
    assert {DAY1.isoformat(), DAY2.isoformat()} <= set(derived_days(lake, "org-01"))
    assert not {DAY1.isoformat(), DAY2.isoformat()} & set(derived_days(lake, "org-02"))

    shutil.move(aside, lake / part.path)
    fixed = run_nightly(db, lake, today=DAY2 + timedelta(days=1))
    assert fixed.failed == []
    assert sorted(fixed.derived) == [("org-02", DAY1.isoformat()), ("org-02", DAY2.isoformat())]


@pytest.mark.slow
def test_a_failing_step_is_named_with_its_org_and_day(db: Db, settings: Settings) -> None:
    lake = Path(settings.lake)
    _load(db, days=1, orgs=1)
    sync_snapshots_all_orgs(db, lake)
    shutil.rmtree(lake / "snapshots" / "orgId=org-01" / f"date={DAY1}")
    result = run_nightly(db, lake, orgs=["org-01"], dates=[DAY1], options=NightlyOptions(reports=False))
    # the sync re-reads the recent snapshots, and so finds the day gone too
    named = [(f.step, f.org, f.day) for f in result.failed]
    assert named == [("sync", "org-01", None), ("flag", "org-01", DAY1.isoformat())]
    with pytest.raises(MirrorError):
        flag(lake, "org-01", DAY1, NightlyOptions())
    assert str(StepFailed("flag", "org-01", DAY1, MirrorError("boom"))) == f"flag failed for org org-01 {DAY1}: boom"


@pytest.mark.slow
def test_the_steps_run_alone_and_rollup_leaves_the_flags_alone(db: Db, settings: Settings) -> None:
    lake = Path(settings.lake)
    _load(db, days=1, orgs=1)
    sync_snapshots_all_orgs(db, lake)
    options = NightlyOptions(windows=("1hour", "1day"))
    flagged = flag(lake, "org-01", DAY1, options)
    assert flagged.result.snapshots == db[SNAPSHOTS].count_documents({"orgId": "org-01"})
    derived = rollup(flagged, options)
    assert set(derived.rollups) == {"1hour", "1day"} and derived.availability.height == 2
    anomalies = partition_dir(lake, ANOMALIES, {"orgId": "org-01", "date": DAY1.isoformat()})
    assert not anomalies.exists()  # neither flag nor rollup writes
    written = write(lake, flagged, derived, None)
    assert anomalies / "part-0.parquet" in written.paths
    assert pq.read_table(anomalies / "part-0.parquet").num_rows == flagged.result.flags.height


def _holder_script(settings: Settings) -> str:
    return (
        "import sys\n"
        "from perf_analytics.config import Settings\n"
        "from perf_analytics.nightly import run_nightly\n"
        "from perf_analytics.store import connect\n"
        f"s = Settings(uri={settings.uri!r}, db={settings.db!r}, lake={settings.lake!r})\n"
        "def hold(event):\n"
        "    if event['event'] == 'start':\n"
        "        print(event['run_id'], flush=True)\n"
        "        sys.stdin.readline()\n"
        "run_nightly(connect(s), s.lake, listener=hold)\n"
    )


@pytest.mark.slow
def test_one_run_at_a_time_and_a_killed_runs_lock_is_taken_at_once(cli: Cli, db: Db, settings: Settings) -> None:
    lake = Path(settings.lake)
    with subprocess.Popen([sys.executable, "-c", _holder_script(settings)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout is not None
            held_by = holder.stdout.readline().strip()
            assert held_by, "the holding run did not start"
            code, _, err = _cli(cli, "nightly")
            assert code == 1
            assert err.startswith("Error: another nightly run is using the lake at ") and f"run {held_by}" in err
            assert err.count("\n") == 1
        finally:
            holder.kill()  # SIGKILL: the run ends without any clean-up of its own
    result = run_nightly(db, lake, today=DAY2)
    assert result.failed == []
    statuses = {r["runId"]: r["status"] for r in list_runs(lake)}
    assert statuses == {held_by: "interrupted", result.run_id: "ok"}
    code, out, _ = _cli(cli, "runs")
    assert code == 0 and "interrupted" in out.splitlines()[1]


@pytest.mark.slow
def test_a_run_sweeps_the_temp_files_killed_writers_left_and_nothing_else(db: Db, settings: Settings) -> None:
    """A worker killed inside a Parquet write leaves a hidden temp file that readers skip
    and nothing else removes: the next run does, when no running process can still own it."""
    lake = Path(settings.lake)
    _load(db, days=1, orgs=1)
    options = NightlyOptions(reports=False)
    assert run_nightly(db, lake, dates=[DAY1], options=options).failed == []
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    dead, alive = finished.pid, os.getpid()
    hour_ago, later = time.time() - 3600, time.time() + 3600
    anomalies = partition_dir(lake, ANOMALIES, {"orgId": "org-01", "date": DAY1.isoformat()})
    mirror = Path(lake, listed_snapshot_files(lake, org_id="org-01")[0].path).parent
    planted = {
        anomalies / f".part-0.parquet.{dead}.0123abcd.tmp": (hour_ago, "swept"),
        mirror / f".part-1a2b.parquet.{dead}.89abcdef.tmp": (hour_ago, "swept"),
        lake / "_manifests" / "runs" / f".r.json.{dead}.00ff00ff.tmp": (hour_ago, "swept"),
        anomalies / f".part-0.parquet.{dead}.fedcba98.tmp": (later, "kept"),  # written after the run began
        anomalies / f".part-0.parquet.{alive}.76543210.tmp": (hour_ago, "kept"),  # its writer still runs
        anomalies / ".notes.tmp": (hour_ago, "kept"),  # not the writer's pattern
    }
    for path, (mtime, _) in planted.items():
        path.write_bytes(b"PAR1 half a file")
        os.utime(path, (mtime, mtime))
    result = run_nightly(db, lake, dates=[DAY1], options=options)
    assert result.failed == []
    assert {p: p.exists() for p in planted} == {p: fate == "kept" for p, (_, fate) in planted.items()}
    assert (lake / "_manifests" / ".nightly.lock").exists()
    swept = sorted(p.relative_to(lake).as_posix() for p, (_, fate) in planted.items() if fate == "swept")
    assert list_runs(lake, last=1)[0]["swept"] == swept


def test_a_sink_scope_holds_exactly_the_last_write_and_leaves_the_rest(db: Db) -> None:
    day = {"day": "d1"}
    db["c"].insert_many([{"_id": "old", "orgId": "a", "day": "d1"}, {"_id": "kept", "orgId": "a", "day": "d2"},
                         {"_id": "theirs", "orgId": "b", "day": "d1"}])
    changed = replace_scope(db, "c", "a", day, [{"_id": "new", "orgId": "a", "day": "d1", "v": 1}])
    assert changed == 2  # one written, one deleted
    assert sorted(d["_id"] for d in db["c"].find()) == ["kept", "new", "theirs"]


def test_dates_are_asked_one_way(cli: Cli) -> None:
    code, _, err = _cli(cli, "nightly", "--date", "2026-01-05", "--from", "2026-01-01")
    assert code == 1 and err == "Error: give --date, or --from and --to, not both\n"
    code, _, err = _cli(cli, "nightly", "--from", "2026-01-05", "--to", "2026-01-01")
    assert code == 1 and "is before --from" in err


@pytest.mark.slow
def test_the_scheduler_entry_point_runs_the_command(settings: Settings) -> None:
    script = Path(__file__).parents[1] / "pipelines" / "nightly.py"
    env = {"MONGODB_URI": str(settings.uri), "PERF_DB": settings.db, "PERF_LAKE": settings.lake,
           "PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run([sys.executable, str(script), "--no-report", "--log-format", "json"],
                          capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert "0 org(s), 0 day(s) derived, 0 failed" in done.stdout
    assert json.loads(done.stderr.splitlines()[-1])["event"] == "end"
    assert [r["status"] for r in list_runs(settings.lake)] == ["ok"]


@pytest.mark.slow
def test_yesterday_without_snapshots_is_derived_empty_not_failed(db: Db, settings: Settings) -> None:
    lake = Path(settings.lake)
    _load(db, days=1, orgs=1)
    result = run_nightly(db, lake, today=DAY1 + timedelta(days=3))
    assert result.failed == []
    assert sorted(d for _, d in result.derived) == [DAY1.isoformat(), (DAY1 + timedelta(days=2)).isoformat()]
    assert date.fromisoformat(result.derived[-1][1]) == DAY1 + timedelta(days=2)


@pytest.mark.slow
def test_retention_runs_only_when_asked_and_deletes_what_the_lake_holds(db: Db, settings: Settings) -> None:
    lake = Path(settings.lake)
    _load(db, days=1, orgs=1)
    held = db[SNAPSHOTS].count_documents({})
    plain = run_nightly(db, lake, dates=[DAY1], options=NightlyOptions(reports=False))
    assert "retain" not in {s.step for s in plain.steps}
    assert db[SNAPSHOTS].count_documents({}) == held
    kept = run_nightly(db, lake, dates=[DAY1], options=NightlyOptions(reports=False, retain_days=30))
    (step,) = [s for s in kept.steps if s.step == "retain"]
    assert (step.status, step.org, step.rows_in, step.rows_out) == ("ok", None, 1, held)
    assert db[SNAPSHOTS].count_documents({}) == 0
