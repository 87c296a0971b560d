"""`perf-analytics plot --org ORG --date D [--asset ID] --out FILE.png`: a picture of a day."""

from __future__ import annotations

from pathlib import Path

import click

from perf_analytics.commands._common import day_option, no_sync_option, settings_of, sync_org
from perf_analytics.commands._defaults import PLOT_SUFFIXES, WINDOWS
from perf_analytics.errors import ConfigError


@click.command("plot")
@click.option("--org", "org_id", required=True, help="The organisation.")
@click.option("--date", "day", required=True, help="The first UTC day, YYYY-MM-DD.")
@click.option("--days", default=1, show_default=True, type=click.IntRange(1, 31), help="How many days from --date.")
@click.option("--asset", "asset_id", help="Plot this asset's metrics (its snapshots in the lake) instead of the fleet.")
@click.option("--metric", default="cpu_usage_mean", show_default=True,
              help="Fleet view: the rollup column to colour by (e.g. memory_usage_percent_max, coverage).")
@click.option("--window", default="1hour", show_default=True, type=click.Choice(WINDOWS),
              help="Fleet view: the rollup window of the heatmap's cells.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Image file: .png, .svg or .pdf.")
@no_sync_option
@click.pass_context
def command(ctx: click.Context, org_id: str, day: str, days: int, asset_id: str | None, metric: str,
            window: str, out: str, no_sync: bool) -> None:
    """Draw a day: one asset's metrics with its anomaly episodes, or the org's fleet.

    With --asset, the org's new snapshots are first synced into the lake (--no-sync skips
    it), then the asset's snapshots and flags are read from the lake: CPU, memory, disks,
    network and processes over time, episodes shaded by severity, reboots dotted,
    silences left blank. Without it, the fleet heatmap comes
    from the lake's rollups (run `rollup` for the day first): one row per asset, flags
    as markers, availability on the right.

    \b
    Examples:
      perf-analytics plot --org org-01 --date 2026-01-06 --out fleet.png
      perf-analytics plot --org org-01 --date 2026-01-06 --metric memory_usage_percent_max --out memory.png
      perf-analytics plot --org org-01 --date 2026-01-05 --days 2 --asset 63d97a451d91d66a10abae42 --out asset.svg
    """
    # The data stack loads here, when the command runs, not for --help.
    from perf_analytics.plots import asset_figure, fleet_figure, save_figure

    if Path(out).suffix.lower() not in PLOT_SUFFIXES:
        raise ConfigError(f"--out: choose a .png, .svg or .pdf file name, not {out!r}")
    first = day_option("--date", day)
    lake = settings_of(ctx).lake
    if asset_id:
        if not no_sync:
            sync_org(ctx, org_id)
        fig = asset_figure(lake, org_id, asset_id, first, days=days)
    else:
        fig = fleet_figure(lake, org_id, first, days=days, metric=metric, window=window)
    click.echo(f"wrote {save_figure(fig, out)}")
