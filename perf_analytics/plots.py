"""Plots for when a person would rather look than read: one asset's window, one org's day.

`plot_asset` draws an asset's CPU, memory, disks and network over time from extraction
frames, with its anomaly episodes shaded on the panel of their metric and reboots marked;
lines break where the agent was silent instead of bridging the gap. `plot_fleet` draws
an org's hourly rollups as a heatmap (one row per asset), with the anomaly episodes as
markers and each asset's availability beside its row.

Both return a `PlotFigure`, a matplotlib Figure built without pyplot's global state (safe
in scripts and schedulers) that Jupyter shows as an image. `asset_figure` and
`fleet_figure` first load what they plot from the lake (the snapshot mirror, the derived
partitions) and are what `perf-analytics plot` calls; `save_figure` writes PNG, SVG or PDF atomically.
"""

from __future__ import annotations

import io
import itertools
import os
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import cast

import numpy as np
import polars as pl
from matplotlib import colormaps
from matplotlib import dates as mdates
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator
from PIL import Image

from perf_analytics.atomic import atomic_path
from perf_analytics.errors import InvalidArgument, PlotError
from perf_analytics.frames import Frames
from perf_analytics.lake import connect_lake
from perf_analytics.mirror import read_window
from perf_analytics.pipeline import day_bounds
from perf_analytics.rollups import WINDOW_SECONDS

SEVERITY_COLOURS = {"info": "#4c72b0", "warning": "#dd8452", "critical": "#c44e52"}
SUFFIXES = (".png", ".svg", ".pdf")
# A silence longer than this many reporting intervals breaks the line.
GAP_INTERVALS = 2.5
FLEET_FULL_ROWS = 40


class PlotFigure(Figure):
    """A Figure that Jupyter shows as an image without pyplot or `%matplotlib inline`."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()


def _panel_of(metric: str) -> str | None:
    """The panel a flag's metric belongs to (None: every panel, e.g. gaps and offline)."""
    if metric.startswith("cpu"):
        return "cpu"
    if metric.startswith("memory"):
        return "memory"
    if metric.startswith("disk"):
        return "disk"
    if metric.startswith("network"):
        return "network"
    if metric.startswith("system.process") or metric.startswith("system.thread"):
        return "processes"
    return None


