"""Rollups of a fleet-day, all five windows: `compute_rollups` against pandas and DuckDB.

Data: N assets (default 1,000, in 10 orgs) x 1 day at one snapshot a minute (1.44M
snapshots at N=1,000), each asset at its own second within the minute, 0.5% of snapshots
missing at random (gaps), two disks and two interfaces per asset (2.88M rows each). The
flat frames are built directly with numpy, in the column names and types of
`frames.py`, not through `generate_fleet` -> `validate_snapshot` -> `frames_from_documents`
(that path takes minutes and gigabytes for 1.44M documents and is not what is measured).
The same seed gives both sides the same values.

The frames are built once and cached as Parquet in bench/.cache/rollups-<N>/. Measured,
each in a child process of its own that reads that cache before the clock starts (so
each peak RSS is its own, and the RSS after loading the data is reported beside it):

- `polars-assets`: `compute_rollups` with empty disk and interface frames: the per-asset
  rollups only;
- `polars-full`: `compute_rollups` on all three frames (assets, disks, interfaces);
- `pandas-assets`: the per-asset baseline, per window `df.groupby(["orgId",
  "assetId"]).resample(rule, on="timestamp")` then `size`, `mean`, `min`, `max`,
  `quantile(0.95)` (linear) and `last` of the five asset metrics (cpu_usage,
  memory_usage_percent, memory_swap_used, system_process_count, system_thread_count),
  joined into one frame. It computes no coverage, gaps, intervals or flags: less than
  `polars-assets`, which it is compared with;
- `pandas-full`: the baseline of `polars-full`: `pandas-assets`, then per window
  `groupby(["orgId", "assetId", "disk"]).resample(...)` with `size`, `max` of
  usage_percent and the four disk rates, `last` of usage_percent, used_bytes and
  free_bytes, `mean` of the four rates; the same per interface with `size`, `mean` and
  `max` of the four byte and packet rates, and the byte totals as `compute_rollups`
  defines them: `sum(min_count=1)` of the rate times the asset's reporting interval of
  that UTC day (median step between its successive snapshots that day, computed once by
  a groupby over the snapshots), `bytes_total` their sum. Like `pandas-assets`, it skips
  the per-asset coverage, gaps and flags, and it cleans nothing (the generated values are
  all valid, so `compute_rollups`' cleaning nulls none of them);
- `pandas-grouper`: the best pandas formulation of `pandas-assets`' work: per window one
  `df.groupby(["orgId", "assetId", pd.Grouper(key="timestamp", freq=rule)])` with the
  same aggregations (no resample per asset);
- `duckdb`: the same per-asset statistics in DuckDB SQL over the Arrow table of the cached
  snapshots (`pyarrow.parquet.read_table`, zero-copy for DuckDB): per window `GROUP BY
  orgId, assetId, time_bucket(INTERVAL ..., timestamp)` with `count(*)`, `avg`, `min`,
  `max`, `quantile_cont(x, 0.95)` and `arg_max(x, timestamp)`, fetched as Arrow tables.

Before timing, `compute_rollups` on all three frames and `pandas-full` are run on 20
assets and every column the pandas side produces is compared with `compute_rollups`'
(1e-9 relative; the same rows, empty pandas buckets dropped): per asset samples and the
25 metric statistics, per disk samples and the 12 statistics, per interface samples, the 8
rate statistics and the 3 byte totals. No column is left out. Each side's output row count
at full size must also equal its counterpart's. So each race is between equal results.
The ratio of record for the issue's target ("all five windows, against a pandas resample
baseline: at least 10x") is `polars-full` against `pandas-full`. The peers
`pandas-grouper` and `duckdb` are checked the same way against `compute_rollups` on 20
assets (every per-asset column they produce, 1e-9 relative) and must give the same
output rows as `polars-assets` at full size; the race of record for them is
`polars-assets` against each. Every side but the two resample baselines (minutes each)
runs `--repeat` times (default 3) in turn; the table keeps the fastest time and the
highest peak RSS of each, the median CPU seconds and their ratio, and the heading the
range of the 1-minute load average read before each run (the machine may be shared).

    python bench/bench_rollups.py                 # 1,000 assets (1.44M snapshots)
    python bench/bench_rollups.py --assets 100    # a quick look
    python bench/bench_rollups.py --sides polars-assets pandas-grouper duckdb   # the peers only

Prints a markdown table and writes bench/results/rollups.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
START = datetime(2026, 1, 5, tzinfo=UTC)
STEPS = 1440  # one a minute, one day
ORGS = 10
METRICS = ("cpu_usage", "memory_usage_percent", "memory_swap_used", "system_process_count", "system_thread_count")
WINDOWS = {"1min": "1min", "5min": "5min", "15min": "15min", "1hour": "1h", "1day": "1D"}
WINDOW_SECONDS = {"1min": 60.0, "5min": 300.0, "15min": 900.0, "1hour": 3600.0, "1day": 86400.0}
DISK_RATES = ("read_bytes_per_sec", "write_bytes_per_sec", "read_ops_per_sec", "write_ops_per_sec")
INTERFACE_RATES = ("bytes_recv_per_sec", "bytes_sent_per_sec", "packets_recv_per_sec", "packets_sent_per_sec")
DISK_COLUMNS = ("usage_percent", "used_bytes", "free_bytes", *DISK_RATES)
# The statistics `compute_rollups` produces per disk and per interface ({stat: columns}).
DISK_STATS = {"max": ("usage_percent", *DISK_RATES), "last": ("usage_percent", "used_bytes", "free_bytes"), "mean": DISK_RATES}
INTERFACE_STATS = {"mean": INTERFACE_RATES, "max": INTERFACE_RATES}
TOTALS = {"bytes_recv_total": "bytes_recv_per_sec", "bytes_sent_total": "bytes_sent_per_sec"}
SIDES = ("polars-assets", "polars-full", "pandas-assets", "pandas-full", "pandas-grouper", "duckdb")
# Which other side does the same work as which polars side.
SAME_WORK = {"polars-assets": "pandas-assets", "polars-full": "pandas-full"}
# The best peers of `polars-assets`: the same per-asset statistics by other means.
PEERS = ("pandas-grouper", "duckdb")


def build_columns(assets: int, seed: int = 42) -> dict[str, dict[str, npt.NDArray[Any]]]:
    """Flat columns of snapshots, disks and interfaces, sorted by (org, asset, timestamp)."""
    rng = np.random.default_rng(seed)
    asset_ids = np.array([f"asset-{i:05d}" for i in range(assets)])
    org_ids = np.array([f"org-{i % ORGS:02d}" for i in range(assets)])
    order = np.lexsort((asset_ids, org_ids))  # sorted by org, then asset
    asset_ids, org_ids = asset_ids[order], org_ids[order]
    start_ms = int(START.timestamp() * 1000)
    offsets = rng.integers(0, 60, assets) * 1000
    ts = start_ms + offsets[:, None] + np.arange(STEPS)[None, :] * 60_000
    keep = rng.random((assets, STEPS)) >= 0.005
    rows = int(keep.sum())
    asset_of = np.repeat(np.arange(assets), STEPS)[keep.ravel()]
    t = ts.ravel()[keep.ravel()]
    hour = (t - start_ms) / 3_600_000.0
    base = rng.uniform(5, 60, assets)[asset_of]
    snapshots = {
        "orgId": org_ids[asset_of],
        "assetId": asset_ids[asset_of],
        "timestamp": t,
        "timeWindow": np.full(rows, "1min"),
        "cpu_usage": np.clip(base + 15 * np.sin(hour / 24 * 2 * np.pi) + rng.normal(0, 8, rows), 0, 100),
        "memory_usage_percent": np.clip(base + 20 + rng.normal(0, 3, rows), 0, 100),
        "memory_swap_used": np.abs(rng.normal(2e8, 5e7, rows)),
        "system_uptime": 86_400.0 + (t - start_ms) / 1000.0,
        "system_process_count": rng.integers(150, 300, rows),
        "system_thread_count": rng.integers(1500, 4000, rows),
    }
    items: dict[str, dict[str, npt.NDArray[Any]]] = {}
    for kind, names in (("disks", ("C:", "D:")), ("interfaces", ("eth0", "lo"))):
        n = rows * len(names)
        cols: dict[str, npt.NDArray[Any]] = {
            "orgId": np.repeat(snapshots["orgId"], len(names)),
            "assetId": np.repeat(snapshots["assetId"], len(names)),
            "timestamp": np.repeat(t, len(names)),
            kind[:-1] if kind == "disks" else "interface": np.tile(np.array(names), rows),
        }
        if kind == "disks":
            usage = rng.uniform(10, 95, n)
            cols |= {
                "usage_percent": usage,
                "total_bytes": np.full(n, 5e11),
                "used_bytes": usage / 100 * 5e11,
                "free_bytes": (100 - usage) / 100 * 5e11,
                **{c: rng.exponential(1e6, n) for c in ("read_bytes_per_sec", "write_bytes_per_sec")},
                **{c: rng.exponential(50, n) for c in ("read_ops_per_sec", "write_ops_per_sec")},
            }
        else:
            cols |= {c: rng.exponential(1e5, n) for c in ("bytes_recv_per_sec", "bytes_sent_per_sec")}
            cols |= {c: rng.exponential(100, n) for c in ("packets_recv_per_sec", "packets_sent_per_sec")}
        items[kind] = cols
    return {"snapshots": snapshots, **items}


def polars_frames(columns: dict[str, dict[str, npt.NDArray[Any]]], *, assets_only: bool) -> Any:
    import polars as pl

    from perf_analytics.frames import Frames, empty_frames

    def frame(cols: dict[str, npt.NDArray[Any]], empty: pl.DataFrame) -> pl.DataFrame:
        df = pl.DataFrame(cols)
        return df.with_columns(pl.from_epoch("timestamp", time_unit="ms").dt.replace_time_zone("UTC")).select(
            [c for c in empty.columns if c in df.columns]
        )

    empty = empty_frames()
    snapshots = frame(columns["snapshots"], empty.snapshots)
    if assets_only:
        return Frames(snapshots, empty.disks, empty.interfaces)
    return Frames(snapshots, frame(columns["disks"], empty.disks), frame(columns["interfaces"], empty.interfaces))


def pandas_frames(columns: dict[str, dict[str, npt.NDArray[Any]]], *, assets_only: bool) -> dict[str, Any]:
    """The pandas side's input, {"snapshots": ..., and unless `assets_only` "disks", "interfaces"}."""
    import pandas as pd

    wanted = {
        "snapshots": ("timeWindow", *METRICS) if not assets_only else METRICS,
        "disks": ("disk", *DISK_COLUMNS),
        "interfaces": ("interface", *INTERFACE_RATES),
    }
    out = {}
    for name in ("snapshots",) if assets_only else ("snapshots", "disks", "interfaces"):
        cols = dict(columns[name])
        cols["timestamp"] = pd.to_datetime(cols["timestamp"], unit="ms", utc=True)
        out[name] = pd.DataFrame({k: cols[k] for k in ("orgId", "assetId", "timestamp", *wanted[name])})
    return out


