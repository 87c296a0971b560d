"""The daily report: one page of an org's day that opens anywhere, and says what the lake says.

The page is checked twice: parsed here against DuckDB over the same lake (numbers, order,
links, inline pictures), and opened in a headless Chromium that must load it without a
console error and decode every picture. Chromium comes from Debian's packages (`make
browser`, which `make test` runs first); without it the browser tests fail, they do not skip.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
from bson import ObjectId
from click.testing import CliRunner

from perf_analytics.cli import app
from perf_analytics.config import Settings
from perf_analytics.lake import ANOMALIES, connect_lake, partition_dir
from perf_analytics.pipeline import run_day
from perf_analytics.report import anchor_id, episode_sentence, report_path, write_report
from perf_analytics.schema import ID_RULE, SNAPSHOTS, validate_snapshot
from perf_analytics.store import Db, connect_uri, ensure_indexes
from perf_analytics.sync import sync_snapshots_all_orgs
from perf_analytics.synth import DEFAULT_START, FleetSpec, generate_fleet

DAY = DEFAULT_START.date() + timedelta(days=1)
ORG = "org-01"
GENERATED = datetime(2026, 1, 7, 6, 30, tzinfo=UTC)
PNG = b"\x89PNG\r\n\x1a\n"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


@dataclass
class Lake:
    settings: Settings
    db: Db


@pytest.fixture(scope="module")
def lake(server_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lake]:
    """Two orgs' generated day, flagged and rolled up into a lake (shared by this module's tests)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    db = connect_uri(server_uri, name)
    root = tmp_path_factory.mktemp("report")
    try:
        ensure_indexes(db)
        docs = [{"_id": ObjectId(), **validate_snapshot(p)}
                for p in generate_fleet(FleetSpec(orgs=2, assets=3, days=2, interval_s=300, seed=5))]
        db[SNAPSHOTS].insert_many(docs)
        settings = Settings(uri=server_uri, db=name, lake=str(root / "lake"), state_dir=str(root / "state"))
        sync_snapshots_all_orgs(db, settings.lake)
        for org in ("org-01", "org-02"):
            run_day(settings.lake, org, DAY)
        yield Lake(settings, db)
    finally:
        db.client.drop_database(name)
        db.client.close()


