"""`perf-analytics sync [--org ORG]`: mirror new snapshots into the lake (see perf_analytics.sync)."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from typing import TYPE_CHECKING

import click

from perf_analytics.commands._common import db_of, settings_of
from perf_analytics.commands._defaults import SYNC_CHUNK_ROWS, SYNC_SKEW
from perf_analytics.jsonable import json_default
from perf_analytics.progress import stage_progress

if TYPE_CHECKING:
    from perf_analytics.sync import SyncReport

_LISTED = 20  # unplaced documents listed by _id in the text report


def _counts(c: dict[str, int]) -> str:
    return f"{c.get('read', 0)} snapshots read, {c.get('part', 0)} parts written"


@click.command("sync")
@click.option("--org", "org_id", metavar="ORG", help="Mirror this org only. Default: every org (admin run).")
@click.option("--full", is_flag=True, help="Read every snapshot again, not only the new ones (still never twice in the lake).")
@click.option("--skew-minutes", type=click.FloatRange(min=0), default=SYNC_SKEW.total_seconds() / 60, show_default=True,
              help="Minutes re-read before the last run's start: the clock difference allowed between writers and the server.")
@click.option("--chunk-rows", type=click.IntRange(min=1), default=SYNC_CHUNK_ROWS, show_default=True,
              help="Snapshots held in memory between reading and writing (what bounds memory).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def command(ctx: click.Context, org_id: str | None, full: bool, skew_minutes: float, chunk_rows: int, as_json: bool) -> None:
    """Copy the snapshots the lake lacks into lake/snapshots/orgId=<org>/date=<D>/.

    One query to the server per run, for every org at once (or for --org): what was
    inserted since the last run (by _id time, minus the skew margin), documents whose _id
    is not an ObjectId, and the days loaders marked. Documents are kept exactly (raw BSON
    beside the typed columns), deduplicated by _id, each file written atomically and
    listed in a manifest. A killed run is resumed by the next.

    \b
    Examples:
      perf-analytics sync
      perf-analytics sync --org acme --json
      perf-analytics sync --full --skew-minutes 30
    """
    # The data stack loads here, when the command runs, not for --help.
    from perf_analytics.sync import sync_snapshots, sync_snapshots_all_orgs

    db = db_of(ctx)
    lake = settings_of(ctx).lake
    skew = timedelta(minutes=skew_minutes)
    with stage_progress("sync", _counts) as progress:
        if org_id is not None:
            report = sync_snapshots(db, lake, org_id=org_id, skew=skew, full=full, chunk_rows=chunk_rows, progress=progress)
        else:
            report = sync_snapshots_all_orgs(db, lake, skew=skew, full=full, chunk_rows=chunk_rows, progress=progress)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(report), indent=2, default=json_default))
    else:
        _print_text(report)



def _print_text(r: SyncReport) -> None:
    scope = "all orgs (admin run across tenants)" if r.scope == "all-orgs" else f"org {r.scope}"
    click.echo(
        f"{scope}: read {r.read}, new {r.new}, already in lake {r.already}, "
        f"partitions written {r.partitions}, {r.seconds:.1f} s"
    )
    if r.adopted or r.removed:
        click.echo(f"resumed an interrupted run: {r.adopted} part(s) verified and kept, {r.removed} removed")
    if r.unplaced_count:
        click.echo(f"{r.unplaced_count} snapshot(s) belong to no partition and were not mirrored:")
        for item in r.unplaced[:_LISTED]:
            click.echo(f"  {item.id}: {item.reason}")
        if r.unplaced_count > _LISTED:
            click.echo(f"  ... and {r.unplaced_count - _LISTED} more (up to 100 with --json)")
