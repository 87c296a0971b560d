"""perf_analytics: agent performance snapshots from MongoDB to Polars, Parquet and DuckDB."""

from perf_analytics.config import Settings, load_settings
from perf_analytics.errors import PerfAnalyticsError, ValidationError
from perf_analytics.schema import validate_snapshot
from perf_analytics.store import (
    connect,
    ensure_indexes,
    get_asset_performance,
    probe_capabilities,
    store_snapshot,
)

__all__ = [
    "PerfAnalyticsError",
    "Settings",
    "ValidationError",
    "connect",
    "ensure_indexes",
    "get_asset_performance",
    "load_settings",
    "probe_capabilities",
    "store_snapshot",
    "validate_snapshot",
]
__version__ = "0.1.0"
