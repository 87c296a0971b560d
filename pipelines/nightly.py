"""The scheduler's entry point: `python pipelines/nightly.py [OPTIONS]` is `perf-analytics nightly [OPTIONS]`.

Cron, a systemd timer or Airflow runs this file (see pipelines/README.md). Settings come
from the environment like the CLI's (MONGODB_URI, PERF_DB, PERF_LAKE, PERF_CONFIG); the
options are the command's (`--help` lists them). Exit code 0 when every step succeeded,
1 when any failed or another run holds the lake: the run's record is in the lake
(`perf-analytics runs`), and the next run redoes what failed.
"""

from __future__ import annotations

import sys

from perf_analytics.cli import app


def main(argv: list[str] | None = None) -> None:
    app(["nightly", *(sys.argv[1:] if argv is None else argv)], prog_name="pipelines/nightly.py")


if __name__ == "__main__":
    main()
