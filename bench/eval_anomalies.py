"""Measure the anomaly flags: precision, recall and F1 on labelled data.

Two sources, one detector configuration (`AnomalyConfig()`, the default) for both:

- `--generator`: a synthetic fleet (`generate_fleet`) with its labels (`fleet_labels`),
  for two seeds; flags run day by day as the nightly pipeline would.
- `--nab PATH`: the labelled real server metrics in PATH (default `$PERF_NAB_DIR`, else
  `../shared/data/nab` beside the checkout),
  loaded as snapshots and scored exactly as that folder's README says.

With neither option both run. Prints tables and writes `bench/results/anomalies.json`
(or `--out`).

A checkout of the whole Numenta Anomaly Benchmark (`--nab-repo DIR`, NAB's own layout,
kept outside the project) adds two measures on data the detectors were not tuned on:

- `--heldout`: its server series that the shared folder lacks, scored exactly as the
  shared ones and printed beside them (`nab_corpus.heldout` says which and why);
- `--nab-results OUTDIR`: NAB result files of every series, for NAB's own scorer.

    .venv/bin/python bench/eval_anomalies.py
    .venv/bin/python bench/eval_anomalies.py --generator --seeds 7 11
    .venv/bin/python bench/eval_anomalies.py --nab ../shared/data/nab
    .venv/bin/python bench/eval_anomalies.py --nab ../shared/data/nab --nab-repo NAB --heldout --nab-results NAB/results
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nab_corpus import (  # noqa: E402  (bench/, beside this script)
    DETECTOR_SPANS,
    DETECTOR_STARTS,
    CorpusError,
    Series,
    episode_scores,
    heldout,
    read_corpus,
    read_rows,
    series_field,
    time_window,
    write_result,
)

from perf_analytics.anomalies import AnomalyConfig, FlagOptions, flag_anomalies  # noqa: E402
from perf_analytics.anomalies.series import agent_frame, read_points  # noqa: E402
from perf_analytics.frames import Frames, frames_from_documents  # noqa: E402
from perf_analytics.synth import FleetSpec, fleet_labels, generate_fleet  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "anomalies.json"
# The shared labelled series beside the checkout, unless PERF_NAB_DIR names them elsewhere.
DEFAULT_NAB = Path(os.environ.get("PERF_NAB_DIR") or ROOT.parent / "shared" / "data" / "nab")
REAL_GROUPS = ("realAWSCloudwatch", "realKnownCause")
ARTIFICIAL_GROUPS = ("artificialWithAnomaly", "artificialNoAnomaly")

# Generator scoring: a detection matches a label of the same asset when it starts between
# the label's start and this long after its end (a level shift that ends is seen ending
# up to an hour later, by the hour-long windows that saw it begin).
AFTER_TOLERANCE = timedelta(minutes=60)


# ---- shared ---------------------------------------------------------------------------


def _days(frames: Frames) -> list[date]:
    ts = frames.snapshots.get_column("timestamp")
    first, last = ts.min(), ts.max()
    assert isinstance(first, datetime) and isinstance(last, datetime)
    return [first.date() + timedelta(days=i) for i in range((last.date() - first.date()).days + 1)]


def _window(frames: Frames, lo: datetime, hi: datetime) -> Frames:
    ts = pl.col("timestamp")
    return Frames(
        *(getattr(frames, n).filter((ts >= lo) & (ts < hi)) for n in ("snapshots", "disks", "interfaces"))
    )


def flag_day_by_day(frames: Frames, config: AnomalyConfig) -> pl.DataFrame:
    """Flags of every day, each computed from that day and the history before it only."""
    out = []
    end = frames.snapshots.get_column("timestamp").max()
    assert isinstance(end, datetime)
    for d in _days(frames):
        start = datetime(d.year, d.month, d.day, tzinfo=UTC)
        part = _window(frames, start - timedelta(days=config.history_days), start + timedelta(days=1))
        # The clock stops where the recording stops: its end is not an agent going offline.
        now = min(start + timedelta(days=1), end + timedelta(seconds=1))
        out.append(flag_anomalies(part, options=FlagOptions(day=d, config=config, now=now)))
    return pl.concat(out)


def _prf(tp_detections: int, detections: int, hit: int, labels: int) -> dict[str, float]:
    p = tp_detections / detections if detections else 1.0
    r = hit / labels if labels else 1.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 3), "recall": round(r, 3), "f1": round(f, 3)}


# ---- generator ------------------------------------------------------------------------


def _count_by(rows: list[dict[str, Any]], keys: tuple[str, str]) -> dict[str, int]:
    """How many rows per (day of the first key, second key), as "day detector" -> count."""
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        counts[f"{str(row[keys[0]])[:10]} {row[keys[1]]}"] += 1
    return dict(sorted(counts.items()))


def _fleet_frames(spec: FleetSpec) -> Frames:
    def docs() -> Iterator[dict[str, Any]]:
        for doc in generate_fleet(spec):
            doc["timestamp"] = datetime.fromisoformat(doc["timestamp"].replace("Z", "+00:00"))
            yield doc

    return frames_from_documents(docs())


def _label_counts(label: dict[str, Any], gap_intervals: float, interval_s: int) -> bool:
    """Whether recall should count this label: outages shorter than the gap threshold do not."""
    if label["kind"] != "outage":
        return True
    missing = (label["end"] - label["start"]).total_seconds() / interval_s + 1
    return missing >= gap_intervals


def evaluate_generator(seed: int, config: AnomalyConfig, *, orgs: int, assets: int, days: int, interval_s: int) -> dict[str, Any]:
    spec = FleetSpec(orgs=orgs, assets=assets, days=days, interval_s=interval_s, seed=seed)
    began = time.perf_counter()
    frames = _fleet_frames(spec)
    built = time.perf_counter() - began
    labels = fleet_labels(spec)
    for label in labels:
        for key in ("start", "end"):
            label[key] = datetime.fromisoformat(label[key].replace("Z", "+00:00"))
    began = time.perf_counter()
    flags = flag_day_by_day(frames, config)
    flagged = time.perf_counter() - began

    by_asset: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for label in labels:
        by_asset[(label["orgId"], label["assetId"])].append(label)
    hit: set[int] = set()
    tp_by_detector: dict[str, int] = defaultdict(int)
    all_by_detector: dict[str, int] = defaultdict(int)
    false_positives: list[dict[str, Any]] = []
    tp = 0
    for row in flags.iter_rows(named=True):
        all_by_detector[row["detector"]] += 1
        matched = [
            lab
            for lab in by_asset[(row["orgId"], row["assetId"])]
            if lab["start"] <= row["start"] <= lab["end"] + AFTER_TOLERANCE
        ]
        if matched:
            tp += 1
            tp_by_detector[row["detector"]] += 1
            hit.update(id(lab) for lab in matched)
        else:
            false_positives.append({k: str(v) for k, v in row.items()})
    counted = [lab for lab in labels if _label_counts(lab, config.gap_intervals, interval_s)]
    per_kind: dict[str, dict[str, Any]] = {}
    for kind in sorted({lab["kind"] for lab in counted}):
        of_kind = [lab for lab in counted if lab["kind"] == kind]
        found = sum(1 for lab in of_kind if id(lab) in hit)
        per_kind[kind] = {"labels": len(of_kind), "found": found, "recall": round(found / len(of_kind), 3)}
    per_detector = {
        d: {"detections": n, "precision": round(tp_by_detector[d] / n, 3)} for d, n in sorted(all_by_detector.items())
    }
    found_all = sum(1 for lab in counted if id(lab) in hit)
    return {
        "seed": seed,
        "orgs": orgs,
        "assets": assets,
        "days": days,
        "interval_s": interval_s,
        "snapshots": frames.snapshots.height,
        "labels": len(labels),
        "labels_counted": len(counted),
        "detections": flags.height,
        "true_detections": tp,
        "found": found_all,
        **_prf(tp, flags.height, found_all, len(counted)),
        "per_kind": per_kind,
        "per_detector": per_detector,
        "seconds_build": round(built, 1),
        "seconds_flag": round(flagged, 1),
        "false_positives_by_day": _count_by(false_positives, ("start", "detector")),
        "false_positives_sample": false_positives[:15],
    }


# ---- NAB ------------------------------------------------------------------------------


def _nab_docs(stem: str, rows: list[tuple[datetime, float]]) -> Iterator[dict[str, Any]]:
    """One snapshot per CSV row, as the NAB README says: the value in its field, the rest constant."""
    field, rescale = series_field(stem)
    values = [v for _, v in rows]
    lo, hi = min(values), max(values)
    rescale = rescale and (lo < 0 or hi > 100)
    window = time_window([ts for ts, _ in rows])
    t0 = rows[0][0]
    for ts, value in rows:
        if rescale:
            value = 100.0 * (value - lo) / (hi - lo) if hi > lo else 50.0
        cpu: dict[str, Any] = {"usage": 20.0, "temperature": 45.0}
        recv, write = 1000.0, 2000.0
        if field == "cpu":
            cpu["usage"] = value
        elif field == "temperature":
            cpu["temperature"] = value
        elif field == "network":
            recv = value / 300.0
        else:
            write = value / 300.0
        yield {
            "orgId": "nab",
            "agentId": "nab-agent",
            "assetId": stem,
            "timestamp": ts,
            "timeWindow": window,
            "performanceData": {
                "cpu": cpu,
                "memory": {"usagePercent": 50.0, "usedBytes": 4e9, "totalBytes": 8e9, "availableBytes": 4e9},
                "disk": [
                    {
                        "name": "xvda1",
                        "usagePercent": 40.0,
                        "totalBytes": 1e11,
                        "usedBytes": 4e10,
                        "freeBytes": 6e10,
                        "readBytesPerSec": 1000.0,
                        "writeBytesPerSec": write,
                    }
                ],
                "network": {
                    "totalUsage": recv + 500.0,
                    "interfaces": [
                        {
                            "name": "eth0",
                            "bytesRecvPerSec": recv,
                            "bytesSentPerSec": 500.0,
                            "packetsRecvPerSec": 10.0,
                            "packetsSentPerSec": 5.0,
                        }
                    ],
                },
                "system": {"uptime": 86400.0 + (ts - t0).total_seconds(), "processCount": 120, "threadCount": 1500},
            },
        }


def _read_csv(path: Path) -> list[tuple[datetime, float]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        return [
            (datetime.fromisoformat(r["timestamp"]).replace(tzinfo=UTC), float(r["value"])) for r in reader
        ]


def _parse_nab_time(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@dataclass(frozen=True)
class FlaggedFile:
    """A data file's rows and the flags of its every day, computed once per run."""

    rows: list[tuple[datetime, float]]
    flags: pl.DataFrame
    dropped: dict[str, int]
    seconds: float


