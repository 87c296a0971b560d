"""Anomaly flags of one fleet-day: this checkout's `flag_assets` against an earlier one's.

Data: `generate_fleet` (1 org, `--base` assets, 9 days at one snapshot a minute, seed 7,
with its injected anomalies), copied `--copies` times under new asset ids, so a fleet of
base x copies assets keeps the generator's realistic series without building millions
of documents. Cached as Parquet in bench/.cache/flags-<base>x<copies>/ (built once).

Measured: `flag_assets(frames, day=<the 9th day>)`, the nightly's work for one org-day
(the day and its 8 days of history, as `run_day` reads them, all from memory), timed in
a child process per side and run, the sides taking turns (`--repeat`, default 3; the
median is reported, since the machine is shared). Sides: `after` (this checkout) and
`before` (`--before DIR`, a checkout of the earlier code, for example made with
`mkdir /tmp/flags-before && git archive <commit> | tar -x -C /tmp/flags-before`;
left out when not given). Each child writes
its episodes, and the bench fails if the two sides' episodes differ: the race is between
equal results.

Reported per side: wall and CPU seconds (the CPU time of the child, all its threads: on a
shared machine the steadier of the two), CPU µs per metric point read (the day and its
history) and per metric point of the day flagged, and the projection to 1,000 assets x
1 day (1.44M snapshots): the CPU time per snapshot of the day flagged x 1.44M (divide
by the cores for a wall time on an idle machine). On a loaded machine, `--threads 1`
gives the steadiest CPU figures: polars' idle worker threads spin, and their spinning
counts as CPU time when they wait for a core.

With `--steps`, instead: the CPU time of each step of `flag_assets` (reading the points,
each detector), each called on its own, per side (the least of `--repeat` runs).

    python bench/bench_flags.py --before /tmp/flags-before                 # 10 x 10 = 100 assets
    python bench/bench_flags.py --before /tmp/flags-before --copies 1 --threads 1 --steps
    python bench/bench_flags.py --base 10 --copies 1 --before /tmp/flags-before --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from perf_analytics.frames import frames_from_documents  # noqa: E402
from perf_analytics.synth import DEFAULT_START, generate_fleet  # noqa: E402

DAYS = 9
FLEET_DAY_SNAPSHOTS = 1_000 * 1_440
NAMES = ("snapshots", "disks", "interfaces")

# The child: reads the cached frames, then times flag_assets alone (with the code on its
# PYTHONPATH), and writes the episodes and its figures.
CHILD = """
import json, sys, time
from datetime import date
import polars as pl
from perf_analytics.anomalies import flag_assets
from perf_analytics.anomalies.series import agent_frame, read_points
from perf_analytics.frames import Frames
cache, day, out = sys.argv[1], date.fromisoformat(sys.argv[2]), sys.argv[3]
frames = Frames(*(pl.read_parquet(f"{cache}/{n}.parquet") for n in ("snapshots", "disks", "interfaces")))
began, cpu = time.perf_counter(), time.process_time()
found = flag_assets(frames, day=day)
seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
found.episodes.write_parquet(out)
points = read_points(frames, agent_frame(frames))[0]
today = points.filter(pl.col("timestamp").dt.date() == day).height
snaps = frames.snapshots.filter(pl.col("timestamp").dt.date() == day).height
print(json.dumps({"seconds": seconds, "cpu": cpu, "points": points.height, "day_points": today, "day_snapshots": snaps}))
"""

# With --steps: the CPU time of each step of flag_assets, called one by one (the same
# functions and arguments on both sides), over the same frames.
STEPS = """
import json, sys, time
import polars as pl
from perf_analytics.anomalies import AnomalyConfig, detectors as d
from perf_analytics.anomalies.series import agent_frame, read_points
from perf_analytics.frames import Frames
cache = sys.argv[1]
frames = Frames(*(pl.read_parquet(f"{cache}/{n}.parquet") for n in ("snapshots", "disks", "interfaces")))
cfg, cpu = AnomalyConfig(), {}
def step(name, fn):
    began = time.process_time()
    out = fn()
    cpu[name] = time.process_time() - began
    return out
