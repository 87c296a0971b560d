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
    return connect(settings_of(ctx))
