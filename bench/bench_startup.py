"""Start-up time of the `perf-analytics` command beside the interpreter's own floor.

Runs `perf-analytics --help`, every command's `--help` and `localdb status` (which only
reads the local server's state file) each in a fresh interpreter, `--repeat` times,
interleaved with `python -c pass`, the floor no Python command can go under. Reports the
median wall time of each and that median minus the floor's: what our imports cost.

    python bench/bench_startup.py              # 10 runs of each
    python bench/bench_startup.py --repeat 20
    PYTHONPATH=<an older checkout> python bench/bench_startup.py   # the same lines on older code
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from perf_analytics.cli import app

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
FLOOR = ("-c", "pass")


def cases() -> dict[str, tuple[str, ...]]:
    """Each measured command line, by its label; the floor first."""
    cli = ("-m", "perf_analytics.cli")
    names = app.list_commands(click.Context(app))
    found = {"python -c pass (floor)": FLOOR, "--help": (*cli, "--help")}
    found.update({f"{name} --help": (*cli, name, "--help") for name in names})
    found["localdb status"] = (*cli, "localdb", "status")
    return found


def wall_seconds(args: tuple[str, ...], cwd: Path) -> float:
    """One run's wall time, from spawning the interpreter to its exit."""
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=10, help="Runs of each command line (default 10).")
    args = parser.parse_args()
    lines = cases()
    times: dict[str, list[float]] = {label: [] for label in lines}
    with tempfile.TemporaryDirectory() as cwd:  # no settings file or local server state is picked up
        for _ in range(args.repeat):  # interleaved, so a busy moment of the machine hits every line alike
            for label, line in lines.items():
                times[label].append(wall_seconds(line, Path(cwd)))
    medians = {label: statistics.median(runs) for label, runs in times.items()}
    floor = medians["python -c pass (floor)"]
    print(f"{'command':<24} {'median s':>9} {'minus floor':>12}")
    for label, median in medians.items():
        print(f"{label:<24} {median:>9.3f} {median - floor:>12.3f}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "startup.json"
    out.write_text(json.dumps({"repeat": args.repeat, "median_seconds": medians, "floor_seconds": floor}, indent=2))
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
