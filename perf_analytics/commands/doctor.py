"""`perf-analytics doctor`: check snapshots and assets, optionally repair (see perf_analytics.doctor)."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING

import click

from perf_analytics.commands._common import db_of
from perf_analytics.jsonable import json_default

if TYPE_CHECKING:
    from perf_analytics.doctor import Check, DoctorReport

_WIDTH = 34  # column of the check names


@click.command("doctor")
@click.option("--org", "orgs", multiple=True, metavar="ORG", help="Check this org (repeatable). Default: every org (admin run).")
@click.option("--fix", is_flag=True, help="Create missing indexes, repair off-type snapshots (and their _id), move lastSeen forward.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def command(ctx: click.Context, orgs: tuple[str, ...], fix: bool, as_json: bool) -> None:
    """Check indexes, snapshot types, ids, legacy documents, orphans and lastSeen.

    Off-type snapshots (an _id that is no ObjectId, a string timestamp, a metric stored
    as string or int, a count stored as string) are left out of extraction; --fix
    re-normalises them with the snapshot contract, gives each an ObjectId _id (another
    old _id is kept in `originalId`) and lists those it cannot repair. Ids outside the
    identifier rule (letters, digits and . _ : -) are reported, not renamed. Legacy
    snapshots in assets are moved by `migrate`, not here. Exit code 0 when healthy, 1
    when a problem remains, so a scheduler can alert on it.

    \b
    Examples:
      perf-analytics doctor
      perf-analytics doctor --org acme --fix
      perf-analytics doctor --json
    """
    # The data stack loads here, when the command runs, not for --help.
    from perf_analytics.doctor import diagnose, diagnose_all_orgs

    db = db_of(ctx)
    if orgs:
        reports = [diagnose(db, org, fix=fix) for org in dict.fromkeys(orgs)]
        indexes = reports[0].indexes
        healthy = all(r.healthy for r in reports)
    else:
        fleet = diagnose_all_orgs(db, fix=fix)
        reports, indexes, healthy = fleet.orgs, fleet.indexes, fleet.healthy
    if as_json:
        payload = {
            "scope": "orgs" if orgs else "all-orgs",
            "fix": fix,
            "healthy": healthy,
            "indexes": dataclasses.asdict(indexes),
            "orgs": [{**dataclasses.asdict(r), "healthy": r.healthy} for r in reports],
        }
        click.echo(json.dumps(payload, indent=2, default=json_default))
    else:
        _print_text(reports, indexes, all_orgs=not orgs, fix=fix)
    if not healthy:
        ctx.exit(1)



def _status(check: Check, *, fix: bool) -> str:
    if not check.found:
        return "ok"
    text = f"{check.found} found"
    if fix and check.fixable:
        text += f", {check.fixed} fixed"
    if check.examples and not check.kinds:  # with a breakdown, the examples are listed per kind
        text += f"  e.g. {', '.join(check.examples)}"
    if check.hint:
        text += f"  ({check.hint})"
    return text


def _line(indent: str, name: str, status: str) -> str:
    return f"{indent}{name:<{_WIDTH - len(indent)}}  {status}"


def _print_text(reports: list[DoctorReport], indexes: Check, *, all_orgs: bool, fix: bool) -> None:
    if all_orgs:
        names = ", ".join(r.org_id for r in reports[:10]) + (", ..." if len(reports) > 10 else "")
        click.echo(f"all orgs (admin run across tenants): {len(reports)} org(s){': ' + names if reports else ''}")
    click.echo(_line("", indexes.name, _status(indexes, fix=fix)))
    problems = int(indexes.remaining > 0)
    for report in reports:
        click.echo(f"org {report.org_id}")
        for check in report.checks[1:]:  # the index check is the collection's, printed once above
            click.echo(_line("  ", check.name, _status(check, fix=fix)))
            for kind in check.kinds:
                examples = f"  e.g. {', '.join(kind.examples)}" if kind.examples else ""
                click.echo(_line("    ", kind.label, f"{kind.count}{examples}"))
            problems += int(check.remaining > 0)
        for item in report.unrepairable:
            click.echo(f"    not repaired {item.id}: {item.reason}")
        unlisted = report.off_type.remaining - len(report.unrepairable)
        if fix and unlisted > 0:
            click.echo(f"    ... and {unlisted} more not repaired")
    if problems:
        click.echo(f"{problems} problem(s) remain")
    else:
        click.echo("healthy" + (" after repairs" if fix and _repaired(reports, indexes) else ""))


def _repaired(reports: list[DoctorReport], indexes: Check) -> bool:
    return bool(indexes.fixed) or any(check.fixed for r in reports for check in r.checks)
