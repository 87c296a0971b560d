"""Anomaly flags of one fleet-day: with the kept baseline state, and rebuilt from raw history.

Data: `generate_fleet` (1 org, `--base` assets, 9 days at one snapshot a minute, seed 7,
with its injected anomalies), copied `--copies` times under new asset ids, so a fleet of
base x copies assets keeps the generator's realistic series. Cached as Parquet in
bench/.cache/flags-<base>/: the base fleet's frames and the baseline state of its first 8
days (`summarize_days`, what earlier nights kept in the lake). The copies are made in
memory, one asset batch at a time (`--batch`, default 100 assets, `run_day`'s default),
outside the timed part.

Sides (`--sides`, each in a child process of its own, the sides taking turns, `--repeat`
runs, medians reported):

- `state`: what a night does with the state kept: per batch, `flag_assets` over the day's
  own rows with the state of the 7 days before it, and the day's own state written to a
  Parquet file (as `write_day` keeps it); then `flag_peers` over the org.
- `rebuild`: the same day from the day and its 8 days of history, no state (what the
  first night, or a night whose state is all stale, does): every baseline day is
  summarised from its raw rows again.
- `before`: `--before DIR`, a checkout of earlier code, called as `rebuild` (its own
  detectors; its episodes are not compared, the definitions changed).

The bench stops if `state` and `rebuild` give different episodes. Reported per side:
wall and CPU seconds of the timed part (CPU of the child, all its threads), CPU µs per
metric point of the day flagged, and the figure for 1,000 assets x 1 day (1.44M
snapshots): measured when `base x copies` is 1,000, else the CPU time per snapshot of
the day x 1.44M (stated as a projection). Wall on 2 idle cores would be about CPU / 2;
the load average at the end is printed beside the figures. `--threads 1` gives the
steadiest CPU figures on a loaded machine (idle polars workers spin).

    python bench/bench_flags.py --copies 100 --sides state --repeat 1          # 1,000 assets
    python bench/bench_flags.py --copies 1 --sides state rebuild --repeat 3     # 10 assets
    python bench/bench_flags.py --copies 1 --sides rebuild before --before /tmp/flags-before
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
from perf_analytics.synth import DEFAULT_START, FleetSpec, generate_fleet  # noqa: E402

DAYS = 9
FLEET_ASSETS = 1_000
FLEET_DAY_SNAPSHOTS = FLEET_ASSETS * 1_440
NAMES = ("snapshots", "disks", "interfaces")

# The child: copies the base fleet batch by batch (untimed), flags each batch (timed), then
# the peers over the org (timed), and writes the episodes and its figures.
CHILD = """
import json, sys, tempfile, time
from datetime import UTC, date, datetime, timedelta
import polars as pl
from perf_analytics.anomalies import flag_assets, flag_peers, combine_episodes
from perf_analytics.frames import Frames
try:
    from perf_analytics.anomalies import FlagOptions
except ImportError:  # the "before" side's checkout predates FlagOptions
    FlagOptions = None
