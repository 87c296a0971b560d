"""`perf-analytics serve`: the agents' HTTP endpoint."""

from __future__ import annotations

import click

from perf_analytics.commands._common import settings_of


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Processes (each with its own group commit, key cache and rate buckets).")
@click.option("--max-body", default=1024 * 1024, show_default=True, type=click.IntRange(1),
              help="Largest request body in bytes (larger: 413).")
@click.option("--max-items", default=500, show_default=True, type=click.IntRange(1),
              help="Most snapshots in one body (more: 413).")
@click.option("--max-batch", default=1000, show_default=True, type=click.IntRange(1),
              help="Most snapshots in one insert.")
@click.option("--queue", "max_queue", default=20_000, show_default=True, type=click.IntRange(1),
              help="Most snapshots waiting for an insert (more: 503).")
@click.option("--rate", default=100.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Requests a second per API key and process (more: 429).")
@click.option("--burst", default=1000, show_default=True, type=click.IntRange(1),
              help="Requests a key may send at once above its rate.")
@click.option("--key-cache-seconds", default=30.0, show_default=True, type=click.FloatRange(0),
              help="How long a checked key is trusted without asking the database: a revoked key "
                   "works at most this long.")
@click.option("--last-seen-seconds", default=30.0, show_default=True, type=click.FloatRange(0),
              help="How often assets' lastSeen is moved (one update per asset per round).")
@click.option("--access-log", is_flag=True, help="Log one line per request (keys are never logged).")
@click.pass_context
def command(
    ctx: click.Context, host: str, port: int, workers: int, max_body: int, max_items: int, max_batch: int,
    max_queue: int, rate: float, burst: int, key_cache_seconds: float, last_seen_seconds: float,
    access_log: bool,
) -> None:
    """Serve the agents' endpoint: POST and GET /api/agent/performance with an API key.

    Agents POST one snapshot (or an array) with `Authorization: Bearer KEY`; it is stored
    for the key's org, checked as `ingest` checks records, and answered once the database
    has acknowledged it (concurrent requests share one insert). GET returns an asset's
    recent snapshots. /healthz and /metrics (Prometheus) need no key. Stop with Ctrl-C or
    SIGTERM: queued snapshots are stored first.

    \b
    Examples:
      perf-analytics keys create --org org-7
      perf-analytics serve --host 0.0.0.0 --port 8080 --workers 2
      curl -H "Authorization: Bearer $KEY" -d @snapshot.json http://127.0.0.1:8080/api/agent/performance
    """
    from perf_analytics import localdb
    from perf_analytics.service.app import ServiceOptions, run_service

    settings = settings_of(ctx)
    uri = settings.uri or localdb.start_server(settings.state_dir, settings=settings).uri
    options = ServiceOptions(
        max_body=max_body, max_items=max_items, max_batch=max_batch, max_queue=max_queue, rate=rate,
        burst=burst, key_cache_seconds=key_cache_seconds, last_seen_seconds=last_seen_seconds,
    )
    run_service(uri, settings.db, host=host, port=port, workers=workers, options=options, access_log=access_log)
