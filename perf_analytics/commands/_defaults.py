"""Option defaults and choices the commands show in `--help`, kept apart from the data stack.

Each value belongs to a library module that imports Polars, Arrow or DuckDB; importing it
to build `--help` would cost about a second. The values are restated here, and
tests/test_cli.py checks each against the library's own, so they cannot drift.
"""

from __future__ import annotations

from datetime import timedelta

from perf_analytics.schema import TIME_WINDOWS

ASSET_BATCH = 100  # pipeline.DEFAULT_ASSET_BATCH
EXTRACT_CHUNK_ROWS = 100_000  # extract.DEFAULT_CHUNK_ROWS
SYNC_CHUNK_ROWS = 50_000  # sync.DEFAULT_CHUNK_ROWS
SYNC_SKEW = timedelta(minutes=10)  # sync.DEFAULT_SKEW
MIGRATE_BATCH_SIZE = 1000  # migrate.DEFAULT_BATCH_SIZE
REPORT_TOP = 5  # report.DEFAULT_TOP
REPORT_MOST = 20  # report.DEFAULT_MOST
RETENTION_OLDER_THAN_DAYS = 30  # retention.DEFAULT_OLDER_THAN_DAYS
PLOT_SUFFIXES = (".png", ".svg", ".pdf")  # plots.SUFFIXES
INGEST_FORMATS = ("ndjson", "json", "bson")  # ingest.readers.FORMATS
INGEST_COMPRESSIONS = ("none", "gzip", "zstd")  # ingest.readers.COMPRESSIONS
CHECKPOINT_DIR = "data/checkpoints"  # ingest.checkpoint.DEFAULT_DIR
WINDOWS: tuple[str, ...] = tuple(TIME_WINDOWS)  # rollups.WINDOWS is built the same way
