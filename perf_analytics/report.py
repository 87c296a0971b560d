"""The daily report: one self-contained HTML page per org and UTC day, read from the lake.

The page holds the fleet heatmap, each asset's availability and reboots, the top assets by
CPU and by memory (95th percentile of the day, from the 1day rollups), and the day's anomaly
episodes in words, each linking to its asset's section with that asset's plot. Sections are
for the assets in a top list, then those with the worst episodes, at most `most` of them
(default DEFAULT_MOST): a fleet of a thousand assets with two hundred flagged gets a page
that opens quickly, and one line names the flagged assets left without a section (their
episodes are all in the list). Pictures are inline PNG data URIs and the styles are inline; a Content-Security-Policy in the page
forbids every other source, so it opens from a mail attachment or an air-gapped share
exactly as it was written, and a browser refuses (and reports) anything that would fetch.

Every value that comes from data (asset ids, messages, metric names) is HTML-escaped.
`render_report` returns the page; `write_report` writes it atomically (temporary file,
fsync, rename), so a reader never sees half a page and a failed run leaves the previous
page in place. `report_path` is where the nightly run puts it: `reports/<org>/<date>.html`
beside the lake directory.

The day must have been rolled up and flagged (`perf-analytics rollup`, which does both, or
`perf-analytics anomalies` for the flags): a missing partition is a `NotFound` naming the
command to run, never an empty page that looks like a quiet day.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import polars as pl

from perf_analytics import plots
from perf_analytics.atomic import write_atomic
from perf_analytics.errors import InvalidArgument, NotFound
from perf_analytics.lake import (
    ANOMALIES,
    AVAILABILITY,
    PART,
    ROLLUP_DATASETS,
    connect_lake,
    partition_dir,
)
from perf_analytics.mirror import read_window
from perf_analytics.pipeline import day_bounds
from perf_analytics.schema import ID_RULE, is_valid_id

DEFAULT_TOP = 5
DEFAULT_MOST = 20  # asset sections (with a picture each) at most
SUFFIXES = (".html", ".htm")
# The heatmap's window and the window the top lists rank by.
HEATMAP_WINDOW = "1hour"
RANKING_WINDOW = "1day"
SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}
FLEET_DPI = 96
# Only inline styles and data: images may load; anything else is blocked and reported.
CONTENT_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


@dataclass(frozen=True)
class DayData:
    """What the page shows of one org's day, as read from the lake."""

    org_id: str
    day: date
    ranking: pl.DataFrame  # 1day asset rollups: one row per asset
    availability: pl.DataFrame  # one row per asset
    episodes: pl.DataFrame  # the anomaly episodes flagged for the day
    hourly: pl.DataFrame  # the heatmap's asset rollups (HEATMAP_WINDOW)
    shaded: pl.DataFrame  # the episodes that overlap the day (one may start the day before), for the pictures

    def sections(self, top: int, most: int = DEFAULT_MOST) -> tuple[list[str], list[str]]:
        """The assets that get a section, in page order, and the flagged ones left out.

        First the assets of the top lists (by rank, CPU then memory), then those with
        episodes, worst first (most severe episode, then most episodes, then id), until
        `most` are chosen; the flagged assets beyond that are returned second, sorted.
        """
        chosen: dict[str, None] = {}
        for column in ("cpu_usage_p95", "memory_usage_percent_p95"):
            chosen.update(dict.fromkeys(_top(self.ranking, column, top)["assetId"].to_list()))
        flagged = self.episodes.group_by("assetId").agg(
            pl.col("severity").replace_strict(SEVERITY_ORDER, default=len(SEVERITY_ORDER), return_dtype=pl.Int64)
            .min().alias("worst"),
            pl.len().alias("count"),
        ).sort(["worst", "count", "assetId"], descending=[False, True, False])
        for asset in flagged["assetId"].to_list():
            chosen.setdefault(asset, None)
        shown = list(chosen)[:most]
        left = sorted(set(flagged["assetId"].to_list()) - set(shown))
        return shown, left


def report_path(lake: str | os.PathLike[str], org_id: str, day: date) -> Path:
    """Where the nightly run writes (org, day)'s page: `reports/<org>/<date>.html` beside the lake.

    Raises InvalidArgument for an org id that cannot name a file.
    """
    if not is_valid_id(org_id):
        raise InvalidArgument(f"org id {org_id!r} cannot name a report file: use {ID_RULE}")
    return Path(lake).absolute().parent / "reports" / org_id / f"{day.isoformat()}.html"