def _broken(times: np.ndarray, values: np.ndarray, interval_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Insert a NaN after each silence longer than GAP_INTERVALS reporting intervals."""
    if len(times) < 2:
        return times, values
    step = np.diff(times).astype("timedelta64[ms]").astype(np.float64) / 1000.0
    cuts = np.nonzero(step > GAP_INTERVALS * interval_s)[0] + 1
    if not len(cuts):
        return times, values
    gap_times = times[cuts - 1] + (times[cuts] - times[cuts - 1]) / 2
    return np.insert(times, cuts, gap_times), np.insert(values.astype(np.float64), cuts, np.nan)


def _series(frame: pl.DataFrame, column: str, interval_s: float) -> tuple[np.ndarray, np.ndarray]:
    rows = frame.select("timestamp", column).drop_nulls("timestamp").sort("timestamp")
    times = _utc_naive(rows["timestamp"]).to_numpy()
    values = rows[column].cast(pl.Float64).fill_null(float("nan")).to_numpy()
    return _broken(times, values, interval_s)


def _utc_naive(series: pl.Series) -> pl.Series:
    """Timestamps as naive UTC (matplotlib's dates), whatever zone the frame carries."""
    dtype = series.dtype
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
        series = series.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return series


def _shade(axes: dict[str, Axes], flags: pl.DataFrame, interval_s: float) -> tuple[list[Artist], list[str]]:
    """Shade each episode on its panel; returns the shades and the severities drawn (for the legend)."""
    shades: list[Artist] = []
    drawn: list[str] = []
    minimum = timedelta(seconds=interval_s)
    spans = flags.with_columns(_utc_naive(flags["start"]), _utc_naive(flags["end"]))
    for row in spans.iter_rows(named=True):
        start, end = row["start"], max(row["end"], row["start"] + minimum)  # a one-sample episode still shows
        colour = SEVERITY_COLOURS.get(row["severity"], "#8c8c8c")
        panel = _panel_of(row["metric"])
        targets = [axes[panel]] if panel in axes else list(axes.values())
        for ax in targets:
            shades.append(ax.axvspan(start, end, color=colour, alpha=0.25 if panel else 0.12, lw=0))
        drawn.append(row["severity"])
    return shades, drawn


PANELS = ("cpu", "memory", "disk", "network", "processes")
_LABELS = {"cpu": "CPU %", "memory": "memory %", "disk": "disk full %", "network": "network MB/s",
           "processes": "processes"}
# Disks and interfaces take their colours in this order on every picture, so a figure
# drawn again for another asset gives the same colours as a fresh one.
_SERIES_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")


def _panels(fig: Figure) -> dict[str, Axes]:
    """The five stacked panels of an asset's picture, with all that is the same for every asset."""
    grid = fig.subplots(len(PANELS), 1, sharex=True)
    axes = dict(zip(PANELS, grid, strict=True))
    for name, ax in axes.items():
        ax.set_ylabel(_LABELS[name])
        ax.grid(True, alpha=0.3)
    for name in ("cpu", "memory", "disk"):
        axes[name].set_ylim(0, 105)
    return axes


def _interval_s(snaps: pl.DataFrame) -> float:
    """The asset's usual reporting interval (median step between snapshots), 60 s if unknown."""
    steps = snaps["timestamp"].diff().dt.total_seconds().drop_nulls()
    steps = steps.filter(steps > 0)
    return float(steps.median()) if len(steps) else 60.0  # type: ignore[arg-type]


def _draw_asset(
    axes: dict[str, Axes], frames: Frames, asset_id: str, flags: pl.DataFrame | None
) -> tuple[list[Artist], str, list[str]]:
    """Draw one asset's lines, reboots and episodes on the panels.

    Returns the artists added (a reused figure removes them before the next asset), the
    picture's default heading and what its legend names (flags by severity, reboots).
    Raises PlotError when the frames hold no snapshot of the asset.
    """
    snaps = frames.snapshots.filter(pl.col("assetId") == asset_id).sort("timestamp")
    if snaps.is_empty():
        raise PlotError(f"no snapshots of asset {asset_id!r} in this window")
    interval_s = _interval_s(snaps)
    added: list[Artist] = []
    added += axes["cpu"].plot(*_series(snaps, "cpu_usage", interval_s), lw=0.9, color="#4c72b0", label="CPU usage")
    added += axes["memory"].plot(*_series(snaps, "memory_usage_percent", interval_s), lw=0.9, color="#55a868",
                                 label="memory used")
    disks = frames.disks.filter(pl.col("assetId") == asset_id).sort("disk")
    for i, ((name,), part) in enumerate(disks.group_by("disk", maintain_order=True)):
        added += axes["disk"].plot(*_series(part, "usage_percent", interval_s), lw=0.9,
                                   color=_SERIES_COLOURS[i % len(_SERIES_COLOURS)], label=str(name))
    interfaces = frames.interfaces.filter(pl.col("assetId") == asset_id).sort("interface")
    scale = 1 / 1e6
    for i, ((name,), part) in enumerate(interfaces.group_by("interface", maintain_order=True)):
        both = part.with_columns(
            ((pl.col("bytes_recv_per_sec").fill_null(0) + pl.col("bytes_sent_per_sec").fill_null(0)) * scale).alias("mb")
        )
        added += axes["network"].plot(*_series(both, "mb", interval_s), lw=0.9,
                                      color=_SERIES_COLOURS[i % len(_SERIES_COLOURS)], label=str(name))
    added += axes["processes"].plot(*_series(snaps, "system_process_count", interval_s), lw=0.9, color="#8172b3",
                                    label="processes")
    added += [axes[name].axhline(90, color="#c44e52", lw=0.6, ls="--") for name in ("cpu", "memory")]

    uptime = snaps.select("timestamp", "system_uptime").drop_nulls()
    reboots = _utc_naive(uptime.filter(pl.col("system_uptime").diff() < 0)["timestamp"]).to_list()
    added += [a.axvline(at, color="#333333", lw=0.8, ls=":") for at in reboots for a in axes.values()]
    drawn: list[str] = []
    if flags is not None and not flags.is_empty():
        spans, drawn = _shade(axes, flags.filter(pl.col("assetId") == asset_id), interval_s)
        added += spans
    for name in ("disk", "network"):
        if axes[name].get_legend_handles_labels()[0]:
            added.append(axes[name].legend(loc="upper left", fontsize="small", ncols=4, frameon=False))
    legend = [f"{s} flag" for s in ("critical", "warning", "info") if s in drawn]
    if reboots:
        legend.append("reboot (dotted)")
    org = snaps["orgId"][0]
    first, last = cast(datetime, snaps["timestamp"].min()), cast(datetime, snaps["timestamp"].max())
    return added, f"{org} / {asset_id}: {first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} UTC", legend


def _with_legend(heading: str, legend: Sequence[str]) -> str:
    return heading + ("   [" + ", ".join(legend) + "]" if legend else "")


def plot_asset(
    frames: Frames,
    asset_id: str,
    *,
    flags: pl.DataFrame | None = None,
    title: str | None = None,
) -> PlotFigure:
    """One asset over the frames' window: CPU, memory, disks, network, processes.

    `flags` is a frame of anomaly episodes (as `flag_anomalies` returns or the lake's
    `anomalies` view holds); only this asset's are drawn.
    """
    fig = PlotFigure(figsize=(11, 9.5), layout="constrained")
    axes = _panels(fig)
    _, heading, legend = _draw_asset(axes, frames, asset_id, flags)
    fig.suptitle(_with_legend(title or heading, legend), fontsize="medium")
    axes["processes"].xaxis.set_major_formatter(mdates.ConciseDateFormatter(axes["processes"].xaxis.get_major_locator()))
    return fig


class DayPictures:
    """Asset after asset of one UTC day drawn into one reused figure, each as PNG bytes.

    For a page that holds many asset pictures (the daily report). `plot_asset` builds a
    figure, five axes with their ticks, and a constrained layout that measures every
    label, then renders it all, for each picture: most of a picture's cost goes to parts
    that are the same for every asset. Here those parts are built and rendered once: the
    layout is fixed, the x axis is the day with a tick every three hours, the panels'
    frames, grids and fixed scales are kept as pixels. Each asset then only renders what
    is its own on top of a copy of them: its lines, reboots, episodes and legends, the
    y axes of the two panels whose scale follows its data (network, processes) and the
    heading. The picture shows what `plot_asset` shows of that day.

    PNG at zlib level 1: these pictures are mostly flat colour, and the default level
    costs several times the time for a few percent of bytes.
    """

    def __init__(self, day: date, *, dpi: int = 80, size: tuple[float, float] = (11, 8.5)) -> None:
        self.fig = Figure(figsize=size, dpi=dpi)
        self.canvas = FigureCanvasAgg(self.fig)
        self.axes = _panels(self.fig)
        self.fig.subplots_adjust(left=0.075, right=0.985, bottom=0.045, top=0.94, hspace=0.12)
        start = _day_window(day, 1)[0].replace(tzinfo=None)
        hours = mdates.date2num([start + timedelta(hours=h) for h in range(0, 25, 3)])
        bottom = self.axes["processes"]
        bottom.xaxis_date()
        bottom.set_xlim(float(hours[0]), float(hours[-1]))
        bottom.xaxis.set_major_locator(FixedLocator(hours))
        bottom.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
        for ax in self.axes.values():
            ax.set_autoscalex_on(False)
            # Placed, not measured against each asset's tick labels: the same for every picture.
            ax.yaxis.set_label_coords(-0.055, 0.5)
        self.title = self.fig.suptitle("", fontsize="medium")
        # The y axes that follow each asset's data are left out of the kept pixels.
        self.scaled = [self.axes[name] for name in ("network", "processes")]
        for ax in self.scaled:
            ax.yaxis.set_visible(False)
        self.canvas.draw()
        self.background = self.canvas.copy_from_bbox(self.fig.bbox)
        for ax in self.scaled:
            ax.yaxis.set_visible(True)

    def png(self, frames: Frames, asset_id: str, *, flags: pl.DataFrame | None = None) -> bytes:
        """The asset's picture of the day as PNG bytes; PlotError when it has no snapshot."""
        added, heading, legend = _draw_asset(self.axes, frames, asset_id, flags)
        try:
            for ax in self.scaled:
                ax.relim()
                ax.autoscale_view(scalex=False)
            self.title.set_text(_with_legend(heading, legend))
            self.canvas.restore_region(self.background)
            renderer = self.canvas.get_renderer()
            for ax in self.scaled:
                ax.yaxis.draw(renderer)
            # In the order a full draw would take: shades under lines, legends on top.
            for artist in sorted(added, key=lambda a: a.get_zorder()):
                artist.draw(renderer)
            self.title.draw(renderer)
            width, height = self.canvas.get_width_height()
            pixels = Image.frombuffer("RGBA", (width, height), self.canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
            buffer = io.BytesIO()
            pixels.convert("RGB").save(buffer, format="PNG", compress_level=1)
            return buffer.getvalue()
        finally:
            for artist in added:
                artist.remove()


def plot_fleet(
    rollups: pl.DataFrame,
    *,
    metric: str = "cpu_usage_mean",
    flags: pl.DataFrame | None = None,
    availability: pl.DataFrame | None = None,
    title: str | None = None,
) -> PlotFigure:
    """An org's assets as rows of a heatmap of one rollup column, over the rollups' buckets.

    `rollups` is one window's asset rollups (the lake's `rollups` view, e.g. 1hour);
    flags are drawn as markers at their start on their asset's row, availability as a
    percentage beside the row.

    Raises:
        InvalidArgument: `metric` is not a column of the rollups.
        PlotError: no rollups, or rollups of several windows.
    """
    if rollups.is_empty():
        raise PlotError("no rollups to plot (has the day been rolled up?)")
    if metric not in rollups.columns:
        numeric = [c for c, t in rollups.schema.items() if t.is_numeric() and c not in ("samples", "interval_s")]
        raise InvalidArgument(f"unknown rollup column {metric!r}; choose one of: {', '.join(numeric)}")
    table = pl.DataFrame({
        "assetId": rollups["assetId"],
        "bucket": _utc_naive(rollups["bucket"]),
        "value": rollups[metric].cast(pl.Float64),
    })
    assets = sorted(table["assetId"].unique().to_list())
    buckets = sorted(table["bucket"].unique().to_list())
    windows = rollups["window"].unique().to_list() if "window" in rollups.columns else []
    if len(windows) > 1:
        raise PlotError(f"rollups of several windows ({', '.join(sorted(windows))}): plot one at a time")
    if windows and windows[0] in WINDOW_SECONDS:
        width = timedelta(seconds=WINDOW_SECONDS[windows[0]])
    elif len(buckets) > 1:
        width = min(b - a for a, b in itertools.pairwise(buckets))
    else:
        width = timedelta(hours=1)
    first = buckets[0]
    columns = int((buckets[-1] - first) / width) + 1
    grid = np.full((len(assets), columns), np.nan)
    row_of = {a: i for i, a in enumerate(assets)}
    for asset, bucket, value in table.iter_rows():
        grid[row_of[asset], int((bucket - first) / width)] = np.nan if value is None else value

    row_in = 0.38 if len(assets) <= FLEET_FULL_ROWS else 0.16
    fig = PlotFigure(figsize=(11, 1.2 + row_in * len(assets)), layout="constrained")
    ax = fig.subplots()
    left, right = mdates.date2num(first), mdates.date2num(first + width * columns)
    percent = "percent" in metric or metric.startswith("cpu_usage") or metric == "coverage"
    cmap = colormaps["viridis"].with_extremes(bad="#e4e4e4")  # grey: no snapshot in the bucket
    image = ax.imshow(
        grid, aspect="auto", interpolation="nearest", cmap=cmap,
        extent=(left, right, len(assets) - 0.5, -0.5),
        vmin=0 if percent else None, vmax=(1 if metric == "coverage" else 100) if percent else None,
    )
    # A tall fleet's colour bar stays a few inches high, at the top where the eye starts.
    fig.colorbar(image, ax=ax, label=metric, pad=0.01, shrink=min(1.0, 5.0 / (row_in * len(assets))), anchor=(0.0, 1.0))
    label_size = "small" if len(assets) <= FLEET_FULL_ROWS else "x-small"
    ax.set_yticks(range(len(assets)), assets, fontsize=label_size)
    # Neither y axis has a label to place: matplotlib would otherwise measure every row's
    # label on each draw to place one (seconds for a fleet of hundreds).
    ax.yaxis.set_label_coords(-0.1, 0.5)
    ax.xaxis_date()
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(ax.xaxis.get_major_locator()))

    if flags is not None and not flags.is_empty():
        for severity, colour in SEVERITY_COLOURS.items():
            mine = flags.filter((pl.col("severity") == severity) & pl.col("assetId").is_in(assets))
            if mine.is_empty():
                continue
            xs = mdates.date2num(_utc_naive(mine["start"]).to_list())
            ys = [row_of[a] for a in mine["assetId"].to_list()]
            ax.scatter(xs, ys, marker="v", s=36, color=colour, edgecolors="white", linewidths=0.6,
                       label=f"{severity} ({mine.height})", zorder=3)
        ax.set_xlim(left, right)
        if ax.get_legend_handles_labels()[0]:
            # Below the heatmap in the figure's margin, however tall the fleet.
            fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize="small",
                       frameon=False)
    if availability is not None and not availability.is_empty():
        share = availability.group_by("assetId").agg(pl.col("availability").mean())
        labels = dict(share.iter_rows())
        twin = ax.secondary_yaxis("right")
        twin.set_yticks(range(len(assets)),
                        [f"{labels[a]:.0%}" if labels.get(a) is not None else "" for a in assets],
                        fontsize=label_size)
        twin.yaxis.set_label_coords(1.1, 0.5)
        # The column's header, above its first row.
        ax.annotate("available", xy=(1, 1), xycoords="axes fraction", xytext=(3, 4), textcoords="offset points",
                    ha="left", va="bottom", fontsize=label_size)
    org = rollups["orgId"][0] if "orgId" in rollups.columns else None
    fig.suptitle(title or f"{org + ': ' if org else ''}{metric} by asset", fontsize="medium")
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 110) -> Path:
    """Write the figure (format from the suffix: .png, .svg, .pdf) via a temp file and rename.

    Raises InvalidArgument for another suffix or a directory that does not exist.
    """
    target = Path(path)
    if target.suffix.lower() not in SUFFIXES:
        raise InvalidArgument(f"{target}: choose a .png, .svg or .pdf file name")
    if not target.parent.is_dir():
        raise InvalidArgument(f"{target.parent} is not a directory")
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=dpi, format=target.suffix.lower()[1:])
    return target


