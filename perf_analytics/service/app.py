"""The Starlette application behind `perf-analytics serve`, and how uvicorn runs it.

Routes: `POST /api/agent/performance` (one snapshot or an array, stored by group commit
for the API key's org), `GET /api/agent/performance` (an asset's recent snapshots, for
the key's org), `GET /healthz`, `GET /metrics`. Every refusal is JSON
`{"error": code, "message": ...}` with its status: 400 bad body, 401 missing or unknown
key, 403 another org, 413 body too large, 429 over the key's rate, 503 database down or
queue full. Keys and the database URI appear in no log line and no answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import orjson
from bson import ObjectId
from pymongo import MongoClient
from pymongo.errors import PyMongoError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from perf_analytics.config import load_settings
from perf_analytics.errors import ConfigError, ValidationError
from perf_analytics.schema import SNAPSHOTS, TIME_WINDOWS, check_id
from perf_analytics.service.commit import (
    DUPLICATE,
    INSERTED,
    REFUSED,
    DatabaseUnavailable,
    GroupCommitter,
    Outcome,
    QueueFull,
)
from perf_analytics.service.keys import ApiKey, KeyCache, verify_api_key
from perf_analytics.service.metrics import Metrics
from perf_analytics.service.payload import Refusal, parse_body, prepare_snapshots
from perf_analytics.store import KEY_INDEX, Db, Doc, get_asset_performance, require_key_index

log = logging.getLogger("perf_analytics.serve")

ROUTE = "/api/agent/performance"
OPTIONS_ENV = "PERF_SERVE_OPTIONS"
MAX_LIMIT = 1000  # snapshots one GET returns at most


@dataclass(frozen=True)
class ServiceOptions:
    """The service's bounds; `perf-analytics serve --help` explains each."""

    max_body: int = 1024 * 1024  # bytes
    max_items: int = 500  # snapshots in one body
    max_batch: int = 1000  # snapshots in one insert
    max_queue: int = 20_000  # snapshots waiting for a batch
    rate: float = 100.0  # requests a second per key, per process
    burst: int = 1000
    key_cache_seconds: float = 30.0
    key_cache_size: int = 10_000
    db_timeout_ms: int = 2000
    last_seen_seconds: float = 30.0  # at most one lastSeen round per interval


