"""A synthetic fleet: agent snapshots with realistic daily life and labelled anomalies.

Demos, tests and benchmarks need archives that look like what agents send, in any
size, reproducibly, together with the truth about what is unusual in them. This module
makes such a fleet from a handful of numbers and a seed:

- `generate_fleet` yields agent payloads (the shape `schema.validate_snapshot` accepts),
  time-ordered across the whole fleet;
- `fleet_labels` lists the events in that data (injected anomalies, plus the routine
  reboots and agent outages of a normal fleet), computed without generating the data;
- `fleet_assets` gives the `assets` documents whose `_id` are the payloads' `assetId`;
- `write_fleet` writes all three to files (NDJSON, gzip or zstd by extension), atomically.

Every series is a closed-form function of time plus noise drawn from a per-asset random
stream, so the data is generated chunk by chunk (a few thousand snapshots per asset at
most) in bounded memory, and the same arguments always give byte-identical files.

Labels: one dict per event, `{orgId, assetId, metric, kind, start, end, injected}`.
`start` and `end` are the timestamps of the first and last sample the event altered,
both inclusive (for an outage: the first and last *missing* sample), so a label spans
exactly the altered samples. `metric` is the field path under `performanceData`, with the
disk or interface name in brackets (`disk[C:].usagePercent`,
`network.interfaces[eth0].bytesRecvPerSec`); an outage, which removes whole snapshots,
has metric `"*"`. `injected` is false for routine reboots (night-time maintenance) and
short agent outages (agent updates), which happen even with `anomalies=False`. A reboot's
label covers the first sample after the boot and the warm-up that follows (busy CPU, fewer
processes); as on a real machine, uptime and memory stay reset after it.

`write_fleet` stores the labels as one JSON object: the generation arguments (`seed`,
`orgs`, `assetsPerOrg`, `days`, `intervalSeconds`, `timeWindow`, `start`, `end`,
`anomalies`), the number of `snapshots` written, and `labels`.
"""

from __future__ import annotations

import gc
import gzip
import hashlib
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import orjson
import zstandard
from bson import ObjectId, json_util

from perf_analytics.atomic import atomic_path, write_atomic
from perf_analytics.errors import ConfigError
from perf_analytics.schema import TIME_WINDOWS

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

DEFAULT_START = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday; fixed so output depends on the seed only

CPU_SATURATION = "cpu_saturation"
MEMORY_LEAK = "memory_leak"
DISK_FILL = "disk_fill"
FLATLINE = "flatline"
LEVEL_SHIFT = "level_shift"
OUTAGE = "outage"
REBOOT = "reboot"
NETWORK_BURST = "network_burst"
ANOMALY_KINDS = (
    CPU_SATURATION,
    MEMORY_LEAK,
    DISK_FILL,
    FLATLINE,
    LEVEL_SHIFT,
    OUTAGE,
    REBOOT,
    NETWORK_BURST,
)
OUTAGE_METRIC = "*"

ANOMALOUS_ASSET_SHARE = 0.35  # share of the fleet that receives injected anomalies
CHUNK_SNAPSHOTS = 32_768  # snapshots per time chunk across the fleet (bounds memory)
MIN_CHUNK_STEPS = 8  # below this, per-asset numpy overhead would dominate
WARMUP_S = 1800.0  # after a boot, CPU is busy and processes are still starting for 30 min
ZSTD_LEVEL = 1  # on these repetitive lines level 1 compresses as well as 3, twice as fast
GZIP_LEVEL = 1  # a quarter larger than level 6, but twice as fast to write
_GIB = 1024**3
_GB = 1000**3

# Stream tags keep the random streams of different purposes independent of each other.
_TAG_PROFILE, _TAG_ORG, _TAG_PLAN, _TAG_NOISE, _TAG_FLEET = 1, 2, 3, 4, 5

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class GenerateSummary:
    """What `write_fleet` wrote: counts, where, and how long it took."""

    snapshots: int
    assets: int
    labels: int
    path: Path
    seconds: float
    orgs: int = 0
    injected: int = 0
    labels_path: Path | None = None
    assets_path: Path | None = None


@dataclass(frozen=True)
class _Disk:
    name: str
    total: int
    fill0: float  # usage % at the start date
    fill_per_day: float  # % per day of slow growth
    io_bytes: float  # typical bytes/s at full activity
    io_size: float  # bytes per operation


@dataclass(frozen=True)
class _Interface:
    name: str
    recv_bytes: float  # typical bytes/s at full activity
    sent_ratio: float
    packet_size: float
    loopback: bool


@dataclass(frozen=True)
class _Asset:
    """Everything about one asset that does not depend on the time span."""

    org_index: int
    index: int
    org_id: str
    asset_id: str
    agent_id: str
    name: str
    hostname: str
    os_name: str
    server: bool
    created_at: datetime
    tz_hours: float
    day_shift_h: float  # this user's or service's day starts a little earlier or later
    weekend: float  # activity factor on Saturday and Sunday
    batch_job: bool  # a nightly batch job at 02:00 local
    cpu_base: float
    cpu_amp: float
    cpu_noise: float
    core_bias: FloatArray
    freq_base: float
    temp_base: float
    mem_total: int
    mem_base: float
    mem_growth: float  # % per day since boot
    mem_noise: float
    swap_total: int
    proc_base: float
    thread_ratio: float
    disks: tuple[_Disk, ...]
    interfaces: tuple[_Interface, ...]
    wander: FloatArray  # rows cpu, memory, network; columns (amplitude, omega, phase) x 3


