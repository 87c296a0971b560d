"""The exception hierarchy: argument mistakes are InvalidArgument (a ValueError too) in the
library's own words, and a ServerError says whether the same call may succeed later."""

from __future__ import annotations

import importlib
import pkgutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pymongo.errors import OperationFailure

from perf_analytics.errors import InvalidArgument, PerfAnalyticsError, ServerError
from perf_analytics.extract import extract_window
from perf_analytics.retention import cutoff_of, restore_snapshots
from perf_analytics.schema import SNAPSHOTS, validate_snapshot
from perf_analytics.store import Db, connect_uri, ensure_indexes, is_retryable
from perf_analytics.sync import mark_for_sync
from perf_analytics.synth.spec import FleetSpec
from tests.factories import snapshot

NOW = datetime(2026, 3, 2, 12, tzinfo=UTC)


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
    (lambda db, lake: FleetSpec.of(orgs=0, assets=1, days=1, interval_s=60, seed=0, start=None, anomalies=False), "orgs must be a whole number >= 1, got 0"),
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
