"""The exception hierarchy: argument mistakes are InvalidArgument (a ValueError too) in the
library's own words, and a ServerError says whether the same call may succeed later."""

from __future__ import annotations

import importlib
import pkgutil
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from matplotlib.figure import Figure
from pymongo.errors import OperationFailure

from perf_analytics.errors import InvalidArgument, PerfAnalyticsError, ServerError
from perf_analytics.extract import extract_window
from perf_analytics.frames import frames_from_documents
from perf_analytics.ingest import LoadOptions
from perf_analytics.nightly import Fanout, NightlyOptions, run_nightly
from perf_analytics.plots import save_figure
from perf_analytics.report import render_report, report_path, write_report
from perf_analytics.retention import cutoff_of, restore_snapshots
from perf_analytics.rollups import coarsen_rollups, compute_rollups, mergeable_rollups
from perf_analytics.schema import SNAPSHOTS, validate_snapshot
from perf_analytics.store import Db, connect_uri, ensure_indexes, is_retryable
from perf_analytics.sync import mark_for_sync
from perf_analytics.synth.spec import FleetSpec
from tests.factories import snapshot

NOW = datetime(2026, 3, 2, 12, tzinfo=UTC)
DAY = NOW.date()


CALLS = [
    (lambda db, lake: cutoff_of(NOW, 0), "older_than_days must be at least 1"),
    (lambda db, lake: cutoff_of(NOW.replace(tzinfo=None), 30), "must be timezone-aware"),
    (lambda db, lake: ensure_indexes(db, ttl_days=0), "ttl_days must be a positive number of days, got 0"),
    (lambda db, lake: restore_snapshots(db, lake, org_id="org-a", start=date(2026, 3, 2), end=date(2026, 3, 1)),
     "start 2026-03-02 is after end 2026-03-01"),
    (lambda db, lake: restore_snapshots(db, lake, org_id="org-a", start="March", end="2026-03-01"),
     "start 'March' is not a YYYY-MM-DD date"),
    (lambda db, lake: extract_window(db, "org-a", NOW, NOW - timedelta(hours=1)), "empty window"),
    (lambda db, lake: mark_for_sync(db, "", [NOW]), "an org id is required"),
    (lambda db, lake: FleetSpec(orgs=0, assets=1, days=1), "orgs must be a whole number >= 1, got 0"),
    (lambda db, lake: LoadOptions(workers=0), "workers must be a whole number >= 1, got 0"),
    # The nightly run's options and where it fans out.
    (lambda db, lake: NightlyOptions(windows=("2min",)), "windows: unknown window 2min; valid: 1min"),
    (lambda db, lake: NightlyOptions(windows=()), re.escape("windows: unknown window (none)")),
    (lambda db, lake: NightlyOptions(asset_batch=0), "asset_batch must be at least 1, got 0"),
    (lambda db, lake: NightlyOptions(retain_days=0), "retain_days must be at least 1, got 0"),
    (lambda db, lake: Fanout(), "give exactly one of workers and scheduler"),
    (lambda db, lake: Fanout(workers=2, scheduler="tcp://127.0.0.1:8786"), "give exactly one of workers and scheduler"),
    (lambda db, lake: Fanout(workers=0), "workers must be at least 1, got 0"),
    (lambda db, lake: run_nightly(db, lake, options=NightlyOptions(to_mongo=True), fanout=Fanout(workers=1)),
     re.escape("needs the database's address (sink_at)")),
    # The daily report.
    (lambda db, lake: report_path(lake, "org 01", DAY), "org id 'org 01' cannot name a report file"),
    (lambda db, lake: render_report(lake, "org-a", DAY, top=0), "top must be at least 1, got 0"),
    (lambda db, lake: render_report(lake, "org-a", DAY, most=0), "most must be at least 1, got 0"),
    (lambda db, lake: write_report(lake, "org-a", DAY, lake.parent / "r.txt"), re.escape("r.txt: choose a .html file name")),
    (lambda db, lake: write_report(lake, "org-a", DAY, lake / "missing" / "r.html"), "missing is not a directory"),
    # Rollups and plots.
    (lambda db, lake: compute_rollups(frames_from_documents([]), windows=["2min"]), "windows: unknown window '2min'"),
    (lambda db, lake: mergeable_rollups(frames_from_documents([]), "2min"), "window: unknown window '2min'"),
    (lambda db, lake: coarsen_rollups(pl.DataFrame(), "2min"), "window: unknown window '2min'"),
    (lambda db, lake: save_figure(Figure(), lake.parent / "f.jpg"), re.escape("f.jpg: choose a .png, .svg or .pdf file name")),
    (lambda db, lake: save_figure(Figure(), lake / "missing" / "f.png"), "missing is not a directory"),
]


@pytest.mark.parametrize(("call", "message"), CALLS)
def test_a_bad_argument_is_an_invalid_argument_that_names_the_parameter_not_a_flag(
    db: Db, tmp_path: Path, call: Any, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message) as raised:
        call(db, tmp_path / "lake")
    assert isinstance(raised.value, ValueError) and isinstance(raised.value, PerfAnalyticsError)
    assert "--" not in str(raised.value)


def test_an_unreachable_server_is_worth_retrying(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERF_SERVER_TIMEOUT_MS", "200")
    with pytest.raises(ServerError, match="cannot reach MongoDB") as raised:
        connect_uri("mongodb://127.0.0.1:1/", "x")
    assert raised.value.retryable is True


def test_duplicates_that_stop_the_unique_index_are_not_worth_retrying(raw_db: Db) -> None:
    doc = validate_snapshot(snapshot())
    raw_db[SNAPSHOTS].insert_many([dict(doc), dict(doc)])
    with pytest.raises(ServerError, match="duplicate snapshots exist") as raised:
        ensure_indexes(raw_db)
    assert raised.value.retryable is False


def test_a_refused_command_is_not_retryable(db: Db) -> None:
    with pytest.raises(OperationFailure) as raised:
        db.command("noSuchCommand")
    assert is_retryable(raised.value) is False


def _package_modules() -> list[str]:
    """The names of every module of the package."""
    import perf_analytics

    return sorted(m.name for m in pkgutil.walk_packages(perf_analytics.__path__, "perf_analytics."))


# Signals passed between two functions of one module, caught before any user sees them.
INTERNAL_SIGNALS = {
    "perf_analytics.ingest.bsonbatch.TooWide",
    "perf_analytics.service.commit.QueueFull",
    "perf_analytics.service.commit.DatabaseUnavailable",
    "perf_analytics.service.payload.Refusal",
    "perf_analytics.service.app._ClientGone",
}


def test_every_error_class_is_defined_in_errors_under_perf_analytics_error() -> None:
    defined: dict[str, type[BaseException]] = {}
    for name in _package_modules():
        module = importlib.import_module(name)
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == name:
                defined[f"{name}.{value.__qualname__}"] = value
    elsewhere = {k for k in defined if not k.startswith("perf_analytics.errors.")} - INTERNAL_SIGNALS
    assert elsewhere == set()
    errors = {k: v for k, v in defined.items() if k.startswith("perf_analytics.errors.")}
    assert all(issubclass(v, PerfAnalyticsError) for v in errors.values())
    assert {"StepFailed", "RunLocked", "RunFailed", "PlotError", "RollupError", "AnomalyInputError", "LakeError",
            "SyncError", "DamagedArchive", "InvalidArgument"} <= {v.__name__ for v in errors.values()}