def pandas_asset_rollups(df: Any) -> dict[str, Any]:
    """The per-asset baseline: groupby-resample per asset, the same per-asset statistics."""

    return {
        window: _pandas_stats(df.groupby(["orgId", "assetId"]).resample(rule, on="timestamp"))
        for window, rule in WINDOWS.items()
    }


def _pandas_stats(grouped: Any) -> Any:
    """Samples and the five statistics of METRICS per group, empty buckets dropped: the
    same aggregations whichever way the groups were formed."""
    import pandas as pd

    r = grouped[list(METRICS)]
    parts = [grouped.size().rename("samples")]
    for stat, frame in (
        ("mean", r.mean()),
        ("min", r.min()),
        ("max", r.max()),
        ("p95", r.quantile(0.95)),
        ("last", r.last()),
    ):
        parts.append(frame.add_suffix(f"_{stat}"))
    result = pd.concat(parts, axis=1)
    return result[result["samples"] > 0]


def pandas_grouper_rollups(df: Any) -> dict[str, Any]:
    """The per-asset statistics of `pandas_asset_rollups` by the faster pandas route:
    one `groupby` with `pd.Grouper(key="timestamp", freq=rule)` per window (no resample
    per asset), then the same aggregations in one `agg` call."""
    import pandas as pd

    return {
        window: _pandas_stats(df.groupby(["orgId", "assetId", pd.Grouper(key="timestamp", freq=rule)], sort=True))
        for window, rule in WINDOWS.items()
    }


