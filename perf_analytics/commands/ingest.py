"""`perf-analytics ingest PATH...`: bulk-load snapshot archives."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson
from rich.progress import BarColumn, DownloadColumn, TextColumn, TimeElapsedColumn

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
@click.option("--batch-size", default=2000, show_default=True, help="Records per insert batch.")
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
    from perf_analytics.ingest import (
        IngestSummary,
        ingest_archives,
        ingest_archives_all_orgs,
        validate_archives,
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

        options: dict[str, Any] = {
            "rejects": rejects, "fmt": fmt, "compression": compression, "batch_size": batch_size,
            "progress": progress, "allow_partial": allow_partial,
        }
        load_options: dict[str, Any] = {"workers": workers, "commit_seconds": commit_seconds, "checkpoint_dir": checkpoint_dir,
                        "resume": not restart}
        try:
            if dry_run:
                summary = validate_archives(paths, org_id, **options)
            elif org_id:
                summary = ingest_archives(db_of(ctx), paths, org_id, **options, **load_options)
            else:
                summary = ingest_archives_all_orgs(db_of(ctx), paths, **options, **load_options)
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
        click.echo(format_summary(summary))


def format_summary(s: IngestSummary) -> str:
    rate = s.read / s.seconds if s.seconds else 0.0
    if s.dry_run:
        cpu = f"{s.cpu_seconds / s.read * 1e6:,.1f} µs of client CPU a record" if s.read else "no records"
        lines = [
            f"dry run, nothing written: read {s.read:,} · valid {s.valid:,} · rejected {s.rejected:,} · "
            f"{s.seconds:.1f}s ({rate:,.0f} docs/s; {cpu})"
        ]
        lines += [f"rejected {r['position']}: {r['field'] or 'record'}: {r['reason']}" for r in s.first_rejects]
        if s.rejected > len(s.first_rejects):
            lines.append(f"... {s.rejected - len(s.first_rejects):,} more")
    else:
        lines = [
            f"read {s.read:,} · inserted {s.inserted:,} · duplicates {s.duplicates:,} · "
            f"rejected {s.rejected:,} · orphaned {s.orphaned:,} · {s.seconds:.1f}s ({rate:,.0f} docs/s)"
        ]
    if s.set_aside:
        lines.append(f"started from the beginning: the checkpoint found for these archives was of a load with other settings ({s.set_aside})")
    if s.resumed_from:
        lines.append(f"resumed an interrupted load after {s.resumed_from:,} committed records")
    for d in s.damaged:
        lines.append(
            f"damaged: {d['archive']} unreadable from {d['position']} of its content, after "
            f"{d['records_before']:,} records (file read to byte {d['file_bytes_read']:,} of {d['file_bytes']:,})"
        )
    if s.rejected and s.rejects_path:
        lines.append(f"rejected records and reasons: {s.rejects_path}")
    elif s.rejected:
        lines.append("rejected records were not kept: pass --rejects FILE to see them")
    if s.orphan_assets:
        shown = ", ".join(s.orphan_assets[:5]) + (" ..." if len(s.orphan_assets) > 5 else "")
        lines.append(f"{len(s.orphan_assets)} asset(s) not found in assets (snapshots kept): {shown}")
    return "\n".join(lines)
