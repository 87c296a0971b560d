"""`perf-analytics migrate`: move legacy snapshots out of `assets` (see perf_analytics.migrate)."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING

import click

from perf_analytics.commands._common import db_of
from perf_analytics.commands._defaults import MIGRATE_BATCH_SIZE
from perf_analytics.jsonable import json_default

if TYPE_CHECKING:
    from perf_analytics.migrate import MigrateReport

_LISTED = 20  # documents left in assets listed by name in the text report


@click.command("migrate")
@click.option("--org", "orgs", multiple=True, metavar="ORG", help="Migrate this org (repeatable). Default: every org (admin run).")
@click.option("--dry-run", is_flag=True, help="Report what would move; change nothing.")
@click.option("--batch-size", type=click.IntRange(min=1), default=MIGRATE_BATCH_SIZE, show_default=True, help="Documents per batch.")
@click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON.")
@click.pass_context
def command(ctx: click.Context, orgs: tuple[str, ...], dry_run: bool, batch_size: int, as_json: bool) -> None:
    """Move legacy snapshots that older code wrote into `assets` to performance_snapshots.

    Each document is normalised, inserted under its own _id, verified by its
    (orgId, assetId, timestamp) key, and only then deleted from assets; the asset's
    lastSeen moves forward. A re-run finishes what an interrupted run left and otherwise
    moves nothing. Documents that fail validation stay in assets and are listed.
    Exit code 1 when any legacy document is (or would be) left in assets.

    \b
    Examples:
      perf-analytics migrate --dry-run
      perf-analytics migrate --org acme
      perf-analytics migrate --org acme --org globex --json
    """
    # The data stack loads here, when the command runs, not for --help.
    from perf_analytics.migrate import migrate_all_orgs, migrate_legacy_snapshots

    db = db_of(ctx)
    if orgs:
        reports = [
            migrate_legacy_snapshots(db, org, dry_run=dry_run, batch_size=batch_size)
            for org in dict.fromkeys(orgs)
        ]
    else:
        reports = migrate_all_orgs(db, dry_run=dry_run, batch_size=batch_size)
    if as_json:
        payload = {
            "scope": "orgs" if orgs else "all-orgs",
            "dry_run": dry_run,
            "ok": all(r.ok for r in reports),
            "orgs": [dataclasses.asdict(r) for r in reports],
        }
        click.echo(json.dumps(payload, indent=2, default=json_default))
    else:
        _print_text(reports, all_orgs=not orgs, dry_run=dry_run)
    if not all(r.ok for r in reports):
        ctx.exit(1)



def _summary(moved: int, already: int, left: int, *, dry_run: bool) -> str:
    verb = "would move" if dry_run else "moved"
    noun = "legacy snapshot" if moved == 1 else "legacy snapshots"
    return (
        f"{verb} {moved} {noun} from assets to performance_snapshots "
        f"({already} already present, {left} left in assets)"
    )


def _print_text(reports: list[MigrateReport], *, all_orgs: bool, dry_run: bool) -> None:
    if all_orgs:
        click.echo(f"all orgs (admin run across tenants): {len(reports)} org(s) with legacy snapshots in assets")
    for r in reports:
        if r.created_indexes:
            click.echo(f"created index(es) {', '.join(r.created_indexes)} on performance_snapshots")
        click.echo(f"{r.org_id}: {_summary(r.moved, r.already_present, len(r.left), dry_run=dry_run)}")
        for item in r.left[:_LISTED]:
            click.echo(f"  left in assets: {item.id}: {item.reason}")
        if len(r.left) > _LISTED:
            click.echo(f"  ... and {len(r.left) - _LISTED} more left in assets (all of them with --json)")
        if r.unknown_assets:
            click.echo(f"  note: no asset in org {r.org_id} for assetId(s) {', '.join(r.unknown_assets)}; lastSeen not set")
    if all_orgs and len(reports) != 1:
        total = _summary(
            sum(r.moved for r in reports),
            sum(r.already_present for r in reports),
            sum(len(r.left) for r in reports),
            dry_run=dry_run,
        )
        click.echo(f"total: {total}")
