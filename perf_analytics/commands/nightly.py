"""`perf-analytics nightly`: the scheduled run (see perf_analytics.nightly)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import click

from perf_analytics.commands._common import (
    asset_batch_option,
    config_option,
    day_option,
    db_of,
    settings_of,
)
from perf_analytics.commands._defaults import WINDOWS
from perf_analytics.errors import ConfigError
from perf_analytics.progress import progress_bar

if TYPE_CHECKING:
    from perf_analytics.config import Settings
    from perf_analytics.nightly import Listener, SinkAddress

_MAX_DAYS = 366  # a --from/--to span longer than this is more likely a typo than a backfill


def asked_dates(day: str | None, start: str | None, end: str | None) -> list[date] | None:
    """The days `--date` or `--from`/`--to` name (None: yesterday and every stale day)."""
    if day is not None and (start is not None or end is not None):
        raise ConfigError("give --date, or --from and --to, not both")
    if day is not None:
        return [day_option("--date", day)]
    if start is None and end is None:
        return None
    if start is None or end is None:
        raise ConfigError("--from and --to go together")
    first, last = day_option("--from", start), day_option("--to", end)
    if last < first:
        raise ConfigError(f"--to {last} is before --from {first}")
    if (last - first).days >= _MAX_DAYS:
        raise ConfigError(f"--from {first} --to {last} spans more than {_MAX_DAYS} days; run it in pieces")
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _json_lines(event: dict[str, Any]) -> None:
    """One JSON object per event on stderr, with its time."""
    line = {"ts": datetime.now(UTC).isoformat(timespec="milliseconds"), **event}
    sys.stderr.write(json.dumps(line, default=str) + "\n")
    sys.stderr.flush()


@contextmanager
def _text_progress() -> Iterator[Listener]:
    """On a terminal: a bar of (org, day)s done and a line per failure (elsewhere the
    summary and the final `Error:` line say it, and `runs` has every failure)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("days"),
               TimeElapsedColumn())
    with progress_bar(*columns) as bar:
        console = bar.console
        task = bar.add_task("nightly: sync", total=0)

        def listen(event: dict[str, Any]) -> None:
            if event["event"] == "plan":
                bar.update(task, total=(bar.tasks[0].total or 0) + len(event["days"]))
            elif event["event"] == "step":
                bar.update(task, description=f"nightly: {event['step']} {event.get('org') or ''} {event.get('day') or ''}")
                if event.get("day") and (event["step"] == "write" or event["status"] == "failed") and event["step"] != "report":
                    bar.advance(task)
                if event["status"] == "failed" and console.is_terminal:
                    console.print(f"failed: {event['error']}", markup=False, highlight=False)

        yield listen


@contextmanager
def _events(log_format: str) -> Iterator[Listener]:
    """Where the run's events go: JSON lines, or a progress bar for people."""
    if log_format == "json":
        yield _json_lines
        return
    with _text_progress() as listen:
        yield listen


def _sink_address(settings: Settings) -> SinkAddress:
    """Where workers connect for --to-mongo: MONGODB_URI, else the embedded server (which
    listens on this host's loopback only, so then the workers must run on this host)."""
    from perf_analytics.localdb import start_server
    from perf_analytics.nightly import SinkAddress

    uri = settings.uri if settings.uri is not None else start_server(settings.state_dir, settings=settings).uri
    return SinkAddress(str(uri), settings.db)


@click.command("nightly")
@click.option("--date", "day", help="Derive this UTC day (YYYY-MM-DD), whatever the record says.")
@click.option("--from", "start", help="First UTC day of a range (with --to).")
@click.option("--to", "end", help="Last UTC day of a range, included.")
@click.option("--org", "orgs", multiple=True, help="Only this org (repeatable). Default: every org.")
@click.option("--windows", default=",".join(WINDOWS), show_default=True,
              help="Comma-separated rollup windows among " + ", ".join(WINDOWS) + ".")
@click.option("--to-mongo", is_flag=True, help="Also write flags and rollups to anomaly_flags and performance_rollups.")
@click.option("--retain-days", type=click.IntRange(min=1),
              help="Then delete from the database the snapshots older than N days that the lake verifiably "
                   "holds (retention export). Default: no retention.")
@click.option("--no-report", is_flag=True, help="Do not write the days' HTML reports.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one JSON object per event on stderr (run id, org, day, step, status, rows, seconds).")
@click.option("--workers", type=click.IntRange(min=1),
              help="Derive the days and write the reports on a local Dask cluster of N worker processes.")
@click.option("--scheduler", metavar="ADDRESS",
              help="Send the same tasks to the existing Dask cluster whose scheduler is at ADDRESS "
                   "(tcp://host:8786); it and its workers need this perf_analytics, the workers the lake "
                   "at the same path.")
@asset_batch_option
@config_option
@click.pass_context
def command(ctx: click.Context, day: str | None, start: str | None, end: str | None, orgs: tuple[str, ...],
            windows: str, to_mongo: bool, retain_days: int | None, no_report: bool, log_format: str,
            workers: int | None, scheduler: str | None, asset_batch: int) -> None:
    """The scheduled run: sync, derive every new or stale day, retention, reports.

    One run syncs the server's new snapshots into the lake, then, for every (org, day)
    that is new or whose inputs changed since it was last derived (late snapshots, a
    bulk load into old days, a restore: found from the lake's manifests), flags
    anomalies, rolls up, computes availability and replaces the day's lake partitions
    (and the MongoDB sinks with --to-mongo); then retention (with --retain-days); then
    the reports of the run's days into reports/<org>/<date>.html beside the lake.
    Without --date it does yesterday (UTC) and everything stale. One failing org or day
    does not stop the others: the run ends with exit code 1 and the next run redoes only
    what failed. A second run while one holds the lake exits at once. Each run is
    recorded in the lake (see `perf-analytics runs`). With --workers or --scheduler the
    (org, day)s and the reports run on Dask workers; the sync, the record and retention
    stay in this process.

    \b
    Examples:
      perf-analytics nightly
      perf-analytics nightly --date 2026-01-06 --org org-01
      perf-analytics nightly --from 2026-01-01 --to 2026-01-06 --log-format json
      perf-analytics nightly --to-mongo --retain-days 30
      perf-analytics nightly --workers 2
      perf-analytics nightly --scheduler tcp://dask.internal:8786
    """
    # The data stack loads here, when the command runs, not for --help.
    from perf_analytics.errors import RunFailed
    from perf_analytics.nightly import Fanout, NightlyOptions, run_nightly

    dates = asked_dates(day, start, end)
    if workers is not None and scheduler is not None:
        raise ConfigError("give --workers N or --scheduler ADDRESS, not both")
    options = NightlyOptions(windows=tuple(w.strip() for w in windows.split(",") if w.strip()),
                             config=settings_of(ctx).anomaly_config(), asset_batch=asset_batch, to_mongo=to_mongo, retain_days=retain_days,
                             reports=not no_report)
    fanout = Fanout(workers=workers, scheduler=scheduler) if workers is not None or scheduler is not None else None
    db = db_of(ctx)
    sink_at = _sink_address(settings_of(ctx)) if fanout is not None and to_mongo else None
    with _events(log_format) as listen:
        result = run_nightly(db, settings_of(ctx).lake, orgs=list(orgs) or None, dates=dates,
                             options=options, listener=listen, fanout=fanout, sink_at=sink_at)
    click.echo(result.summary())
    if result.failed:
        first = result.failed[0]
        raise RunFailed(f"{len(result.failed)} step(s) failed, first: {first.error} "
                        f"(see `perf-analytics runs --last 1`; the next run redoes them)")
