"""The loader's writer threads: how they stop, whatever order they take their end markers in.

The interleavings a loaded machine makes now and then are made here every time, by the
writers' own queue (a `queue.Queue` that holds a writer back at a chosen point); the loads
are real loads against the test server.
"""

from __future__ import annotations

import json
import queue
import threading
import types
from pathlib import Path
from typing import Any

import pytest

from perf_analytics.ingest import LoadOptions, ingest_archives_all_orgs, loader
from perf_analytics.ingest.loader import IngestSummary
from perf_analytics.schema import SNAPSHOTS
from perf_analytics.store import Db
from tests.factories import series

# How long a load of a few records may take before the test calls it hung: far above what
# it needs on a loaded machine, far below the suite's timeout.
HUNG_AFTER_SECONDS = 120


class _Writer1TakesTheFirstEndMarker(queue.Queue[Any]):
    """Writer 0 takes nothing until writer 1 has taken the first end marker and stopped,
    and the first marker's `put` returns only then: close() looks at the writers after
    one of them is gone, as when the machine runs close() slower than the writers."""

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self._writer1_stopped = threading.Event()
        self._writer1: threading.Thread | None = None
        self._marker_taken = threading.Event()

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        me = threading.current_thread()
        if me.name == "ingest-writer-0":
            self._writer1_stopped.wait()
        item = super().get(block, timeout)
        if item is None and me.name == "ingest-writer-1":
            self._writer1 = me
            self._marker_taken.set()
        return item

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        if item is None and not self._writer1_stopped.is_set():
            self._marker_taken.wait()
            assert self._writer1 is not None
            self._writer1.join()
            self._writer1_stopped.set()


class _BothWritersFail(queue.Queue[Any]):
    """Writer 0 fails on its first take; writer 1 fails on its own once writer 0 has
    recorded its failure and is draining the queue."""

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self._writer0_draining = threading.Event()
        self._failed: set[str] = set()

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        me = threading.current_thread().name
        if me in self._failed:  # draining after its failure
            if me == "ingest-writer-0":
                self._writer0_draining.set()
            return super().get(block, timeout)
        if me == "ingest-writer-0":
            self._failed.add(me)
            raise OSError("writer 0 failed first")
        if me == "ingest-writer-1":
            self._writer0_draining.wait()
            self._failed.add(me)
            raise OSError("writer 1 failed second")
        return super().get(block, timeout)


def _with_queue(monkeypatch: pytest.MonkeyPatch, queue_class: type[queue.Queue[Any]]) -> None:
    """Make the loader's writers share a queue of `queue_class`."""
    monkeypatch.setattr(loader, "queue", types.SimpleNamespace(Queue=queue_class, Full=queue.Full, Empty=queue.Empty))


def _load_in_thread(db: Db, tmp_path: Path, records: int) -> tuple[threading.Thread, dict[str, Any]]:
    """Start a two-writer load of `records` snapshots; the outcome lands in the dict."""
    archive = tmp_path / "a.ndjson"
    archive.write_text("".join(json.dumps(p) + "\n" for p in series(records)))
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["summary"] = ingest_archives_all_orgs(
                db, [archive], options=LoadOptions(checkpoint_dir=tmp_path / "cp", batch_size=2, workers=2, commit_seconds=0)
            )
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="load", daemon=True)  # daemon: a hung load must not hold pytest
    thread.start()
    return thread, outcome


def test_a_writer_that_takes_the_first_end_marker_leaves_the_other_its_own(
    db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: close() put one marker per writer it saw alive, so with writer 1 stopped by
    # the marker meant for writer 0, writer 0 waited for one forever, and close() with it.
    _with_queue(monkeypatch, _Writer1TakesTheFirstEndMarker)
    thread, outcome = _load_in_thread(db, tmp_path, records=9)
    thread.join(HUNG_AFTER_SECONDS)
    assert not thread.is_alive(), "the load hung in the writers' shutdown"
    assert "error" not in outcome
    summary: IngestSummary = outcome["summary"]
    assert (summary.read, summary.inserted) == (9, 9)
    assert db[SNAPSHOTS].count_documents({}) == 9


def test_when_both_writers_fail_the_first_failure_is_the_one_reported(
    db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _with_queue(monkeypatch, _BothWritersFail)
    thread, outcome = _load_in_thread(db, tmp_path, records=20)
    thread.join(HUNG_AFTER_SECONDS)
    assert not thread.is_alive(), "the load hung in the writers' shutdown"
    assert "summary" not in outcome
    assert isinstance(outcome["error"], OSError)
    assert str(outcome["error"]) == "writer 0 failed first"