DUCKDB_WIDTH = {"1min": "1 minute", "5min": "5 minutes", "15min": "15 minutes", "1hour": "1 hour", "1day": "1 day"}


def duckdb_asset_rollups(snapshots: Any) -> dict[str, Any]:
    """The per-asset statistics in DuckDB SQL over an Arrow table of snapshots: per window
    `time_bucket` with count, avg, min, max, `quantile_cont(x, 0.95)` (the same linear
    interpolation) and `arg_max(x, timestamp)` (the latest non-null value), as Arrow tables."""
    import duckdb

    stats = ", ".join(
        f"avg({m}) AS {m}_mean, min({m}) AS {m}_min, max({m}) AS {m}_max, "
        f"quantile_cont({m}, 0.95) AS {m}_p95, arg_max({m}, timestamp) AS {m}_last"
        for m in METRICS
    )
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    con.register("snapshots", snapshots)
    out = {}
    for window, width in DUCKDB_WIDTH.items():
        sql = (
            f"SELECT orgId, assetId, time_bucket(INTERVAL '{width}', timestamp) AS bucket, "
            f"count(*) AS samples, {stats} FROM snapshots GROUP BY ALL ORDER BY orgId, assetId, bucket"
        )
        out[window] = con.sql(sql).to_arrow_table()
    con.close()
    return out


