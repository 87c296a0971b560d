"""Which request bodies the endpoint leaves to the committer's batch check, and the line it
hands over: the body with the key's org and the default timeWindow written in."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from perf_analytics.schema import SNAPSHOTS
from perf_analytics.service.payload import (
    AGENT_TIME_WINDOW,
    Prepared,
    Refusal,
    Unchecked,
    prepare_body,
)
from perf_analytics.store import Db
from tests.factories import snapshot


def _agent_body(**overrides: Any) -> dict[str, Any]:
    body = snapshot(timestamp="2026-03-01T12:00:00Z")
    del body["orgId"], body["timeWindow"]
    body.update(overrides)
    return body


def test_a_plain_snapshot_becomes_one_line_with_the_keys_org_and_the_default_window(db: Db) -> None:
    body = _agent_body()
    text = b"\r\n  " + orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n"
    request = prepare_body(orjson.loads(text), text, "org-a", db[SNAPSHOTS], max_items=10)
    assert isinstance(request, Unchecked)
    assert b"\n" not in request.line and b"\r" not in request.line
    assert orjson.loads(request.line) == body | {"orgId": "org-a", "timeWindow": AGENT_TIME_WINDOW}
    assert (request.payload, request.org_id) == (body, "org-a")


def test_a_body_naming_its_own_org_and_window_is_handed_over_as_sent(db: Db) -> None:
    body = _agent_body(orgId="org-a", timeWindow="5min")
    text = orjson.dumps(body)
    request = prepare_body(body, text, "org-a", db[SNAPSHOTS], max_items=10)
    assert isinstance(request, Unchecked) and request.line == text


@pytest.mark.parametrize(
    "overrides",
    [{"timestamp": 1_772_366_400_000}, {"orgId": None}],
    ids=["epoch-ms-timestamp", "null-org"],
)
def test_any_other_body_is_checked_at_once(db: Db, overrides: dict[str, Any]) -> None:
    body = _agent_body(**overrides)
    request = prepare_body(body, orjson.dumps(body), "org-a", db[SNAPSHOTS], max_items=10)
    assert isinstance(request, Prepared) and request.docs[0]["orgId"] == "org-a"


@pytest.mark.parametrize(
    ("overrides", "status"),
    [({"orgId": "org-b"}, 403), ({"_id": "5f0000000000000000000001"}, 400)],
    ids=["another-org", "own-id"],
)
def test_a_body_refused_before_the_batch_is_refused_as_before(db: Db, overrides: dict[str, Any], status: int) -> None:
    body = _agent_body(**overrides)
    with pytest.raises(Refusal) as refused:
        prepare_body(body, orjson.dumps(body), "org-a", db[SNAPSHOTS], max_items=10)
    assert refused.value.status == status
