"""`perf-analytics generate` (being built)."""

from __future__ import annotations

import click


@click.command("generate")
def command() -> None:
    """Not available yet."""
    raise click.ClickException("generate is not available yet")
