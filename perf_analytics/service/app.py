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
import gc
import json
import logging
import os
import sys
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import orjson
from pymongo import MongoClient
from pymongo.errors import PyMongoError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from perf_analytics.config import load_settings
from perf_analytics.errors import ConfigError, ValidationError
from perf_analytics.jsonable import json_default
from perf_analytics.schema import SNAPSHOTS, TIME_WINDOWS, check_id
from perf_analytics.service.commit import (
    COLUMNS_FROM,
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
from perf_analytics.service.payload import Prepared, Refusal, parse_body, prepare_body
from perf_analytics.store import KEY_INDEX, Db, Doc, get_asset_performance, require_key_index

log = logging.getLogger("perf_analytics.serve")

ROUTE = "/api/agent/performance"
OPTIONS_ENV = "PERF_SERVE_OPTIONS"
MAX_LIMIT = 1000  # snapshots one GET returns at most
GIL_SWITCH_S = 0.001
"""How long the event loop may hold the interpreter before a waiting thread gets it
(Python's default is 0.005 s). The thread that sends a batch to the database needs it to
build the batch's message and to read the answer; under load the loop is rarely idle, and
each such wait leaves the database idle between batches."""

GC_THRESHOLDS = (50_000, 20, 100)
"""The cyclic collector's thresholds in a service process (Python's default: 700, 10, 10).

The service's objects are freed by reference counting as each request ends; the
collector only finds cycles. But a request's objects live until its batch is answered
(hundreds of milliseconds), so with the default every 700 allocations the collector
walked the thousands of objects of the requests in flight, for nothing: measured under
1,000 agents, about 2.8 s of every 25, with pauses of 60 to 170 ms (the oldest
generation) in which neither the loop nor the thread sending a batch could run, and the
database sat idle. With these thresholds a run of 25 s collects once or twice; cyclic
garbage waits for at most 50,000 more objects than were freed."""


def tune_interpreter() -> None:
    """The interpreter settings of a service process (`GIL_SWITCH_S`, `GC_THRESHOLDS`):
    what was loaded at start-up is frozen out of the collector's walks."""
    sys.setswitchinterval(GIL_SWITCH_S)
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


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
    columns_from: int = COLUMNS_FROM  # plain snapshots of an org in a batch checked as columns


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
        self.snapshots = db[SNAPSHOTS]  # made once: a Collection costs tens of µs to make
        self.options = options
        self.metrics = Metrics()
        self.committer = GroupCommitter(
            db, self.metrics, max_batch=options.max_batch, max_queue=options.max_queue,
            last_seen_seconds=options.last_seen_seconds, columns_from=options.columns_from,
        )
        self.keys = KeyCache(ttl=options.key_cache_seconds, size=options.key_cache_size)
        self.limiter = RateLimiter(options.rate, options.burst, options.key_cache_size)
        self._lookups: dict[bytes, asyncio.Future[ApiKey | None]] = {}

    async def authenticate(self, api_key: str | None, authorization: str) -> ApiKey:
        """The key's record, from the `X-API-Key` header or `Authorization: Bearer KEY`.

        Concurrent requests with the same uncached key share one database lookup.
        """
        key = api_key
        scheme, _, value = authorization.partition(" ")
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

    async def serve_post(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`POST /api/agent/performance` on the ASGI messages themselves.

        This is the route every agent calls about once a minute, so it skips the
        framework's request and response objects, routing and middleware (measured under
        wrk on a busy machine: 0.54 ms of the service's CPU per snapshot before, 0.43
        after): headers are read from the scope, the body from `receive`, the answer is
        two `send`s.
        """
        try:
            status, content = 200, await self._post(scope, receive)
            extra: list[tuple[bytes, bytes]] = []
        except Refusal as refusal:
            status, content, extra = self._refused(refusal)
        except _ClientGone:
            return
        self.metrics.requests[("POST", ROUTE, status)] += 1
        await send({
            "type": "http.response.start", "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode()),
                        *extra],
        })
        await send({"type": "http.response.body", "body": content})

    def _refused(self, refusal: Refusal) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """A refusal's status, JSON body and extra headers; counted by reason."""
        self.metrics.rejects[refusal.error] += 1
        extra = []
        if refusal.status == 429:
            extra.append((b"retry-after", str(_retry_after(refusal)).encode()))
        return refusal.status, _dumps(refusal.body()), extra

    async def _post(self, scope: Scope, receive: Receive) -> bytes:
        headers = _header_values(scope, (b"x-api-key", b"authorization", b"content-length"))
        key = await self.authenticate(headers[0], headers[1] or "")
        self.limit(key)
        body = await self._read_body(receive, headers[2] or "")
        prepared = prepare_body(parse_body(body), body, key.org_id, self.snapshots, max_items=self.options.max_items)
        try:
            outcomes = await self.committer.submit(prepared)
        except QueueFull:
            raise Refusal(503, "queue_full", "too many snapshots waiting; retry later") from None
        except DatabaseUnavailable:
            raise Refusal(503, "db_unavailable", "the database is unavailable; retry later") from None
        results = [_result(outcome) for outcome in outcomes]
        refused = [i for i, outcome in enumerate(outcomes) if outcome.status == REFUSED]
        if refused:
            first = outcomes[refused[0]]
            raise Refusal(400, "refused", f"{len(refused)} snapshot(s) refused by the database", {
                "reason": first.reason, "results": results,
            })
        if not isinstance(prepared, Prepared) or not prepared.many:
            return _dumps(results[0])
        return _dumps({
            "inserted": sum(o.status == INSERTED for o in outcomes),
            "duplicates": sum(o.status == DUPLICATE for o in outcomes),
            "results": results,
        })

    async def _read_body(self, receive: Receive, declared: str) -> bytes:
        """The body, refused with 413 as soon as it is over `max_body` bytes (also when
        sent chunked, without a Content-Length)."""
        limit = self.options.max_body
        if declared.isdigit() and int(declared) > limit:
            raise Refusal(413, "too_large", f"the body is over {limit:,} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect: nobody to answer
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise Refusal(413, "too_large", f"the body is over {limit:,} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def get(self, request: Request) -> Response:
        key = await self.authenticate(request.headers.get("x-api-key"), request.headers.get("authorization", ""))
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


def _result(outcome: Outcome) -> dict[str, Any]:
    if outcome.status == INSERTED:
        return {"id": str(outcome.id), "duplicate": False}
    if outcome.status == DUPLICATE:
        return {"id": None, "duplicate": True}
    return {"error": "refused", "reason": outcome.reason}


def _dumps(body: Any) -> bytes:
    """JSON with dates as ISO 8601 UTC ("...Z") and ObjectIds as hex."""
    return orjson.dumps(
        body, default=partial(json_default, strict=True), option=orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC
    )


def _json(status: int, body: Any) -> Response:
    return Response(_dumps(body), status_code=status, media_type="application/json")


def _retry_after(refusal: Refusal) -> int:
    """Whole seconds for a 429's Retry-After header (at least 1)."""
    return max(1, round(float(refusal.details.get("retry_after", 1))))


class _ClientGone(Exception):
    """The client closed the connection before its body arrived."""


def _header_values(scope: Scope, names: tuple[bytes, ...]) -> list[str | None]:
    """The first value of each header of `names` (lower case, as ASGI servers give them), or None."""
    values: list[str | None] = [None] * len(names)
    for name, value in scope["headers"]:
        if name in names:
            i = names.index(name)
            if values[i] is None:
                values[i] = value.decode("latin-1")
    return values


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
                response.headers["Retry-After"] = str(_retry_after(refusal))
        service.metrics.requests[(request.method, route, response.status_code)] += 1
        return response

    return endpoint


class ServiceApp:
    """The service's ASGI application: the agents' POST route on raw ASGI (`Service.serve_post`),
    everything else (the GET route, /healthz, /metrics, lifespan) through Starlette."""

    def __init__(self, service: Service, framework: Starlette) -> None:
        self.service = service
        self.framework = framework

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == ROUTE:
            await self.service.serve_post(scope, receive, send)
        else:
            await self.framework(scope, receive, send)


def create_app(db: Db, options: ServiceOptions | None = None) -> ServiceApp:
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
        Route(ROUTE, _counted(service, ROUTE, service.get), methods=["GET"]),
        Route("/healthz", _counted(service, "/healthz", service.health), methods=["GET"]),
        Route("/metrics", _counted(service, "/metrics", service.metrics_text), methods=["GET"]),
    ]
    return ServiceApp(service, Starlette(routes=routes, lifespan=lifespan))


def app_from_environment() -> ServiceApp:
    """uvicorn's factory in each worker process: settings from the environment (which
    `run_service` filled), options from PERF_SERVE_OPTIONS."""
    settings = load_settings()
    options = ServiceOptions(**json.loads(os.environ.get(OPTIONS_ENV, "{}")))
    if settings.uri is None:
        raise ConfigError("no database URI in the environment (MONGODB_URI)")
    app = create_app(open_database(settings.uri, settings.db, options.db_timeout_ms), options)
    tune_interpreter()  # a process of its own: the settings touch nothing else
    return app


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