@dataclass(frozen=True)
class _Event:
    kind: str
    metric: str
    start: int  # first altered step, inclusive
    end: int  # last altered step, inclusive
    injected: bool
    target: int = 0  # disk or interface index
    magnitude: float = 0.0


@dataclass
class _Plan:
    """The time-dependent fate of one asset: sample offset, boots and events."""

    offset_s: int
    boots: FloatArray  # boot moments in seconds since the fleet start, ascending
    events: list[_Event] = field(default_factory=list)


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
    return value


def _parse_start(start: datetime | date | str | None) -> datetime:
    if start is None:
        return DEFAULT_START
    if isinstance(start, str):
        text = start.strip()
        try:
            parsed: datetime | date = (
                date.fromisoformat(text)
                if len(text) == 10
                else datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            )
        except ValueError:
            raise ConfigError(f"start {start!r} is not a date (YYYY-MM-DD) or ISO-8601 time") from None
        start = parsed
    if not isinstance(start, datetime):
        start = datetime(start.year, start.month, start.day, tzinfo=UTC)
    moment = start if start.tzinfo else start.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(microsecond=0)


def time_window_for(interval_s: int) -> str:
    """The agents' `timeWindow` nearest to `interval_s` (by ratio: 180 s is "5min")."""
    return min(TIME_WINDOWS, key=lambda w: abs(math.log(interval_s / TIME_WINDOWS[w].total_seconds())))


def _digest(*parts: object, size: int) -> bytes:
    text = "/".join(str(p) for p in parts).encode()
    return hashlib.blake2b(text, digest_size=size, person=b"perf-fleet").digest()


def _org_id(org_index: int, orgs: int) -> str:
    return f"org-{org_index + 1:0{max(2, len(str(orgs)))}d}"


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(list(key)))


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _make_asset(seed: int, org_index: int, index: int, orgs: int, per_org: int) -> _Asset:
    """One asset's profile; it depends on (seed, org, index) only, never on the time span."""
    rng = _rng(seed, _TAG_PROFILE, org_index, index)
    org_rng = _rng(seed, _TAG_ORG, org_index)
    tz_hours = float(_pick(org_rng, (-8, -6, -5, -3, 0, 1, 2, 5.5, 8, 9, 10)))
    org_id = _org_id(org_index, orgs)
    number = f"{index + 1:0{max(3, len(str(per_org)))}d}"
    created = datetime(2023, 1, 1, tzinfo=UTC) + timedelta(
        seconds=int.from_bytes(_digest(seed, org_id, index, "created", size=4)) % (730 * 86400)
    )
    oid = int(created.timestamp()).to_bytes(4) + _digest(seed, org_id, index, "asset", size=8)
    asset_id = oid.hex()
    agent_id = "agent-" + _digest(seed, org_id, index, "agent", size=6).hex()

    server = bool(rng.random() < 0.35)
    windows = bool(rng.random() < (0.45 if server else 0.85))
    short = org_id.replace("-", "").upper()
    if windows and server:
        os_name = _pick(rng, ("Windows Server 2022", "Windows Server 2019"))
        hostname = f"{short}-SRV{number}"
        name = f"{_pick(rng, ('File', 'App', 'SQL', 'Print'))} server {number}"
    elif windows:
        os_name = _pick(rng, ("Windows 11 Pro", "Windows 10 Pro", "Windows 11 Enterprise"))
        hostname = f"{short}-WS{number}"
        name = f"Workstation {number}"
    else:
        os_name = _pick(rng, ("Ubuntu 22.04 LTS", "Ubuntu 24.04 LTS", "Red Hat Enterprise Linux 9", "Debian 12"))
        role = _pick(rng, ("web", "db", "app", "build") if server else ("dev", "lab"))
        hostname = f"{role}-{number}.{org_id}.internal"
        name = f"{role}-{number}"

    cores = int(_pick(rng, (4, 8, 16) if server else (2, 4, 8)))
    bias = rng.normal(0.0, 6.0, cores)
    core_bias = bias - bias.mean()  # per-core offsets average to zero, so mean(perCore) tracks usage

    if windows:
        system_disk = ("C:", _pick(rng, (128, 256, 512) if server else (256, 512, 1024)))
        data_disk = ("D:", _pick(rng, (1000, 2000, 4000) if server else (500, 1000, 2000)))
        disk_specs = [system_disk, data_disk]
    else:
        disk_specs = [("/", _pick(rng, (64, 128, 256))), ("/var", _pick(rng, (100, 250, 500)))]
        if server:
            disk_specs.append(("/data", _pick(rng, (1000, 2000, 4000))))
    disks = tuple(
        _Disk(
            name=disk_name,
            total=int(size * _GB * rng.uniform(0.93, 0.99)) // 4096 * 4096,
            fill0=float(rng.uniform(25.0, 72.0)),
            fill_per_day=float(rng.uniform(0.02, 0.35)),
            io_bytes=float(rng.uniform(2e5, 2e6) * (8.0 if server else 1.0)),
            io_size=float(rng.uniform(8192.0, 65536.0)),
        )
        for disk_name, size in disk_specs
    )

    if windows:
        names = ("Ethernet0", "Ethernet1") if server else ("Ethernet", "Wi-Fi")
    else:
        names = _pick(rng, (("eth0", "lo"), ("ens160", "ens192", "lo")))
    link = float(rng.uniform(2e6, 2e7) if server else rng.uniform(5e4, 6e5))
    interfaces = tuple(
        _Interface(
            name=iface,
            recv_bytes=link * (0.05 if iface == "lo" else (1.0 if i == 0 else 0.15)),
            sent_ratio=float(rng.uniform(0.2, 1.2 if server else 0.5)),
            packet_size=float(rng.uniform(500.0, 1300.0)),
            loopback=iface == "lo",
        )
        for i, iface in enumerate(names)
    )

    periods_h = np.array([[rng.uniform(0.6, 3.0), rng.uniform(5.0, 13.0), rng.uniform(36.0, 96.0)] for _ in range(3)])
    amps = np.array([rng.uniform(1.0, 4.0, 3), rng.uniform(0.5, 1.5, 3), rng.uniform(0.05, 0.2, 3)])
    wander = np.concatenate([amps, 2 * np.pi / (periods_h * 3600.0), rng.uniform(0, 2 * np.pi, (3, 3))], axis=1)

    mem_total = int(_pick(rng, (16, 32, 64, 128) if server else (8, 16, 32))) * _GIB
    return _Asset(
        org_index=org_index,
        index=index,
        org_id=org_id,
        asset_id=asset_id,
        agent_id=agent_id,
        name=name,
        hostname=hostname,
        os_name=os_name,
        server=server,
        created_at=created,
        tz_hours=tz_hours,
        day_shift_h=float(rng.uniform(-1.5, 1.5)),
        weekend=float(rng.uniform(0.35, 0.7) if server else rng.uniform(0.02, 0.15)),
        batch_job=server and bool(rng.random() < 0.6),
        cpu_base=float(rng.uniform(5.0, 18.0) if server else rng.uniform(2.0, 8.0)),
        cpu_amp=float(rng.uniform(15.0, 40.0) if server else rng.uniform(20.0, 45.0)),
        cpu_noise=float(rng.uniform(1.5, 4.0)),
        core_bias=core_bias,
        freq_base=float(_pick(rng, (2100.0, 2400.0, 2900.0, 3200.0, 3600.0))),
        temp_base=float(rng.uniform(32.0, 45.0)),
        mem_total=mem_total,
        mem_base=float(rng.uniform(40.0, 60.0) if server else rng.uniform(35.0, 55.0)),
        mem_growth=float(rng.uniform(0.2, 1.0) if server else rng.uniform(0.5, 2.0)),
        mem_noise=float(rng.uniform(0.4, 1.2)),
        swap_total=int(_pick(rng, (2, 4, 8))) * _GIB,
        proc_base=float(rng.uniform(90.0, 260.0)),
        thread_ratio=float(rng.uniform(8.0, 15.0)),
        disks=disks,
        interfaces=interfaces,
        wander=wander,
    )


