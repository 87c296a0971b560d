"""The Numenta Anomaly Benchmark's own layout, for `eval_anomalies.py`.

A NAB checkout holds `data/<category>/<file>.csv` (`timestamp,value`) and
`labels/combined_windows.json` (per `<category>/<file>.csv`, its anomaly windows). This
module reads that layout, says which snapshot field each series goes into, picks the
held-out server series (those the shared subset does not hold), and writes NAB's result
files, so NAB's own scorer (`run.py --optimize --score --normalize` in the checkout) can
rank the flags beside the published detectors.

Result files follow NAB's format: `<out>/<detector>/<category>/<detector>_<file>.csv` with
`timestamp,value,anomaly_score,label`, one row per row of the data file; `label` is 1
inside a labelled window. The flags are episodes, not scores, so `anomaly_score` is 0 or 1.
"""

from __future__ import annotations

import csv
import itertools
import json
import statistics
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path

from perf_analytics.atomic import atomic_path
from perf_analytics.schema import TIME_WINDOWS

WINDOWS_FILE = Path("labels") / "combined_windows.json"
DATA_DIR = Path("data")

# The categories whose series are server metrics; the held-out set is drawn from them.
HELDOUT_GROUPS = ("realAWSCloudwatch", "realKnownCause")

# Which field a server metric's series goes into, by what its name says it measures
# (first match wins). Byte and request counts per 5 minutes become per-second rates.
SERVER_FIELDS: tuple[tuple[str, str], ...] = (
    ("*cpu_utilization*", "cpu"),
    ("rds_cpu_*", "cpu"),
    ("grok_asg_anomaly", "cpu"),  # the CPU of an auto-scaling group, in %
    ("ec2_request_latency_*", "cpu"),  # a latency in ms, in the 0-100 range
    ("ec2_network_in_*", "network"),
    ("*_NetworkIn", "network"),
    ("elb_request_count_*", "network"),  # requests per 5 minutes, a rate like bytes in
    ("ec2_disk_write_bytes_*", "disk_write"),
    ("*temperature*", "temperature"),
)

# Series of the other categories measure no server: a percentage (road occupancy) goes
# into CPU usage, every other non-negative measure (tweets, taxi rides, prices, speeds,
# travel and key times) in as a rate; NAB's artificial series are rescaled into 0-100.
PERCENT_NAMES = ("occupancy_*",)

# A NAB detector name must not contain "_": the scorer splits result file names on it.
DETECTOR_STARTS = "perfAnalytics"
DETECTOR_SPANS = "perfAnalyticsSpans"


class CorpusError(Exception):
    """A NAB checkout that lacks what the evaluation needs."""


@dataclass(frozen=True)
class Series:
    """One data file of the corpus: its key `<category>/<file>.csv`, path and windows."""

    key: str
    path: Path
    windows: tuple[tuple[str, str], ...]

    @property
    def category(self) -> str:
        return self.key.split("/")[0]

    @property
    def stem(self) -> str:
        return self.path.stem


def read_corpus(root: Path) -> list[Series]:
    """Every labelled data file of the NAB checkout at `root`, sorted by key.

    Raises `CorpusError` when the windows file is missing or names a file that is not
    there: a partial corpus would score a different benchmark without saying so.
    """
    labels_path = root / WINDOWS_FILE
    if not labels_path.is_file():
        raise CorpusError(f"{labels_path} not found: expected a NAB checkout (data/, labels/)")
    labels: dict[str, list[list[str]]] = json.loads(labels_path.read_text())
    missing = [key for key in labels if not (root / DATA_DIR / key).is_file()]
    if missing:
        raise CorpusError(f"{len(missing)} labelled files missing under {root / DATA_DIR}: {', '.join(missing[:3])}")
    return [
        Series(key, root / DATA_DIR / key, tuple((a, b) for a, b in windows))
        for key, windows in sorted(labels.items())
    ]