@pytest.fixture(scope="module")
def page(lake: Lake, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """org-01's report of DAY, written once for the module."""
    out = tmp_path_factory.mktemp("page") / "org-01.html"
    assert write_report(lake.settings.lake, ORG, DAY, out, generated_at=GENERATED) == out
    return out


@dataclass
class Parsed:
    """What a test needs of a page: its ids, links, images and list items, by section."""

    ids: set[str] = field(default_factory=set)
    hrefs: list[str] = field(default_factory=list)
    images: list[tuple[str | None, str]] = field(default_factory=list)  # (section id, src)
    items: dict[str | None, list[tuple[str, list[str]]]] = field(default_factory=dict)  # section -> (text, hrefs)
    rows: dict[str, list[list[str]]] = field(default_factory=dict)  # table caption -> rows of cell texts
    tags: set[str] = field(default_factory=set)


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out = Parsed()
        self.sections: list[str | None] = []
        self.item: tuple[list[str], list[str]] | None = None
        self.caption: str | None = None
        self.text: list[str] | None = None
        self.row: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.out.tags.add(tag)
        if a.get("id"):
            self.out.ids.add(str(a["id"]))
        if tag == "section":
            self.sections.append(a.get("id"))
        elif tag == "a":
            self.out.hrefs.append(str(a.get("href")))
            if self.item is not None:
                self.item[1].append(str(a.get("href")))
        elif tag == "img":
            self.out.images.append((self.sections[-1] if self.sections else None, str(a.get("src"))))
        elif tag == "li":
            self.item = ([], [])
        elif tag in ("caption", "td", "th"):
            self.text = []
        elif tag == "tr":
            self.row = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self.sections.pop()
        elif tag == "li" and self.item is not None:
            self.out.items.setdefault(self.sections[-1], []).append(("".join(self.item[0]), self.item[1]))
            self.item = None
        elif tag == "caption" and self.text is not None:
            self.caption = "".join(self.text)
            self.out.rows[self.caption] = []
        elif tag == "td" and self.text is not None and self.row is not None:
            self.row.append("".join(self.text))
        elif tag == "tr" and self.row and self.caption is not None:
            self.out.rows[self.caption].append(self.row)
        if tag in ("caption", "td", "th"):
            self.text = None

    def handle_data(self, data: str) -> None:
        if self.item is not None:
            self.item[0].append(data)
        if self.text is not None:
            self.text.append(data)


def parse(path: Path) -> Parsed:
    parser = _Parser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser.out


def _lake_rows(lake: Lake, sql: str) -> list[tuple[object, ...]]:
    con = connect_lake(lake.settings.lake, org_id=ORG)
    try:
        return con.execute(sql, [DAY]).fetchall()
    finally:
        con.close()


# ---- the content ---------------------------------------------------------------------------


@pytest.mark.slow
def test_the_tables_hold_the_lakes_numbers_in_order(lake: Lake, page: Path) -> None:
    parsed = parse(page)
    availability = _lake_rows(lake, "SELECT assetId, availability, reboots FROM availability "
                                    "WHERE date = ? ORDER BY availability, assetId")
    assert [[r[0], r[1], r[5]] for r in parsed.rows["Least available first"]] == [
        [a, f"{100 * float(share):.1f}", str(reboots)] for a, share, reboots in availability  # type: ignore[arg-type]
    ]
    for caption, column in (("By CPU % (95th percentile of the day)", "cpu_usage_p95"),
                            ("By memory % (95th percentile of the day)", "memory_usage_percent_p95")):
        ranked = _lake_rows(lake, f"SELECT assetId, {column} FROM rollups WHERE \"window\" = '1day' AND date = ? "
                                  f"ORDER BY {column} DESC, assetId LIMIT 5")
        assert [r[:2] for r in parsed.rows[caption]] == [[a, f"{v:.1f}"] for a, v in ranked]
    text = page.read_text()
    assert f"<title>{ORG}, {DAY}: daily performance report</title>" in text
    assert "generated 2026-01-07 06:30 UTC" in text


@pytest.mark.slow
def test_each_episode_is_a_sentence_linking_to_its_assets_section_with_its_plot(lake: Lake, page: Path) -> None:
    episodes = _lake_rows(lake, 'SELECT assetId, metric, severity, message, "start" FROM anomalies '
                                'WHERE date = ? ORDER BY "start"')
    assert episodes, "the generated day should have anomaly episodes"
    parsed = parse(page)
    items = parsed.items["episodes"]
    assert len(items) == len(episodes)
    for (text, hrefs), (asset, metric, severity, message, start) in zip(items, episodes, strict=True):
        assert text.startswith(f"{severity} {'reporting' if metric == '*' else metric} on asset {asset} ")
        assert isinstance(start, datetime)
        assert f" {start.astimezone(UTC):%H:%M} " in text
        assert text.endswith(f": {message}")
        assert hrefs == [f"#{anchor_id(str(asset))}"]
    pictures = {section for section, _ in parsed.images}
    assert {anchor_id(str(a)) for a, *_ in episodes} <= pictures
    assert "fleet" in pictures


@pytest.mark.slow
def test_every_link_lands_and_every_picture_is_an_inline_png(lake: Lake, page: Path) -> None:
    parsed = parse(page)
    assert parsed.hrefs and all(h.startswith("#") and h[1:] in parsed.ids for h in parsed.hrefs)
    assert parsed.tags.isdisjoint({"script", "link", "iframe", "object", "embed"})
    for _, src in parsed.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        assert base64.b64decode(src[len(prefix):], validate=True).startswith(PNG)
    # Only the org's own assets appear: org-02's are in the lake too.
    con = connect_lake(lake.settings.lake, org_id="org-02")
    others = [a for (a,) in con.execute("SELECT DISTINCT assetId FROM availability").fetchall()]
    con.close()
    assert others and not any(a in page.read_text() for a in others)


def test_text_from_the_data_is_escaped() -> None:
    row = {"assetId": "a1", "metric": "<b>m</b>", "severity": "critical", "detector": "x&y", "score": 2.0,
           "message": '<script>alert("x")</script>', "start": DEFAULT_START, "end": DEFAULT_START + timedelta(minutes=5)}
    sentence = episode_sentence(row, DEFAULT_START.date(), {"a1"})
    assert "<script>" not in sentence and "<b>m" not in sentence
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in sentence
    assert '<a href="#asset-a1">a1</a>' in sentence
    assert "from 00:00 to 00:05 UTC (x&amp;y; score 2.0)" in sentence
    # An id outside the identifier rule still makes one safe anchor of its own.
    odd = anchor_id('a" onmouseover="x')
    assert re.fullmatch(r"asset~[0-9a-f]{16}", odd) and odd != anchor_id("a")


@pytest.mark.slow
def test_sections_stop_at_most_and_one_line_names_the_flagged_assets_left_out(lake: Lake, tmp_path: Path) -> None:
    """A big fleet's page stays quick to write and to open: the top list first, then the
    worst flagged, `most` in all; the others are named, and their episodes are not links."""
    (top_cpu,) = _lake_rows(lake, "SELECT assetId FROM rollups WHERE \"window\" = '1day' AND date = ? "
                                  "ORDER BY cpu_usage_p95 DESC, assetId LIMIT 1")[0]
    flagged = sorted({str(a) for (a,) in _lake_rows(lake, "SELECT DISTINCT assetId FROM anomalies WHERE date = ?")})
    left = [a for a in flagged if a != top_cpu]
    assert left, "the generated day should have flagged assets outside the CPU top list"
    out = write_report(lake.settings.lake, ORG, DAY, tmp_path / "capped.html", top=1, most=1)
    parsed = parse(out)
    assert [s for s, _ in parsed.images] == ["fleet", anchor_id(str(top_cpu))]
    assert {i for i in parsed.ids if i.startswith(("asset-", "asset~"))} == {anchor_id(str(top_cpu))}
    assert f"And {len(left)} more asset{'' if len(left) == 1 else 's'} with anomaly episodes " in out.read_text()
    assert out.read_text().split("with anomaly episodes")[-1].count(left[0]) == 1
    for text, hrefs in parsed.items["episodes"]:
        asset = text.split(" on asset ")[1].split(" ")[0]
        assert hrefs == ([f"#{anchor_id(asset)}"] if asset == top_cpu else [])
    assert parsed.hrefs and all(h[1:] in parsed.ids for h in parsed.hrefs)


@pytest.mark.slow
def test_a_day_without_snapshots_is_a_quiet_page_not_an_error(lake: Lake, tmp_path: Path) -> None:
    copy = str(tmp_path / "lake")
    shutil.copytree(lake.settings.lake, copy)
    quiet = DAY + timedelta(days=3)
    run_day(copy, ORG, quiet)  # rolled up and flagged, but nobody reported
    out = write_report(copy, ORG, quiet, tmp_path / "quiet.html")
    parsed = parse(out)
    assert parsed.images == [] and parsed.rows["Least available first"] == []
    assert "<p class=summary>0 assets reported 0 snapshots; mean availability &ndash;; 0 reboots; " \
           "0 anomaly episodes.</p>" in out.read_text()
    assert "No asset reported this day." in out.read_text()


@pytest.mark.slow
def test_an_asset_silent_all_day_gets_its_section_without_a_plot(db: Db, tmp_path: Path) -> None:
    """The silence is flagged, so the asset is linked; its section says there is nothing to draw."""
    fleet = list(generate_fleet(FleetSpec(orgs=1, assets=2, days=2, interval_s=900, seed=5)))
    silent = fleet[0]["assetId"]
    kept = [p for p in fleet if p["assetId"] != silent or p["timestamp"] < DAY.isoformat()]
    db[SNAPSHOTS].insert_many([{"_id": ObjectId(), **validate_snapshot(p)} for p in kept])
    lake = str(tmp_path / "lake")
    sync_snapshots_all_orgs(db, lake)
    for day in (DAY - timedelta(days=1), DAY):
        run_day(lake, ORG, day)
    out = write_report(lake, ORG, DAY, tmp_path / "silent.html")
    parsed = parse(out)
    assert anchor_id(silent) in parsed.ids
    assert "No snapshot of this asset this day." in out.read_text()
    assert all(section != anchor_id(silent) for section, _ in parsed.images)


# ---- in a browser ------------------------------------------------------------------------

# Injected first into <head> of a copy of the page: records every error and, once the page
# has loaded, whether each picture decoded, into an element that --dump-dom prints.
PROBE = """<script>(function () {
  var errors = [];
  window.addEventListener("error", function (e) {
    var t = e.target;
    errors.push(e.message ? String(e.message) : "failed to load " + (t && t.tagName) + " " + String(t && t.alt));
  }, true);
  window.addEventListener("unhandledrejection", function (e) { errors.push("unhandled rejection: " + e.reason); });
  document.addEventListener("securitypolicyviolation", function (e) { errors.push("blocked: " + e.blockedURI); });
  var original = console.error;
  console.error = function () {
    errors.push(Array.prototype.map.call(arguments, String).join(" "));
    return original.apply(console, arguments);
  };
  window.addEventListener("load", function () {
    var images = Array.prototype.map.call(document.images, function (i) {
      return {alt: i.alt, decoded: i.complete && i.naturalWidth > 0};
    });
    var out = document.createElement("pre");
    out.id = "page-probe";
    out.textContent = JSON.stringify({images: images, errors: errors});
    document.body.appendChild(out);
  });
})();</script>"""


@dataclass
class BrowserCheck:
    images: list[dict[str, object]]
    errors: list[str]
    console: list[str]  # what Chromium logged from the page's console

    @property
    def broken(self) -> list[str]:
        return [str(i["alt"]) for i in self.images if not i["decoded"]]


def chromium() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(f"no Chromium found (looked for {', '.join(BROWSERS)}): run `make browser`, "
                "which installs Debian's chromium package")


def open_in_chromium(html: str, work: Path) -> BrowserCheck:
    """Load `html` (plus the probe) in headless Chromium with name resolution disabled."""
    work.mkdir(parents=True, exist_ok=True)
    probed = work / "probed.html"
    head = html.index("<head>") + len("<head>")
    probed.write_text(html[:head] + PROBE + html[head:], encoding="utf-8")
    done = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={work / 'profile'}", "--host-resolver-rules=MAP * ~NOTFOUND",
         "--enable-logging=stderr", "--v=0", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="page-probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the page never finished loading:\n{done.stderr[-2000:]}"
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
                        .replace("&amp;", "&"))
    console = re.findall(r":CONSOLE[^\]]*\] (.*)", done.stderr)
    return BrowserCheck(result["images"], result["errors"], console)


