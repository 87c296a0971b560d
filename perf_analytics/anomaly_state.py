"""The anomaly flags' baseline state in the lake: one small file per org and day.

    <lake>/anomaly_state/version=<STATE_VERSION>/orgId=<org>/date=<YYYY-MM-DD>/part-0.parquet

Each file holds the day's summaries (`anomalies.state`: per series and hour, per asset,
per asset and pair of metrics), so flagging a day reads the `baseline_days` files before
it instead of their raw snapshots. A file is written atomically (`lake.write_partition`:
temporary file, fsync, rename), so a kill leaves the old file or the new one, never half
of one; and it carries in its Parquet metadata the *fingerprint* of what it summarises:
the state version, the setting the summaries depend on, and the day's snapshot part files
as the mirror's manifest lists them (path, rows, sha256 of their ids). A file whose
fingerprint is not the day's current one (late snapshots, a restore, another setting, a
file that cannot be read) is stale: the day is summarised again from its raw snapshots
and the file replaced. Because a day's summaries depend on that day's snapshots alone,
kept and rebuilt state are equal, and the flags with either are the same.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from perf_analytics.anomalies import AnomalyConfig, summarize_days
from perf_analytics.anomalies.state import STATE_SCHEMA, STATE_VERSION, empty_state
from perf_analytics.lake import ANOMALY_STATE, PART, partition_dir, write_partition
from perf_analytics.mirror import LakeSnapshots
from perf_analytics.sync import PartFile, listed_snapshot_files

log = logging.getLogger(__name__)

_FINGERPRINT_KEY = b"perf_analytics.fingerprint"


def _partition(org_id: str, day: date) -> dict[str, str]:
    return {"version": str(STATE_VERSION), "orgId": org_id, "date": day.isoformat()}


def state_path(lake: str | os.PathLike[str], org_id: str, day: date) -> Path:
    """Where the state of (org, day) is kept."""
    return partition_dir(lake, ANOMALY_STATE, _partition(org_id, day)) / PART


def fingerprints(files: Sequence[PartFile], days: Sequence[date], config: AnomalyConfig) -> dict[date, str]:
    """Per day, the sha256 of what its state is summarised from (see the module's docstring)."""
    settings = {"version": STATE_VERSION, "held_points": config.outlier_sustained_points}
    out = {}
    for day in days:
        listed = [(f.path, f.rows, f.ids_sha256) for f in files if f.date == day.isoformat()]
        text = json.dumps({"day": day.isoformat(), "files": listed, "settings": settings}, sort_keys=True)
        out[day] = hashlib.sha256(text.encode()).hexdigest()
    return out


def read_state(lake: str | os.PathLike[str], org_id: str, day: date, fingerprint: str) -> pl.DataFrame | None:
    """The kept state of (org, day) when its fingerprint is `fingerprint`; None when it is
    absent, stale or unreadable (then it must be rebuilt)."""
    path = state_path(lake, org_id, day)
    if not path.exists():
        return None
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        log.warning("anomaly state %s cannot be read (%s): rebuilding it", path, exc)
        return None
    if (table.schema.metadata or {}).get(_FINGERPRINT_KEY) != fingerprint.encode():
        return None
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame.with_columns(pl.lit(org_id).alias("orgId"), pl.lit(day).alias("date")).select(
        *(pl.col(n).cast(t) for n, t in STATE_SCHEMA.items())
    )


def write_state(lake: str | os.PathLike[str], org_id: str, day: date, state: pl.DataFrame, fingerprint: str) -> Path:
    """Replace the kept state of (org, day), atomically, stamped with its fingerprint."""
    table = state.select(*(pl.col(n).cast(t) for n, t in STATE_SCHEMA.items())).to_arrow()
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _FINGERPRINT_KEY: fingerprint.encode()})
    return write_partition(lake, ANOMALY_STATE, _partition(org_id, day), table)


def _day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def rebuild_day(
    lake: str | os.PathLike[str], org_id: str, day: date, config: AnomalyConfig, *, asset_batch: int
) -> pl.DataFrame:
    """Summarise (org, day) from its raw snapshots in the mirror, a batch of assets at a time."""
    source = LakeSnapshots(lake)
    start, end = _day_bounds(day)
    # Every asset of the day, those whose id is no string included: reading them fails the
    # day as reading the raw history would.
    assets = source.assets(org_id, start, end)
    parts = []
    for i in range(0, len(assets), asset_batch):
        frames = source.read(org_id, start, end, asset_ids=assets[i : i + asset_batch]).frames
        parts.append(summarize_days(frames, [day], config))
    parts = [p for p in parts if not p.is_empty()]
    return sort_state(pl.concat(parts)) if parts else empty_state()


def sort_state(state: pl.DataFrame) -> pl.DataFrame:
    """A state in its one order, whatever batches it was summarised in."""
    return state.sort(["part", "orgId", "assetId", "metric", "metric_b", "hour"], nulls_last=True)


def prior_state(
    lake: str | os.PathLike[str],
    org_id: str,
    days: Sequence[date],
    config: AnomalyConfig,
    *,
    asset_batch: int,
    files: Sequence[PartFile] | None = None,
) -> pl.DataFrame:
    """The state of `days` (the baseline days of a day being flagged): each kept file whose
    fingerprint is current, the others rebuilt from raw snapshots and written back."""
    listed = list(files) if files is not None else listed_snapshot_files(lake, org_id=org_id)
    current = fingerprints(listed, days, config)
    parts = []
    for day in days:
        kept = read_state(lake, org_id, day, current[day])
        if kept is None:
            kept = rebuild_day(lake, org_id, day, config, asset_batch=asset_batch)
            write_state(lake, org_id, day, kept, current[day])
            log.info("anomaly state of %s %s rebuilt from its snapshots", org_id, day)
        parts.append(kept)
    parts = [p for p in parts if not p.is_empty()]
    return pl.concat(parts) if parts else empty_state()


def day_fingerprint(lake: str | os.PathLike[str], org_id: str, day: date, config: AnomalyConfig) -> str:
    """The current fingerprint of (org, day)'s state."""
    return fingerprints(listed_snapshot_files(lake, org_id=org_id), [day], config)[day]


def state_files(lake: str | os.PathLike[str], org_id: str) -> dict[str, Any]:
    """The org's kept state files by date (for reports and tests)."""
    root = partition_dir(lake, ANOMALY_STATE, {"version": str(STATE_VERSION), "orgId": org_id})
    return {p.parent.name.removeprefix("date="): p for p in sorted(root.glob("date=*/" + PART))}


__all__ = [
    "day_fingerprint", "fingerprints", "prior_state", "read_state", "rebuild_day", "sort_state", "state_files",
    "state_path", "write_state",
]
