"""The `perf-analytics` command: global options, then one thin command per library call.

Each command lives in `perf_analytics/commands/<name>.py` and exposes `command`.
A PerfAnalyticsError becomes one `Error: ...` line on stderr and exit code 1.

Command modules are imported only when their command runs or shows its help: the data
stack (Polars, Arrow, DuckDB, Matplotlib) takes about a second to import, which `--help`
and `localdb status` should not pay.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from perf_analytics.config import load_settings
from perf_analytics.errors import PerfAnalyticsError

# ctx.meta key of the global --uri/--db/--lake values.
FLAGS = "perf_analytics.flags"

# Each command's short help, as `perf-analytics --help` lists it without importing the
# command's module; tests/test_cli.py checks every entry against the command itself.
SUMMARIES = {
    "localdb": "Manage the embedded local server (mongod on PATH, else FerretDB).",
    "init": "Create the indexes on performance_snapshots (idempotent).",
    "ingest": "Load snapshot archives into performance_snapshots.",
    "generate": "Write a synthetic fleet's snapshots, with labels of what is anomalous in them.",
    "extract": "Extract one org's snapshots of [--from, --to) into Parquet.",
    "sync": "Copy the snapshots the lake lacks into lake/snapshots/orgId=<org>/date=<D>/.",
    "anomalies": "Flag one org's anomalies of a day and write them to the lake (anomalies/orgId=/date=).",
    "rollup": "Roll one org's day up into the lake (rollups/window=/orgId=/date=).",
    "query": "Run one read-only SQL statement over one org's lake.",
    "plot": "Draw a day: one asset's metrics with its anomaly episodes, or the org's fleet.",
    "report": "Write one org's day as a single self-contained HTML page.",
    "retention": "Delete old snapshots from the database once the lake verifiably holds them; bring them back.",
    "migrate": "Move legacy snapshots that older code wrote into `assets` to performance_snapshots.",
    "doctor": "Check indexes, snapshot types, ids, legacy documents, orphans and lastSeen.",
    "nightly": "The scheduled run: sync, derive every new or stale day, retention, reports.",
    "runs": "List the nightly runs recorded in the lake (_manifests/runs/), newest first.",
    "serve": "Serve the agents' endpoint: POST and GET /api/agent/performance with an API key.",
    "keys": "Issue, list and revoke the API keys that agents send to `serve`.",
}


class _Group(click.Group):
    """The command group: imports a command's module on first use, turns errors into one line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUMMARIES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in SUMMARIES:
            return None
        command = importlib.import_module(f"perf_analytics.commands.{cmd_name}").command
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List the commands from SUMMARIES, shortened to the width as click shortens a command's help."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = [(name, click.Command(name, help=SUMMARIES[name]).get_short_help_str(limit)) for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

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
      perf-analytics generate --orgs 2 --assets 5 --days 1 --interval 300 --out fleet.ndjson.zst
      perf-analytics ingest fleet.ndjson.zst --rejects rejects.ndjson
      perf-analytics doctor --fix
    """
    # Kept for a command's own --config, which resolves the settings again with these flags.
    ctx.meta[FLAGS] = {"uri": uri, "db": db_name, "lake": lake}
    try:
        ctx.obj = load_settings(config_file=config_file, uri=uri, db=db_name, lake=lake)
    except PerfAnalyticsError as exc:
        click.echo(f"Error: {exc}", err=True)
        ctx.exit(exc.exit_code)


def main() -> None:
    app(prog_name="perf-analytics")


if __name__ == "__main__":  # pragma: no cover
    main()