def _wander(params: FloatArray, t: FloatArray) -> FloatArray:
    """Slow, smooth variation: three sinusoids with incommensurate periods per asset."""
    amp, omega, phase = params[0:3], params[3:6], params[6:9]
    out: FloatArray = np.sin(np.outer(t, omega) + phase) @ amp
    return out


def _bump(hour: FloatArray, first: float, last: float) -> FloatArray:
    x = (hour - first) / (last - first)
    out: FloatArray = np.where((x > 0) & (x < 1), np.sin(np.pi * np.clip(x, 0, 1)) ** 2, 0.0)
    return out


class _Fleet:
    """Profiles and plans of a whole fleet, and the chunked generation of its snapshots."""

    def __init__(
        self,
        *,
        orgs: int,
        assets: int,
        days: int,
        interval_s: int,
        seed: int,
        start: datetime | date | str | None,
        anomalies: bool,
    ) -> None:
        self.orgs = _check_count("orgs", orgs)
        self.per_org = _check_count("assets", assets)
        self.days = _check_count("days", days)
        self.interval = _check_count("interval_s", interval_s)
        if self.interval > 86400:
            raise ConfigError(f"interval_s must be at most 86400 (one day), got {interval_s}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed must be a whole number >= 0, got {seed!r}")
        self.seed = seed
        self.start = _parse_start(start)
        self.start_epoch = int(self.start.timestamp())
        self.anomalies = anomalies
        self.window = time_window_for(self.interval)
        self.steps = self.days * 86400 // self.interval
        self.assets = [
            _make_asset(seed, o, i, self.orgs, self.per_org) for o in range(self.orgs) for i in range(self.per_org)
        ]
        self.plans = [self._base_plan(a) for a in self.assets]
        if anomalies:
            self._inject()
        for a, plan in zip(self.assets, self.plans, strict=True):
            self._routine(a, plan)
            plan.events.sort(key=lambda e: e.start)
            reboot_boots = [
                self._step_time(plan, e.start) - e.magnitude for e in plan.events if e.kind == REBOOT
            ]
            plan.boots = np.sort(np.concatenate([plan.boots, np.array(reboot_boots, dtype=np.float64)]))
        # Order within a time step: by sample offset, so the whole file is time-ordered.
        self.order = sorted(range(len(self.assets)), key=lambda k: (self.plans[k].offset_s, k))

    # ---- planning -------------------------------------------------------------------

    def _step_time(self, plan: _Plan, step: int) -> float:
        return float(step * self.interval + plan.offset_s)

    def _base_plan(self, a: _Asset) -> _Plan:
        rng = _rng(self.seed, _TAG_PLAN, a.org_index, a.index, self.interval, self.days)
        offset = int(rng.integers(min(self.interval, 60)))
        first_boot = -float(rng.uniform(1.0, 25.0)) * 86400.0
        return _Plan(offset_s=offset, boots=np.array([first_boot]))

    def _steps_for(self, seconds: float) -> int:
        return max(1, round(seconds / self.interval))

    def _reboot_length(self, uptime_s: float) -> int:
        """Samples a reboot alters: the first one after boot through the end of warm-up."""
        return max(1, math.ceil((WARMUP_S - uptime_s) / self.interval))

    def _fits(self, plan: _Plan, start: int, end: int) -> bool:
        """Inside the span (step 0 stays normal, as a reference) and clear of other events."""
        if start < 1 or end > self.steps - 1:
            return False
        margin = max(1, math.ceil(1800 / self.interval))
        return all(end + margin < e.start or start > e.end + margin for e in plan.events)

    def _place(self, rng: np.random.Generator, plan: _Plan, length: int) -> int | None:
        if length > self.steps - 1:
            return None
        for _ in range(20):
            start = int(rng.integers(1, self.steps - length + 1))
            if self._fits(plan, start, start + length - 1):
                return start
        return None

    def _reboot_uptime(self, rng: np.random.Generator) -> float:
        """Seconds between the boot and the first sample after it (less than one interval)."""
        return float(rng.integers(min(15, self.interval - 1), min(self.interval, 240)))

    def _inject(self) -> None:
        """Spread injected anomalies over a share of the fleet, cycling through every kind."""
        rng = _rng(self.seed, _TAG_FLEET, self.orgs, self.per_org, self.days, self.interval)
        total = len(self.assets)
        chosen = sorted(rng.permutation(total)[: max(1, round(total * ANOMALOUS_ASSET_SHARE))].tolist())
        kinds: list[str] = []
        for k in chosen:
            a, plan = self.assets[k], self.plans[k]
            count = 1 + int(rng.poisson(0.6 * self.days))
            for _ in range(count):
                if not kinds:
                    kinds = [ANOMALY_KINDS[i] for i in rng.permutation(len(ANOMALY_KINDS))]
                event = self._anomaly(rng, a, plan, kinds.pop())
                if event is not None:
                    plan.events.append(event)

    def _anomaly(self, rng: np.random.Generator, a: _Asset, plan: _Plan, kind: str) -> _Event | None:
        minutes = {
            CPU_SATURATION: (5, 60),
            MEMORY_LEAK: (120, 600),
            DISK_FILL: (60, 360),
            FLATLINE: (120, 480),
            LEVEL_SHIFT: (180, 1440),
            OUTAGE: (15, 240),
            NETWORK_BURST: (5, 45),
        }
        if kind == REBOOT:
            uptime = self._reboot_uptime(rng)
            length = self._reboot_length(uptime)
        else:
            low, high = minutes[kind]
            length = self._steps_for(float(rng.uniform(low, high)) * 60.0)
            if kind == FLATLINE:
                length = max(length, 3)  # a value repeated once is no flatline, even at long intervals
        start = self._place(rng, plan, length)
        if start is None:
            return None
        end = start + length - 1
        if kind == REBOOT:
            return _Event(REBOOT, "system.uptime", start, end, True, magnitude=uptime)
        if kind == CPU_SATURATION:
            return _Event(kind, "cpu.usage", start, end, True)
        if kind == MEMORY_LEAK:
            return _Event(kind, "memory.usagePercent", start, end, True, magnitude=float(rng.uniform(92.0, 97.5)))
        if kind == DISK_FILL:
            d = int(rng.integers(len(a.disks)))
            metric = f"disk[{a.disks[d].name}].usagePercent"
            return _Event(kind, metric, start, end, True, target=d, magnitude=float(rng.uniform(97.0, 99.8)))
        if kind in (FLATLINE, LEVEL_SHIFT):
            on_cpu = bool(rng.random() < 0.5)
            metric = "cpu.usage" if on_cpu else "memory.usagePercent"
            shift = float(rng.uniform(15.0, 30.0) if on_cpu else rng.uniform(12.0, 22.0))
            return _Event(kind, metric, start, end, True, magnitude=shift if kind == LEVEL_SHIFT else 0.0)
        if kind == OUTAGE:
            return _Event(OUTAGE, OUTAGE_METRIC, start, end, True)
        j = int(rng.integers(len(a.interfaces)))
        metric = f"network.interfaces[{a.interfaces[j].name}].bytesRecvPerSec"
        return _Event(NETWORK_BURST, metric, start, end, True, target=j, magnitude=float(rng.uniform(25.0, 60.0)))

    def _routine(self, a: _Asset, plan: _Plan) -> None:
        """Normal fleet life: night-time maintenance reboots and short agent-update outages."""
        rng = _rng(self.seed, _TAG_PLAN + 100, a.org_index, a.index, self.interval, self.days)
        for _ in range(int(rng.poisson(self.days / (10.0 if a.server else 7.0)))):
            day = int(rng.integers(self.days))
            local_s = day * 86400 + float(rng.uniform(2.0, 4.5)) * 3600 - a.tz_hours * 3600
            step = round((local_s - plan.offset_s) / self.interval)
            uptime = self._reboot_uptime(rng)
            end = step + self._reboot_length(uptime) - 1
            if self._fits(plan, step, end):
                plan.events.append(_Event(REBOOT, "system.uptime", step, end, False, magnitude=uptime))
        for _ in range(int(rng.poisson(self.days / 4.0))):
            # An agent update takes the agent away for 1-12 minutes; only the samples that
            # fall due in that time go missing, so at long intervals it often costs none.
            down_from = float(rng.uniform(0.0, self.steps * self.interval))
            down_until = down_from + float(rng.uniform(60.0, 720.0))
            first = math.ceil((down_from - plan.offset_s) / self.interval)
            last = math.ceil((down_until - plan.offset_s) / self.interval) - 1
            if first <= last and self._fits(plan, first, last):
                plan.events.append(_Event(OUTAGE, OUTAGE_METRIC, first, last, False))

    # ---- public views -----------------------------------------------------------------

    def timestamp(self, plan: _Plan, step: int) -> str:
        moment = self.start + timedelta(seconds=step * self.interval + plan.offset_s)
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

    def labels(self) -> list[dict[str, Any]]:
        rows = []
        for a, plan in zip(self.assets, self.plans, strict=True):
            for e in plan.events:
                key = (e.start * self.interval + plan.offset_s, a.org_id, a.asset_id, e.kind)
                label = {
                    "orgId": a.org_id,
                    "assetId": a.asset_id,
                    "metric": e.metric,
                    "kind": e.kind,
                    "start": self.timestamp(plan, e.start),
                    "end": self.timestamp(plan, e.end),
                    "injected": e.injected,
                }
                rows.append((key, label))
        rows.sort(key=lambda row: row[0])
        return [label for _, label in rows]

    def expected_snapshots(self) -> int:
        missing = sum(e.end - e.start + 1 for plan in self.plans for e in plan.events if e.kind == OUTAGE)
        return len(self.assets) * self.steps - missing

    def chunk_steps(self) -> int:
        return max(MIN_CHUNK_STEPS, min(self.steps, math.ceil(CHUNK_SNAPSHOTS / len(self.assets))))

    # ---- generation -------------------------------------------------------------------

    def chunks(self) -> Iterator[Iterator[dict[str, Any]]]:
        """Payloads per time chunk, ordered by timestamp across the fleet.

        Each chunk is a lazy iterator over its payloads: only the chunk's numbers are held
        in memory, never all of its dicts at once.
        """
        size = self.chunk_steps()
        streams = [_rng(self.seed, _TAG_NOISE, a.org_index, a.index) for a in self.assets]
        builders = [_builder(a, self.window) for a in self.assets]
        for n0 in range(0, self.steps, size):
            n1 = min(n0 + size, self.steps)
            columns = [
                (builders[k], *self._series(self.assets[k], self.plans[k], streams[k], n0, n1)) for k in self.order
            ]
            yield _interleave(columns, n1 - n0)

    def _series(
        self, a: _Asset, plan: _Plan, rng: np.random.Generator, n0: int, n1: int
    ) -> tuple[list[bool], list[str], list[list[float]], list[list[int]]]:
        """One asset's samples for steps [n0, n1) as row lists (absent rows included)."""
        size = n1 - n0
        steps = np.arange(n0, n1)
        t = (steps * self.interval + plan.offset_s).astype(np.float64)
        present = np.ones(size, dtype=np.bool_)
        events = [e for e in plan.events if e.start < n1 and e.end >= n0]
        for e in events:
            if e.kind == OUTAGE:
                present[max(e.start, n0) - n0 : min(e.end, n1 - 1) - n0 + 1] = False

        activity = self._activity(a, t)
        since_boot = self._since_boot(plan, t)
        warm = np.clip(1.0 - since_boot / WARMUP_S, 0.0, 1.0)

        n_disks, n_ifaces, cores = len(a.disks), len(a.interfaces), len(a.core_bias)
        z = rng.standard_normal((6 + 4 * n_disks + 4 * n_ifaces, size))
        z_cores = rng.standard_normal((size, cores))
        bursts = rng.random((n_ifaces, size))
        burst_size = rng.uniform(3.0, 10.0, (n_ifaces, size))

        def window(e: _Event) -> tuple[slice, FloatArray]:
            lo, hi = max(e.start, n0) - n0, min(e.end, n1 - 1) - n0 + 1
            ramp = (steps[lo:hi] - e.start + 1) / (e.end - e.start + 1)
            return slice(lo, hi), ramp.astype(np.float64)

        # CPU: diurnal baseline, slow wander, boot storm; cores scatter around it.
        cpu0 = self._cpu_level(a, plan, t, activity, warm, events)
        per_core = np.clip(cpu0[:, None] + a.core_bias[None, :] + a.cpu_noise * 1.6 * z_cores, 0.0, 100.0)
        temp_source = per_core.mean(axis=1)
        for e in events:
            if e.kind == CPU_SATURATION:
                span, _ = window(e)
                per_core[span] = np.clip(96.0 + 2.0 * z_cores[span], 91.0, 100.0)
                temp_source = per_core.mean(axis=1)
            elif e.kind == FLATLINE and e.metric == "cpu.usage":
                span, _ = window(e)
                ts = np.array([self._step_time(plan, e.start)])
                stuck = self._cpu_level(a, plan, ts, self._activity(a, ts), np.zeros(1), [])
                per_core[span] = np.clip(stuck[0] + a.core_bias, 0.0, 100.0)[None, :]
        per_core = np.round(per_core, 2)
        usage = np.round(per_core.mean(axis=1), 2)
        temperature = np.round(a.temp_base + 0.42 * temp_source + 0.8 * z[0], 1)
        frequency = np.round(a.freq_base * (0.82 + 0.35 * temp_source / 100.0) + 25.0 * z[1])

        # Memory: grows slowly since boot, follows the working day a little; swap when tight.
        mem0 = self._mem_level(a, t, activity, since_boot, events, n0, n1)
        mem_pct = mem0 + a.mem_noise * z[2]
        for e in events:
            if e.kind == MEMORY_LEAK:
                span, ramp = window(e)
                ts = np.array([self._step_time(plan, e.start)])
                base = self._mem_level(a, ts, self._activity(a, ts), self._since_boot(plan, ts), [], 0, 1)[0]
                mem_pct[span] = base + (e.magnitude - base) * ramp + 0.25 * z[2][span]
            elif e.kind == FLATLINE and e.metric == "memory.usagePercent":
                span, _ = window(e)
                ts = np.array([self._step_time(plan, e.start)])
                mem_pct[span] = self._mem_level(a, ts, self._activity(a, ts), self._since_boot(plan, ts), [], 0, 1)[0]
        mem_used = np.round(np.clip(mem_pct, 1.0, 99.5) / 100.0 * a.mem_total).astype(np.int64)
        mem_avail = a.mem_total - mem_used
        mem_out = np.round(mem_used / a.mem_total * 100.0, 2)
        pressure = np.clip((mem_out - 72.0) / 25.0, 0.0, 1.0)
        swap = np.round(a.swap_total * np.clip(0.03 + 0.01 * z[3] + 0.7 * pressure, 0.0, 1.0)).astype(np.int64)

        # System: processes dip after a boot and recover during warm-up.
        procs = np.maximum(
            10, np.round((a.proc_base + 25.0 * activity + 3.0 * z[4]) * (1.0 - 0.45 * warm))
        ).astype(np.int64)
        threads = np.maximum(procs, np.round(procs * a.thread_ratio + 40.0 * z[5])).astype(np.int64)
        uptime = np.floor(since_boot).astype(np.int64)

        floats = np.empty((size, 3 + cores + 5 * n_disks + 4 * n_ifaces + 1))
        ints = np.empty((size, 5 + 3 * n_disks + 3), dtype=np.int64)
        floats[:, 0] = usage
        floats[:, 1] = temperature
        floats[:, 2 : 2 + cores] = per_core
        floats[:, 2 + cores] = mem_out
        ints[:, 0] = frequency.astype(np.int64)
        ints[:, 1] = mem_used
        ints[:, 2] = a.mem_total
        ints[:, 3] = mem_avail
        ints[:, 4] = swap

        # Disks: slow filling (wrapping back at a clean-up), I/O with the working day.
        days_elapsed = t / 86400.0
        for d, disk in enumerate(a.disks):
            zr = z[6 + 4 * d : 10 + 4 * d]
            pct = 20.0 + np.mod(disk.fill0 - 20.0 + disk.fill_per_day * days_elapsed, 68.0) + 0.002 * zr[0]
            io = disk.io_bytes * (0.08 + activity + 2.0 * warm)
            read = io * np.exp(0.6 * zr[1])
            write = 0.6 * io * np.exp(0.6 * zr[2])
            for e in events:
                if e.kind == DISK_FILL and e.target == d:
                    span, ramp = window(e)
                    ts = np.array([self._step_time(plan, e.start)])
                    base = 20.0 + np.mod(disk.fill0 - 20.0 + disk.fill_per_day * ts[0] / 86400.0, 68.0)
                    pct[span] = base + (e.magnitude - base) * ramp
                    # Whatever fills the disk writes that many bytes per second on top.
                    seconds = (e.end - e.start + 1) * self.interval
                    write[span] += (e.magnitude - base) / 100.0 * disk.total / seconds
            used = np.minimum(np.round(np.clip(pct, 0.0, 100.0) / 100.0 * disk.total), disk.total).astype(np.int64)
            col = 3 + cores + 5 * d
            floats[:, col] = np.round(used / disk.total * 100.0, 2)
            floats[:, col + 1] = np.round(read, 1)
            floats[:, col + 2] = np.round(write, 1)
            floats[:, col + 3] = np.round(read / disk.io_size * np.exp(0.1 * zr[3]), 1)
            floats[:, col + 4] = np.round(write / disk.io_size * np.exp(0.1 * zr[3]), 1)
            icol = 5 + 3 * d
            ints[:, icol] = disk.total
            ints[:, icol + 1] = used
            ints[:, icol + 2] = disk.total - used

        # Network: working-day traffic with short routine bursts; totalUsage sums every direction.
        net_wander = _wander(a.wander[2], t)
        total = np.zeros(size)
        base_col = 3 + cores + 5 * n_disks
        for j, iface in enumerate(a.interfaces):
            zn = z[6 + 4 * n_disks + 4 * j : 10 + 4 * n_disks + 4 * j]
            factor = np.where(bursts[j] < 0.006, burst_size[j], 1.0)
            for e in events:
                if e.kind == NETWORK_BURST and e.target == j:
                    span, _ = window(e)
                    factor[span] = e.magnitude * np.exp(0.1 * zn[3][span])
            recv = iface.recv_bytes * (0.1 + activity) * np.exp(net_wander + 0.45 * zn[0]) * factor
            sent = recv if iface.loopback else recv * iface.sent_ratio * np.exp(0.3 * zn[1])
            recv, sent = np.round(recv, 1), np.round(sent, 1)
            col = base_col + 4 * j
            floats[:, col] = recv
            floats[:, col + 1] = sent
            floats[:, col + 2] = np.round(recv / iface.packet_size * np.exp(0.05 * zn[2]), 1)
            floats[:, col + 3] = (
                floats[:, col + 2]  # loopback: every packet sent is received
                if iface.loopback
                else np.round(sent / iface.packet_size * np.exp(0.05 * zn[3]), 1)
            )
            total += recv + sent
        floats[:, -1] = np.round(total, 1)
        ints[:, -3] = uptime
        ints[:, -2] = procs
        ints[:, -1] = threads

        epoch = (self.start_epoch + t.astype(np.int64)).astype("datetime64[s]")
        stamps = [s + "Z" for s in np.datetime_as_string(epoch, unit="s").tolist()]
        return present.tolist(), stamps, floats.tolist(), ints.tolist()

    def _activity(self, a: _Asset, t: FloatArray) -> FloatArray:
        """How busy the asset's users or services are: 0 at night, about 1 at the day's peak."""
        local = self.start_epoch + t + a.tz_hours * 3600.0
        hour = np.mod(local / 3600.0 - a.day_shift_h, 24.0)
        weekday = np.mod(np.floor(local / 86400.0) + 3.0, 7.0)  # 1970-01-01 was a Thursday; Monday is 0
        workday = np.where(weekday < 5, 1.0, a.weekend)
        if a.server:
            level = 0.3 + 0.7 * _bump(hour, 6.5, 22.0) * workday
            if a.batch_job:
                level = level + 0.8 * _bump(hour, 1.9, 2.8)
        else:
            level = (_bump(hour, 7.5, 18.5) * (1.0 - 0.25 * _bump(hour, 11.8, 13.4))) * workday
        out: FloatArray = level
        return out

    def _since_boot(self, plan: _Plan, t: FloatArray) -> FloatArray:
        idx = np.searchsorted(plan.boots, t, side="right") - 1
        out: FloatArray = t - plan.boots[idx]
        return out

    def _cpu_level(
        self,
        a: _Asset,
        plan: _Plan,
        t: FloatArray,
        activity: FloatArray,
        warm: FloatArray,
        events: Sequence[_Event],
    ) -> FloatArray:
        level = a.cpu_base + a.cpu_amp * activity + _wander(a.wander[0], t) + 45.0 * warm
        for e in events:
            if e.kind == LEVEL_SHIFT and e.metric == "cpu.usage":
                lo, hi = self._step_time(plan, e.start), self._step_time(plan, e.end)
                level = level + np.where((t >= lo) & (t <= hi), e.magnitude, 0.0)
        out: FloatArray = level
        return out

    def _mem_level(
        self,
        a: _Asset,
        t: FloatArray,
        activity: FloatArray,
        since_boot: FloatArray,
        events: Sequence[_Event],
        n0: int,
        n1: int,
    ) -> FloatArray:
        level = (
            a.mem_base
            + np.minimum(a.mem_growth * since_boot / 86400.0, 20.0)
            + 4.0 * activity
            + _wander(a.wander[1], t)
        )
        for e in events:
            if e.kind == LEVEL_SHIFT and e.metric == "memory.usagePercent":
                lo, hi = max(e.start, n0) - n0, min(e.end, n1 - 1) - n0 + 1
                level[lo:hi] += e.magnitude
        out: FloatArray = level
        return out


