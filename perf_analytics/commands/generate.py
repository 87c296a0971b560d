"""`perf-analytics generate`: write a synthetic fleet archive with its anomaly labels."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from perf_analytics.progress import count_progress

if TYPE_CHECKING:
    from perf_analytics.synth import GenerateSummary


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}" if count == 1 else f"{count:,} {word}s"


def summary_line(summary: GenerateSummary) -> str:
    """The one line the command prints when done (kept stable for scripts and tests)."""
    line = (
        f"wrote {_plural(summary.snapshots, 'snapshot')} of {_plural(summary.assets, 'asset')} "
        f"in {_plural(summary.orgs, 'org')} to {summary.path} in {summary.seconds:.1f}s; "
        f"{_plural(summary.labels, 'label')} ({summary.injected:,} injected anomalies) in {summary.labels_path}"
    )
    if summary.assets_path is not None:
        line += f"; asset documents in {summary.assets_path}"
    return line


@click.command("generate")
@click.option("--orgs", type=click.IntRange(min=1), default=2, show_default=True, help="Number of organisations.")
@click.option(
    "--assets", "assets_per_org", type=click.IntRange(min=1), default=5, show_default=True, help="Assets per organisation."
)
@click.option("--days", type=click.IntRange(min=1), default=1, show_default=True, help="Days of data per asset.")
@click.option(
    "--interval",
    type=click.IntRange(1, 86400),
    default=60,
    show_default=True,
    help="Seconds between two snapshots of an asset.",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Same seed, same bytes.")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="NDJSON output; .gz or .zst compresses.",
)
@click.option(
    "--labels",
    "labels_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Labels JSON (default: next to --out, e.g. fleet.labels.json for fleet.ndjson.zst).",
)
@click.option(
    "--assets-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the asset documents (Extended JSON lines) here.",
)
@click.option(
    "--start",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="First day, UTC (default 2026-01-05).",
)
@click.option("--no-anomalies", is_flag=True, help="Only routine fleet life: no injected anomalies.")
def command(
    orgs: int,
    assets_per_org: int,
    days: int,
    interval: int,
    seed: int,
    out: Path,
    labels_path: Path | None,
    assets_out: Path | None,
    start: datetime | None,
    no_anomalies: bool,
) -> None:
    """Write a synthetic fleet's snapshots, with labels of what is anomalous in them.

    Each asset sends a snapshot every --interval seconds for --days days: working-day
    CPU, slowly growing memory and disks, network bursts, reboots and agent outages. A
    share of the assets also gets labelled anomalies (CPU saturation, memory leak, disk
    filling, flatline, level shift, outage, reboot, network burst). The same arguments
    always give the same bytes.

    \b
    Examples:
      perf-analytics generate --orgs 2 --assets 5 --days 1 --out fleet.ndjson.zst
      perf-analytics generate --orgs 3 --assets 4 --days 2 --seed 7 \\
          --out data/demo.ndjson.zst --assets-out data/demo.assets.ndjson
      perf-analytics generate --assets 3 --days 2 --interval 300 --no-anomalies --out clean.ndjson
    """
    # NumPy loads here, when the command runs, not for --help.
    from perf_analytics.synth import FleetSpec, write_fleet

    spec = FleetSpec(
        orgs=orgs,
        assets=assets_per_org,
        days=days,
        interval_s=interval,
        seed=seed,
        start=start.replace(tzinfo=UTC) if start is not None else None,
        anomalies=not no_anomalies,
    )
    with count_progress("generating") as advance:
        summary = write_fleet(out, spec, labels_path=labels_path, assets_path=assets_out, progress=advance)
    click.echo(summary_line(summary))