cache, day, side, copies, batch, out = sys.argv[1], date.fromisoformat(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
start = datetime(day.year, day.month, day.day, tzinfo=UTC)
base = Frames(*(pl.read_parquet(f"{cache}/{n}.parquet") for n in ("snapshots", "disks", "interfaces")))
if side == "state":
    base = Frames(*(getattr(base, n).filter(pl.col("timestamp") >= start) for n in ("snapshots", "disks", "interfaces")))
    state = pl.read_parquet(f"{cache}/state.parquet")
base_assets = base.snapshots.get_column("assetId").unique().len()
per_batch = max(1, batch // base_assets)
def copy(df, lo, hi):
    return pl.concat([df.with_columns(pl.format("{}-c{}", pl.col("assetId"), pl.lit(c)).alias("assetId")) for c in range(lo, hi)])
wall = cpu = 0.0
episodes, buckets, points = [], [], 0
tmp = tempfile.mkdtemp()
for lo in range(0, copies, per_batch):
    hi = min(copies, lo + per_batch)
    frames = Frames(*(copy(getattr(base, n), lo, hi) for n in ("snapshots", "disks", "interfaces")))
    kwargs = {"state": copy(state, lo, hi)} if side == "state" else {}
    kwargs.update({"options": FlagOptions(day=day)} if FlagOptions is not None else {"day": day})
    w, c = time.perf_counter(), time.process_time()
    found = flag_assets(frames, **kwargs)
    if side == "state":
        found.state.write_parquet(f"{tmp}/state-{lo}.parquet", compression="zstd")
    wall += time.perf_counter() - w
    cpu += time.process_time() - c
    episodes.append(found.episodes)
    buckets.append(found.peer_buckets)
w, c = time.perf_counter(), time.process_time()
peers = flag_peers(buckets, day=day)
wall += time.perf_counter() - w
cpu += time.process_time() - c
combine_episodes([*episodes, peers]).write_parquet(out)
snaps = base.snapshots.filter(pl.col("timestamp") >= start).height * copies
print(json.dumps({"seconds": wall, "cpu": cpu, "day_snapshots": snaps}))
"""

# The metric points of the base fleet's day (the same count on every side).
POINTS = """
import sys
from datetime import UTC, date, datetime
import polars as pl
from perf_analytics.anomalies.series import agent_frame, read_points
from perf_analytics.frames import Frames
cache, day = sys.argv[1], date.fromisoformat(sys.argv[2])
start = datetime(day.year, day.month, day.day, tzinfo=UTC)
frames = Frames(*(pl.read_parquet(f"{cache}/{n}.parquet").filter(pl.col("timestamp") >= start) for n in ("snapshots", "disks", "interfaces")))
print(read_points(frames, agent_frame(frames))[0].height)
"""


def build(cache: Path, *, base: int) -> None:
    """Generate the base fleet, and the state of the days before the last."""
    from perf_analytics.anomalies import AnomalyConfig, summarize_days

    def docs() -> Any:
        for doc in generate_fleet(FleetSpec(orgs=1, assets=base, days=DAYS, interval_s=60, seed=7)):
            doc["timestamp"] = datetime.fromisoformat(doc["timestamp"].replace("Z", "+00:00"))
            yield doc

    frames = frames_from_documents(docs())
    cache.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        getattr(frames, name).write_parquet(cache / f"{name}.parquet")
    first = DEFAULT_START.astimezone(UTC).date()
    state = summarize_days(frames, [first + timedelta(days=i) for i in range(DAYS - 1)], AnomalyConfig())
    state.write_parquet(cache / "state.parquet")


def run_child(code: Path, script: str, args: list[str], threads: int | None) -> str:
    env = {**os.environ, "PYTHONPATH": str(code)}
    if threads is not None:
        env["POLARS_MAX_THREADS"] = str(threads)
    # Run from the side's own directory: `python -c` puts the working directory first on
    # sys.path, before PYTHONPATH, so from elsewhere the child could import the wrong side.
    done = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, cwd=code)
    if done.returncode:
        raise SystemExit(f"the child failed:\n{done.stderr}")
    return done.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=int, default=10, help="assets generated (default 10)")
    parser.add_argument("--copies", type=int, default=100, help="copies of them (default 100: 1,000 assets)")
    parser.add_argument("--batch", type=int, default=100, help="assets flagged at a time (default 100)")
    parser.add_argument("--sides", nargs="+", default=["state", "rebuild"], choices=["state", "rebuild", "before"])
    parser.add_argument("--before", type=Path, help="a checkout of the earlier code (side `before`)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", type=int, help="POLARS_MAX_THREADS of the children (default: polars' own)")
    args = parser.parse_args()
    if "before" in args.sides and args.before is None:
        parser.error("side `before` needs --before DIR")
    cache = ROOT / "bench" / ".cache" / f"flags-{args.base}"
    if not (cache / "state.parquet").exists():
        began = time.perf_counter()
        build(cache, base=args.base)
        print(f"fleet built in {time.perf_counter() - began:.0f} s: {cache}")
    day = (DEFAULT_START + timedelta(days=DAYS - 1)).astimezone(UTC).date().isoformat()
    code = {"state": ROOT, "rebuild": ROOT, "before": args.before.resolve() if args.before else ROOT}
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in args.sides}
    for _ in range(args.repeat):
        for side in args.sides:
            out = cache / f"episodes-{side}.parquet"
            child_side = "rebuild" if side == "before" else side
            line = run_child(code[side], CHILD, [str(cache), day, child_side, str(args.copies), str(args.batch), str(out)],
                             args.threads)
            runs[side].append(json.loads(line))
    if {"state", "rebuild"} <= set(args.sides):
        kept, rebuilt = (pl.read_parquet(cache / f"episodes-{n}.parquet") for n in ("state", "rebuild"))
        if not kept.equals(rebuilt):
            raise SystemExit(f"state and rebuild give different episodes ({kept.height} and {rebuilt.height})")
        print(f"episodes equal with the state and rebuilt: {kept.height}")
    points = int(run_child(ROOT, POINTS, [str(cache), day], args.threads)) * args.copies
    assets = args.base * args.copies
    load = os.getloadavg()
    print(f"{assets} assets x 1 day, {points:,} metric points of the day; load average at the end "
          f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (2 cores); polars threads: {args.threads or 'default'}")
    print("| side | runs | median wall s | median CPU s | CPU µs / point of the day | 1,000 assets x 1 day CPU s |")
    print("|---|---:|---:|---:|---:|---:|")
    for side, results in runs.items():
        wall = statistics.median(r["seconds"] for r in results)
        cpu = statistics.median(r["cpu"] for r in results)
        fleet = cpu / results[0]["day_snapshots"] * FLEET_DAY_SNAPSHOTS
        how = "measured" if assets == FLEET_ASSETS else "projected"
        print(f"| {side} | {len(results)} | {wall:.1f} | {cpu:.1f} | {cpu / points * 1e6:.2f} | {fleet:.0f} ({how}) |")


if __name__ == "__main__":
    main()