_Columns = tuple[
    Callable[[str, list[float], list[int]], dict[str, Any]], list[bool], list[str], list[list[float]], list[list[int]]
]


def _interleave(columns: list[_Columns], steps: int) -> Iterator[dict[str, Any]]:
    """Step by step, each present asset's payload, in the order of `columns`."""
    for s in range(steps):
        for build, present, stamps, floats, ints in columns:
            if present[s]:
                yield build(stamps[s], floats[s], ints[s])


def _builder(a: _Asset, window: str) -> Callable[[str, list[float], list[int]], dict[str, Any]]:
    """A function turning one sample's row lists into the agents' payload dict."""
    org, agent, asset = a.org_id, a.agent_id, a.asset_id
    cores = len(a.core_bias)
    mem = 2 + cores
    disks = [(d.name, 3 + cores + 5 * i, 5 + 3 * i) for i, d in enumerate(a.disks)]
    net = 3 + cores + 5 * len(a.disks)
    ifaces = [(f.name, net + 4 * j) for j, f in enumerate(a.interfaces)]

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


# ---- public API ---------------------------------------------------------------------------


def generate_fleet(
    *,
    orgs: int,
    assets: int,
    days: int,
    interval_s: int = 60,
    seed: int = 0,
    start: datetime | date | str | None = None,
    anomalies: bool = True,
) -> Iterator[dict[str, Any]]:
    """Yield the fleet's agent payloads, time-ordered across all assets.

    `assets` is per organisation; each asset sends one snapshot every `interval_s`
    seconds (at its own second within the interval) for `days` days from `start`
    (default 2026-01-05T00:00:00Z, fixed so the output depends on the seed alone), except
    during outages. `anomalies=False` leaves out injected anomalies but keeps routine
    reboots and agent-update outages.
    """
    fleet = _Fleet(
        orgs=orgs, assets=assets, days=days, interval_s=interval_s, seed=seed, start=start, anomalies=anomalies
    )
    for docs in fleet.chunks():
        yield from docs