@pytest.mark.slow
def test_chromium_loads_the_report_without_console_errors_and_decodes_every_picture(page: Path, tmp_path: Path) -> None:
    check = open_in_chromium(page.read_text(encoding="utf-8"), tmp_path)
    assert (check.errors, check.console) == ([], [])
    assert len(check.images) == len(parse(page).images) > 1
    assert check.broken == []


@pytest.mark.slow
def test_the_browser_check_catches_a_broken_picture(page: Path, tmp_path: Path) -> None:
    text = page.read_text(encoding="utf-8")
    first = text.index("data:image/png;base64,", text.index("<section class=asset")) + len("data:image/png;base64,")
    broken = text[:first] + base64.b64encode(PNG + b"not a picture").decode() + text[text.index('"', first):]
    check = open_in_chromium(broken, tmp_path)
    assert len(check.broken) == 1 and check.broken[0].endswith("over the day")
    assert check.errors and check.errors[0].startswith("failed to load IMG")


@pytest.mark.slow
def test_the_browser_check_catches_a_script_error_and_a_fetch_the_page_forbids(page: Path, tmp_path: Path) -> None:
    thrown = open_in_chromium("<!DOCTYPE html><html><head></head><body><script>missing();</script></body></html>",
                              tmp_path / "thrown")
    assert any("missing is not defined" in e for e in thrown.errors)
    assert any("missing is not defined" in c for c in thrown.console)
    text = page.read_text(encoding="utf-8")
    fetching = text.replace("</body>", '<img src="http://127.0.0.1:9/x.png" alt="remote"></body>')
    check = open_in_chromium(fetching, tmp_path / "fetching")
    assert check.broken == ["remote"]
    assert "blocked: http://127.0.0.1:9/x.png" in check.errors


