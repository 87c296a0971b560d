"""What the commands share: the settings object and a connected database."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

import click

from perf_analytics.commands._defaults import ASSET_BATCH
from perf_analytics.config import Settings, load_settings
from perf_analytics.days import parse_day
from perf_analytics.errors import ConfigError, InvalidArgument

if TYPE_CHECKING:
    from perf_analytics.store import Db


def settings_of(ctx: click.Context) -> Settings:
    obj = ctx.find_root().obj
    assert isinstance(obj, Settings)
    return obj


def db_of(ctx: click.Context) -> Db:
    """The configured database; its client is closed when the command ends."""
    # Imported here: pymongo is a tenth of a second that no --help needs.
    from perf_analytics.store import connect

    db = connect(settings_of(ctx))
    ctx.call_on_close(db.client.close)
    return db


asset_batch_option = click.option(
    "--asset-batch", type=click.IntRange(min=1), default=ASSET_BATCH, show_default=True,
    help="Assets read from the lake and flagged at a time with their history (that memory follows it).",
)

def _settings_from(ctx: click.Context, _param: click.Parameter, config_file: str | None) -> None:
    """Resolve the settings again from this command's --config file (the global flags still win)."""
    if config_file is None:
        return
    from perf_analytics.cli import FLAGS  # the entry point, loaded already

    root = ctx.find_root()
    root.obj = load_settings(config_file=config_file, **root.meta.get(FLAGS, {}))


config_option = click.option(
    "--config", type=click.Path(dir_okay=False), expose_value=False, callback=_settings_from,
    help="TOML settings file for this run, as the global --config (its [anomalies] table tunes the detectors).",
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


def day_option(flag: str, value: str) -> date:
    """The UTC day an option gives as YYYY-MM-DD; else the one-line error naming the option."""
    try:
        return parse_day(value)
    except InvalidArgument as exc:
        raise ConfigError(f"{flag}: {exc}") from None

