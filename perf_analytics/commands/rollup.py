"""`perf-analytics rollup --org ORG --date D`: one org's day of rollups into the lake."""

from __future__ import annotations

import click

from perf_analytics.commands._common import (
    asset_batch_option,
    config_option,
    day_option,
    db_of,
    no_sync_option,
    settings_of,
    sync_org,
)
from perf_analytics.commands._defaults import WINDOWS
from perf_analytics.errors import ConfigError
from perf_analytics.progress import count_progress


@click.command("rollup")
@click.option("--org", "org_id", required=True, help="The organisation.")
@click.option("--date", "day", required=True, help="The UTC day, YYYY-MM-DD.")
@click.option("--windows", default=",".join(WINDOWS), show_default=True,
              help="Comma-separated windows among " + ", ".join(WINDOWS) + ".")
@click.option("--to-mongo", is_flag=True, help="Also upsert into the performance_rollups collection.")
@asset_batch_option
@no_sync_option
@config_option
@click.pass_context
def command(ctx: click.Context, org_id: str, day: str, asset_batch: int, windows: str, to_mongo: bool,
            no_sync: bool) -> None:
    """Roll one org's day up into the lake (rollups/window=/orgId=/date=).

    First syncs the org's new snapshots into the lake (one query; --no-sync skips it),
    then reads the day and its history from the lake only. The day's partitions are
    replaced, so a re-run gives the same files. The number of anomaly flags per bucket
    comes from flagging the same day, so the day's anomaly partition is replaced too (and
    its anomaly_flags documents with --to-mongo), as `anomalies` would.

    \b
    Examples:
      perf-analytics rollup --org org-01 --date 2026-01-06
      perf-analytics rollup --org org-01 --date 2026-01-06 --windows 1hour,1day --to-mongo
      perf-analytics rollup --org org-01 --date 2026-01-06 --no-sync
    """
    # The data stack loads here, when the command runs, not for --help.
    from perf_analytics.pipeline import run_day

    chosen = [w.strip() for w in windows.split(",") if w.strip()]
    unknown = [w for w in chosen if w not in WINDOWS]
    if unknown or not chosen:
        raise ConfigError(f"--windows: unknown window {unknown[0] if unknown else '(none)'}; valid: {', '.join(WINDOWS)}")
    when = day_option("--date", day)
    config = settings_of(ctx).anomaly_config()  # a mistake in it is told before any work
    if not no_sync:
        sync_org(ctx, org_id)
    with count_progress("rolling up", "assets") as progress:
        result = run_day(settings_of(ctx).lake, org_id, when, windows=chosen, anomalies=True,
                         config=config,
                         sink=db_of(ctx) if to_mongo else None, asset_batch=asset_batch, progress=progress)
    rows = ", ".join(f"{w} {n:,}" for w, n in result.rollup_rows.items())
    click.echo(f"{org_id} {result.day}: {result.snapshots:,} snapshots -> asset rollup rows: {rows}; "
               f"{result.flags.height} anomaly flags; lake {settings_of(ctx).lake}")
    if result.skipped_count:
        click.echo(f"skipped {result.skipped_count} off-type snapshot(s); run `doctor --fix`", err=True)