def flag_nab_file(path: Path, config: AnomalyConfig) -> FlaggedFile:
    """Load one NAB file as an asset's snapshots and flag it day by day."""
    began = time.perf_counter()
    rows = _read_csv(path)
    frames = frames_from_documents(_nab_docs(path.stem, rows))
    flags = flag_day_by_day(frames, config)
    dropped = read_points(frames, agent_frame(frames))[1]
    return FlaggedFile(
        rows,
        flags,
        # Values the series' validity filter left out (a rescaled series aside, none expected).
        {f"{r['metric']}: {r['reason']}": r["count"] for r in dropped.iter_rows(named=True)},
        round(time.perf_counter() - began, 1),
    )


def score_nab_file(key: str, flagged: FlaggedFile, windows: Iterable[Iterable[str]]) -> dict[str, Any]:
    """One file's detections against its windows, as the shared NAB README scores them."""
    rows, flags = flagged.rows, flagged.flags
    probation = min(math.floor(0.15 * len(rows)), 750)
    learn_until = rows[probation][0] if probation < len(rows) else rows[-1][0]
    starts = [s for s in flags.get_column("start").to_list() if s >= learn_until]
    spans = [(_parse_nab_time(a), _parse_nab_time(b)) for a, b in windows]
    true = sum(1 for s in starts if any(a <= s <= b for a, b in spans))
    hit = sum(1 for a, b in spans if any(a <= s <= b for s in starts))
    detectors: dict[str, int] = defaultdict(int)
    for row in flags.filter(pl.col("start") >= learn_until).iter_rows(named=True):
        detectors[row["detector"]] += 1
    return {
        "file": key,
        "rows": len(rows),
        "windows": len(spans),
        "detections": len(starts),
        "true_detections": true,
        "windows_found": hit,
        "by_detector": dict(detectors),
        "dropped": flagged.dropped,
        "seconds": flagged.seconds,
        "flags": [
            [str(r["start"]), r["detector"], r["metric"], r["severity"], round(r["score"], 2)]
            for r in flags.iter_rows(named=True)
        ],
    }