def fleet_labels(
    *,
    orgs: int,
    assets: int,
    days: int,
    interval_s: int = 60,
    seed: int = 0,
    start: datetime | date | str | None = None,
    anomalies: bool = True,
) -> list[dict[str, Any]]:
    """The events in the fleet `generate_fleet` makes from the same arguments, by start time.

    Each label is `{orgId, assetId, metric, kind, start, end, injected}` (see the module
    docstring); it is computed from the plan alone, without generating snapshots.
    """
    fleet = _Fleet(
        orgs=orgs, assets=assets, days=days, interval_s=interval_s, seed=seed, start=start, anomalies=anomalies
    )
    return fleet.labels()


def fleet_assets(*, orgs: int, assets: int, seed: int = 0) -> list[dict[str, Any]]:
    """The `assets` documents of the fleet: `_id` is the payloads' assetId as an ObjectId.

    They depend on (orgs, assets, seed) only, so a demo can register the assets before or
    after generating any span of snapshots.
    """
    _check_count("orgs", orgs)
    _check_count("assets", assets)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a whole number >= 0, got {seed!r}")
    docs = []
    for o in range(orgs):
        for i in range(assets):
            a = _make_asset(seed, o, i, orgs, assets)
            docs.append(
                {
                    "_id": ObjectId(a.asset_id),
                    "orgId": a.org_id,
                    "name": a.name,
                    "hostname": a.hostname,
                    "os": a.os_name,
                    "createdAt": a.created_at,
                }
            )
    return docs


