"""`make demo`'s job, end to end against the test server: twice, the second adding nothing.

The nightly part reads the server once (the sync) and then only the lake."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from perf_analytics.schema import SNAPSHOTS
from perf_analytics.store import Db

DEMO = Path(__file__).resolve().parent.parent / "pipelines" / "demo.py"
PNG = b"\x89PNG\r\n\x1a\n"
DAY = datetime(2026, 1, 6, tzinfo=UTC)

pytestmark = pytest.mark.slow


def _run(cwd: Path, env: dict[str, str]) -> str:
    # Snapshots every 5 minutes instead of every minute: the same job on a fifth of the data.
    proc = subprocess.run([sys.executable, str(DEMO), "--interval", "300"], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.timeout(900)
def test_the_demo_loads_flags_rolls_up_and_draws_and_a_rerun_adds_nothing(
    db: Db, server_uri: str, db_name: str, tmp_path: Path
) -> None:
    env = {**os.environ, "MONGODB_URI": server_uri, "PERF_DB": db_name, "PERF_LAKE": str(tmp_path / "lake")}
    first = _run(tmp_path, env)
    count = db[SNAPSHOTS].count_documents({})
    assert re.search(rf"inserted {count:,}\b", first), first
    assert "doctor org-01: healthy" in first
    assert re.search(rf"sync: read {count:,}, {count:,} new snapshot\(s\) mirrored", first), first
    for org in ("org-01", "org-02", "org-03"):  # each org's day, as many snapshots as the server holds
        held = db[SNAPSHOTS].count_documents({"orgId": org, "timestamp": {"$gte": DAY, "$lt": DAY + timedelta(days=1)}})
        assert f"{org} 2026-01-06: {held:,} snapshots, " in first
    pictures = [tmp_path / "data" / "demo" / name for name in ("org-01-fleet.png", "org-01-asset.png")]
    assert all(p.read_bytes().startswith(PNG) for p in pictures)
    lake = sorted(p.relative_to(tmp_path) for p in (tmp_path / "lake").rglob("*.parquet"))

    second = _run(tmp_path, env)
    assert re.search(r"inserted 0\b", second), second
    assert re.search(rf"duplicates {count:,}\b", second), second
    assert re.search(r", 0 new snapshot\(s\) mirrored", second), second
    assert db[SNAPSHOTS].count_documents({}) == count
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "lake").rglob("*.parquet")) == lake