class FlagCache:
    """Flags per data file, so a file the shared subset and the NAB checkout both hold is flagged once."""

    def __init__(self, config: AnomalyConfig) -> None:
        self.config = config
        self._done: dict[tuple[str, str], FlaggedFile] = {}

    def get(self, key: str, path: Path) -> FlaggedFile:
        ident = (key, hashlib.sha256(path.read_bytes()).hexdigest())
        if ident not in self._done:
            flagged = flag_nab_file(path, self.config)
            print(f"  flagged {key}: {len(flagged.rows)} rows, {flagged.flags.height} flags, {flagged.seconds} s", flush=True)
            self._done[ident] = flagged
        return self._done[ident]


def _total(files: Iterable[dict[str, Any]]) -> dict[str, Any]:
    files = list(files)
    det = sum(f["detections"] for f in files)
    tp = sum(f["true_detections"] for f in files)
    win = sum(f["windows"] for f in files)
    hit = sum(f["windows_found"] for f in files)
    return {"files": len(files), "windows": win, "windows_found": hit, "detections": det, "true_detections": tp, **_prf(tp, det, hit, win)}


def _summary(files: list[dict[str, Any]], path: Path) -> dict[str, Any]:
    real = [f for f in files if f["file"].split("/")[0] in REAL_GROUPS]
    art = [f for f in files if f["file"].split("/")[0] in ARTIFICIAL_GROUPS]
    dropped = sum(sum(f["dropped"].values()) for f in files)
    return {"path": str(path), "real": _total(real), "artificial": _total(art), "dropped": dropped, "files": files}