def default_labels_path(out_path: str | os.PathLike[str]) -> Path:
    """Where the labels go unless told: the output's stem plus `.labels.json`.

    Compression and NDJSON suffixes are dropped first: `fleet.ndjson.zst` gives
    `fleet.labels.json`, `runs/x.jsonl.gz` gives `runs/x.labels.json`.
    """
    path = Path(out_path)
    name = path.name
    for suffix in (".gz", ".zst"):
        name = name.removesuffix(suffix)
    for suffix in (".ndjson", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return path.with_name(f"{name or 'fleet'}.labels.json")


class _Sink(Protocol):
    """What the snapshot writer needs of a (possibly compressing) output stream."""

    def write(self, data: bytes, /) -> int: ...

    def close(self) -> None: ...


def _write_snapshots(path: Path, fleet: _Fleet, progress: Progress | None) -> int:
    expected = fleet.expected_snapshots()
    written = 0
    dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    with atomic_path(path) as tmp, tmp.open("wb") as raw:
        stream: _Sink
        if path.name.endswith(".gz"):
            # No file name and mtime 0 in the header, so equal data gives equal bytes.
            stream = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=GZIP_LEVEL)
        elif path.name.endswith(".zst"):
            stream = zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(raw, closefd=False)
        else:
            stream = raw
        was_enabled = gc.isenabled()
        gc.disable()  # the payloads are acyclic and short-lived; collections only cost time here
        try:
            for docs in fleet.chunks():
                while lines := [dumps(doc, option=newline) for doc in islice(docs, 4096)]:
                    stream.write(b"".join(lines))
                    written += len(lines)
                if progress is not None:
                    progress(written, expected)
        finally:
            if was_enabled:
                gc.enable()
        if stream is not raw:
            stream.close()
    return written


