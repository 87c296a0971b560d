"""`perf-analytics ingest PATH...`: bulk-load snapshot archives."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import click
import orjson

from perf_analytics.commands._common import db_of
from perf_analytics.commands._defaults import CHECKPOINT_DIR, INGEST_COMPRESSIONS, INGEST_FORMATS
from perf_analytics.errors import IncompleteLoad
from perf_analytics.progress import progress_bar

if TYPE_CHECKING:
    from perf_analytics.ingest import IngestSummary


@click.command("ingest")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--rejects", type=click.Path(dir_okay=False, path_type=Path),
              help="Write each rejected record, with its reason and position, to this NDJSON file.")
@click.option("--format", "fmt", type=click.Choice(INGEST_FORMATS), help="Archive format (default: detected).")
@click.option("--compression", type=click.Choice(INGEST_COMPRESSIONS), help="Compression (default: detected).")
@click.option("--org", "org_id",
              help="Load only this organisation's records; others are rejected. Default: every org (admin load).")
@click.option("--batch-size", default=2000, show_default=True, type=click.IntRange(min=1), help="Records per insert batch.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 16),
              help="Batches sent to the server at once.")
@click.option("--commit-seconds", default=10.0, show_default=True, type=click.FloatRange(0),
              help="How often lastSeen updates and the checkpoint are committed (0: every batch).")
@click.option("--checkpoint-dir", default=CHECKPOINT_DIR, show_default=True, type=click.Path(file_okay=False),
              help="Where interrupted loads keep their checkpoint.")
@click.option("--restart", is_flag=True, help="Ignore the checkpoint of an interrupted load and start over.")
@click.option("--allow-partial", is_flag=True,
              help="Accept archives that are damaged part-way (cut, corrupt): keep what was readable, "
                   "exit 0. Without it such a load prints its summary and fails.")
@click.option("--dry-run", is_flag=True,
              help="Read, check and encode the archives as a load would, and write nothing (no server needed): "
                   "prints the counts, the first rejects and the client's rate.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def command(
    ctx: click.Context,
    paths: tuple[Path, ...],
    rejects: Path | None,
    fmt: str | None,
    compression: str | None,
    org_id: str | None,
    batch_size: int,
    workers: int,
    commit_seconds: float,
    checkpoint_dir: str,
    restart: bool,
    allow_partial: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Load snapshot archives into performance_snapshots.

    Reads NDJSON, JSON arrays, mongoexport output (relaxed or canonical Extended JSON)
    and mongodump .bson files, each optionally gzip- or zstd-compressed. Records already
    stored are counted as duplicates, so loading twice adds nothing. Interrupted, the
    same command resumes after the last committed batch; a load of the same archives
    with other options (--org, --format, --compression, --rejects) or a changed archive
    starts from the beginning instead.

    An archive unreadable part-way (a cut download, a corrupt block) gives one reject at
    the byte where it broke; the summary is printed, then the command fails (exit 1)
    unless --allow-partial accepts what was readable.

    --dry-run checks the archives without a server: nothing is inserted and no
    checkpoint is kept (rejects still go to --rejects); duplicates are not known.

    \b
    Examples:
      perf-analytics ingest snapshots-2026-03.ndjson.zst --rejects rejects.ndjson
      perf-analytics ingest snapshots-2026-03.ndjson.zst --dry-run
      perf-analytics ingest dump/deskwise/performance_snapshots.bson.gz --json
      perf-analytics ingest export.json --org org-7 --format json
    """
    # The data stack loads here, when the command runs, not for --help.
    from rich.progress import BarColumn, DownloadColumn, TextColumn, TimeElapsedColumn

    from perf_analytics.ingest import (
        IngestSummary,
        LoadOptions,
        ingest_archives,
        ingest_archives_all_orgs,
        validate_archives,
    )

    options = LoadOptions(
        rejects=rejects, fmt=fmt, compression=compression, batch_size=batch_size, checkpoint_dir=checkpoint_dir,
        resume=not restart, workers=workers, commit_seconds=commit_seconds, allow_partial=allow_partial,
    )

    total = sum(p.stat().st_size for p in paths)
    with progress_bar(
        TextColumn("[bold]ingest"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[docs]:,} docs · {task.fields[rate]:,.0f} docs/s"),
        TimeElapsedColumn(),
        show=not as_json,
    ) as bar:
        task = bar.add_task("ingest", total=total, docs=0, rate=0.0)

        def progress(done_bytes: int, docs: int) -> None:
            elapsed = bar.tasks[0].elapsed or 1e-9
            bar.update(task, completed=done_bytes, docs=docs, rate=docs / elapsed)

        try:
            if dry_run:
                summary = validate_archives(paths, org_id, options=options, progress=progress)
            else:
                load = partial(ingest_archives, org_id=org_id) if org_id else ingest_archives_all_orgs
                summary = load(db_of(ctx), paths, options=options, progress=progress)
        except IncompleteLoad as exc:
            # How far the load got matters most when it fell short: summary first, then the error.
            if isinstance(exc.summary, IngestSummary):
                _print(exc.summary, as_json)
            raise
    _print(summary, as_json)


def _print(summary: IngestSummary, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(summary.as_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        click.echo(summary.describe())
        if summary.rejected and not summary.rejects_path:
            click.echo("rejected records were not kept: pass --rejects FILE to see them")