def evaluate_nab(folder: Path, cache: FlagCache) -> dict[str, Any] | None:
    labels_path = folder / "labels.json"
    if not labels_path.is_file():
        return None
    labels: dict[str, list[list[str]]] = json.loads(labels_path.read_text())
    files = []
    for name in sorted(labels):
        path = folder / name
        if not path.is_file():
            print(f"  (missing {name}, skipped)")
            continue
        flagged = cache.get(name, path)
        files.append(score_nab_file(name, flagged, labels[name]))
    return _summary(files, folder)


def evaluate_heldout(corpus: list[Series], shared_keys: Iterable[str], root: Path, cache: FlagCache) -> dict[str, Any]:
    """The held-out server series of a NAB checkout, scored exactly as the shared subset."""
    files = []
    for series in heldout(corpus, shared_keys):
        flagged = cache.get(series.key, series.path)
        result = score_nab_file(series.key, flagged, series.windows)
        result["field"] = series_field(series.stem)[0]
        files.append(result)
    summary = _summary(files, root)
    summary["aws"] = _total(f for f in files if f["file"].startswith("realAWSCloudwatch/"))
    return summary


def write_nab_results(corpus: list[Series], out: Path, cache: FlagCache) -> dict[str, Any]:
    """NAB result files of every series of the corpus, for NAB's own scorer (see nab_corpus)."""
    written = []
    for series in corpus:
        flagged = cache.get(series.key, series.path)
        rows = read_rows(series.path)
        timestamps = [ts for ts, _ in flagged.rows]
        episodes = list(zip(flagged.flags.get_column("start").to_list(), flagged.flags.get_column("end").to_list(), strict=True))
        for detector, spans in ((DETECTOR_STARTS, False), (DETECTOR_SPANS, True)):
            write_result(out, detector, series, rows, episode_scores(timestamps, episodes, spans=spans))
        written.append({"file": series.key, "field": series_field(series.stem)[0], "flags": flagged.flags.height})
    return {"out": str(out), "detectors": [DETECTOR_STARTS, DETECTOR_SPANS], "files": written}


# ---- output ---------------------------------------------------------------------------


def _print_generator(result: dict[str, Any]) -> None:
    print(
        f"\ngenerator seed {result['seed']}: {result['snapshots']} snapshots, {result['labels_counted']} labels counted"
        f" ({result['labels']} in all), {result['detections']} detections"
    )
    print(f"  overall  P {result['precision']:.3f}  R {result['recall']:.3f}  F1 {result['f1']:.3f}")
    print(f"  {'kind':<16}{'labels':>8}{'found':>8}{'recall':>8}")
    for kind, k in result["per_kind"].items():
        print(f"  {kind:<16}{k['labels']:>8}{k['found']:>8}{k['recall']:>8.3f}")
    print(f"  {'detector':<16}{'detections':>11}{'precision':>10}")
    for det, d in result["per_detector"].items():
        print(f"  {det:<16}{d['detections']:>11}{d['precision']:>10.3f}")


def _print_nab(result: dict[str, Any], title: str = "NAB") -> None:
    print(f"\n{title} ({result['path']})")
    print(f"  {'file':<58}{'windows':>8}{'found':>6}{'detect':>7}{'true':>6}  detectors")
    for f in result["files"]:
        print(
            f"  {f['file']:<58}{f['windows']:>8}{f['windows_found']:>6}{f['detections']:>7}{f['true_detections']:>6}"
            f"  {', '.join(f'{k}:{v}' for k, v in sorted(f['by_detector'].items()))}"
        )
    print(f"  values left out as no possible reading: {result['dropped']}")
    for f in result["files"]:
        for what, count in f["dropped"].items():
            print(f"    {f['file']}: {count} {what}")
    for group in ("real", "aws", "artificial"):
        t = result.get(group)
        if not t or not t["files"]:
            continue
        print(
            f"  {group:<10} {t['files']} files, {t['windows']} windows: P {t['precision']:.3f}  R {t['recall']:.3f}"
            f"  F1 {t['f1']:.3f}  ({t['true_detections']}/{t['detections']} detections true,"
            f" {t['windows_found']}/{t['windows']} windows found)"
        )


