"""perf_analytics: agent performance snapshots from MongoDB to Polars, Parquet and DuckDB.

What a notebook or a script needs is importable from here::

    from perf_analytics import connect, load_settings, sync_snapshots, read_window

Each name is imported on first use (PEP 562), so `import perf_analytics` and
`perf-analytics --help` do not load Polars, Arrow or DuckDB.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Where each public name lives, grouped as the data flows: settings and server, loading,
# reading windows, the lake and its mirror, deriving, the nightly run, administration.
_HOMES: dict[str, tuple[str, ...]] = {
    "perf_analytics.config": ("Settings", "load_settings"),
    "perf_analytics.days": ("parse_day",),
    "perf_analytics.store": (
        "connect", "connect_uri", "ensure_indexes", "get_asset_performance", "probe_capabilities", "store_snapshot",
    ),
    "perf_analytics.schema": ("ASSETS", "SNAPSHOTS", "validate_snapshot"),
    "perf_analytics.ingest": (
        "IngestSummary", "LoadOptions", "ingest_archives", "ingest_archives_all_orgs", "validate_archives",
    ),
    "perf_analytics.extract": (
        "Extraction", "extract_window", "extract_window_all_orgs", "iter_window", "sink_window_parquet",
    ),
    "perf_analytics.frames": ("Frames", "frames_from_documents"),
    "perf_analytics.sync": ("mark_for_sync", "mirror_documents_all_orgs", "sync_snapshots", "sync_snapshots_all_orgs"),
    "perf_analytics.mirror": ("read_window", "scan_window"),
    "perf_analytics.lake": ("connect_lake", "connect_lake_all_orgs", "query_lake"),
    "perf_analytics.rollups": ("Rollups", "compute_availability", "compute_rollups"),
    "perf_analytics.anomalies": ("AnomalyConfig", "FlagOptions", "flag_anomalies"),
    "perf_analytics.pipeline": ("run_day",),
    "perf_analytics.nightly": ("Fanout", "NightlyOptions", "list_runs", "run_nightly"),
    "perf_analytics.report": ("render_report", "write_report"),
    "perf_analytics.plots": ("asset_figure", "fleet_figure", "plot_asset", "plot_fleet", "save_figure"),
    "perf_analytics.retention": (
        "export_snapshots", "export_snapshots_all_orgs", "restore_snapshots", "retention_status",
        "retention_status_all_orgs",
    ),
    "perf_analytics.migrate": ("migrate_all_orgs", "migrate_legacy_snapshots"),
    "perf_analytics.doctor": ("diagnose", "diagnose_all_orgs"),
    "perf_analytics.synth": ("FleetSpec", "fleet_assets", "fleet_labels", "generate_fleet", "write_fleet"),
    "perf_analytics.errors": (
        "AnomalyInputError", "ArchiveError", "CheckpointError", "ConfigError", "DamagedArchive", "ExtractError",
        "FanoutError", "IncompleteLoad", "InvalidArgument", "LakeError", "ManifestError", "MirrorError", "NotFound",
        "NotReadOnly", "NotSynced", "PerfAnalyticsError", "PlotError", "QueryError", "RetentionError", "RollupError",
        "RunFailed", "RunLocked", "ServerError", "SinkError", "StepFailed", "SyncError", "UnreadableLakeFile",
        "UnsupportedFeature", "ValidationError",
    ),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "ASSETS", "SNAPSHOTS", "AnomalyConfig", "AnomalyInputError", "ArchiveError", "CheckpointError", "ConfigError", "DamagedArchive",
    "ExtractError", "Extraction", "Fanout", "FanoutError", "FlagOptions", "FleetSpec", "Frames", "IncompleteLoad",
    "IngestSummary", "InvalidArgument", "LakeError", "LoadOptions", "ManifestError", "MirrorError", "NightlyOptions", "NotFound", "NotReadOnly",
    "NotSynced", "PerfAnalyticsError", "PlotError", "QueryError", "RetentionError", "RollupError", "Rollups",
    "RunFailed", "RunLocked", "ServerError", "Settings", "SinkError", "StepFailed", "SyncError",
    "UnreadableLakeFile", "UnsupportedFeature", "ValidationError", "__version__", "asset_figure",
    "compute_availability", "compute_rollups", "connect", "connect_lake", "connect_lake_all_orgs", "connect_uri",
    "diagnose", "diagnose_all_orgs", "ensure_indexes", "export_snapshots", "export_snapshots_all_orgs",
    "extract_window", "extract_window_all_orgs", "flag_anomalies", "fleet_assets", "fleet_figure", "fleet_labels",
    "frames_from_documents", "generate_fleet", "get_asset_performance", "ingest_archives",
    "ingest_archives_all_orgs", "iter_window", "list_runs", "load_settings", "mark_for_sync", "migrate_all_orgs",
    "migrate_legacy_snapshots", "mirror_documents_all_orgs", "parse_day", "plot_asset", "plot_fleet", "probe_capabilities", "query_lake",
    "read_window", "render_report", "restore_snapshots", "retention_status", "retention_status_all_orgs",
    "run_day", "run_nightly", "save_figure", "scan_window", "sink_window_parquet", "store_snapshot",
    "sync_snapshots", "sync_snapshots_all_orgs", "validate_archives", "validate_snapshot", "write_fleet",
    "write_report",
]


def __getattr__(name: str) -> Any:
    """Import the module a public name lives in the first time the name is asked for."""
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'perf_analytics' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # what type checkers and editors see; at run time __getattr__ imports these
    from perf_analytics.anomalies import AnomalyConfig, FlagOptions, flag_anomalies
    from perf_analytics.config import Settings, load_settings
    from perf_analytics.days import parse_day
    from perf_analytics.doctor import diagnose, diagnose_all_orgs
    from perf_analytics.errors import (
        AnomalyInputError,
        ArchiveError,
        CheckpointError,
        ConfigError,
        DamagedArchive,
        ExtractError,
        FanoutError,
        IncompleteLoad,
        InvalidArgument,
        LakeError,
        ManifestError,
        MirrorError,
        NotFound,
        NotReadOnly,
        NotSynced,
        PerfAnalyticsError,
        PlotError,
        QueryError,
        RetentionError,
        RollupError,
        RunFailed,
        RunLocked,
        ServerError,
        SinkError,
        StepFailed,
        SyncError,
        UnreadableLakeFile,
        UnsupportedFeature,
        ValidationError,
    )
    from perf_analytics.extract import (
        Extraction,
        extract_window,
        extract_window_all_orgs,
        iter_window,
        sink_window_parquet,
    )
    from perf_analytics.frames import Frames, frames_from_documents
    from perf_analytics.ingest import (
        IngestSummary,
        LoadOptions,
        ingest_archives,
        ingest_archives_all_orgs,
        validate_archives,
    )
    from perf_analytics.lake import connect_lake, connect_lake_all_orgs, query_lake
    from perf_analytics.migrate import migrate_all_orgs, migrate_legacy_snapshots
    from perf_analytics.mirror import read_window, scan_window
    from perf_analytics.nightly import Fanout, NightlyOptions, list_runs, run_nightly
    from perf_analytics.pipeline import run_day
    from perf_analytics.plots import asset_figure, fleet_figure, plot_asset, plot_fleet, save_figure
    from perf_analytics.report import render_report, write_report
    from perf_analytics.retention import (
        export_snapshots,
        export_snapshots_all_orgs,
        restore_snapshots,
        retention_status,
        retention_status_all_orgs,
    )
    from perf_analytics.rollups import Rollups, compute_availability, compute_rollups
    from perf_analytics.schema import ASSETS, SNAPSHOTS, validate_snapshot
    from perf_analytics.store import (
        connect,
        connect_uri,
        ensure_indexes,
        get_asset_performance,
        probe_capabilities,
        store_snapshot,
    )
    from perf_analytics.sync import (
        mark_for_sync,
        mirror_documents_all_orgs,
        sync_snapshots,
        sync_snapshots_all_orgs,
    )
    from perf_analytics.synth import (
        FleetSpec,
        fleet_assets,
        fleet_labels,
        generate_fleet,
        write_fleet,
    )
