"""What the commands share: the settings object and a connected database."""

from __future__ import annotations

from datetime import date

import click

from perf_analytics.commands._defaults import ASSET_BATCH
from perf_analytics.config import Settings
from perf_analytics.store import Db, connect


def settings_of(ctx: click.Context) -> Settings:
    obj = ctx.find_root().obj
    assert isinstance(obj, Settings)
    return obj


def db_of(ctx: click.Context) -> Db:
    """The configured database; its client is closed when the command ends."""
    db = connect(settings_of(ctx))
    ctx.call_on_close(db.client.close)
    return db


asset_batch_option = click.option(
    "--asset-batch", type=click.IntRange(min=1), default=ASSET_BATCH, show_default=True,
    help="Assets read from the lake and flagged at a time with their history (that memory follows it).",
)

no_sync_option = click.option(
    "--no-sync", is_flag=True,
    help="Read the lake's snapshots as the last sync left them, without asking the server for new ones.",
)


def sync_org(ctx: click.Context, org_id: str) -> None:
    """Bring the org's snapshot mirror up to date (one query; see `perf-analytics sync`)."""
    from perf_analytics.sync import (
        sync_snapshots,  # the data stack, imported only when a command runs
    )

    report = sync_snapshots(db_of(ctx), settings_of(ctx).lake, org_id=org_id)
    click.echo(f"sync {org_id}: {report.new:,} new snapshot(s) into the lake", err=True)


def json_default(value: object) -> str:
    """orjson's `default` for the commands' `--json` output: dates as ISO 8601, else text
    (ObjectIds, paths)."""
    return value.isoformat() if isinstance(value, date) else str(value)
