"""What happens to each asset over the span: its boots, routine life and injected anomalies.

An asset's plan is decided before any sample is made: the second within the interval
at which it reports, when it booted, and a list of events (step ranges). The series
models then only read the plan, which is why labels can be listed without generating
any data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from perf_analytics.synth import streams
from perf_analytics.synth.assets import Asset
from perf_analytics.synth.spec import FleetSpec

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
WARMUP_S = 1800.0  # after a boot, CPU is busy and processes are still starting for 30 min
_MINUTES = {  # how long each kind of anomaly lasts, uniformly between these bounds
    CPU_SATURATION: (5, 60),
    MEMORY_LEAK: (120, 600),
    DISK_FILL: (60, 360),
    FLATLINE: (120, 480),
    LEVEL_SHIFT: (180, 1440),
    OUTAGE: (15, 240),
    NETWORK_BURST: (5, 45),
}


@dataclass(frozen=True)
class Event:
    """One event on one asset: the samples it alters, by step, both ends inclusive."""

    kind: str
    metric: str
    start: int  # first altered step, inclusive
    end: int  # last altered step, inclusive
    injected: bool
    target: int = 0  # disk or interface index
    magnitude: float = 0.0  # the level reached, shift added, or (reboot) uptime at the first sample


@dataclass
class AssetPlan:
    """The time-dependent fate of one asset: sample offset, boots and events."""

    interval: int
    offset_s: int
    boots: npt.NDArray[np.float64]  # boot moments in seconds since the fleet start, ascending
    events: list[Event] = field(default_factory=list)

    def time_of(self, step: int) -> float:
        """Seconds since the fleet start of this asset's sample `step`."""
        return float(step * self.interval + self.offset_s)


def _base_plan(spec: FleetSpec, a: Asset) -> AssetPlan:
    rng = streams.stream(spec.seed, streams.PLAN, a.org_index, a.index, spec.interval_s, spec.days)
    offset = int(rng.integers(min(spec.interval_s, 60)))
    first_boot = -float(rng.uniform(1.0, 25.0)) * 86400.0
    return AssetPlan(interval=spec.interval_s, offset_s=offset, boots=np.array([first_boot]))


def _reboot_length(spec: FleetSpec, uptime_s: float) -> int:
    """Samples a reboot alters: the first one after boot through the end of warm-up."""
    return max(1, math.ceil((WARMUP_S - uptime_s) / spec.interval_s))


def _reboot_uptime(spec: FleetSpec, rng: np.random.Generator) -> float:
    """Seconds between the boot and the first sample after it (less than one interval)."""
    return float(rng.integers(min(15, spec.interval_s - 1), min(spec.interval_s, 240)))


def _fits(spec: FleetSpec, plan: AssetPlan, start: int, end: int) -> bool:
    """Inside the span (step 0 stays normal, as a reference) and clear of other events."""
    if start < 1 or end > spec.steps - 1:
        return False
    margin = max(1, math.ceil(1800 / spec.interval_s))
    return all(end + margin < e.start or start > e.end + margin for e in plan.events)


def _place(spec: FleetSpec, rng: np.random.Generator, plan: AssetPlan, length: int) -> int | None:
    """A free start step for an event of `length` steps, or None after 20 tries."""
    if length > spec.steps - 1:
        return None
    for _ in range(20):
        start = int(rng.integers(1, spec.steps - length + 1))
        if _fits(spec, plan, start, start + length - 1):
            return start
    return None


