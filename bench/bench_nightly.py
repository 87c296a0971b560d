"""The nightly run from the lake: time per step and peak RSS, serial and on a local Dask cluster.

What is measured is everything a nightly run does after its sync: plan, flag (anomaly
detection), rollup (five windows and availability), write (the lake partitions) and
report (one HTML page per org), for one day of a generated fleet, with `run_nightly`
itself, once in this process's child (`serial`) and once with `--workers 2`
(`workers-2`: a `distributed.LocalCluster` of two worker processes, started inside the
timed run, as the command does). Goal: under 2 minutes on 2 cores for 1,000 assets x
1 day at one snapshot a minute (about 1.44M snapshots).

**The lake is built directly, not synced.** Loading 1.44M snapshots into the embedded
FerretDB and syncing them out would take hours (about 1,000 documents a second), and the
sync is not what is measured. So the fleet is generated (`synth.generate_fleet`), each
payload normalised as a load would store it (`schema.validate_snapshot`, an ObjectId
`_id`) and encoded to BSON, and the raw documents go through the sync's own writer
(`sync.mirror_documents_all_orgs`: placement, deduplication, typed columns, part files,
org manifests): the lake is what a sync of those documents would leave.
It is cached in `bench/.cache/nightly-<orgs>x<assets>x<interval>/source/`; each side
runs on a fresh copy. The run's own sync step then finds nothing new in an empty
database of the embedded server (its seconds are reported and left out of the total).

Each side runs in a child process of its own, one after the other, so its peak RSS is its
own: the coordinating process's (RUSAGE_SELF) and the largest worker's (RUSAGE_CHILDREN,
read after the cluster is closed). The per-step seconds are the sums of the run record's
step records; with workers they add up over both workers, so they exceed the wall time.
The derived files of the two sides are checked equal byte for byte. The serial side also
gives its time after the sync less the flag step (anomaly detection, timed on its own):
what the rest of the run costs against the goal. Load averages are recorded before, at
the end of each side and after. The serial side also gives each step's CPU seconds (the
process's, every thread's, in each step function of `perf_analytics.nightly`): on a
shared machine far less inflated than its wall seconds.

    python bench/bench_nightly.py                                   # 1,000 assets (4 orgs) x 1 day x 1 min
    python bench/bench_nightly.py --assets 200 --interval 60        # a smaller fleet
    python bench/bench_nightly.py --sides serial                    # one side only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
RESULTS = HERE / "results"
SIDES = ("serial", "workers-2")
AFTER_SYNC = ("plan", "flag", "rollup", "write", "report", "derive")


def _peak_rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


# ---- the lake, built through the sync's writer ------------------------------------------------


def build_lake(source: Path, *, orgs: int, assets: int, days: int, interval_s: int) -> dict[str, Any]:
    """Generate the fleet and write it into `source` as a sync would (see the docstring)."""
    import bson
    from bson import ObjectId

    from perf_analytics.schema import validate_snapshot
    from perf_analytics.sync import mirror_documents_all_orgs
    from perf_analytics.synth import FleetSpec, generate_fleet

    began = time.perf_counter()
    staging = source.with_name(source.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    fleet = generate_fleet(FleetSpec(orgs=orgs, assets=assets // orgs, days=days, interval_s=interval_s, seed=42))
    report = mirror_documents_all_orgs(
        staging, (bson.encode({"_id": ObjectId(), **validate_snapshot(payload)}) for payload in fleet)
    )
    staging.rename(source)
    return {"snapshots": report.new, "files": report.files, "seconds": time.perf_counter() - began}


# ---- one side, in a child process ---------------------------------------------------------------


def _cpu_timed(name: str, step: Callable[..., Any], cpu: dict[str, float]) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        began = time.process_time()
        try:
            return step(*args, **kwargs)
        finally:
            cpu[name] += time.process_time() - began

    return timed



def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One nightly run over a fresh copy of the lake; per-step seconds from its record."""
    from datetime import date

    from perf_analytics import nightly
    from perf_analytics.config import load_settings
    from perf_analytics.nightly import Fanout, list_runs, run_nightly
    from perf_analytics.store import connect

    lake = Path(spec["lake"])
    db = connect(load_settings()).client["bench_nightly_empty"]  # nothing new to sync
    fanout = Fanout(workers=spec["workers"]) if spec["workers"] else None
    day = date.fromisoformat(spec["day"])
    # Each step function of the run, wrapped to add up its CPU time (the process's, every
    # thread's: Polars' and DuckDB's included), which a busy machine inflates far less
    # than its seconds. Serial only: on workers the steps run in other processes.
    cpu: dict[str, float] = defaultdict(float)
    if fanout is None:
        for name in ("flag", "rollup", "write", "report"):
            setattr(nightly, name, _cpu_timed(name, getattr(nightly, name), cpu))

    began = time.perf_counter()
    result = run_nightly(db, lake, dates=[day], fanout=fanout)
    wall = time.perf_counter() - began
    record = list_runs(lake, last=1)[0]
    steps: dict[str, float] = defaultdict(float)
    for s in record["steps"]:
        steps[s["step"]] += s["seconds"]
    sync_s = steps.get("sync", 0.0)
    # The goal's share apart from anomaly detection: the flag step is timed on its own.
    rest = wall - sync_s - steps.get("flag", 0.0) if fanout is None else None
    return {"wall_s": wall, "sync_s": sync_s, "after_sync_s": wall - sync_s, "after_sync_less_flag_s": rest,
            "steps_s": dict(steps), "steps_cpu_s": dict(cpu) if fanout is None else None, "load": os.getloadavg(),
            "failed": [s.error for s in result.failed], "derived": len(result.derived),
            "snapshots": sum(s["rows_in"] for s in record["steps"] if s["step"] == "flag"),
            "rss_coordinator_mib": _peak_rss_mib(resource.RUSAGE_SELF),
            "rss_largest_worker_mib": _peak_rss_mib(resource.RUSAGE_CHILDREN) if fanout else None}


