"""`perf-analytics rollup --org ORG --date D`: one org's day of rollups into the lake."""

from __future__ import annotations

from datetime import date

import click

from perf_analytics.commands._common import asset_batch_option, asset_progress, db_of, settings_of
from perf_analytics.errors import ConfigError
from perf_analytics.pipeline import run_day
from perf_analytics.rollups import WINDOWS


def parse_day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"--date: not a date (YYYY-MM-DD): {value!r}") from None


@click.command("rollup")
@click.option("--org", "org_id", required=True, help="The organisation.")
@click.option("--date", "day", required=True, help="The UTC day, YYYY-MM-DD.")
@click.option("--windows", default=",".join(WINDOWS), show_default=True,
              help="Comma-separated windows among " + ", ".join(WINDOWS) + ".")
@click.option("--to-mongo", is_flag=True, help="Also upsert into the performance_rollups collection.")
@asset_batch_option
@click.pass_context
def command(ctx: click.Context, org_id: str, day: str, asset_batch: int | None, windows: str, to_mongo: bool) -> None:
    """Roll one org's day up into the lake (rollups/window=/orgId=/date=).

    The day's partitions are replaced, so a re-run gives the same files. The number of
    anomaly flags per bucket comes from flagging the same day.

    \b
    Examples:
      perf-analytics rollup --org org-01 --date 2026-01-06
      perf-analytics rollup --org org-01 --date 2026-01-06 --windows 1hour,1day --to-mongo
    """
    chosen = [w.strip() for w in windows.split(",") if w.strip()]
    unknown = [w for w in chosen if w not in WINDOWS]
    if unknown or not chosen:
        raise ConfigError(f"--windows: unknown window {unknown[0] if unknown else '(none)'}; valid: {', '.join(WINDOWS)}")
    with asset_progress("rolling up") as progress:
        result = run_day(db_of(ctx), org_id, parse_day(day), lake=settings_of(ctx).lake, windows=chosen,
                         anomalies=True, to_mongo=to_mongo, asset_batch=asset_batch, progress=progress)
    rows = ", ".join(f"{w} {n:,}" for w, n in result.rollup_rows.items())
    click.echo(f"{org_id} {result.day}: {result.snapshots:,} snapshots -> asset rollup rows: {rows}; "
               f"{result.flags.height} anomaly flags; lake {settings_of(ctx).lake}")
    if result.skipped_count:
        click.echo(f"skipped {result.skipped_count} off-type snapshot(s); run `doctor --fix`", err=True)