class RateLimiter:
    """A token bucket per key id: `rate` tokens a second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: int, size: int) -> None:
        self.rate = rate
        self.burst = burst
        self.size = size
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # id -> (tokens, at)

    def take(self, key_id: str) -> float:
        """0 when the request may go ahead, else seconds until a token is due."""
        now = time.monotonic()
        tokens, at = self._buckets.get(key_id, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key_id] = (tokens, now)
        self._buckets.move_to_end(key_id)
        while len(self._buckets) > self.size:
            self._buckets.popitem(last=False)
        return wait


def open_database(uri: str, db_name: str, timeout_ms: int) -> Db:
    """A client that does not wait for the server: the service starts, and says 503,
    while the database is away."""
    try:
        client: MongoClient[Doc] = MongoClient(
            uri, tz_aware=True, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms,
            socketTimeoutMS=max(30_000, timeout_ms),
        )
    except (PyMongoError, ValueError, TypeError):
        # pymongo's reason may quote the URI, which may hold a password.
        raise ConfigError("invalid MongoDB URI") from None
    return client[db_name]


class Service:
    """One process's state: database, group committer, key cache, rate limiter, metrics."""

    def __init__(self, db: Db, options: ServiceOptions) -> None:
        self.db = db
        self.options = options
        self.metrics = Metrics()
        self.committer = GroupCommitter(
            db, self.metrics, max_batch=options.max_batch, max_queue=options.max_queue,
            last_seen_seconds=options.last_seen_seconds,
        )
        self.keys = KeyCache(ttl=options.key_cache_seconds, size=options.key_cache_size)
        self.limiter = RateLimiter(options.rate, options.burst, options.key_cache_size)
        self._lookups: dict[bytes, asyncio.Future[ApiKey | None]] = {}

    async def authenticate(self, request: Request) -> ApiKey:
        """The key's record, from `Authorization: Bearer KEY` or `X-API-Key: KEY`.

        Concurrent requests with the same uncached key share one database lookup.
        """
        key = request.headers.get("x-api-key")
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if key is None and scheme.lower() == "bearer":
            key = value.strip()
        if not key:
            raise Refusal(401, "missing_key", "an API key is required (header Authorization: Bearer KEY, or X-API-Key)")
        fingerprint = KeyCache.fingerprint(key)
        found, verdict = self.keys.get(fingerprint)
        if not found:
            verdict = await self._lookup(fingerprint, key)
        if verdict is None:
            raise Refusal(401, "unknown_key", "the API key is not valid (unknown or revoked)")
        return verdict

    async def _lookup(self, fingerprint: bytes, key: str) -> ApiKey | None:
        pending = self._lookups.get(fingerprint)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[ApiKey | None] = asyncio.get_running_loop().create_future()
        self._lookups[fingerprint] = future
        try:
            verdict = await asyncio.to_thread(verify_api_key, self.db, key)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - handed to every request waiting on this lookup, then raised
            error = Refusal(503, "db_unavailable", "the database is unavailable; retry later") if isinstance(
                exc, PyMongoError
            ) else exc
            future.set_exception(error)
            future.exception()  # marked as seen: only the requests waiting on it re-raise it
            raise error from None
        else:
            self.keys.put(fingerprint, verdict)
            future.set_result(verdict)
            return verdict
        finally:
            self._lookups.pop(fingerprint, None)

    def limit(self, key: ApiKey) -> None:
        wait = self.limiter.take(key.id)
        if wait > 0:
            raise Refusal(429, "rate_limited", f"over {self.options.rate:g} requests a second for this key",
                          {"retry_after": round(wait, 3)})

    async def read_body(self, request: Request) -> bytes:
        """The body, refused with 413 as soon as it is over `max_body` bytes."""
        limit = self.options.max_body
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise Refusal(413, "too_large", f"the body is over {limit:,} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise Refusal(413, "too_large", f"the body is over {limit:,} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def post(self, request: Request) -> Response:
        key = await self.authenticate(request)
        self.limit(key)
        payload = parse_body(await self.read_body(request))
        prepared = prepare_snapshots(payload, key.org_id, self.db[SNAPSHOTS], max_items=self.options.max_items)
        try:
            outcomes = await self.committer.submit(prepared.docs, prepared.raws)
        except QueueFull:
            raise Refusal(503, "queue_full", "too many snapshots waiting; retry later") from None
        except DatabaseUnavailable:
            raise Refusal(503, "db_unavailable", "the database is unavailable; retry later") from None
        results = [_result(doc, outcome) for doc, outcome in zip(prepared.docs, outcomes, strict=True)]
        refused = [i for i, outcome in enumerate(outcomes) if outcome.status == REFUSED]
        if refused:
            first = outcomes[refused[0]]
            raise Refusal(400, "refused", f"{len(refused)} snapshot(s) refused by the database", {
                "reason": first.reason, "results": results,
            })
        if not prepared.many:
            return _json(200, results[0])
        return _json(200, {
            "inserted": sum(o.status == INSERTED for o in outcomes),
            "duplicates": sum(o.status == DUPLICATE for o in outcomes),
            "results": results,
        })

    async def get(self, request: Request) -> Response:
        key = await self.authenticate(request)
        self.limit(key)
        params = request.query_params
        if params.get("orgId", key.org_id) != key.org_id:
            raise Refusal(403, "wrong_org", "the API key belongs to another org")
        try:
            asset_id = check_id("assetId", params.get("assetId"))
        except ValidationError as exc:
            raise Refusal(400, "invalid_query", str(exc), {"field": exc.field, "reason": exc.reason}) from None
        window = params.get("timeWindow", "1hour")
        if window not in TIME_WINDOWS:
            raise Refusal(400, "invalid_query", f"timeWindow must be one of {', '.join(TIME_WINDOWS)}",
                          {"field": "timeWindow"})
        raw_limit = params.get("limit", "60")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
            raise Refusal(400, "invalid_query", f"limit must be a whole number from 1 to {MAX_LIMIT}",
                          {"field": "limit"})
        try:
            docs = await asyncio.to_thread(
                get_asset_performance, self.db, asset_id, key.org_id, window, int(raw_limit)
            )
        except PyMongoError:
            raise Refusal(503, "db_unavailable", "the database is unavailable; retry later") from None
        return _json(200, docs)

    async def health(self, request: Request) -> Response:
        try:
            problem = await asyncio.to_thread(self._health_problem)
        except PyMongoError:
            problem = "the database is unreachable"
        if problem:
            return _json(503, {"status": "unavailable", "reason": problem})
        return _json(200, {"status": "ok"})

    def _health_problem(self) -> str:
        self.db.client.admin.command("ping")
        names = {ix["name"] for ix in self.db[SNAPSHOTS].list_indexes()}
        if KEY_INDEX not in names:
            return f"index {KEY_INDEX} is missing (run `perf-analytics init`)"
        return ""

    async def metrics_text(self, request: Request) -> Response:
        return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4")


def _result(doc: Doc, outcome: Outcome) -> dict[str, Any]:
    if outcome.status == INSERTED:
        return {"id": str(doc["_id"]), "duplicate": False}
    if outcome.status == DUPLICATE:
        return {"id": None, "duplicate": True}
    return {"error": "refused", "reason": outcome.reason}


def _default(value: Any) -> str:
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, datetime):  # only naive ones reach here: orjson writes aware ones
        return value.isoformat()
    raise TypeError(type(value).__name__)


