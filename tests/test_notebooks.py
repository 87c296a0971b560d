"""The analyst notebooks run top to bottom against a loaded database and a real lake."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nbformat
import pytest
from bson import ObjectId
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from perf_analytics.config import Settings
from perf_analytics.lake import connect_lake
from perf_analytics.pipeline import run_day
from perf_analytics.schema import SNAPSHOTS, validate_snapshot
from perf_analytics.store import Db
from perf_analytics.sync import sync_snapshots_all_orgs
from perf_analytics.synth import DEFAULT_START, FleetSpec, generate_fleet

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
DAY = DEFAULT_START.date() + timedelta(days=1)

pytestmark = pytest.mark.slow


@pytest.fixture
def loaded(db: Db, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Two orgs, two days at 5-minute intervals, synced, the second day rolled up and flagged."""
    docs = [{"_id": ObjectId(), **validate_snapshot(p)}
            for p in generate_fleet(FleetSpec(orgs=2, assets=3, days=2, interval_s=300, seed=11))]
    db[SNAPSHOTS].insert_many(docs)
    sync_snapshots_all_orgs(db, settings.lake)
    for org in ("org-01", "org-02"):
        run_day(settings.lake, org, DAY)
    # The kernel inherits the environment: that is how a notebook finds its settings.
    monkeypatch.setenv("MONGODB_URI", str(settings.uri))
    monkeypatch.setenv("PERF_DB", settings.db)
    monkeypatch.setenv("PERF_LAKE", settings.lake)
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    return settings


def _run(name: str, **parameters: Any) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    injected = "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(injected))
    NotebookClient(nb, timeout=240, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def _texts(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.append(json.dumps(out.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def _images(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in out.get("data", {}) for c in nb.cells for out in c.get("outputs", []))


def _assets(db: Db, org: str) -> set[str]:
    return set(db[SNAPSHOTS].distinct("assetId", {"orgId": org}))


def test_the_asset_notebook_shows_the_busiest_assets_day(db: Db, loaded: Settings) -> None:
    con = connect_lake(loaded.lake, org_id="org-01")
    busiest, n = con.execute("select assetId, count(*) n from anomalies group by assetId order by n desc, assetId limit 1").fetchall()[0]
    con.close()
    # A snapshot of the asset that arrived after the nightly sync: the notebook syncs it first.
    late = db[SNAPSHOTS].find_one({"orgId": "org-01", "assetId": busiest}, sort=[("timestamp", -1)])
    assert late is not None
    db[SNAPSHOTS].insert_one({**late, "_id": ObjectId(), "timestamp": late["timestamp"] + timedelta(seconds=30)})
    start = datetime.combine(DAY, datetime.min.time(), tzinfo=UTC)
    held = db[SNAPSHOTS].count_documents(
        {"orgId": "org-01", "assetId": busiest, "timestamp": {"$gte": start, "$lt": start + timedelta(days=1)}})
    nb = _run("asset", ORG="org-01", DAY=DAY.isoformat())
    text = _texts(nb)
    assert "sync: 1 new snapshot(s) of org-01 into the lake" in text
    assert f"{held:,} snapshots, " in text  # read from the lake, the late one included
    assert f"asset {busiest} of org-01" in text
    assert f"{n} episode(s)" in text
    assert "24 hourly rollup rows" in text
    assert _images(nb) == 1
    assert not any(other in text for other in _assets(db, "org-02"))


def test_the_fleet_notebook_reads_only_its_orgs_lake(db: Db, loaded: Settings) -> None:
    con = connect_lake(loaded.lake, org_id="org-02")
    (n,) = con.execute("select count(*) from anomalies").fetchall()[0]
    con.close()
    nb = _run("fleet", ORG="org-02", DAY=DAY.isoformat())
    text = _texts(nb)
    assert f"{n} anomaly episode(s)" in text
    assert all(asset in text for asset in _assets(db, "org-02"))
    assert not any(other in text for other in _assets(db, "org-01"))
    assert _images(nb) == 1


def test_a_notebook_on_an_unrolled_day_stops_with_a_plain_message(loaded: Settings) -> None:
    with pytest.raises(CellExecutionError, match="run perf-analytics rollup first"):
        _run("fleet", ORG="org-01", DAY="2020-01-01")
