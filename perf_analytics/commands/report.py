"""`perf-analytics report --org ORG --date D [--out FILE.html]`: the daily HTML report."""

from __future__ import annotations

import click

from perf_analytics.commands._common import day_option, settings_of
from perf_analytics.commands._defaults import REPORT_MOST, REPORT_TOP


@click.command("report")
@click.option("--org", "org_id", required=True, help="The organisation.")
@click.option("--date", "day", required=True, help="The UTC day, YYYY-MM-DD.")
@click.option("--out", "out", type=click.Path(dir_okay=False),
              help="The .html file to write. Default: reports/<org>/<date>.html beside the lake.")
@click.option("--top", default=REPORT_TOP, show_default=True, type=click.IntRange(min=1),
              help="Assets in each top list (CPU, memory).")
@click.option("--most", default=REPORT_MOST, show_default=True, type=click.IntRange(min=1),
              help="Asset sections (each with its plot) at most: the top lists first, then the worst flagged.")
@click.pass_context
def command(ctx: click.Context, org_id: str, day: str, out: str | None, top: int, most: int) -> None:
    """Write one org's day as a single self-contained HTML page.

    The page shows the fleet heatmap, availability and reboots, the top assets by CPU and
    memory, and the anomaly episodes in words, each linking to its asset's plot (the
    assets of the top lists, then the worst flagged, --most in all; one line names the
    flagged assets left out). Pictures are inline, so the file opens anywhere without a
    network. The day must be in the lake: run `rollup` for it first (which also flags its
    anomalies).

    \b
    Examples:
      perf-analytics rollup --org org-01 --date 2026-01-06
      perf-analytics report --org org-01 --date 2026-01-06 --out org-01-2026-01-06.html
    """
    # The data stack loads here, when the command runs, not for --help.
    from perf_analytics.report import write_report

    page = write_report(settings_of(ctx).lake, org_id, day_option("--date", day), out, top=top, most=most)
    click.echo(f"wrote {page}")