def pandas_intervals(snapshots: Any) -> Any:
    """Each asset's reporting interval per UTC day, as `compute_rollups` defines it.

    The median of the differences between successive timestamps within the day (the
    frames come sorted by asset and time, as `frames.py` makes them), falling back to the
    length of the day's first `timeWindow` for a day with a single sample. A Series
    indexed by (orgId, assetId, day).
    """
    df = snapshots[["orgId", "assetId", "timestamp", "timeWindow"]].assign(day=snapshots["timestamp"].dt.floor("D"))
    by_day = df.groupby(["orgId", "assetId", "day"], sort=False)
    df["step_s"] = by_day["timestamp"].diff().dt.total_seconds()
    by_day = df.groupby(["orgId", "assetId", "day"], sort=False)
    fallback = by_day["timeWindow"].first().map(WINDOW_SECONDS)
    return by_day["step_s"].median().fillna(fallback).rename("interval_s")


def pandas_item_rollups(df: Any, item: str, stats: dict[str, tuple[str, ...]], rule: str) -> Any:
    """Per (orgId, assetId, `item`) and bucket of `rule`: samples and each `stats` entry."""
    import pandas as pd

    buckets = df.groupby(["orgId", "assetId", item]).resample(rule, on="timestamp")
    parts = [buckets.size().rename("samples")]
    for stat, cols in stats.items():
        parts.append(getattr(buckets[list(cols)], stat)().add_suffix(f"_{stat}"))
    if item == "interface":
        # Summed with min_count=1 so that a bucket without any rate gives NaN, not 0.
        parts.append(buckets[list(TOTALS.values())].sum(min_count=1).add_prefix("_sum_"))
    return pd.concat(parts, axis=1)