def _print_side_by_side(shared: dict[str, Any], held: dict[str, Any]) -> None:
    print(f"\n  {'real server series':<28}{'files':>6}{'windows':>8}{'found':>6}{'detect':>7}{'true':>6}{'P':>7}{'R':>7}{'F1':>7}")
    for name, t in (("shared (tuned on)", shared["real"]), ("held-out", held["real"]), ("held-out, AWS only", held["aws"])):
        print(
            f"  {name:<28}{t['files']:>6}{t['windows']:>8}{t['windows_found']:>6}{t['detections']:>7}"
            f"{t['true_detections']:>6}{t['precision']:>7.3f}{t['recall']:>7.3f}{t['f1']:>7.3f}"
        )


def _run_corpus(args: argparse.Namespace, cache: FlagCache, out: dict[str, Any]) -> None:
    """The NAB checkout's held-out series and result files, as the options ask."""
    root = Path(args.nab_repo)
    corpus = read_corpus(root)
    if args.heldout:
        shared_folder = Path(args.nab) if args.nab is not None else DEFAULT_NAB
        shared_labels = shared_folder / "labels.json"
        if not shared_labels.is_file():
            raise CorpusError(f"{shared_labels} not found: the held-out set is what the shared subset lacks")
        held = evaluate_heldout(corpus, json.loads(shared_labels.read_text()), root, cache)
        _print_nab(held, "NAB held-out server series")
        if "nab" in out:
            _print_side_by_side(out["nab"], held)
        out["nab_heldout"] = held
    if args.nab_results is not None:
        results = write_nab_results(corpus, Path(args.nab_results), cache)
        print(f"\nNAB result files of {len(results['files'])} series in {results['out']} ({', '.join(results['detectors'])})")
        out["nab_results"] = results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", action="store_true", help="score on a generated fleet")
    parser.add_argument("--nab", nargs="?", const=str(DEFAULT_NAB), default=None, help="score on the NAB folder")
    parser.add_argument("--seeds", nargs="+", type=int, default=[7, 11], help="generator seeds (default 7 11)")
    parser.add_argument("--orgs", type=int, default=2)
    parser.add_argument("--assets", type=int, default=10, help="assets per org")
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--interval", type=int, default=60, help="reporting interval in seconds")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="override one AnomalyConfig setting"
    )
    parser.add_argument("--nab-repo", metavar="DIR", help="a NAB checkout (data/, labels/combined_windows.json)")
    parser.add_argument(
        "--heldout", action="store_true", help="score the checkout's server series the shared subset lacks"
    )
    parser.add_argument("--nab-results", metavar="OUTDIR", help="write NAB result files of every series of the checkout")
    parser.add_argument("--out", default=str(RESULTS), help=f"results JSON (default {RESULTS.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    if (args.heldout or args.nab_results is not None) and args.nab_repo is None:
        parser.error("--heldout and --nab-results read a NAB checkout: give --nab-repo DIR")
    corpus_run = args.nab_repo is not None
    run_all = not args.generator and args.nab is None and not corpus_run
    config = AnomalyConfig()
    for item in args.set:
        name, _, text = item.partition("=")
        current = getattr(config, name)
        value = text.lower() in ("1", "true", "yes") if isinstance(current, bool) else type(current)(text)
        config = replace(config, **{name: value})
    cache = FlagCache(config)
    out: dict[str, Any] = {"measured": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "config": config.__dict__}
    if args.generator or run_all:
        out["generator"] = []
        for seed in args.seeds:
            result = evaluate_generator(
                seed, config, orgs=args.orgs, assets=args.assets, days=args.days, interval_s=args.interval
            )
            _print_generator(result)
            out["generator"].append(result)
    if args.nab is not None or run_all:
        folder = Path(args.nab) if args.nab is not None else DEFAULT_NAB
        nab = evaluate_nab(folder, cache)
        if nab is None:
            print(f"\nNAB: no labelled data at {folder} (labels.json missing; give --nab PATH or set PERF_NAB_DIR); skipped")
        else:
            _print_nab(nab)
            out["nab"] = nab
    if corpus_run:
        try:
            _run_corpus(args, cache, out)
        except CorpusError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            return 2
    results = Path(args.out)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"\nwritten {results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
