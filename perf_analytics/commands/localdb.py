"""`perf-analytics localdb start|stop|status|install`."""

from __future__ import annotations

import click

from perf_analytics import localdb
from perf_analytics.commands._common import settings_of


@click.group("localdb")
def command() -> None:
    """Manage the embedded local server (mongod on PATH, else FerretDB).

    \b
    Examples:
      perf-analytics localdb start
      perf-analytics localdb status
      perf-analytics localdb stop
    """


@command.command("start")
@click.option("--port", type=int, help="Port on 127.0.0.1 (default: a free one).")
@click.pass_context
def start(ctx: click.Context, port: int | None) -> None:
    """Start the server, or report the one already running.

    \b
    Example:
      perf-analytics localdb start --port 27018
    """
    state = settings_of(ctx).state_dir
    server = localdb.start_server(state, port=port, settings=settings_of(ctx))
    click.echo(f"{server.kind} running on {server.uri} (pid {server.pid}, state in {server.state_dir})")


@command.command("stop")
@click.pass_context
def stop(ctx: click.Context) -> None:
    """Stop the server.

    \b
    Example:
      perf-analytics localdb stop
    """
    server = localdb.stop_server(settings_of(ctx).state_dir)
    click.echo(f"stopped {server.kind} (pid {server.pid})" if server else "no local server was running")


@command.command("status")
@click.pass_context
def status(ctx: click.Context) -> None:
    """Say whether the server runs, and where.

    \b
    Example:
      perf-analytics localdb status
    """
    state = settings_of(ctx).state_dir
    server = localdb.server_status(state)
    if server is None and (hung := localdb.recorded_server(state)) is not None:
        click.echo(f"{hung.kind} (pid {hung.pid}) runs but does not answer on 127.0.0.1:{hung.port}; "
                   "`perf-analytics localdb stop` stops it")
        ctx.exit(3)
    if server is None:
        kind, binary = localdb.find_server_binary(settings_of(ctx))
        where = binary or "not installed (run `perf-analytics localdb install`)"
        click.echo(f"not running; would start {kind}: {where}")
        ctx.exit(3)
    click.echo(f"{server.kind} running on {server.uri} (pid {server.pid})")


@command.command("install")
@click.option("--force", is_flag=True, help="Rebuild even if already installed.")
@click.pass_context
def install(ctx: click.Context, force: bool) -> None:
    """Build FerretDB into the cache directory (needs Go; done once).

    \b
    Example:
      perf-analytics localdb install
    """
    path = localdb.install_ferretdb(settings_of(ctx), force=force)
    click.echo(f"FerretDB {localdb.FERRETDB_VERSION} at {path}")
