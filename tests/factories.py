"""Valid agent payloads to start tests from; each test changes only what it is about."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

_BASE: dict[str, Any] = {
    "orgId": "org-a",
    "agentId": "agent-1",
    "assetId": "asset-1",
    "timestamp": "2026-03-01T12:00:00Z",
    "timeWindow": "1min",
    "performanceData": {
        "cpu": {"usage": 37.5, "temperature": 55, "frequency": 2400, "perCore": [30, 45.0]},
        "memory": {
            "usagePercent": 50,
            "usedBytes": 4_000_000_000,
            "totalBytes": 8_000_000_000,
            "availableBytes": 4_000_000_000,
            "swapUsed": 0,
        },
        "disk": [
            {
                "name": "C:",
                "usagePercent": 40.0,
                "totalBytes": 500_000_000_000,
                "usedBytes": 200_000_000_000,
                "freeBytes": 300_000_000_000,
                "readBytesPerSec": 1000,
                "writeBytesPerSec": 2000,
                "readOpsPerSec": 10,
                "writeOpsPerSec": 20,
            }
        ],
        "network": {
            "totalUsage": 1500,
            "interfaces": [
                {
                    "name": "eth0",
                    "bytesRecvPerSec": 1000,
                    "bytesSentPerSec": 500,
                    "packetsRecvPerSec": 10,
                    "packetsSentPerSec": 5,
                }
            ],
        },
        "system": {"uptime": 3600, "processCount": 120, "threadCount": 1500},
    },
}


def snapshot(**overrides: Any) -> dict[str, Any]:
    """A valid payload; keyword arguments replace top-level fields."""
    doc = copy.deepcopy(_BASE)
    doc.update(overrides)
    return doc


def series(n: int, *, org: str = "org-a", asset: str = "asset-1", start: datetime = T0,
           step: timedelta = timedelta(minutes=1)) -> list[dict[str, Any]]:
    """n consecutive valid payloads of one asset."""
    return [snapshot(orgId=org, assetId=asset, timestamp=(start + i * step).isoformat()) for i in range(n)]


def set_path(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set a dotted path (list items as `disk.0.name`) in a copy of doc; value DELETE removes it."""
    out = copy.deepcopy(doc)
    node: Any = out
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    if value is DELETE:
        if isinstance(node, list):
            del node[int(last)]
        else:
            del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


DELETE = object()