def write_fleet(
    out_path: str | os.PathLike[str],
    *,
    labels_path: str | os.PathLike[str] | None = None,
    assets_path: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    orgs: int,
    assets: int,
    days: int,
    interval_s: int = 60,
    seed: int = 0,
    start: datetime | date | str | None = None,
    anomalies: bool = True,
) -> GenerateSummary:
    """Write the fleet's snapshots as NDJSON (gzip for .gz, zstd for .zst, else plain).

    Also writes the labels (JSON: the generation arguments and `labels`, at `labels_path`,
    default `default_labels_path(out_path)`) and, when `assets_path` is given, the asset
    documents as Extended JSON lines. Each file appears under its final name only when
    complete; the snapshots come last, so their presence means the run finished.
    `progress(written, expected)` is called after each time chunk.
    """
    began = time.perf_counter()
    fleet = _Fleet(
        orgs=orgs, assets=assets, days=days, interval_s=interval_s, seed=seed, start=start, anomalies=anomalies
    )
    out = Path(out_path)
    labels_out = Path(labels_path) if labels_path is not None else default_labels_path(out)
    assets_out = Path(assets_path) if assets_path is not None else None
    targets = [out, labels_out] + ([assets_out] if assets_out is not None else [])
    resolved = [p.resolve() for p in targets]
    if len(set(resolved)) != len(resolved):
        raise ConfigError(f"output files must differ: {', '.join(str(p) for p in targets)}")
    for p in targets:
        if not p.parent.is_dir():
            raise ConfigError(f"directory {p.parent} does not exist (for {p.name})")
        if p.is_dir():
            raise ConfigError(f"{p} is a directory")

    labels = fleet.labels()
    header = {
        "generator": "perf_analytics.generate",
        "seed": seed,
        "orgs": fleet.orgs,
        "assetsPerOrg": fleet.per_org,
        "days": fleet.days,
        "intervalSeconds": fleet.interval,
        "timeWindow": fleet.window,
        "start": fleet.start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "end": (fleet.start + timedelta(seconds=fleet.steps * fleet.interval)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "anomalies": anomalies,
        "snapshots": fleet.expected_snapshots(),
        "labels": labels,
    }
    write_atomic(labels_out, orjson.dumps(header, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE))
    if assets_out is not None:
        lines = [
            json_util.dumps(doc, json_options=json_util.RELAXED_JSON_OPTIONS) + "\n"
            for doc in fleet_assets(orgs=orgs, assets=assets, seed=seed)
        ]
        write_atomic(assets_out, "".join(lines).encode())
    written = _write_snapshots(out, fleet, progress)
    return GenerateSummary(
        snapshots=written,
        assets=len(fleet.assets),
        labels=len(labels),
        path=out,
        seconds=time.perf_counter() - began,
        orgs=fleet.orgs,
        injected=sum(1 for label in labels if label["injected"]),
        labels_path=labels_out,
        assets_path=assets_out,
    )