def _derived_files(lake: Path) -> dict[str, bytes]:
    files = [p for p in lake.rglob("*.parquet") if p.relative_to(lake).parts[0] != "snapshots"]
    return {str(p.relative_to(lake)): p.read_bytes() for p in sorted(files)}


def run_side(side: str, source: Path, work: Path, day: str) -> tuple[dict[str, Any], dict[str, bytes]]:
    lake = work / side / "lake"
    shutil.rmtree(lake.parent, ignore_errors=True)
    shutil.copytree(source, lake)
    spec = {"lake": str(lake), "day": day, "workers": 2 if side == "workers-2" else None}
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"{side} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.splitlines()[-1]), _derived_files(lake)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=int, default=1000, help="assets in all (split over --orgs)")
    parser.add_argument("--orgs", type=int, default=4)
    parser.add_argument("--interval", type=int, default=60, help="seconds between an asset's snapshots")
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--build", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.build:
        fleet = {"orgs": args.orgs, "assets": args.assets, "days": 1, "interval_s": args.interval}
        print(json.dumps(build_lake(Path(args.build), **fleet)))
        return

    from perf_analytics.synth import DEFAULT_START

    tag = f"{args.orgs}x{args.assets}x{args.interval}"
    base = CACHE / f"nightly-{tag}"
    source = base / "source"
    if not source.exists():
        base.mkdir(parents=True, exist_ok=True)
        # In a child: Linux keeps a process's peak RSS across exec, so the sides' children,
        # forked from this process, would inherit the build's.
        done = subprocess.run([sys.executable, __file__, "--build", str(source), "--assets", str(args.assets),
                               "--orgs", str(args.orgs), "--interval", str(args.interval)],
                              capture_output=True, text=True, check=True)
        built = json.loads(done.stdout.splitlines()[-1])
        print(f"built the lake: {built['snapshots']:,} snapshots in {built['files']} part(s), "
              f"{built['seconds']:.0f} s -> {source}", file=sys.stderr)
    day = DEFAULT_START.date().isoformat()
    out: dict[str, Any] = {"fleet": {"assets": args.assets, "orgs": args.orgs, "interval_s": args.interval, "day": day},
                           "load_before": os.getloadavg(), "sides": {}}
    derived: dict[str, dict[str, bytes]] = {}
    for side in args.sides:
        out["sides"][side], derived[side] = run_side(side, source, base, day)
        print(side, json.dumps(out["sides"][side]), file=sys.stderr)
    out["load_after"] = os.getloadavg()
    if len(derived) == len(SIDES):
        out["same_files"] = derived["serial"] == derived["workers-2"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"nightly-{tag}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=1))
    _table(out)
    print(f"-> {path}")


def _table(out: dict[str, Any]) -> None:
    f = out["fleet"]
    print(f"nightly, {f['assets']:,} assets in {f['orgs']} orgs, day {f['day']}, one snapshot every {f['interval_s']} s; "
          f"load average {out['load_before'][0]:.1f} before, {out['load_after'][0]:.1f} after")
    print(f"{'side':<10} {'after sync s':>12} {'less flag s':>11} " + " ".join(f"{s + ' s':>9}" for s in AFTER_SYNC)
          + f" {'RSS coord MiB':>14} {'RSS worker MiB':>15} {'load at end':>11}")
    for side, r in out["sides"].items():
        cells = " ".join(f"{r['steps_s'].get(s, 0.0):>9.1f}" for s in AFTER_SYNC)
        worker, rest = r["rss_largest_worker_mib"], r.get("after_sync_less_flag_s")
        print(f"{side:<10} {r['after_sync_s']:>12.1f} {'-' if rest is None else f'{rest:.1f}':>11} {cells} "
              f"{r['rss_coordinator_mib']:>14.0f} {'-' if worker is None else round(worker):>15} "
              f"{r['load'][0] if 'load' in r else float('nan'):>11.1f}")
    for side, r in out["sides"].items():
        if r.get("steps_cpu_s"):
            cells = ", ".join(f"{s} {r['steps_cpu_s'].get(s, 0.0):.1f}" for s in AFTER_SYNC if s in r["steps_cpu_s"])
            print(f"{side}: CPU seconds per step (every thread): {cells}")
    if "same_files" in out:
        print(f"derived files equal byte for byte: {out['same_files']}")


if __name__ == "__main__":
    main()
