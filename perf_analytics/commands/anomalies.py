"""`perf-analytics anomalies --org ORG --date D`: one org's day of anomaly flags."""

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
from perf_analytics.progress import count_progress


@click.command("anomalies")
@click.option("--org", "org_id", required=True, help="The organisation.")
@click.option("--date", "day", required=True, help="The UTC day, YYYY-MM-DD.")
@click.option("--to-mongo", is_flag=True, help="Also write the flags to the anomaly_flags collection.")
@click.option("--limit", default=20, show_default=True, help="Flags to print (all go to the lake).")
@asset_batch_option
@no_sync_option
@config_option
@click.pass_context
def command(ctx: click.Context, org_id: str, day: str, asset_batch: int, to_mongo: bool, limit: int,
            no_sync: bool) -> None:
    """Flag one org's anomalies of a day and write them to the lake (anomalies/orgId=/date=).

    First syncs the org's new snapshots into the lake (one query; --no-sync skips it),
    then reads the day and its history from the lake only. Detectors see only that day
    and the history before it, so a day's flags do not change when later days arrive.
    The day's partition is replaced on re-run.

    \b
    Examples:
      perf-analytics anomalies --org org-01 --date 2026-01-06
      perf-analytics anomalies --org org-01 --date 2026-01-06 --to-mongo --limit 50
      perf-analytics anomalies --org org-01 --date 2026-01-06 --no-sync
    """
    # The data stack loads here, when the command runs, not for --help.
    from perf_analytics.pipeline import run_day

    when = day_option("--date", day)
    config = settings_of(ctx).anomaly_config()  # a mistake in it is told before any work
    if not no_sync:
        sync_org(ctx, org_id)
    with count_progress("flagging", "assets") as progress:
        result = run_day(settings_of(ctx).lake, org_id, when, rollups=False, config=config,
                         sink=db_of(ctx) if to_mongo else None, asset_batch=asset_batch, progress=progress)
    flags = result.flags
    click.echo(f"{org_id} {result.day}: {result.snapshots:,} snapshots, {flags.height} anomaly flags")
    for row in flags.sort(["start", "assetId"]).head(limit).iter_rows(named=True):
        click.echo(f"  {row['start']:%H:%M}  {row['severity']:<8} {row['assetId']}  {row['metric']}: {row['message']}")
    if flags.height > limit:
        click.echo(f"  ... {flags.height - limit} more in the lake")
    if result.skipped_count:
        click.echo(f"skipped {result.skipped_count} off-type snapshot(s); run `doctor --fix`", err=True)
