"""Bulk loading of snapshot archives (NDJSON, JSON arrays, mongoexport, mongodump; gzip/zstd)."""

from perf_analytics.ingest.loader import (
    IngestSummary,
    ingest_archives,
    ingest_archives_all_orgs,
    validate_archives,
)
from perf_analytics.ingest.options import LoadOptions
from perf_analytics.ingest.readers import FORMATS, open_archive

__all__ = [
    "FORMATS",
    "IngestSummary",
    "LoadOptions",
    "ingest_archives",
    "ingest_archives_all_orgs",
    "open_archive",
    "validate_archives",
]
