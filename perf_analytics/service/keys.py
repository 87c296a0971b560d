"""API keys: one per agent fleet of an org, shown once, stored only as a salted hash.

A key reads `pak_<id>_<secret>`: `id` (16 hex digits) finds the stored record, `secret`
(32 random bytes, URL-safe base64) proves the holder. The collection `api_keys` keeps
`HMAC-SHA256(salt, secret)` with a random salt per key. The secret has 256 bits of
entropy, so a deliberately slow hash (scrypt, PBKDF2) would add no protection against
guessing; it would only let anyone who knows a key id make the service burn CPU on
every request. Hashes are compared with `hmac.compare_digest` (constant time).

The service keeps verified keys in a small bounded cache (`KeyCache`) so that a request
does not read `api_keys`; a revoked key stops working in every service process within
the cache's time to live.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bson import Binary
from pymongo import ASCENDING

from perf_analytics.errors import NotFound
from perf_analytics.schema import check_id
from perf_analytics.store import Db

API_KEYS = "api_keys"
SCHEME = "hmac-sha256"
PREFIX = "pak"
_KEY = re.compile(r"pak_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")


@dataclass(frozen=True)
class ApiKey:
    """What a key grants (never the key itself): its id, its org, its name."""

    id: str
    org_id: str
    name: str
    created_at: datetime | None = None
    revoked_at: datetime | None = None


def _digest(salt: bytes, secret: str) -> bytes:
    return hmac.new(salt, secret.encode(), hashlib.sha256).digest()


def create_api_key(db: Db, org_id: str, *, name: str = "") -> tuple[ApiKey, str]:
    """Issue a key for `org_id`; return its record and the key, which is not kept anywhere."""
    check_id("--org", org_id)
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    now = datetime.now(UTC)
    db[API_KEYS].create_index([("orgId", ASCENDING)], name="orgId_1")
    db[API_KEYS].insert_one(
        {
            "_id": key_id,
            "orgId": org_id,
            "name": name,
            "scheme": SCHEME,
            "salt": Binary(salt),
            "hash": Binary(_digest(salt, secret)),
            "createdAt": now,
            "revokedAt": None,
        }
    )
    return ApiKey(key_id, org_id, name, now), f"{PREFIX}_{key_id}_{secret}"


def list_api_keys(db: Db, org_id: str | None = None) -> list[ApiKey]:
    """The keys of `org_id` (every org's when None, an admin listing), oldest first."""
    query: dict[str, Any] = {} if org_id is None else {"orgId": check_id("--org", org_id)}
    cursor = db[API_KEYS].find(query, {"salt": 0, "hash": 0}).sort([("createdAt", ASCENDING), ("_id", ASCENDING)])
    return [_record(doc) for doc in cursor]


def revoke_api_key(db: Db, key_id: str) -> ApiKey:
    """Mark the key revoked (kept for the record); revoking twice keeps the first time."""
    # update_one then find_one: FerretDB 1.24 does not implement findAndModify's projection.
    db[API_KEYS].update_one({"_id": key_id, "revokedAt": None}, {"$set": {"revokedAt": datetime.now(UTC)}})
    doc = db[API_KEYS].find_one({"_id": key_id}, {"salt": 0, "hash": 0})
    if doc is None:
        raise NotFound(f"no API key with id {key_id!r} (see `perf-analytics keys list`)")
    return _record(doc)


def _record(doc: dict[str, Any]) -> ApiKey:
    return ApiKey(doc["_id"], doc["orgId"], doc.get("name", ""), doc.get("createdAt"), doc.get("revokedAt"))


def verify_api_key(db: Db, key: str) -> ApiKey | None:
    """The key's record if `key` is a live key (issued, not revoked), else None.

    A malformed key is refused before the database is asked.
    """
    match = _KEY.fullmatch(key)
    if match is None:
        return None
    key_id, secret = match.groups()
    doc = db[API_KEYS].find_one({"_id": key_id})
    if doc is None or doc.get("scheme") != SCHEME or doc.get("revokedAt") is not None:
        return None
    if not hmac.compare_digest(_digest(bytes(doc["salt"]), secret), bytes(doc["hash"])):
        return None
    return _record(doc)


class KeyCache:
    """Recent verdicts on presented keys, for `ttl` seconds, at most `size` of them.

    Entries are keyed by the SHA-256 of the presented key, so the cache holds no key.
    A live key is re-checked against `api_keys` once per `ttl` (which bounds how long a
    revoked key keeps working in a running service); an unknown key is remembered too,
    so a client retrying a wrong key does not reach the database on every request. A key
    cannot be refused by a stale entry once issued: a new key's secret has never been
    presented before. The oldest entry leaves first when the cache is full.
    """

    def __init__(self, *, ttl: float = 30.0, size: int = 10_000) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: OrderedDict[bytes, tuple[float, ApiKey | None]] = OrderedDict()

    @staticmethod
    def fingerprint(key: str) -> bytes:
        return hashlib.sha256(key.encode()).digest()

    def get(self, fingerprint: bytes) -> tuple[bool, ApiKey | None]:
        """(found, verdict): found False when there is no fresh entry."""
        entry = self._entries.get(fingerprint)
        if entry is None or entry[0] < time.monotonic():
            return False, None
        return True, entry[1]

    def put(self, fingerprint: bytes, verdict: ApiKey | None) -> None:
        self._entries[fingerprint] = (time.monotonic() + self.ttl, verdict)
        self._entries.move_to_end(fingerprint)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
