"""A request body into documents ready to insert, by the checks the archive loader makes.

A body of one plain snapshot (what an agent sends every minute: an object with an ISO 8601
timestamp and no `_id`) is left `Unchecked`, as one JSON line: the group committer checks
and encodes a whole batch of those as columns, by the loader's block path
(`ingest.batches.BlockEncoder`), and sends any line the columns do not vouch for through
`prepare_snapshots` (so its refusal reads the same). Any other body goes through
`prepare_snapshots` at once: each snapshot through `validate_snapshot` for the key's org,
`check_nesting` and `encode_document` (as `ingest` does, in that order), so what the
endpoint stores is what `ingest` would store. A body is all or nothing: one bad snapshot
in an array refuses the array, naming each bad one by index, field and reason, and
nothing of it is stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from bson import ObjectId
from bson.raw_bson import RawBSONDocument
from pymongo.collection import Collection

from perf_analytics.errors import ValidationError
from perf_analytics.schema import validate_snapshot
from perf_analytics.store import Doc, check_nesting, encode_document


@dataclass
class Refusal(Exception):
    """Why a request is refused: HTTP status, an error code, and what the client is told."""

    status: int
    error: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "message": self.message, **self.details}


@dataclass
class Prepared:
    """Validated documents of one request and their BSON, in body order."""

    docs: list[Doc]
    raws: list[RawBSONDocument]
    many: bool  # the body was an array


@dataclass
class Unchecked:
    """One snapshot body left to the committer's batch check: `line` is the body as one
    JSON line with the key's org (and the default timeWindow) written in, `payload` the
    body as parsed (for the per-record check of a line the columns do not vouch for)."""

    line: bytes
    payload: dict[str, Any]
    org_id: str


AGENT_TIME_WINDOW = "1min"
"""The `timeWindow` of an agent's snapshot that names none."""


def prepare_body(
    payload: Any, body: bytes, org_id: str, collection: Collection[Doc], *, max_items: int
) -> Prepared | Unchecked:
    """A parsed body (`payload`, from `body`) as an `Unchecked` line when it is one plain
    snapshot for `org_id`, else checked now by `prepare_snapshots` (which refuses it or
    returns its documents)."""
    if not (isinstance(payload, dict) and isinstance(payload.get("timestamp"), str) and "_id" not in payload):
        return prepare_snapshots(payload, org_id, collection, max_items=max_items)
    given = payload.get("orgId", org_id)
    if given != org_id:  # 403 or a null org: as prepare_snapshots says it
        return prepare_snapshots(payload, org_id, collection, max_items=max_items)
    text = body.strip()
    if not text.startswith(b"{"):  # a byte-order mark, say: the per-record path takes it
        return prepare_snapshots(payload, org_id, collection, max_items=max_items)
    extra = b""
    if "orgId" not in payload:
        extra += b'"orgId":' + orjson.dumps(org_id) + b","
    if "timeWindow" not in payload:
        extra += b'"timeWindow":"' + AGENT_TIME_WINDOW.encode() + b'",'
    # A valid JSON text holds line breaks only as whitespace (inside strings they are
    # escaped), so the body becomes one line by turning them into spaces. The object
    # has a key (timestamp), so the fields written in are followed by one.
    line = b"{" + extra + text[1:].replace(b"\n", b" ").replace(b"\r", b" ")
    return Unchecked(line, payload, org_id)


def parse_body(body: bytes) -> Any:
    """The body as JSON; a 400 naming where it broke when it is not JSON.

    orjson refuses NaN and Infinity (not JSON) and nesting deeper than 1,024 levels,
    so no recursive walk downstream meets either.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Refusal(400, "invalid_json", f"the body is not valid JSON: {exc}") from None


def prepare_snapshots(
    payload: Any, org_id: str, collection: Collection[Doc], *, max_items: int
) -> Prepared:
    """Check a parsed body (one snapshot or an array of them) for `org_id`.

    403 when a snapshot names another org; 413 for an array over `max_items`; 400 with
    every bad snapshot's index, field and reason otherwise.
    """
    many = isinstance(payload, list)
    items = payload if many else [payload]
    if not items:
        raise Refusal(400, "invalid_snapshot", "the array holds no snapshot")
    if len(items) > max_items:
        raise Refusal(413, "too_many_snapshots", f"{len(items):,} snapshots in one body; at most {max_items:,}")
    for item in items:
        if isinstance(item, dict) and item.get("orgId") not in (None, org_id):  # null: not given
            raise Refusal(403, "wrong_org", "a snapshot names another org than the API key's")
    docs: list[Doc] = []
    raws: list[RawBSONDocument] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            doc, raw = _prepare(item, org_id, collection)
        except ValidationError as exc:
            errors.append({"index": index, "field": exc.field, "reason": exc.reason})
            continue
        docs.append(doc)
        raws.append(raw)
    if errors:
        first = errors[0]
        details: dict[str, Any] = {"errors": errors}
        if not many:
            details.update(field=first["field"], reason=first["reason"])
        raise Refusal(400, "invalid_snapshot", f"{len(errors)} invalid snapshot(s); nothing was stored", details)
    return Prepared(docs, raws, many)


def _prepare(item: Any, org_id: str, collection: Collection[Doc]) -> tuple[Doc, RawBSONDocument]:
    if isinstance(item, dict) and "_id" in item:
        # An agent's id could be another tenant's snapshot's; the service assigns ids.
        raise ValidationError("_id", "is assigned by the service; send snapshots without one")
    if isinstance(item, dict) and "timeWindow" not in item:
        # The agents' body is {agentId, assetId, timestamp, performanceData}: an agent
        # reports about once a minute, so its snapshot covers one minute unless it says so.
        item = {**item, "timeWindow": AGENT_TIME_WINDOW}
    doc = validate_snapshot(item, org_id=org_id)
    check_nesting(doc)  # before BSON encoding, which recurses
    doc["_id"] = ObjectId()
    return doc, encode_document(doc, collection, nesting_checked=True)