def _json(status: int, body: Any) -> Response:
    """JSON with dates as ISO 8601 UTC ("...Z") and ObjectIds as hex."""
    content = orjson.dumps(body, default=_default, option=orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC)
    return Response(content, status_code=status, media_type="application/json")


Handler = Callable[[Request], Awaitable[Response]]


def _counted(service: Service, route: str, handler: Handler) -> Handler:
    """The handler, with refusals turned into their JSON answers and every answer counted."""

    async def endpoint(request: Request) -> Response:
        try:
            response = await handler(request)
        except Refusal as refusal:
            service.metrics.rejects[refusal.error] += 1
            response = _json(refusal.status, refusal.body())
            if refusal.status == 429:
                response.headers["Retry-After"] = str(max(1, round(refusal.details.get("retry_after", 1))))
        service.metrics.requests[(request.method, route, response.status_code)] += 1
        return response

    return endpoint


def create_app(db: Db, options: ServiceOptions | None = None) -> Starlette:
    """The application for `db`; the group committer runs while the app does."""
    service = Service(db, options or ServiceOptions())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            # The unique key makes a retried snapshot a duplicate; create it now if the
            # server answers (else the first batch does).
            await asyncio.to_thread(require_key_index, db)
        except PyMongoError:
            log.warning("the database is unavailable at start; requests get 503 until it answers")
        service.committer.start()
        try:
            yield
        finally:
            await service.committer.stop()
            db.client.close()

    routes = [
        Route(ROUTE, _counted(service, ROUTE, service.post), methods=["POST"]),
        Route(ROUTE, _counted(service, ROUTE, service.get), methods=["GET"]),
        Route("/healthz", _counted(service, "/healthz", service.health), methods=["GET"]),
        Route("/metrics", _counted(service, "/metrics", service.metrics_text), methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def app_from_environment() -> Starlette:
    """uvicorn's factory in each worker process: settings from the environment (which
    `run_service` filled), options from PERF_SERVE_OPTIONS."""
    settings = load_settings()
    options = ServiceOptions(**json.loads(os.environ.get(OPTIONS_ENV, "{}")))
    if settings.uri is None:
        raise ConfigError("no database URI in the environment (MONGODB_URI)")
    return create_app(open_database(settings.uri, settings.db, options.db_timeout_ms), options)


def run_service(
    uri: str, db_name: str, *, host: str, port: int, workers: int, options: ServiceOptions, access_log: bool
) -> None:
    """Serve until stopped (SIGINT/SIGTERM: queued snapshots are committed first).

    The URI reaches the worker processes through their environment, never a command
    line (which `ps` shows to every user).
    """
    import uvicorn

    open_database(uri, db_name, options.db_timeout_ms).client.close()  # a malformed URI fails here, once
    os.environ["MONGODB_URI"] = uri
    os.environ["PERF_DB"] = db_name
    os.environ[OPTIONS_ENV] = json.dumps(asdict(options))
    uvicorn.run(
        "perf_analytics.service.app:app_from_environment", factory=True, host=host, port=port,
        workers=workers, access_log=access_log, log_level="info", lifespan="on",
    )
