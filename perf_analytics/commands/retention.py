"""`perf-analytics retention export|restore|status`: old snapshots out of the database, verified (see perf_analytics.retention)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import date
from itertools import groupby
from typing import TYPE_CHECKING, Any

import click

from perf_analytics.commands._common import day_option, db_of, settings_of
from perf_analytics.commands._defaults import RETENTION_OLDER_THAN_DAYS
from perf_analytics.errors import ConfigError
from perf_analytics.jsonable import json_default
from perf_analytics.progress import stage_progress

if TYPE_CHECKING:
    from perf_analytics.retention import DayStatus, ExportReport, RestoreReport

STATES = (
    ("database", "only in the database"),
    ("both", "in both"),
    ("lake", "only in the lake"),
    ("unverified", "unverified"),
)


def _export_counts(c: dict[str, int]) -> str:
    if "days" not in c:
        return f"syncing, {c.get('read', 0)} snapshots read"
    return f"{c.get('verified', 0)} of {c['days']} old days verified, {c.get('deleted', 0)} snapshots deleted"



def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=json_default))


@click.group("retention")
def command() -> None:
    """Delete old snapshots from the database once the lake verifiably holds them; bring them back.

    \b
    Examples:
      perf-analytics retention export --dry-run
      perf-analytics retention status
      perf-analytics retention restore --org acme --from 2026-01-01 --to 2026-01-31
    """


@command.command("export")
@click.option("--older-than-days", type=click.IntRange(min=1), default=RETENTION_OLDER_THAN_DAYS, show_default=True,
              help="Delete the UTC days that ended at least this many days ago.")
@click.option("--org", "org_id", metavar="ORG", help="This org only. Default: every org (admin run).")
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; write nothing (no sync, no delete).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def export(ctx: click.Context, older_than_days: int, org_id: str | None, dry_run: bool, as_json: bool) -> None:
    """Sync, then delete the old snapshots whose day the lake verifiably holds.

    For each UTC day older than the cutoff, the _ids the server holds are compared with
    the _ids of the lake's listed files (read and checked against their manifest hashes
    at delete time): only when every one is in the lake are exactly those _ids deleted.
    A day that does not verify stays in the database and is listed. A killed run is
    finished by the next; `retention restore` brings days back.

    \b
    Examples:
      perf-analytics retention export --dry-run
      perf-analytics retention export --org acme --older-than-days 90 --json
    """
    # The data stack loads here, when the command runs, not for --help.
    from perf_analytics.retention import export_snapshots, export_snapshots_all_orgs

    db = db_of(ctx)
    lake = settings_of(ctx).lake
    with stage_progress("retention export", _export_counts) as progress:
        if org_id is not None:
            report = export_snapshots(db, lake, org_id=org_id, older_than_days=older_than_days, dry_run=dry_run,
                                      progress=progress)
        else:
            report = export_snapshots_all_orgs(db, lake, older_than_days=older_than_days, dry_run=dry_run,
                                               progress=progress)
    if as_json:
        _echo_json({**dataclasses.asdict(report), "kept": len(report.kept)})
    else:
        _print_export(report)


def _print_export(r: ExportReport) -> None:
    # The data stack, already loaded by the export that ran.
    from perf_analytics.retention import NEEDS_SYNC

    scope = "all orgs (admin run across tenants)" if r.scope == "all-orgs" else f"org {r.scope}"
    cutoff = r.cutoff.date().isoformat()
    if r.dry_run:
        would = [d for d in r.days if d.outcome == "would delete"]
        waiting = [d for d in r.days if d.outcome == NEEDS_SYNC]
        click.echo(f"{scope}, days before {cutoff}, dry run: would delete {sum(d.database_rows for d in would)} "
                   f"snapshots of {len(would)} verified day(s); {len(waiting)} day(s) wait for the sync export runs "
                   f"first; {len(r.kept)} day(s) would be kept; nothing written")
    else:
        done = [d for d in r.days if d.outcome == "deleted"]
        synced = r.sync.new if r.sync is not None else 0
        click.echo(f"{scope}, days before {cutoff}: synced {synced} new; deleted {r.deleted} snapshots of "
                   f"{len(done)} verified day(s); {len(r.kept)} day(s) kept; {r.seconds:.1f} s")
        if r.finished:
            click.echo(f"finished {r.finished} day(s) an interrupted run had deleted")
    shown = [d for d in r.days if d.outcome != "deleted"]
    for (org, outcome, reason), group in groupby(shown, key=lambda d: (d.org_id, d.outcome, d.reason)):
        days = list(group)
        why = f": {reason}" if reason else ""
        click.echo(f"  {outcome} {org} {_ranges([d.date for d in days])} "
                   f"({sum(d.database_rows for d in days)} snapshots){why}")


@command.command("restore")
@click.option("--org", "org_id", metavar="ORG", required=True, help="The org whose snapshots come back (always one).")
@click.option("--from", "start", metavar="D", required=True, help="First UTC day (YYYY-MM-DD).")
@click.option("--to", "end", metavar="D", required=True, help="Last UTC day, included (YYYY-MM-DD).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def restore(ctx: click.Context, org_id: str, start: str, end: str, as_json: bool) -> None:
    """Write one org's snapshots of these days back into the database from the lake.

    The documents come back exactly (same _id, fields and types). Every file is checked,
    and every document must belong to --org, before anything is written; a snapshot
    already present is counted, not duplicated. The days are marked for the next sync.

    \b
    Examples:
      perf-analytics retention restore --org acme --from 2026-01-01 --to 2026-01-31
      perf-analytics retention restore --org acme --from 2026-01-05 --to 2026-01-05 --json
    """
    first, last = day_option("--from", start), day_option("--to", end)
    if first > last:
        raise ConfigError(f"--from {first} is after --to {last}")
    # The data stack loads here, when the command runs, not for --help.
    from perf_analytics.retention import restore_snapshots

    db = db_of(ctx)
    lake = settings_of(ctx).lake
    with stage_progress("retention restore", lambda c: f"{c.get('inserted', 0)} snapshots written back") as progress:
        report = restore_snapshots(db, lake, org_id=org_id, start=first, end=last, progress=progress)
    if as_json:
        _echo_json(dataclasses.asdict(report))
    else:
        _print_restore(report)


def _print_restore(r: RestoreReport) -> None:
    click.echo(f"org {r.org_id}, {r.start}..{r.end}: restored {r.inserted} snapshots, {r.already} already present, "
               f"{len(r.days)} day(s) marked for sync; {r.seconds:.1f} s")


@command.command("status")
@click.option("--org", "org_id", metavar="ORG", help="This org only. Default: every org (admin view).")
@click.option("--json", "as_json", is_flag=True, help="Print one object per (org, day) as JSON.")
@click.pass_context
def status(ctx: click.Context, org_id: str | None, as_json: bool) -> None:
    """List per org the days only in the database, in both, only in the lake, and unverified.

    "in both": the lake holds every snapshot the server has of the day. "only in the
    lake": a verified export deleted the day from the database. "unverified": the server
    holds snapshots the lake lacks (sync), or lost the day without a verified export.

    \b
    Examples:
      perf-analytics retention status
      perf-analytics retention status --org acme --json
    """
    # The data stack loads here, when the command runs, not for --help.
    from perf_analytics.retention import retention_status, retention_status_all_orgs

    db = db_of(ctx)
    lake = settings_of(ctx).lake
    days = retention_status(db, lake, org_id=org_id) if org_id is not None else retention_status_all_orgs(db, lake)
    if as_json:
        _echo_json([dataclasses.asdict(d) for d in days])
    else:
        _print_status(days)


def _print_status(days: Sequence[DayStatus]) -> None:
    if not days:
        click.echo("no snapshots in the database or the lake")
        return
    for org, org_days in groupby(days, key=lambda d: d.org_id):
        listed = list(org_days)
        click.echo(org)
        for state, label in STATES:
            these = [d for d in listed if d.state == state]
            if not these:
                continue
            db_rows, lake_rows = sum(d.database_rows for d in these), sum(d.lake_rows for d in these)
            click.echo(f"  {label:<21} {len(these):>4} day(s)  database {db_rows:>9}  lake {lake_rows:>9}  "
                       f"{_ranges([d.date for d in these])}")
            for d in these:
                if state == "unverified":
                    click.echo(f"    {d.date}: {d.note}")


def _ranges(days: Sequence[str]) -> str:
    """Sorted ISO days as runs of consecutive days: `2026-03-01..2026-03-03, 2026-03-05`."""
    runs: list[list[date]] = []
    for day in sorted(date.fromisoformat(d) for d in days):
        if runs and (day - runs[-1][-1]).days == 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    return ", ".join(r[0].isoformat() if len(r) == 1 else f"{r[0].isoformat()}..{r[-1].isoformat()}" for r in runs)
