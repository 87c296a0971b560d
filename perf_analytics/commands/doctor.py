"""`perf-analytics doctor` (being built)."""

from __future__ import annotations

import click


@click.command("doctor")
def command() -> None:
    """Not available yet."""
    raise click.ClickException("doctor is not available yet")