def server_field(stem: str) -> str | None:
    """The snapshot field of a server metric's series (`SERVER_FIELDS`), None for any other."""
    return next((field for pattern, field in SERVER_FIELDS if fnmatchcase(stem, pattern)), None)


def series_field(stem: str) -> tuple[str, bool]:
    """The field a series goes into and whether its values are rescaled into 0-100."""
    field = server_field(stem)
    if field is not None:
        return field, False
    if stem.startswith("art_"):
        return "cpu", True
    if any(fnmatchcase(stem, p) for p in PERCENT_NAMES):
        return "cpu", False
    return "network", False


def heldout(corpus: Iterable[Series], shared_keys: Iterable[str]) -> list[Series]:
    """The server series of `HELDOUT_GROUPS` that the shared subset does not hold."""
    shared = set(shared_keys)
    return [
        s
        for s in corpus
        if s.category in HELDOUT_GROUPS and s.key not in shared and server_field(s.stem) is not None
    ]


def time_window(timestamps: Sequence[datetime]) -> str:
    """The `timeWindow` an agent reporting like this series would send.

    The longest window of the contract not longer than the series' median spacing (5
    minutes for every series of the shared subset, 1 hour for hourly ones).
    """
    spacing = statistics.median((b - a).total_seconds() for a, b in itertools.pairwise(timestamps))
    fitting = [(d.total_seconds(), name) for name, d in TIME_WINDOWS.items() if d.total_seconds() <= spacing]
    return max(fitting)[1] if fitting else min((d, name) for name, d in TIME_WINDOWS.items())[1]


def parse_time(text: str) -> datetime:
    """A NAB timestamp (`2014-02-19 00:22:00[.000000]`, UTC without a zone) as an aware datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def read_rows(path: Path) -> list[tuple[str, str]]:
    """A data file's rows as written (timestamp and value text), for a result file that echoes them."""
    with path.open(newline="") as fh:
        return [(r["timestamp"], r["value"]) for r in csv.DictReader(fh)]


def episode_scores(
    timestamps: Sequence[datetime], episodes: Iterable[tuple[datetime, datetime]], *, spans: bool
) -> list[float]:
    """0/1 per row: 1 at each episode's first row at or after its start, or (`spans`) on every row it covers.

    NAB counts the first detection inside a window and every detection outside one, so
    marking an episode's start gives one detection per episode, as the project's own
    scoring counts them; marking its span shows what a per-row reading would cost.
    """
    scores = [0.0] * len(timestamps)
    for start, end in episodes:
        first = bisect_left(timestamps, start)
        last = bisect_right(timestamps, end) if spans else first + 1
        for i in range(first, min(max(last, first + 1), len(timestamps))):
            scores[i] = 1.0
    return scores


def row_labels(timestamps: Sequence[datetime], windows: Iterable[tuple[str, str]]) -> list[int]:
    """1 for rows inside a labelled window (both ends included), else 0, as NAB's results carry."""
    spans = [(parse_time(a), parse_time(b)) for a, b in windows]
    return [int(any(a <= t <= b for a, b in spans)) for t in timestamps]


def result_path(out: Path, detector: str, key: str) -> Path:
    """Where NAB's scorer looks for a detector's results of one data file."""
    category, name = key.split("/")
    return out / detector / category / f"{detector}_{name}"


def write_result(
    out: Path, detector: str, series: Series, rows: Sequence[tuple[str, str]], scores: Sequence[float]
) -> Path:
    """Write one NAB result file (atomically: a stopped run leaves no half file for the scorer)."""
    if len(scores) != len(rows):
        raise ValueError(f"{series.key}: {len(scores)} scores for {len(rows)} rows")
    timestamps = [parse_time(t) for t, _ in rows]
    labels = row_labels(timestamps, series.windows)
    path = result_path(out, detector, series.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["timestamp", "value", "anomaly_score", "label"])
        for (ts, value), score, label in zip(rows, scores, labels, strict=True):
            writer.writerow([ts, value, score, label])
    return path
