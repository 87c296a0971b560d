"""The `perf-analytics` command: global options, then one thin command per library call.

Each command lives in `perf_analytics/commands/<name>.py` and exposes `command`.
A PerfAnalyticsError becomes one `Error: ...` line on stderr and exit code 1.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from perf_analytics.config import load_settings
from perf_analytics.errors import PerfAnalyticsError

COMMANDS = (
    "localdb", "init", "ingest", "generate", "extract", "sync", "anomalies", "rollup", "query", "plot", "report",
    "retention", "migrate", "doctor", "nightly", "runs",
)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PerfAnalyticsError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--uri",
    envvar="MONGODB_URI",
    help="MongoDB URI. Prefer env MONGODB_URI or the TOML file: a command line, password "
    "included, shows in the process list. Unset: the embedded local server.",
)
@click.option("--db", "db_name", envvar="PERF_DB", help="Database name (env PERF_DB, default deskwise).")
@click.option("--lake", envvar="PERF_LAKE", help="Parquet lake root (env PERF_LAKE, default data/lake).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML settings file (env PERF_CONFIG).")
@click.version_option(package_name="perf-analytics")
@click.pass_context
def app(ctx: click.Context, uri: str | None, db_name: str | None, lake: str | None, config_file: str | None) -> None:
    """Load, check and analyse agent performance snapshots.

    \b
    Examples:
      perf-analytics init
      perf-analytics generate --orgs 2 --assets 5 --days 1 --out fleet.ndjson.zst
      perf-analytics ingest fleet.ndjson.zst --rejects rejects.ndjson
      perf-analytics doctor --fix
    """
    try:
        ctx.obj = load_settings(config_file=config_file, uri=uri, db=db_name, lake=lake)
    except PerfAnalyticsError as exc:
        click.echo(f"Error: {exc}", err=True)
        ctx.exit(exc.exit_code)


for _name in COMMANDS:
    app.add_command(importlib.import_module(f"perf_analytics.commands.{_name}").command)


def main() -> None:
    app(prog_name="perf-analytics")


if __name__ == "__main__":  # pragma: no cover
    main()