def pandas_full_rollups(frames: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The full baseline: the per-asset baseline, then the same per disk and per interface.

    Interface byte totals are computed as `compute_rollups` defines them: the sum of the
    rate over the bucket's samples times the asset's reporting interval of that UTC day
    (`pandas_intervals`); `bytes_total` is their sum.
    """
    assets = pandas_asset_rollups(frames["snapshots"])
    intervals = pandas_intervals(frames["snapshots"])
    out: dict[str, dict[str, Any]] = {}
    for window, rule in WINDOWS.items():
        disks = pandas_item_rollups(frames["disks"], "disk", DISK_STATS, rule)
        interfaces = pandas_item_rollups(frames["interfaces"], "interface", INTERFACE_STATS, rule)
        disks = disks[disks["samples"] > 0]
        interfaces = interfaces[interfaces["samples"] > 0]
        index = interfaces.index
        days = index.get_level_values(3).floor("D")
        keys = type(index).from_arrays([index.get_level_values(0), index.get_level_values(1), days])
        interval_s = intervals.reindex(keys).to_numpy()
        totals = {total: interfaces.pop(f"_sum_{rate}") * interval_s for total, rate in TOTALS.items()}
        interfaces = interfaces.assign(**totals, bytes_total=totals["bytes_recv_total"] + totals["bytes_sent_total"])
        out[window] = {"assets": assets[window], "disks": disks, "interfaces": interfaces}
    return out


def compare(mine: Any, theirs: Any, keys: list[str], what: str) -> int:
    """Assert that `theirs` (pandas, indexed by keys) has the rows of `mine` (Polars) and
    equal values (1e-9 relative, NaN = null) in every column of its; returns values compared."""
    mine = mine.to_pandas().set_index(keys)
    theirs = theirs.copy()
    theirs.index = theirs.index.set_names(keys)
    bucket = len(keys) - 1
    mine.index = mine.index.set_levels(mine.index.levels[bucket].as_unit("ns"), level=bucket)
    theirs.index = theirs.index.set_levels(theirs.index.levels[bucket].as_unit("ns"), level=bucket)
    assert len(mine) == len(theirs), (what, len(mine), len(theirs))
    joined = mine.join(theirs.add_suffix("_pd"), how="inner")
    assert len(joined) == len(theirs), what
    compared = 0
    for column in theirs.columns:
        a = joined[column].to_numpy(dtype=float)
        b = joined[f"{column}_pd"].to_numpy(dtype=float)
        assert np.allclose(a, b, rtol=1e-9, atol=0, equal_nan=True), (what, column)
        compared += len(a)
    return compared


def check_equal(assets: int = 20) -> dict[str, int]:
    """Both sides on a small fleet: the common columns must agree; returns values compared
    per level (assets, disks, interfaces)."""
    from perf_analytics.rollups import compute_rollups

    columns = build_columns(assets, seed=7)
    ours = compute_rollups(polars_frames(columns, assets_only=False))
    theirs = pandas_full_rollups(pandas_frames(columns, assets_only=False))
    keys = {"assets": [], "disks": ["disk"], "interfaces": ["interface"]}
    compared = dict.fromkeys(keys, 0)
    for window, levels in theirs.items():
        for level, frame in levels.items():
            index = ["orgId", "assetId", *keys[level], "bucket"]
            compared[level] += compare(getattr(ours[window], level), frame, index, f"{window} {level}")
    return compared


def check_peers_equal(assets: int = 20) -> dict[str, int]:
    """The best peers (`pandas-grouper`, `duckdb`) against `compute_rollups` on a small
    fleet, every per-asset column they produce; returns values compared per peer."""
    import pyarrow as pa

    from perf_analytics.rollups import compute_rollups

    columns = build_columns(assets, seed=7)
    frames = polars_frames(columns, assets_only=True)
    ours = compute_rollups(frames)
    index = ["orgId", "assetId", "bucket"]
    grouper = pandas_grouper_rollups(pandas_frames(columns, assets_only=True)["snapshots"])
    duck = duckdb_asset_rollups(pa.Table.from_pandas(pandas_frames(columns, assets_only=True)["snapshots"]))
    compared = {"pandas-grouper": 0, "duckdb": 0}
    for window in WINDOWS:
        compared["pandas-grouper"] += compare(ours[window].assets, grouper[window], index, f"{window} grouper")
        theirs = duck[window].to_pandas().set_index(index)
        compared["duckdb"] += compare(ours[window].assets, theirs, index, f"{window} duckdb")
    return compared


def peak_rss_mb() -> float:
    """The process's high-water mark (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cache_dir(assets: int) -> Path:
    return HERE / ".cache" / f"rollups-{assets}"


def write_cache(assets: int) -> Path:
    """Build the frames once and keep them as Parquet, so each child only reads them."""
    directory = cache_dir(assets)
    if (directory / "interfaces.parquet").exists():
        return directory
    frames = polars_frames(build_columns(assets), assets_only=False)
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("snapshots", "disks", "interfaces"):
        getattr(frames, name).write_parquet(directory / f"{name}.parquet")
    return directory


def read_side_data(side: str, directory: Path) -> Any:
    """The cached input of `side`, only the columns it uses (polars: whole frames)."""
    if side == "duckdb":
        import pyarrow.parquet as pq

        return {"snapshots": pq.read_table(directory / "snapshots.parquet", columns=["orgId", "assetId", "timestamp", *METRICS])}
    if side.startswith("pandas"):
        import pandas as pd

        def read(name: str, *cols: str) -> pd.DataFrame:
            return pd.read_parquet(directory / f"{name}.parquet", columns=["orgId", "assetId", "timestamp", *cols])

        if side in ("pandas-assets", "pandas-grouper"):
            return {"snapshots": read("snapshots", *METRICS)}
        return {
            "snapshots": read("snapshots", "timeWindow", *METRICS),
            "disks": read("disks", "disk", *DISK_COLUMNS),
            "interfaces": read("interfaces", "interface", *INTERFACE_RATES),
        }
    import polars as pl

    from perf_analytics.frames import Frames, empty_frames

    snapshots = pl.read_parquet(directory / "snapshots.parquet")
    if side == "polars-assets":
        empty = empty_frames()
        return Frames(snapshots, empty.disks, empty.interfaces)
    return Frames(snapshots, pl.read_parquet(directory / "disks.parquet"), pl.read_parquet(directory / "interfaces.parquet"))


class RssSampler:
    """The highest resident set size seen while running, sampled every 5 ms by a thread.

    ru_maxrss is a high-water mark for the whole process (reading the data included), so
    the peak of the computation itself is sampled instead.
    """

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def rss_mb() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss) / 2**20