# ---- the command ---------------------------------------------------------------------------


def _invoke(lake: Lake, *args: str) -> tuple[int, str, str]:
    s = lake.settings
    result = CliRunner().invoke(app, ["--uri", str(s.uri), "--db", s.db, "--lake", s.lake, "report", *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.slow
def test_cli_writes_the_report_beside_the_lake_and_prints_its_path(lake: Lake) -> None:
    code, stdout, err = _invoke(lake, "--org", ORG, "--date", DAY.isoformat(), "--top", "1")
    expected = Path(lake.settings.lake).parent / "reports" / ORG / f"{DAY}.html"
    assert report_path(lake.settings.lake, ORG, DAY) == expected
    assert (code, stdout, err) == (0, f"wrote {expected}\n", "")
    # With --top 1 the sections are exactly: assets with episodes, and each list's first.
    wanted = {a for (a,) in _lake_rows(lake, "SELECT DISTINCT assetId FROM anomalies WHERE date = ?")}
    for column in ("cpu_usage_p95", "memory_usage_percent_p95"):
        wanted |= {a for (a,) in _lake_rows(lake, f"SELECT assetId FROM rollups WHERE \"window\" = '1day' "
                                                  f"AND date = ? ORDER BY {column} DESC, assetId LIMIT 1")}
    sections = {s for s, _ in parse(expected).images} - {"fleet"}
    assert sections == {anchor_id(str(a)) for a in wanted}


@pytest.mark.slow
def test_cli_names_what_to_run_for_a_day_the_lake_lacks(lake: Lake, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    out.write_text("the previous page")
    code, _, err = _invoke(lake, "--org", ORG, "--date", "2020-01-01", "--out", str(out))
    assert (code, err) == (1, "Error: the lake has no 1hour rollups of org-01 for 2020-01-01 "
                              "(run: perf-analytics rollup --org org-01 --date 2020-01-01)\n")
    code, _, err = _invoke(lake, "--org", ORG, "--date", DAY.isoformat(), "--out", str(tmp_path / "r.txt"))
    assert (code, err) == (1, f"Error: {tmp_path / 'r.txt'}: choose a .html file name\n")
    code, _, err = _invoke(lake, "--org", ORG, "--date", DAY.isoformat(), "--out", str(tmp_path / "no" / "r.html"))
    assert (code, err) == (1, f"Error: {tmp_path / 'no'} is not a directory\n")
    code, _, err = _invoke(lake, "--org", ORG, "--date", "06-01-2026", "--out", str(out))
    assert (code, err) == (1, "Error: --date: not a date (YYYY-MM-DD): '06-01-2026'\n")
    code, _, err = _invoke(lake, "--org", "org 01", "--date", DAY.isoformat())
    assert (code, err) == (1, f"Error: org id 'org 01' cannot name a report file: use {ID_RULE}\n")
    assert out.read_text() == "the previous page"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]


@pytest.mark.slow
def test_a_day_rolled_up_but_not_flagged_asks_for_the_anomalies_command(lake: Lake, tmp_path: Path) -> None:
    copy = tmp_path / "lake"
    shutil.copytree(lake.settings.lake, copy)
    shutil.rmtree(partition_dir(copy, ANOMALIES, {"orgId": ORG, "date": DAY.isoformat()}))
    s = lake.settings
    result = CliRunner().invoke(app, ["--uri", str(s.uri), "--db", s.db, "--lake", str(copy), "report",
                                      "--org", ORG, "--date", DAY.isoformat(), "--out", str(tmp_path / "r.html")])
    assert (result.exit_code, result.stderr) == (1, f"Error: the lake has no anomaly flags of org-01 for {DAY} "
                                                    f"(run: perf-analytics anomalies --org org-01 --date {DAY})\n")
    assert not (tmp_path / "r.html").exists()
