"""From the series models' numbers to the agents' payloads, chunk by chunk, in time order.

Each time chunk holds a few thousand snapshots across the fleet (`CHUNK_SNAPSHOTS`), so
memory stays bounded whatever the span; within a chunk the payload dicts are built
lazily, one at a time, as the consumer asks for them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from perf_analytics.synth import streams
from perf_analytics.synth.assets import Asset
from perf_analytics.synth.events import AssetPlan
from perf_analytics.synth.plan import FleetPlan
from perf_analytics.synth.series import Chunk, Columns, Noise, samples
from perf_analytics.synth.spec import FleetSpec

CHUNK_SNAPSHOTS = 32_768  # snapshots per time chunk across the fleet (bounds memory)
MIN_CHUNK_STEPS = 8  # below this, per-asset numpy overhead would dominate

Build = Callable[[str, list[float], list[int]], dict[str, Any]]
_Rows = tuple[Build, list[bool], list[str], list[list[float]], list[list[int]]]


def _builder(a: Asset, window: str) -> Build:
    """A function turning one sample's row lists into the agents' payload dict."""
    org, agent, asset = a.org_id, a.agent_id, a.asset_id
    cols = Columns.of(a)
    mem = cols.memory
    disks = [(d.name, cols.disk(i), cols.disk_int(i)) for i, d in enumerate(a.disks)]
    ifaces = [(f.name, cols.interface(j)) for j, f in enumerate(a.interfaces)]

    def build(stamp: str, f: list[float], i: list[int]) -> dict[str, Any]:
        return {
            "orgId": org,
            "agentId": agent,
            "assetId": asset,
            "timestamp": stamp,
            "timeWindow": window,
            "performanceData": {
                "cpu": {"usage": f[0], "temperature": f[1], "frequency": i[0], "perCore": f[2:mem]},
                "memory": {
                    "usagePercent": f[mem],
                    "usedBytes": i[1],
                    "totalBytes": i[2],
                    "availableBytes": i[3],
                    "swapUsed": i[4],
                },
                "disk": [
                    {
                        "name": name,
                        "usagePercent": f[c],
                        "totalBytes": i[k],
                        "usedBytes": i[k + 1],
                        "freeBytes": i[k + 2],
                        "readBytesPerSec": f[c + 1],
                        "writeBytesPerSec": f[c + 2],
                        "readOpsPerSec": f[c + 3],
                        "writeOpsPerSec": f[c + 4],
                    }
                    for name, c, k in disks
                ],
                "network": {
                    "totalUsage": f[-1],
                    "interfaces": [
                        {
                            "name": name,
                            "bytesRecvPerSec": f[c],
                            "bytesSentPerSec": f[c + 1],
                            "packetsRecvPerSec": f[c + 2],
                            "packetsSentPerSec": f[c + 3],
                        }
                        for name, c in ifaces
                    ],
                },
                "system": {"uptime": i[-3], "processCount": i[-2], "threadCount": i[-1]},
            },
        }

    return build


def _rows(
    fleet: FleetPlan, a: Asset, plan: AssetPlan, rng: np.random.Generator, n0: int, n1: int
) -> tuple[list[bool], list[str], list[list[float]], list[list[int]]]:
    """One asset's samples for steps [n0, n1) as plain row lists (absent rows included).

    Plain lists, because building dicts from Python floats is faster than from numpy scalars.
    """
    chunk = Chunk.of(a, plan, fleet.spec.start_epoch, n0, n1)
    floats, ints = samples(chunk, Noise.draw(rng, a, n1 - n0))
    epoch = (fleet.spec.start_epoch + chunk.t.astype(np.int64)).astype("datetime64[s]")
    stamps = [s + "Z" for s in np.datetime_as_string(epoch, unit="s").tolist()]
    return chunk.present().tolist(), stamps, floats.tolist(), ints.tolist()


def _interleave(rows: list[_Rows], steps: int) -> Iterator[dict[str, Any]]:
    """Step by step, each present asset's payload, in the order of `rows`."""
    for s in range(steps):
        for build, present, stamps, floats, ints in rows:
            if present[s]:
                yield build(stamps[s], floats[s], ints[s])


def chunk_steps(fleet: FleetPlan) -> int:
    """Steps per time chunk: about `CHUNK_SNAPSHOTS` snapshots across the fleet."""
    spec = fleet.spec
    return max(MIN_CHUNK_STEPS, min(spec.steps, math.ceil(CHUNK_SNAPSHOTS / len(fleet.assets))))


def chunks(fleet: FleetPlan) -> Iterator[Iterator[dict[str, Any]]]:
    """Payloads per time chunk, ordered by timestamp across the fleet.

    Each chunk is a lazy iterator over its payloads: only the chunk's numbers are held
    in memory, never all of its dicts at once.
    """
    spec = fleet.spec
    size = chunk_steps(fleet)
    noise = [streams.stream(spec.seed, streams.NOISE, a.org_index, a.index) for a in fleet.assets]
    builders = [_builder(a, spec.window) for a in fleet.assets]
    for n0 in range(0, spec.steps, size):
        n1 = min(n0 + size, spec.steps)
        rows = [
            (builders[k], *_rows(fleet, fleet.assets[k], fleet.plans[k], noise[k], n0, n1)) for k in fleet.order
        ]
        yield _interleave(rows, n1 - n0)


def generate_fleet(spec: FleetSpec) -> Iterator[dict[str, Any]]:
    """Yield the payloads of the fleet `spec` describes, time-ordered across all assets.

    Each asset sends one snapshot every `spec.interval_s` seconds (at its own second
    within the interval) for `spec.days` days from `spec.start`, except during outages.
    The plan is made at the call, the payloads as they are asked for.
    """
    return _payloads(FleetPlan.of(spec))


def _payloads(fleet: FleetPlan) -> Iterator[dict[str, Any]]:
    """The chunks' payloads as one stream (apart, so `generate_fleet` checks its arguments at once)."""
    for docs in chunks(fleet):
        yield from docs
