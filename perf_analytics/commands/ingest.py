"""`perf-analytics ingest` (being built)."""

from __future__ import annotations

import click


@click.command("ingest")
def command() -> None:
    """Not available yet."""
    raise click.ClickException("ingest is not available yet")