def _day_window(day: date, days: int) -> tuple[datetime, datetime]:
    start, _ = day_bounds(day)
    return start, start + timedelta(days=days)


def asset_figure(
    lake: str | os.PathLike[str],
    org_id: str,
    asset_id: str,
    day: date,
    *,
    days: int = 1,
) -> PlotFigure:
    """Plot `days` UTC days of one asset from the lake: its mirrored snapshots (as the
    org's last sync left them) and the anomaly episodes flagged for them."""
    start, end = _day_window(day, days)
    extraction = read_window(lake, org_id, start, end, asset_ids=[asset_id])
    con = connect_lake(lake, org_id=org_id)
    try:
        flags = con.sql(
            'SELECT * FROM anomalies WHERE assetId = ? AND "start" < ? AND "end" >= ?', params=[asset_id, end, start]
        ).pl()
    finally:
        con.close()
    return plot_asset(extraction.frames, asset_id, flags=flags)


def fleet_figure(
    lake: str | os.PathLike[str],
    org_id: str,
    day: date,
    *,
    days: int = 1,
    metric: str = "cpu_usage_mean",
    window: str = "1hour",
) -> PlotFigure:
    """Plot an org's rolled-up days from the lake: `window` rollups, flags, availability."""
    start, end = _day_window(day, days)
    con = connect_lake(lake, org_id=org_id)
    try:
        between = [start.date(), (end - timedelta(days=1)).date()]
        rollups = con.sql(
            'SELECT * FROM rollups WHERE "window" = ? AND "date" BETWEEN ? AND ? ORDER BY assetId, bucket',
            params=[window, *between],
        ).pl()
        flags = con.sql('SELECT * FROM anomalies WHERE "date" BETWEEN ? AND ?', params=between).pl()
        availability = con.sql('SELECT * FROM availability WHERE "date" BETWEEN ? AND ?', params=between).pl()
    finally:
        con.close()
    if rollups.is_empty():
        raise PlotError(
            f"the lake has no {window} rollups of {org_id} for {start:%Y-%m-%d}"
            + (f" to {end - timedelta(days=1):%Y-%m-%d}" if days > 1 else "")
            + f" (run: perf-analytics rollup --org {org_id} --date {start:%Y-%m-%d})"
        )
    span = f"{start:%Y-%m-%d}" + (f" to {end - timedelta(days=1):%Y-%m-%d}" if days > 1 else "")
    return plot_fleet(rollups, metric=metric, flags=flags, availability=availability,
                      title=f"{org_id}, {span}: {metric} per {window} by asset")


__all__: Sequence[str] = (
    "PlotError", "PlotFigure", "asset_figure", "fleet_figure", "plot_asset", "plot_fleet", "save_figure",
)