def run_side(side: str, assets: int) -> dict[str, Any]:
    """Read the cached data, then time one side; runs in a child process of its own."""
    # Each side's modules are imported before its clock starts, as its data is read.
    if side == "duckdb":
        import duckdb  # noqa: F401
    elif side.startswith("polars"):
        import perf_analytics.rollups  # noqa: F401
    t0 = time.perf_counter()
    data = read_side_data(side, cache_dir(assets))
    snapshots = len(data["snapshots"]) if isinstance(data, dict) else data.snapshots.height
    loaded_s = time.perf_counter() - t0
    rss_loaded = rss_mb()
    with RssSampler() as sampler:
        t1, cpu1 = time.perf_counter(), time.process_time()
        if side == "pandas-assets":
            rows = sum(len(f) for f in pandas_asset_rollups(data["snapshots"]).values())
        elif side == "pandas-grouper":
            rows = sum(len(f) for f in pandas_grouper_rollups(data["snapshots"]).values())
        elif side == "duckdb":
            rows = sum(t.num_rows for t in duckdb_asset_rollups(data["snapshots"]).values())
        elif side == "pandas-full":
            result = pandas_full_rollups(data)
            rows = sum(len(f) for levels in result.values() for f in levels.values())
        else:
            from perf_analytics.rollups import compute_rollups

            rollups = compute_rollups(data)
            rows = sum(r.assets.height + r.disks.height + r.interfaces.height for r in rollups.values())
        seconds, cpu_s = time.perf_counter() - t1, time.process_time() - cpu1
    return {
        "side": side,
        "snapshots": snapshots,
        "load_s": round(loaded_s, 2),
        "seconds": round(seconds, 3),
        "cpu_s": round(cpu_s, 3),  # all threads, the RSS sampler's included
        "output_rows": rows,
        "rss_after_load_mb": round(rss_loaded, 1),
        "peak_rss_during_compute_mb": round(sampler.peak / 2**20, 1),
        "process_max_rss_mb": round(peak_rss_mb(), 1),
    }