def _require_partitions(lake: str | os.PathLike[str], org_id: str, day: date) -> None:
    """Raise NotFound, naming the command that writes it, for a partition the day lacks."""
    key = day.isoformat()
    needed = [
        (partition_dir(lake, ROLLUP_DATASETS["assets"], {"window": w, "orgId": org_id, "date": key}),
         f"{w} rollups", "rollup")
        for w in (HEATMAP_WINDOW, RANKING_WINDOW)
    ]
    needed.append((partition_dir(lake, AVAILABILITY, {"orgId": org_id, "date": key}), "availability", "rollup"))
    needed.append((partition_dir(lake, ANOMALIES, {"orgId": org_id, "date": key}), "anomaly flags", "anomalies"))
    for directory, what, command in needed:
        if not (directory / PART).is_file():
            raise NotFound(
                f"the lake has no {what} of {org_id} for {key} "
                f"(run: perf-analytics {command} --org {org_id} --date {key})"
            )


def load_day(lake: str | os.PathLike[str], org_id: str, day: date) -> DayData:
    """Read (org, day)'s 1day and hourly rollups, availability and anomaly episodes from the lake
    (one DuckDB connection for all of it: each costs a walk of the org's partitions)."""
    _require_partitions(lake, org_id, day)
    con = connect_lake(lake, org_id=org_id)
    try:
        ranking = con.sql(
            'SELECT * FROM rollups WHERE "window" = ? AND "date" = ? ORDER BY assetId', params=[RANKING_WINDOW, day]
        ).pl()
        availability = con.sql('SELECT * FROM availability WHERE "date" = ? ORDER BY assetId', params=[day]).pl()
        episodes = con.sql(
            'SELECT * FROM anomalies WHERE "date" = ? ORDER BY "start", assetId, metric', params=[day]
        ).pl()
        hourly = con.sql(
            'SELECT * FROM rollups WHERE "window" = ? AND "date" = ? ORDER BY assetId, bucket',
            params=[HEATMAP_WINDOW, day],
        ).pl()
        start, end = day_bounds(day)
        shaded = con.sql('SELECT * FROM anomalies WHERE "start" < ? AND "end" >= ?', params=[end, start]).pl()
    finally:
        con.close()
    return DayData(org_id, day, ranking, availability, episodes, hourly, shaded)


# ---- the pictures: each plot is called in one place --------------------------------------


def _png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _fleet_picture(data: DayData) -> str:
    """The heatmap of `plots.plot_fleet`, from the rollups and flags already read."""
    fig = plots.plot_fleet(data.hourly, flags=data.episodes, availability=data.availability,
                           title=f"{data.org_id}, {data.day.isoformat()}: cpu_usage_mean per {HEATMAP_WINDOW} by asset")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FLEET_DPI, pil_kwargs={"compress_level": 1})
    return _png_uri(buffer.getvalue())


def _asset_pictures(lake: str | os.PathLike[str], data: DayData, assets: Sequence[str]) -> dict[str, str]:
    """Each asset's day as `plots.DayPictures` draws it, from ONE read of their snapshots in
    the lake's mirror; an asset the mirror holds no snapshot of that day (silent all day:
    flagged, and given a section, for exactly that reason) gets none."""
    if not assets:
        return {}
    start, end = day_bounds(data.day)
    frames = read_window(lake, data.org_id, start, end, asset_ids=list(assets)).frames
    held = set(frames.snapshots["assetId"].to_list())
    pictures = plots.DayPictures(data.day)
    return {a: _png_uri(pictures.png(frames, a, flags=data.shaded)) for a in assets if a in held}


# ---- text ---------------------------------------------------------------------------------


def _e(value: object) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    return html.escape(str(value), quote=True)


