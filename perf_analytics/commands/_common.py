"""What the commands share: the settings object and a connected database."""

from __future__ import annotations

import click

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
