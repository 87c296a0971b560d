"""`perf-analytics migrate` (being built)."""

from __future__ import annotations

import click


@click.command("migrate")
def command() -> None:
    """Not available yet."""
    raise click.ClickException("migrate is not available yet")