def anchor_id(asset_id: str) -> str:
    """The HTML id of an asset's section. An id that follows the identifier rule is kept as
    it is (readable links); any other becomes a hash behind `~`, a character the rule
    excludes, so two assets never share an anchor."""
    if is_valid_id(asset_id):
        return f"asset-{asset_id}"
    return "asset~" + hashlib.sha256(asset_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _asset_link(asset_id: str, linked: set[str]) -> str:
    if asset_id in linked:
        return f'<a href="#{_e(anchor_id(asset_id))}">{_e(asset_id)}</a>'
    return _e(asset_id)


def _clock(at: datetime, day: date) -> str:
    """HH:MM in UTC, with the date when it is not the report's day."""
    at = at.astimezone(UTC)
    return f"{at:%H:%M}" if at.date() == day else f"{at:%Y-%m-%d %H:%M}"


def _when(start: datetime, end: datetime, day: date) -> str:
    if start == end:
        return f"at {_clock(start, day)} UTC"
    return f"from {_clock(start, day)} to {_clock(end, day)} UTC"


def _metric_name(metric: str) -> str:
    return "reporting" if metric == "*" else metric


def episode_sentence(row: dict[str, Any], day: date, linked: set[str]) -> str:
    """One episode in words, as HTML: what, on which asset (linked), when, how bad, why."""
    score = "" if row["score"] is None else f"; score {row['score']:.1f}"
    return (
        f'<span class="sev sev-{_e(row["severity"])}">{_e(row["severity"])}</span> '
        f"{_e(_metric_name(row['metric']))} on asset {_asset_link(row['assetId'], linked)} "
        f"{_when(row['start'], row['end'], day)} ({_e(row['detector'])}{score}): {_e(row['message'])}"
    )


def _number(value: float | None, fmt: str) -> str:
    return "&ndash;" if value is None else format(value, fmt)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "&ndash;"
    minutes = round(seconds / 60)
    return f"{minutes // 60}h {minutes % 60:02d}m"


# ---- sections -----------------------------------------------------------------------------


def _top(ranking: pl.DataFrame, column: str, top: int) -> pl.DataFrame:
    return ranking.filter(pl.col(column).is_not_null()).sort([column, "assetId"], descending=[True, False]).head(top)


def _table(caption: str, head: Sequence[str], rows: Iterable[Sequence[str]], *, numeric_from: int = 1) -> str:
    """A table whose cells are already HTML; columns from `numeric_from` are right-aligned."""
    th = "".join(f'<th{" class=num" if i >= numeric_from else ""}>{_e(h)}</th>' for i, h in enumerate(head))
    body = "".join(
        "<tr>" + "".join(f'<td{" class=num" if i >= numeric_from else ""}>{c}</td>' for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><caption>{_e(caption)}</caption><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _summary(data: DayData) -> str:
    counts = data.episodes["severity"].value_counts() if data.episodes.height else None
    by_severity = dict(counts.iter_rows()) if counts is not None else {}
    severities = ", ".join(f"{by_severity[s]} {s}" for s in SEVERITY_ORDER if s in by_severity)
    samples = int(data.availability["samples"].sum()) if data.availability.height else 0
    reboots = int(data.availability["reboots"].sum()) if data.availability.height else 0
    mean = data.availability["availability"].mean() if data.availability.height else None
    shown = "&ndash;" if mean is None else f"{float(mean):.1%}"  # type: ignore[arg-type]
    episodes = f"{data.episodes.height} anomaly episode{'' if data.episodes.height == 1 else 's'}"
    return (
        f"<p class=summary>{data.availability.height} assets reported {samples:,} snapshots; "
        f"mean availability {shown}; {reboots} reboot{'' if reboots == 1 else 's'}; "
        f"{episodes}{f' ({severities})' if severities else ''}.</p>"
    )


def _availability_section(data: DayData, linked: set[str]) -> str:
    rows = [
        [
            _asset_link(r["assetId"], linked),
            _number(None if r["availability"] is None else 100 * r["availability"], ".1f"),
            _duration(r["covered_s"]),
            f"{r['samples']:,}",
            _number(r["interval_s"], ".0f"),
            str(r["reboots"]),
        ]
        for r in data.availability.sort(["availability", "assetId"], nulls_last=True).iter_rows(named=True)
    ]
    table = _table("Least available first", ["asset", "available %", "reporting", "snapshots", "interval s", "reboots"],
                   rows)
    return f'<section id=availability><h2>Availability and reboots</h2>{table}</section>'


def _top_section(data: DayData, linked: set[str], top: int) -> str:
    tables = []
    for label, prefix in (("CPU", "cpu_usage"), ("memory", "memory_usage_percent")):
        best = _top(data.ranking, f"{prefix}_p95", top)
        rows = [
            [_asset_link(r["assetId"], linked), _number(r[f"{prefix}_p95"], ".1f"),
             _number(r[f"{prefix}_mean"], ".1f"), _number(r[f"{prefix}_max"], ".1f")]
            for r in best.iter_rows(named=True)
        ]
        tables.append(_table(f"By {label} % (95th percentile of the day)", ["asset", "p95", "mean", "max"], rows))
    return f'<section id=top><h2>Top assets</h2><div class=pair>{"".join(tables)}</div></section>'


def _sorted_episodes(episodes: pl.DataFrame) -> pl.DataFrame:
    rank = pl.col("severity").replace_strict(SEVERITY_ORDER, default=len(SEVERITY_ORDER), return_dtype=pl.Int64)
    return episodes.sort([pl.col("start"), rank, pl.col("assetId"), pl.col("metric")])


def _episodes_section(data: DayData, linked: set[str]) -> str:
    if data.episodes.is_empty():
        body = "<p>No anomaly episodes were flagged this day.</p>"
    else:
        items = "".join(
            f"<li>{episode_sentence(r, data.day, linked)}</li>"
            for r in _sorted_episodes(data.episodes).iter_rows(named=True)
        )
        body = f"<ol class=episodes>{items}</ol>"
    return f"<section id=episodes><h2>Anomaly episodes</h2>{body}</section>"


def _fleet_section(data: DayData) -> str:
    return (
        "<p>Mean CPU % per hour and asset (grey: no snapshot); markers: anomaly episodes; "
        "right: share of the day each asset reported.</p>"
        f'<img src="{_fleet_picture(data)}" alt="{_e(data.org_id)}: mean CPU per hour by asset">'
    )


def _left_out(left: Sequence[str], most: int) -> str:
    """The line that names the flagged assets without a section."""
    if not left:
        return ""
    return (f"<p class=more>And {len(left)} more asset{'' if len(left) == 1 else 's'} with anomaly episodes "
            f"(sections are drawn for {most} at most; every episode is in the list above): "
            f"{', '.join(_e(a) for a in left)}.</p>")


def _asset_section(data: DayData, asset_id: str, picture: str | None, linked: set[str]) -> str:
    facts = []
    available = data.availability.filter(pl.col("assetId") == asset_id)
    if available.height:
        share = available["availability"][0]
        facts.append(f"available {_number(None if share is None else 100 * share, '.1f')}%")
        facts.append(f"{available['reboots'][0]} reboot{'' if available['reboots'][0] == 1 else 's'}")
    ranked = data.ranking.filter(pl.col("assetId") == asset_id)
    if ranked.height:
        facts.append(f"CPU p95 {_number(ranked['cpu_usage_p95'][0], '.1f')}%")
        facts.append(f"memory p95 {_number(ranked['memory_usage_percent_p95'][0], '.1f')}%")
    own = _sorted_episodes(data.episodes.filter(pl.col("assetId") == asset_id))
    facts.append(f"{own.height} episode{'' if own.height == 1 else 's'}")
    others = linked - {asset_id}  # no link from a section to itself
    items = "".join(f"<li>{episode_sentence(r, data.day, others)}</li>" for r in own.iter_rows(named=True))
    return (
        f'<section class=asset id="{_e(anchor_id(asset_id))}"><h3>{_e(asset_id)}</h3>'
        f"<p>{'; '.join(facts)}. <a href=\"#episodes\">All episodes</a></p>"
        f"{f'<ul class=episodes>{items}</ul>' if items else ''}"
        + (
            f'<img src="{picture}" alt="{_e(asset_id)}: CPU, memory, disks, network and processes over the day">'
            if picture is not None
            else "<p>No snapshot of this asset this day.</p>"
        )
        + "</section>"
    )


STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;margin:0 auto;
max-width:1200px;padding:0 24px 48px}
header{border-bottom:2px solid #4c72b0;margin-bottom:8px}
h1{font-size:24px;margin:20px 0 4px}h2{font-size:19px;margin:28px 0 8px}h3{font-size:16px;margin:24px 0 4px}
.meta{color:#666;margin:0 0 10px}nav a{margin-right:14px}
img{max-width:100%;height:auto;border:1px solid #ddd}
table{border-collapse:collapse;margin:4px 24px 12px 0;font-variant-numeric:tabular-nums}
caption{text-align:left;font-weight:600;padding:4px 0}
th,td{padding:3px 10px;border-bottom:1px solid #e3e3e3;text-align:left}th{background:#f3f4f7}
.num{text-align:right}.pair{display:flex;flex-wrap:wrap}
ol.episodes li,ul.episodes li{margin:3px 0}
.sev{display:inline-block;min-width:56px;padding:0 6px;border-radius:3px;color:#fff;font-size:12px;text-align:center}
.sev-critical{background:#c44e52}.sev-warning{background:#dd8452}.sev-info{background:#4c72b0}
section.asset{border-top:1px solid #ddd;margin-top:20px}
"""


def render_report(
    lake: str | os.PathLike[str],
    org_id: str,
    day: date,
    *,
    top: int = DEFAULT_TOP,
    most: int = DEFAULT_MOST,
    generated_at: datetime | None = None,
) -> str:
    """(org, day)'s report as one self-contained HTML page.

    Everything comes from the lake: the numbers, episodes and fleet heatmap from its derived
    datasets, each section's plot from its snapshot mirror (as the last sync left it). The
    assets in a top-`top` list, then those with the worst episodes, get a section with
    their plot, `most` at most (see `DayData.sections`).

    Raises:
        InvalidArgument: `top` or `most` below 1.
        NotFound: a derived dataset of the day is missing from the lake.
    """
    if top < 1:
        raise InvalidArgument(f"top must be at least 1, got {top}")
    if most < 1:
        raise InvalidArgument(f"most must be at least 1, got {most}")
    data = load_day(lake, org_id, day)
    shown, left = data.sections(top, most)
    linked = set(shown)
    fleet = _fleet_section(data) if data.hourly.height else "<p>No asset reported this day.</p>"
    pictures = _asset_pictures(lake, data, shown)
    sections = "".join(_asset_section(data, a, pictures.get(a), linked) for a in shown)
    stamp = (generated_at or datetime.now(UTC)).astimezone(UTC)
    title = f"{org_id}, {day.isoformat()}: daily performance report"
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>"
        f"<header><h1>{_e(title)}</h1>"
        f'<p class=meta>Organisation <b>{_e(org_id)}</b> &middot; UTC day <b>{_e(day.isoformat())}</b> &middot; '
        f"generated {stamp:%Y-%m-%d %H:%M} UTC</p>"
        '<nav><a href="#fleet">Fleet</a><a href="#availability">Availability</a><a href="#top">Top assets</a>'
        '<a href="#episodes">Anomaly episodes</a><a href="#assets">Assets</a></nav></header>'
        f"{_summary(data)}"
        f"<section id=fleet><h2>Fleet</h2>{fleet}</section>"
        f"{_availability_section(data, linked)}{_top_section(data, linked, top)}{_episodes_section(data, linked)}"
        f"<section id=assets><h2>Assets</h2><p>The assets with anomaly episodes or in a top list, "
        f"with their day: CPU, memory, disks, network and processes; episodes shaded, reboots dotted.</p>"
        f"{sections or '<p>None this day.</p>'}{_left_out(left, most)}</section>"
        "</body></html>\n"
    )


def write_report(
    lake: str | os.PathLike[str],
    org_id: str,
    day: date,
    out: str | os.PathLike[str] | None = None,
    *,
    top: int = DEFAULT_TOP,
    most: int = DEFAULT_MOST,
    generated_at: datetime | None = None,
) -> Path:
    """Render (org, day)'s report and write it atomically to `out` (default `report_path`).

    Returns the path written. Nothing is written when the day cannot be reported; the
    directory of a default path is created, a given one must exist.

    Raises:
        InvalidArgument: `out` is not an .html file in an existing directory, `top` or `most`
            below 1, or an org id that cannot name a file.
        NotFound: a derived dataset of the day is missing from the lake.
    """
    target = Path(out) if out is not None else report_path(lake, org_id, day)
    if target.suffix.lower() not in SUFFIXES:
        raise InvalidArgument(f"{target}: choose a .html file name")
    if out is None:
        target.parent.mkdir(parents=True, exist_ok=True)
    elif not target.parent.is_dir():
        raise InvalidArgument(f"{target.parent} is not a directory")
    page = render_report(lake, org_id, day, top=top, most=most, generated_at=generated_at)
    write_atomic(target, page.encode("utf-8"))
    return target


__all__: Sequence[str] = (
    "DayData", "anchor_id", "episode_sentence", "load_day", "render_report", "report_path", "write_report",
)