agents = step("read: agents", lambda: agent_frame(frames))
points = step("read: points", lambda: read_points(frames, agents)[0])
boots = step("reboots", lambda: d.detect_reboots(agents, cfg))
step("thresholds", lambda: d.detect_thresholds(points, cfg))
scored = step("baselines (score_points)", lambda: d.score_points(points, cfg))
step("outliers", lambda: d.detect_outliers(points, cfg, boots, scored=scored))
step("joint", lambda: d.detect_joint_moves(scored, cfg, boots))
step("level shifts", lambda: d.detect_level_shifts(points, cfg, boots))
step("flatlines", lambda: d.detect_flatlines(points, cfg))
step("disk forecasts", lambda: d.detect_disk_forecasts(points, cfg))
step("gaps", lambda: d.detect_gaps(agents, cfg))
print(json.dumps(cpu))
"""


def build(cache: Path, *, base: int, copies: int) -> None:
    """Generate the base fleet and write `copies` copies of it under new asset ids."""
    def docs() -> Any:
        for doc in generate_fleet(orgs=1, assets=base, days=DAYS, interval_s=60, seed=7):
            doc["timestamp"] = datetime.fromisoformat(doc["timestamp"].replace("Z", "+00:00"))
            yield doc

    frames = frames_from_documents(docs())
    cache.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        one = getattr(frames, name)
        many = pl.concat(
            [one.with_columns(pl.format("{}-c{}", pl.col("assetId"), pl.lit(c)).alias("assetId")) for c in range(copies)]
        )
        many.write_parquet(cache / f"{name}.parquet")


def run_side(code: Path, script: str, args: list[str], threads: int | None) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(code)}
    if threads is not None:
        env["POLARS_MAX_THREADS"] = str(threads)
    done = subprocess.run([sys.executable, "-c", script, *args], env=env, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def print_steps(sides: dict[str, Path], cache: Path, args: argparse.Namespace) -> None:
    """The CPU seconds of each step per side (the least of `--repeat` runs)."""
    steps: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
    for _ in range(args.repeat):
        for name, code in sides.items():
            steps[name].append(run_side(code, STEPS, [str(cache)], args.threads))
    names = list(steps["after"][0])
    print("| step | " + " | ".join(f"{n} CPU s" for n in sides) + (" | before / after |" if len(sides) > 1 else " |"))
    print("|---|" + "---:|" * (len(sides) + (len(sides) > 1)))
    for step in [*names, "total"]:
        best = {n: min(sum(r.values()) if step == "total" else r[step] for r in runs) for n, runs in steps.items()}
        ratio = f" | {best['before'] / best['after']:.2f}x" if "before" in best and best["after"] else ""
        print(f"| {step} | " + " | ".join(f"{best[n]:.2f}" for n in sides) + ratio + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=int, default=10, help="assets generated (default 10)")
    parser.add_argument("--copies", type=int, default=10, help="copies of them (default 10)")
    parser.add_argument("--before", type=Path, help="a checkout of the earlier code")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--steps", action="store_true", help="instead: the CPU time of each step, per side")
    parser.add_argument("--threads", type=int, help="POLARS_MAX_THREADS of the children (default: polars' own)")
    args = parser.parse_args()
    cache = ROOT / "bench" / ".cache" / f"flags-{args.base}x{args.copies}"
    if not (cache / "interfaces.parquet").exists():
        began = time.perf_counter()
        build(cache, base=args.base, copies=args.copies)
        print(f"fleet built in {time.perf_counter() - began:.0f} s: {cache}")
    day = (DEFAULT_START + timedelta(days=DAYS - 1)).astimezone(UTC).date().isoformat()
    sides = {"after": ROOT} | ({"before": args.before.resolve()} if args.before else {})
    if args.steps:
        print_steps(sides, cache, args)
        return
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    for _ in range(args.repeat):
        for name, code in sides.items():
            out = cache / f"episodes-{name}.parquet"
            runs[name].append(run_side(code, CHILD, [str(cache), day, str(out)], args.threads))
    if "before" in sides:
        after, before = (pl.read_parquet(cache / f"episodes-{n}.parquet") for n in ("after", "before"))
        if not after.equals(before):
            raise SystemExit(f"the sides' episodes differ ({after.height} after, {before.height} before)")
        print(f"episodes equal on both sides: {after.height}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (2 cores); polars threads: {args.threads or 'default'}")
    print("| side | runs | median wall s | median CPU s | CPU µs / point read | CPU µs / point of the day "
          "| 1,000 assets x 1 day (CPU) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    walls, cpus = {}, {}
    for name, results in runs.items():
        walls[name] = statistics.median(r["seconds"] for r in results)
        cpus[name] = cpu = statistics.median(r["cpu"] for r in results)
        r = results[0]
        projected = cpu / r["day_snapshots"] * FLEET_DAY_SNAPSHOTS
        print(f"| {name} | {len(results)} | {walls[name]:.1f} | {cpu:.1f} | {cpu / r['points'] * 1e6:.2f} | "
              f"{cpu / r['day_points'] * 1e6:.1f} | {projected / 60:.0f} min |")
    if "before" in sides:
        print(f"before / after: wall {walls['before'] / walls['after']:.2f}x, CPU {cpus['before'] / cpus['after']:.2f}x")
    print(f"points read {runs['after'][0]['points']:,}, of the day {runs['after'][0]['day_points']:,}, "
          f"snapshots of the day {runs['after'][0]['day_snapshots']:,}")


if __name__ == "__main__":
    main()
