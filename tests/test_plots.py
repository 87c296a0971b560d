"""Plots draw what the data says: lines break at silences, episodes land on their panel."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from bson import ObjectId
from matplotlib import dates as mdates

from perf_analytics.config import Settings
from perf_analytics.errors import InvalidArgument, PlotError
from perf_analytics.frames import frames_from_documents
from perf_analytics.lake import connect_lake_all_orgs
from perf_analytics.pipeline import run_day
from perf_analytics.plots import (
    _panel_of,
    asset_figure,
    fleet_figure,
    plot_asset,
    plot_fleet,
    save_figure,
)
from perf_analytics.schema import SNAPSHOTS, validate_snapshot
from perf_analytics.store import Db
from perf_analytics.sync import sync_snapshots_all_orgs
from perf_analytics.synth import DEFAULT_START, FleetSpec, generate_fleet
from tests.conftest import Cli
from tests.factories import snapshot

DAY = DEFAULT_START.date() + timedelta(days=1)
PNG = b"\x89PNG\r\n\x1a\n"


def _docs(times_min: list[int], *, asset: str = "a1", uptime_reset_at: int | None = None) -> list[dict[str, object]]:
    docs = []
    for i, m in enumerate(times_min):
        p = snapshot(orgId="org-01", assetId=asset, timestamp=(DEFAULT_START + timedelta(minutes=m)).isoformat())
        p["performanceData"]["cpu"]["usage"] = float(10 + i)
        up = 3600.0 + 60 * m if uptime_reset_at is None or m < uptime_reset_at else 60.0 * (m - uptime_reset_at + 1)
        p["performanceData"]["system"]["uptime"] = up
        docs.append(validate_snapshot(p))
    return docs


def _flag(asset: str, metric: str, start_min: int, end_min: int, severity: str = "critical") -> dict[str, object]:
    return {"orgId": "org-01", "assetId": asset, "metric": metric, "detector": "threshold",
            "start": DEFAULT_START + timedelta(minutes=start_min), "end": DEFAULT_START + timedelta(minutes=end_min),
            "severity": severity, "score": 1.0, "message": "m"}


def test_the_cpu_line_breaks_at_each_silence_and_nowhere_else() -> None:
    times = [*range(0, 10), *range(30, 40), *range(41, 45)]  # one silence of 20 minutes
    fig = plot_asset(frames_from_documents(_docs(times)), "a1")
    line = fig.axes[0].lines[0]
    ys = np.asarray(line.get_ydata(), dtype=float)
    assert int(np.isnan(ys).sum()) == 1
    assert len(ys) == len(times) + 1
    assert ys[~np.isnan(ys)].tolist() == [float(10 + i) for i in range(len(times))]


def test_episodes_are_shaded_on_their_own_panel_and_gaps_on_all() -> None:
    frames = frames_from_documents(_docs(list(range(60))) + _docs(list(range(60)), asset="a2"))
    flags = pl.DataFrame([
        _flag("a1", "cpu.usage", 5, 10),
        _flag("a1", "memory.usagePercent", 20, 25, "warning"),
        _flag("a1", "*", 30, 35, "warning"),
        _flag("a2", "cpu.usage", 40, 45),  # another asset: not drawn
    ])
    fig = plot_asset(frames, "a1", flags=flags)
    cpu, memory, disk, network, processes = fig.axes
    assert len(cpu.patches) == 2  # its own episode and the gap
    assert len(memory.patches) == 2
    assert [len(a.patches) for a in (disk, network, processes)] == [1, 1, 1]


def test_reboots_are_marked_on_every_panel() -> None:
    fig = plot_asset(frames_from_documents(_docs(list(range(30)), uptime_reset_at=12)), "a1")
    for ax in fig.axes:
        dotted = [ln for ln in ax.lines if ln.get_linestyle() == ":"]
        assert len(dotted) == 1
    assert "reboot" in fig.get_suptitle()


def test_an_asset_without_snapshots_is_a_plain_error() -> None:
    with pytest.raises(PlotError, match="no snapshots of asset 'zz'"):
        plot_asset(frames_from_documents(_docs([0, 1])), "zz")


def _rollups(assets: int, hours: int, missing: tuple[int, int] | None = None) -> pl.DataFrame:
    rows = []
    for a in range(assets):
        for h in range(hours):
            if missing == (a, h):
                continue
            rows.append({"orgId": "org-01", "assetId": f"as{a}", "bucket": DEFAULT_START + timedelta(hours=h),
                         "cpu_usage_mean": float(a * 10 + h)})
    return pl.DataFrame(rows)


def test_the_fleet_heatmap_has_a_cell_per_asset_and_hour_and_leaves_missing_ones_empty() -> None:
    flags = pl.DataFrame([_flag("as1", "cpu.usage", 70, 80), _flag("as0", "*", 10, 20, "warning")])
    fig = plot_fleet(_rollups(3, 5, missing=(2, 3)), flags=flags)
    grid = np.ma.getdata(fig.axes[0].images[0].get_array())
    assert grid.shape == (3, 5)
    assert grid[1, 4] == 14.0
    assert math.isnan(grid[2, 3])
    assert sorted(len(c.get_offsets()) for c in fig.axes[0].collections) == [1, 1]


def test_the_fleet_plot_names_the_columns_it_could_use() -> None:
    with pytest.raises(InvalidArgument, match="unknown rollup column 'nope'; choose one of: cpu_usage_mean"):
        plot_fleet(_rollups(1, 2), metric="nope")


def test_the_heatmap_is_in_utc_whatever_zone_the_frame_carries() -> None:
    utc = _rollups(2, 24)
    local = utc.with_columns(pl.col("bucket").dt.convert_time_zone("America/New_York"))
    grids = [np.ma.getdata(plot_fleet(f).axes[0].images[0].get_array()) for f in (utc, local)]
    assert np.array_equal(grids[0], grids[1], equal_nan=True)
    extent = plot_fleet(local).axes[0].images[0].get_extent()
    assert mdates.num2date(extent[0]).replace(tzinfo=None) == DEFAULT_START.replace(tzinfo=None)


def test_a_one_day_rollup_is_one_cell_a_day_wide_with_its_flags_inside() -> None:
    day = _rollups(2, 1).with_columns(pl.lit("1day").alias("window"))
    fig = plot_fleet(day, flags=pl.DataFrame([_flag("as1", "cpu.usage", 600, 610)]))
    left, right = fig.axes[0].get_xlim()
    assert right - left == pytest.approx(1.0)  # matplotlib dates count in days
    (markers,) = fig.axes[0].collections
    assert left < markers.get_offsets()[0][0] < right


@pytest.mark.slow
def test_save_figure_writes_the_format_of_the_suffix_and_refuses_others(tmp_path: Path) -> None:
    fig = plot_fleet(_rollups(2, 3))
    assert save_figure(fig, tmp_path / "f.png").read_bytes().startswith(PNG)
    assert save_figure(fig, tmp_path / "f.svg").read_text().lstrip().startswith("<?xml")
    with pytest.raises(InvalidArgument, match=r"choose a \.png, \.svg or \.pdf"):
        save_figure(fig, tmp_path / "f.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "f.svg"]


def test_a_figure_shows_itself_as_png_in_a_notebook() -> None:
    assert plot_fleet(_rollups(1, 2))._repr_png_().startswith(PNG)


@pytest.fixture
def day_in_lake(db: Db, settings: Settings) -> Settings:
    docs = [{"_id": ObjectId(), **validate_snapshot(p)}
            for p in generate_fleet(FleetSpec(orgs=2, assets=2, days=2, interval_s=300, seed=5))]
    db[SNAPSHOTS].insert_many(docs)
    sync_snapshots_all_orgs(db, settings.lake)
    for org in ("org-01", "org-02"):
        run_day(settings.lake, org, DAY)
    return settings


def _invoke(cli: Cli, *args: str) -> tuple[int, str, str]:
    result = cli(*args)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.slow
def test_cli_plots_an_orgs_fleet_day_with_only_its_assets(cli: Cli, db: Db, day_in_lake: Settings, tmp_path: Path) -> None:
    out = tmp_path / "fleet.png"
    code, stdout, _ = _invoke(cli, "plot", "--org", "org-01", "--date", DAY.isoformat(), "--out", str(out))
    assert (code, stdout) == (0, f"wrote {out}\n")
    assert out.read_bytes().startswith(PNG)
    labels = {t.get_text() for t in fleet_figure(day_in_lake.lake, "org-01", DAY).axes[0].get_yticklabels()}
    assert labels == set(db[SNAPSHOTS].distinct("assetId", {"orgId": "org-01"}))


@pytest.mark.slow
def test_cli_plots_one_assets_day_with_its_lake_flags(cli: Cli, db: Db, day_in_lake: Settings, tmp_path: Path) -> None:
    con = connect_lake_all_orgs(day_in_lake.lake)
    org, asset = con.execute("select orgId, assetId from anomalies order by start, assetId limit 1").fetchall()[0]
    flags = con.sql("select * from anomalies where assetId = ?", params=[asset]).pl()
    con.close()
    # Each episode is shaded once on its metric's panel, or on all five (gaps, offline).
    expected = sum(1 if panel is not None else 5 for panel in map(_panel_of, flags["metric"]))
    fig = asset_figure(day_in_lake.lake, org, asset, DAY)
    assert sum(len(ax.patches) for ax in fig.axes) == expected > 0
    cpu = fig.axes[0].lines[0].get_ydata()
    # A snapshot that arrived after the nightly sync: the command syncs it before drawing.
    late = db[SNAPSHOTS].find_one({"orgId": org, "assetId": asset}, sort=[("timestamp", -1)])
    assert late is not None
    db[SNAPSHOTS].insert_one({**late, "_id": ObjectId(), "timestamp": late["timestamp"] + timedelta(seconds=30)})
    out = tmp_path / "asset.svg"
    code, stdout, err = _invoke(cli, "plot", "--org", org, "--date", DAY.isoformat(),
                                "--asset", asset, "--out", str(out))
    assert (code, stdout, err) == (0, f"wrote {out}\n", f"sync {org}: 1 new snapshot(s) into the lake\n")
    assert "<svg" in out.read_text()
    assert len(asset_figure(day_in_lake.lake, org, asset, DAY).axes[0].lines[0].get_ydata()) == len(cpu) + 1


@pytest.mark.slow
def test_cli_plot_errors_are_one_line(cli: Cli, day_in_lake: Settings, tmp_path: Path) -> None:
    code, _, err = _invoke(cli, "plot", "--org", "org-01", "--date", "2020-01-01", "--out", str(tmp_path / "x.png"))
    assert (code, err) == (1, "Error: the lake has no 1hour rollups of org-01 for 2020-01-01 "
                              "(run: perf-analytics rollup --org org-01 --date 2020-01-01)\n")
    code, _, err = _invoke(cli, "plot", "--org", "org-01", "--date", DAY.isoformat(), "--out", str(tmp_path / "x.jpg"))
    assert (code, err) == (1, f"Error: --out: choose a .png, .svg or .pdf file name, not '{tmp_path / 'x.jpg'}'\n")
    code, _, err = _invoke(cli, "plot", "--org", "org-01", "--date", DAY.isoformat(), "--asset", "nope",
                           "--no-sync", "--out", str(tmp_path / "x.png"))
    assert (code, err) == (1, "Error: no snapshots of asset 'nope' in this window\n")
    assert not list(tmp_path.glob("x.*"))
