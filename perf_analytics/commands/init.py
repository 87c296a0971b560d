"""`perf-analytics init`: create the snapshot indexes."""

from __future__ import annotations

import click

from perf_analytics.commands._common import db_of

# A TTL index deletes by age alone, whether or not the lake holds the snapshots (README: Retention).
TTL_WARNING = (
    "warning: a TTL index deletes snapshots without an archive; "
    "`perf-analytics retention export` deletes only what the lake verifiably holds"
)


@click.command("init")
@click.option("--ttl-days", type=click.IntRange(min=1),
              help="Also expire snapshots older than N days (TTL index), where supported. Deletes without an archive: "
              "`retention export` is the safe default.")
@click.pass_context
def command(ctx: click.Context, ttl_days: int | None) -> None:
    """Create the indexes on performance_snapshots (idempotent).

    The (orgId, assetId, timestamp) index is unique: it makes every load idempotent.

    \b
    Examples:
      perf-analytics init
      perf-analytics --uri mongodb://127.0.0.1:27017 init --ttl-days 90
    """
    from perf_analytics.store import ensure_indexes, probe_capabilities

    db = db_of(ctx)
    try:
        caps = probe_capabilities(db)
        report = ensure_indexes(db, ttl_days=ttl_days)
    finally:
        db.client.close()  # an unclosed client warns (ResourceWarning) when collected
    for name in report.created:
        click.echo(f"created index {name}")
    for name in report.existing:
        click.echo(f"index {name} already present")
    for note in report.notes:
        click.echo(note)
    if ttl_days is not None:
        click.echo(TTL_WARNING, err=True)
    for missing in caps.missing():
        click.echo(f"note: {caps.server} lacks {missing}")