def run_child(side: str, assets: int) -> dict[str, Any]:
    """`run_side` in a fresh child process, so that its peak RSS is its own."""
    child = subprocess.run(
        [sys.executable, __file__, "--assets", str(assets), "--side", side],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(HERE.parent)},
    )
    return dict(json.loads(child.stdout.strip().splitlines()[-1]))


def run_sides(sides: list[str], assets: int, repeat: int) -> dict[str, dict[str, Any]]:
    """Each side's run; the sides of seconds run `repeat` times, one after the other in
    turn (so a burst of load on the shared machine hits the sides of a round alike),
    keeping every round's seconds and CPU seconds, the fastest time and the highest peak
    RSS. The groupby-resample baselines run once."""
    runs: dict[str, dict[str, Any]] = {}
    for round_ in range(repeat):
        for side in sides:
            if round_ and side in SAME_WORK.values():
                continue
            load = os.getloadavg()[0]  # the machine is shared: the load beside every figure
            run = run_child(side, assets)
            print(f"{side}: {run['seconds']} s, peak {run['peak_rss_during_compute_mb']} MB, load {load:.1f}",
                  file=sys.stderr)
            best = runs.setdefault(side, {**run, "rounds_s": [], "rounds_cpu_s": [], "rounds_load_1min": []})
            best["rounds_s"].append(run["seconds"])
            best["rounds_cpu_s"].append(run["cpu_s"])
            best["rounds_load_1min"].append(round(load, 2))
            best["seconds"] = min(best["rounds_s"])
            for key in ("peak_rss_during_compute_mb", "process_max_rss_mb"):
                best[key] = max(best[key], run[key])
    return runs


def round_ratio(runs: dict[str, dict[str, Any]], side: str, ours: str) -> float:
    """The median over rounds of `side`'s time over `ours`' in the same round: on a shared
    machine whose load changes by the minute, sides are compared within a round."""
    pairs = zip(runs[side]["rounds_s"], runs[ours]["rounds_s"], strict=False)
    return float(np.median([theirs / mine for theirs, mine in pairs]))


def cpu_ratio(runs: dict[str, dict[str, Any]], side: str, ours: str) -> float:
    """`side`'s median CPU seconds over `ours`': less sensitive than wall time to the other
    work on a shared machine (pandas computes on one thread, Polars and DuckDB on two)."""
    return float(np.median(runs[side]["rounds_cpu_s"]) / np.median(runs[ours]["rounds_cpu_s"]))


WHAT = {
    "pandas-assets": "baseline: groupby-resample, per-asset stats",
    "polars-assets": "`compute_rollups`, per-asset rollups only",
    "pandas-full": "baseline: groupby-resample, per-asset, per-disk and per-interface stats",
    "polars-full": "`compute_rollups`, assets + disks + interfaces",
    "pandas-grouper": "pandas `groupby` with `pd.Grouper(freq=...)`, per-asset stats",
    "duckdb": "DuckDB SQL, `time_bucket` + `quantile_cont`, per-asset stats",
}


