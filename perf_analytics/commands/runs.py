"""`perf-analytics runs [--last N] [--json]`: the nightly runs recorded in the lake."""

from __future__ import annotations

import json
from typing import Any

import click

from perf_analytics.commands._common import settings_of


def run_line(run: dict[str, Any]) -> str:
    """One line per run: id, status, what it was asked, orgs, days derived and failed, seconds."""
    asked = run.get("asked") or {}
    dates = asked.get("dates")
    when = (dates[0] if len(dates) == 1 else f"{dates[0]}..{dates[-1]}") if dates else f"stale+{asked.get('yesterday')}"
    orgs = run.get("orgs") or {}
    derived = sum(len(o.get("derived", [])) for o in orgs.values())
    failed = sum(1 for s in run.get("steps", []) if s.get("status") == "failed")
    return (f"{run.get('runId')}  {run.get('status', '?'):<11} {when:<23} {len(orgs)} org(s)  "
            f"{derived} derived  {failed} failed  {run.get('seconds', 0):.1f} s")


@click.command("runs")
@click.option("--last", type=click.IntRange(min=1), default=10, show_default=True, help="How many runs, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print the run manifests as a JSON array.")
@click.pass_context
def command(ctx: click.Context, last: int, as_json: bool) -> None:
    """List the nightly runs recorded in the lake (_manifests/runs/), newest first.

    Each shows its status (ok, failed, running, or interrupted: killed before it ended),
    the days it was asked for (or "stale+" yesterday), and counts; --json gives the whole
    manifests: settings, and per org and step the status, rows in and out, seconds, error.

    \b
    Examples:
      perf-analytics runs
      perf-analytics runs --last 1 --json
    """
    # The data stack loads here, when the command runs, not for --help.
    from perf_analytics.nightly import list_runs

    runs = list_runs(settings_of(ctx).lake, last=last)
    if as_json:
        click.echo(json.dumps(runs, indent=1))
        return
    if not runs:
        click.echo("no nightly run recorded in this lake yet")
    for run in runs:
        click.echo(run_line(run))