def _anomaly(spec: FleetSpec, rng: np.random.Generator, a: Asset, plan: AssetPlan, kind: str) -> Event | None:
    """One injected anomaly of `kind` placed on the asset, or None where none fits."""
    if kind == REBOOT:
        uptime = _reboot_uptime(spec, rng)
        length = _reboot_length(spec, uptime)
    else:
        low, high = _MINUTES[kind]
        length = max(1, round(float(rng.uniform(low, high)) * 60.0 / spec.interval_s))
        if kind == FLATLINE:
            length = max(length, 3)  # a value repeated once is no flatline, even at long intervals
    start = _place(spec, rng, plan, length)
    if start is None:
        return None
    end = start + length - 1
    if kind == REBOOT:
        return Event(REBOOT, "system.uptime", start, end, True, magnitude=uptime)
    if kind == CPU_SATURATION:
        return Event(kind, "cpu.usage", start, end, True)
    if kind == MEMORY_LEAK:
        return Event(kind, "memory.usagePercent", start, end, True, magnitude=float(rng.uniform(92.0, 97.5)))
    if kind == DISK_FILL:
        d = int(rng.integers(len(a.disks)))
        metric = f"disk[{a.disks[d].name}].usagePercent"
        return Event(kind, metric, start, end, True, target=d, magnitude=float(rng.uniform(97.0, 99.8)))
    if kind in (FLATLINE, LEVEL_SHIFT):
        on_cpu = bool(rng.random() < 0.5)
        metric = "cpu.usage" if on_cpu else "memory.usagePercent"
        shift = float(rng.uniform(15.0, 30.0) if on_cpu else rng.uniform(12.0, 22.0))
        return Event(kind, metric, start, end, True, magnitude=shift if kind == LEVEL_SHIFT else 0.0)
    if kind == OUTAGE:
        return Event(OUTAGE, OUTAGE_METRIC, start, end, True)
    j = int(rng.integers(len(a.interfaces)))
    metric = f"network.interfaces[{a.interfaces[j].name}].bytesRecvPerSec"
    return Event(NETWORK_BURST, metric, start, end, True, target=j, magnitude=float(rng.uniform(25.0, 60.0)))


def _inject(spec: FleetSpec, assets: list[Asset], plans: list[AssetPlan]) -> None:
    """Spread injected anomalies over a share of the fleet, cycling through every kind."""
    rng = streams.stream(spec.seed, streams.FLEET, spec.orgs, spec.assets, spec.days, spec.interval_s)
    total = len(assets)
    chosen = sorted(rng.permutation(total)[: max(1, round(total * ANOMALOUS_ASSET_SHARE))].tolist())
    kinds: list[str] = []
    for k in chosen:
        for _ in range(1 + int(rng.poisson(0.6 * spec.days))):
            if not kinds:
                kinds = [ANOMALY_KINDS[i] for i in rng.permutation(len(ANOMALY_KINDS))]
            event = _anomaly(spec, rng, assets[k], plans[k], kinds.pop())
            if event is not None:
                plans[k].events.append(event)


def _routine(spec: FleetSpec, a: Asset, plan: AssetPlan) -> None:
    """Normal fleet life: night-time maintenance reboots and short agent-update outages."""
    rng = streams.stream(spec.seed, streams.ROUTINE, a.org_index, a.index, spec.interval_s, spec.days)
    for _ in range(int(rng.poisson(spec.days / (10.0 if a.server else 7.0)))):
        day = int(rng.integers(spec.days))
        local_s = day * 86400 + float(rng.uniform(2.0, 4.5)) * 3600 - a.tz_hours * 3600
        step = round((local_s - plan.offset_s) / spec.interval_s)
        uptime = _reboot_uptime(spec, rng)
        end = step + _reboot_length(spec, uptime) - 1
        if _fits(spec, plan, step, end):
            plan.events.append(Event(REBOOT, "system.uptime", step, end, False, magnitude=uptime))
    for _ in range(int(rng.poisson(spec.days / 4.0))):
        # An agent update takes the agent away for 1-12 minutes; only the samples that
        # fall due in that time go missing, so at long intervals it often costs none.
        down_from = float(rng.uniform(0.0, spec.steps * spec.interval_s))
        down_until = down_from + float(rng.uniform(60.0, 720.0))
        first = math.ceil((down_from - plan.offset_s) / spec.interval_s)
        last = math.ceil((down_until - plan.offset_s) / spec.interval_s) - 1
        if first <= last and _fits(spec, plan, first, last):
            plan.events.append(Event(OUTAGE, OUTAGE_METRIC, first, last, False))


def plan_assets(spec: FleetSpec, assets: list[Asset]) -> list[AssetPlan]:
    """Each asset's plan: injected anomalies first (when asked), then routine life around them.

    Every reboot adds a boot moment, so uptime and memory reset at the right time.
    """
    plans = [_base_plan(spec, a) for a in assets]
    if spec.anomalies:
        _inject(spec, assets, plans)
    for a, plan in zip(assets, plans, strict=True):
        _routine(spec, a, plan)
        plan.events.sort(key=lambda e: e.start)
        reboot_boots = [plan.time_of(e.start) - e.magnitude for e in plan.events if e.kind == REBOOT]
        plan.boots = np.sort(np.concatenate([plan.boots, np.array(reboot_boots, dtype=np.float64)]))
    return plans
