"""`perf-analytics keys create|list|revoke`: the API keys agents send to `serve`."""

from __future__ import annotations

import click
import orjson

from perf_analytics.commands._common import db_of
from perf_analytics.jsonable import json_default


@click.group("keys")
def command() -> None:
    """Issue, list and revoke the API keys that agents send to `serve`.

    A key belongs to one org: the service stores what an agent sends under that org and
    shows it only that org's snapshots. A key is printed once, when created; only a
    salted hash of it is stored (collection api_keys).

    \b
    Examples:
      perf-analytics keys create --org org-7 --name windows-fleet
      perf-analytics keys list --org org-7
      perf-analytics keys revoke 3f9c0a1b2d4e5f60
    """


@command.command("create")
@click.option("--org", "org_id", required=True, help="The org the key writes and reads for.")
@click.option("--name", default="", help="A label to tell keys apart in `keys list`.")
@click.pass_context
def create(ctx: click.Context, org_id: str, name: str) -> None:
    """Create a key for an org and print it (once: it cannot be shown again).

    The key alone goes to stdout, so a script can capture it; its id (for `keys
    revoke`) goes to stderr.

    \b
    Example:
      KEY=$(perf-analytics keys create --org org-7 --name linux-fleet)
    """
    from perf_analytics.service.keys import create_api_key

    record, key = create_api_key(db_of(ctx), org_id, name=name)
    click.echo(key)
    click.echo(f"created key {record.id} for org {record.org_id}: store it now, it is not shown again", err=True)


@command.command("list")
@click.option("--org", "org_id", help="Only this org's keys (default: every org's).")
@click.option("--json", "as_json", is_flag=True, help="Print the keys as JSON.")
@click.pass_context
def list_(ctx: click.Context, org_id: str | None, as_json: bool) -> None:
    """List keys (id, org, name, created, revoked); never the keys themselves.

    \b
    Example:
      perf-analytics keys list --org org-7
    """
    from perf_analytics.service.keys import list_api_keys

    keys = list_api_keys(db_of(ctx), org_id)
    if as_json:
        rows = [{"id": k.id, "orgId": k.org_id, "name": k.name, "createdAt": k.created_at,
                 "revokedAt": k.revoked_at} for k in keys]
        click.echo(orjson.dumps(rows, default=json_default, option=orjson.OPT_INDENT_2).decode())
        return
    if not keys:
        click.echo("no API keys")
        return
    for k in keys:
        created = k.created_at.strftime("%Y-%m-%d %H:%M:%SZ") if k.created_at else "?"
        state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M:%SZ}" if k.revoked_at else "active"
        click.echo(f"{k.id}  {k.org_id}  {k.name or '-'}  created {created}  {state}")


@command.command("revoke")
@click.argument("key_id")
@click.pass_context
def revoke(ctx: click.Context, key_id: str) -> None:
    """Revoke a key by its id; running services refuse it within their key cache time.

    \b
    Example:
      perf-analytics keys revoke 3f9c0a1b2d4e5f60
    """
    from perf_analytics.service.keys import revoke_api_key

    record = revoke_api_key(db_of(ctx), key_id)
    assert record.revoked_at is not None
    click.echo(f"revoked key {record.id} of org {record.org_id} ({record.revoked_at:%Y-%m-%d %H:%M:%SZ})")