def print_tables(runs: dict[str, dict[str, Any]], assets: int, machine: str) -> None:
    """The races of `runs` as markdown tables."""
    some = next(iter(runs.values()))
    print(f"\nRollups, {assets:,} assets x 1 day at 60 s ({some['snapshots']:,} snapshots), "
          f"all five windows; {machine}\n")
    # A resample baseline runs once, for minutes; it is compared with the median of the
    # rounds of its counterpart, not its fastest.
    print("| run | computes | seconds (median) | vs pandas of the same work | output rows "
          "| peak RSS MB during compute (after loading data) |")
    print("|---|---|---:|---:|---:|---:|")
    for ours, theirs in SAME_WORK.items():
        for side in (theirs, ours):
            if ours in runs and theirs in runs:  # a race whose both sides ran
                r = runs[side]
                median = float(np.median(r["rounds_s"]))
                ratio = f"{runs[theirs]['seconds'] / median:.1f}x"
                print(f"| {side} | {WHAT[side]} | {r['seconds']:.2f} ({median:.2f}) | {ratio} | {r['output_rows']:,} | "
                      f"{r['peak_rss_during_compute_mb']:,.0f} ({r['rss_after_load_mb']:,.0f}) |")
    if "polars-assets" not in runs or not any(p in runs for p in PEERS):
        return
    ours = runs["polars-assets"]
    rounds = len(ours["rounds_s"])
    print(f"\nThe per-asset rollups against their best peers ({rounds} rounds; seconds: fastest and median; "
          "ratio: median of the rounds' ratios; highest peak):\n")
    print("| run | computes | seconds (median) | `compute_rollups` faster by | CPU seconds, median (ratio) "
          "| output rows | peak RSS MB during compute (after loading data) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for side in ("polars-assets", *(p for p in PEERS if p in runs)):
        r = runs[side]
        ours_side = side == "polars-assets"
        ratio = "" if ours_side else f"{round_ratio(runs, side, 'polars-assets'):.1f}x"
        cpu = f"{np.median(r['rounds_cpu_s']):.2f}" + ("" if ours_side else f" ({cpu_ratio(runs, side, 'polars-assets'):.1f}x)")
        print(f"| {side} | {WHAT[side]} | {r['seconds']:.2f} ({np.median(r['rounds_s']):.2f}) | {ratio} | {cpu} | "
              f"{r['output_rows']:,} | {r['peak_rss_during_compute_mb']:,.0f} ({r['rss_after_load_mb']:,.0f}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=int, default=1000, help="assets in the fleet (1 day at 60 s each)")
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES), help="the sides to run (all)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side but the resample baselines")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # child process mode
    args = parser.parse_args()
    if args.side:
        print(json.dumps(run_side(args.side, args.assets)))
        return

    write_cache(args.assets)
    compared = check_equal()
    print(f"check: pandas and polars agree on {sum(compared.values()):,} values (20 assets, 5 windows; "
          + ", ".join(f"{level} {n:,}" for level, n in compared.items()) + ")", file=sys.stderr)
    peers_compared = check_peers_equal()
    print("check: the peers agree with compute_rollups on "
          + ", ".join(f"{side} {n:,}" for side, n in peers_compared.items()) + " values", file=sys.stderr)
    runs = run_sides(args.sides, args.assets, args.repeat)
    rows = {side: r["output_rows"] for side, r in runs.items()}
    for ours, theirs in SAME_WORK.items():
        if ours in rows and theirs in rows:
            assert rows[ours] == rows[theirs], (ours, theirs)
    for peer in PEERS:
        if peer in rows and "polars-assets" in rows:
            assert rows[peer] == rows["polars-assets"], peer
    loads = [load for r in runs.values() for load in r["rounds_load_1min"]]
    machine = (f"{platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}, "
               f"load average (1 min) {min(loads):.1f}-{max(loads):.1f}")
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "assets": args.assets,
        "snapshots": next(iter(runs.values()))["snapshots"],
        "windows": list(WINDOWS),
        "values_checked_equal": compared,
        "peer_values_checked_equal": peers_compared,
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rollups.json").write_text(json.dumps(result, indent=2) + "\n")
    print_tables(runs, args.assets, machine)


if __name__ == "__main__":
    main()
