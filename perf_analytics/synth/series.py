"""The series models: each metric of one asset as a closed-form function of time plus noise.

Every series is computed with numpy for a chunk of steps at once, from the asset's
profile, its plan (boots and events) and noise drawn from the asset's own stream, so a
chunk needs only its own numbers in memory and the same chunk always gives the same
values. The results are two row-major matrices (floats and ints) in the column order of
`Columns`, from which `payloads` builds the agents' documents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from perf_analytics.synth.assets import Asset
from perf_analytics.synth.events import (
    CPU_SATURATION,
    DISK_FILL,
    FLATLINE,
    LEVEL_SHIFT,
    MEMORY_LEAK,
    NETWORK_BURST,
    OUTAGE,
    WARMUP_S,
    AssetPlan,
    Event,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Columns:
    """Where each metric sits in an asset's float and int rows.

    floats: cpu usage, temperature, one per core, memory %, then per disk (usage %, read
    B/s, write B/s, read ops, write ops), per interface (recv B/s, sent B/s, recv pkt/s,
    sent pkt/s), and network total last. ints: frequency, memory used, total, available,
    swap, then per disk (total, used, free), and uptime, processes, threads last.
    """

    cores: int
    disks: int
    interfaces: int

    @classmethod
    def of(cls, a: Asset) -> Columns:
        """The layout of asset `a`'s rows."""
        return cls(cores=a.cores, disks=len(a.disks), interfaces=len(a.interfaces))

    @property
    def memory(self) -> int:
        """The float column of memory %, right after the per-core values."""
        return 2 + self.cores

    def disk(self, d: int) -> int:
        """First float column of disk `d`."""
        return 3 + self.cores + 5 * d

    def disk_int(self, d: int) -> int:
        """First int column of disk `d`."""
        return 5 + 3 * d

    def interface(self, j: int) -> int:
        """First float column of interface `j`."""
        return self.disk(self.disks) + 4 * j

    @property
    def floats(self) -> int:
        """How many float columns."""
        return self.interface(self.interfaces) + 1

    @property
    def ints(self) -> int:
        """How many int columns."""
        return self.disk_int(self.disks) + 3


@dataclass(frozen=True)
class Noise:
    """The chunk's random draws, made together in one fixed order from the asset's stream."""

    z: FloatArray  # temperature, frequency, memory, swap, processes, threads; 4 per disk; 4 per interface
    cores: FloatArray  # (steps, cores)
    bursts: FloatArray  # (interfaces, steps): a short routine burst where below 0.006
    burst_size: FloatArray  # (interfaces, steps)

    @classmethod
    def draw(cls, rng: np.random.Generator, a: Asset, size: int) -> Noise:
        """Draw `size` steps of noise for asset `a` (the order of the draws is part of the output)."""
        n_disks, n_ifaces = len(a.disks), len(a.interfaces)
        z = rng.standard_normal((6 + 4 * n_disks + 4 * n_ifaces, size))
        cores = rng.standard_normal((size, a.cores))
        bursts = rng.random((n_ifaces, size))
        burst_size = rng.uniform(3.0, 10.0, (n_ifaces, size))
        return cls(z=z, cores=cores, bursts=bursts, burst_size=burst_size)

    def disk(self, d: int) -> FloatArray:
        """Disk `d`'s four rows: fill, read, write, operations."""
        return self.z[6 + 4 * d : 10 + 4 * d]

    def interface(self, n_disks: int, j: int) -> FloatArray:
        """Interface `j`'s four rows: recv, sent, recv packets, sent packets."""
        return self.z[6 + 4 * n_disks + 4 * j : 10 + 4 * n_disks + 4 * j]


def wander(params: FloatArray, t: FloatArray) -> FloatArray:
    """Slow, smooth variation: three sinusoids with incommensurate periods per asset."""
    amp, omega, phase = params[0:3], params[3:6], params[6:9]
    out: FloatArray = np.sin(np.outer(t, omega) + phase) @ amp
    return out


def _bump(hour: FloatArray, first: float, last: float) -> FloatArray:
    """A smooth hump from `first` to `last` o'clock, 1 at its middle, 0 outside."""
    x = (hour - first) / (last - first)
    out: FloatArray = np.where((x > 0) & (x < 1), np.sin(np.pi * np.clip(x, 0, 1)) ** 2, 0.0)
    return out


def activity(a: Asset, start_epoch: int, t: FloatArray) -> FloatArray:
    """How busy the asset's users or services are: 0 at night, about 1 at the day's peak."""
    local = start_epoch + t + a.tz_hours * 3600.0
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


def since_boot(plan: AssetPlan, t: FloatArray) -> FloatArray:
    """Seconds since the last boot at each time."""
    idx = np.searchsorted(plan.boots, t, side="right") - 1
    out: FloatArray = t - plan.boots[idx]
    return out


@dataclass(frozen=True)
class Chunk:
    """One asset's steps [n0, n1): their times and what every metric's model depends on."""

    asset: Asset
    plan: AssetPlan
    start_epoch: int
    n0: int
    n1: int
    steps: IntArray
    t: FloatArray  # seconds since the fleet start
    events: list[Event]  # the plan's events that touch these steps
    activity: FloatArray
    since_boot: FloatArray
    warm: FloatArray  # 1 at boot, falling to 0 at the end of warm-up

    @classmethod
    def of(cls, a: Asset, plan: AssetPlan, start_epoch: int, n0: int, n1: int) -> Chunk:
        """Asset `a`'s steps [n0, n1) under `plan`; `start_epoch` is the fleet's first second."""
        steps = np.arange(n0, n1)
        t = (steps * plan.interval + plan.offset_s).astype(np.float64)
        booted = since_boot(plan, t)
        return cls(
            asset=a,
            plan=plan,
            start_epoch=start_epoch,
            n0=n0,
            n1=n1,
            steps=steps,
            t=t,
            events=[e for e in plan.events if e.start < n1 and e.end >= n0],
            activity=activity(a, start_epoch, t),
            since_boot=booted,
            warm=np.clip(1.0 - booted / WARMUP_S, 0.0, 1.0),
        )

    def span(self, e: Event) -> slice:
        """The rows of this chunk that `e` alters."""
        return slice(max(e.start, self.n0) - self.n0, min(e.end, self.n1 - 1) - self.n0 + 1)

    def ramp(self, e: Event) -> FloatArray:
        """Over `span(e)`, how far into the event each sample is: 1/length up to 1."""
        rows = self.span(e)
        out: FloatArray = ((self.steps[rows] - e.start + 1) / (e.end - e.start + 1)).astype(np.float64)
        return out

    def present(self) -> BoolArray:
        """False where an outage leaves no snapshot."""
        present = np.ones(self.n1 - self.n0, dtype=np.bool_)
        for e in self.events:
            if e.kind == OUTAGE:
                present[self.span(e)] = False
        return present

    def at_start_of(self, e: Event) -> FloatArray:
        """The time of `e`'s first sample, as a one-element array for the level models."""
        return np.array([self.plan.time_of(e.start)])


def cpu_level(
    a: Asset, plan: AssetPlan, start_epoch: int, t: FloatArray, warm: FloatArray, events: Sequence[Event]
) -> FloatArray:
    """Expected CPU %: diurnal baseline, slow wander, boot storm, level shifts."""
    level = a.cpu_base + a.cpu_amp * activity(a, start_epoch, t) + wander(a.wander[0], t) + 45.0 * warm
    for e in events:
        if e.kind == LEVEL_SHIFT and e.metric == "cpu.usage":
            lo, hi = plan.time_of(e.start), plan.time_of(e.end)
            level = level + np.where((t >= lo) & (t <= hi), e.magnitude, 0.0)
    out: FloatArray = level
    return out


def _mem_level(c: Chunk, t: FloatArray, events: Sequence[Event]) -> FloatArray:
    """Expected memory % at `t`: grows since boot, follows the day a little, level shifts.

    `events` shift whole rows, so they apply only when `t` is the chunk's own times.
    """
    a = c.asset
    level = (
        a.mem_base
        + np.minimum(a.mem_growth * since_boot(c.plan, t) / 86400.0, 20.0)
        + 4.0 * activity(a, c.start_epoch, t)
        + wander(a.wander[1], t)
    )
    for e in events:
        if e.kind == LEVEL_SHIFT and e.metric == "memory.usagePercent":
            level[c.span(e)] += e.magnitude
    out: FloatArray = level
    return out


def cpu(c: Chunk, noise: Noise) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """(usage, temperature, frequency, per-core usage): cores scatter around the level."""
    a = c.asset
    level = cpu_level(a, c.plan, c.start_epoch, c.t, c.warm, c.events)
    per_core = np.clip(level[:, None] + a.core_bias[None, :] + a.cpu_noise * 1.6 * noise.cores, 0.0, 100.0)
    heat = per_core.mean(axis=1)
    for e in c.events:
        if e.kind == CPU_SATURATION:
            rows = c.span(e)
            per_core[rows] = np.clip(96.0 + 2.0 * noise.cores[rows], 91.0, 100.0)
            heat = per_core.mean(axis=1)
        elif e.kind == FLATLINE and e.metric == "cpu.usage":
            stuck = cpu_level(a, c.plan, c.start_epoch, c.at_start_of(e), np.zeros(1), [])
            per_core[c.span(e)] = np.clip(stuck[0] + a.core_bias, 0.0, 100.0)[None, :]
    per_core = np.round(per_core, 2)
    usage = np.round(per_core.mean(axis=1), 2)
    temperature = np.round(a.temp_base + 0.42 * heat + 0.8 * noise.z[0], 1)
    frequency = np.round(a.freq_base * (0.82 + 0.35 * heat / 100.0) + 25.0 * noise.z[1])
    return usage, temperature, frequency, per_core


def memory(c: Chunk, noise: Noise) -> tuple[FloatArray, IntArray, IntArray, IntArray]:
    """(usage %, used bytes, available bytes, swap bytes); swap grows when memory is tight."""
    a = c.asset
    pct = _mem_level(c, c.t, c.events) + a.mem_noise * noise.z[2]
    for e in c.events:
        if e.kind == MEMORY_LEAK:
            rows = c.span(e)
            base = _mem_level(c, c.at_start_of(e), [])[0]
            pct[rows] = base + (e.magnitude - base) * c.ramp(e) + 0.25 * noise.z[2][rows]
        elif e.kind == FLATLINE and e.metric == "memory.usagePercent":
            pct[c.span(e)] = _mem_level(c, c.at_start_of(e), [])[0]
    used = np.round(np.clip(pct, 1.0, 99.5) / 100.0 * a.mem_total).astype(np.int64)
    available = a.mem_total - used
    usage = np.round(used / a.mem_total * 100.0, 2)
    pressure = np.clip((usage - 72.0) / 25.0, 0.0, 1.0)
    swap = np.round(a.swap_total * np.clip(0.03 + 0.01 * noise.z[3] + 0.7 * pressure, 0.0, 1.0)).astype(np.int64)
    return usage, used, available, swap


def system(c: Chunk, noise: Noise) -> tuple[IntArray, IntArray, IntArray]:
    """(uptime, processes, threads): processes dip after a boot and recover during warm-up."""
    a = c.asset
    procs = np.maximum(
        10, np.round((a.proc_base + 25.0 * c.activity + 3.0 * noise.z[4]) * (1.0 - 0.45 * c.warm))
    ).astype(np.int64)
    threads = np.maximum(procs, np.round(procs * a.thread_ratio + 40.0 * noise.z[5])).astype(np.int64)
    return np.floor(c.since_boot).astype(np.int64), procs, threads


def disk(c: Chunk, noise: Noise, d: int) -> tuple[IntArray, list[FloatArray]]:
    """Disk `d`'s used bytes and its float columns (usage %, read and write B/s and ops/s).

    Usage grows slowly and wraps back at a clean-up; I/O follows the working day.
    """
    spec = c.asset.disks[d]
    z = noise.disk(d)
    pct = 20.0 + np.mod(spec.fill0 - 20.0 + spec.fill_per_day * (c.t / 86400.0), 68.0) + 0.002 * z[0]
    io = spec.io_bytes * (0.08 + c.activity + 2.0 * c.warm)
    read = io * np.exp(0.6 * z[1])
    write = 0.6 * io * np.exp(0.6 * z[2])
    for e in c.events:
        if e.kind == DISK_FILL and e.target == d:
            rows = c.span(e)
            base = 20.0 + np.mod(spec.fill0 - 20.0 + spec.fill_per_day * c.at_start_of(e)[0] / 86400.0, 68.0)
            pct[rows] = base + (e.magnitude - base) * c.ramp(e)
            # Whatever fills the disk writes that many bytes per second on top.
            seconds = (e.end - e.start + 1) * c.plan.interval
            write[rows] += (e.magnitude - base) / 100.0 * spec.total / seconds
    used = np.minimum(np.round(np.clip(pct, 0.0, 100.0) / 100.0 * spec.total), spec.total).astype(np.int64)
    ops = np.exp(0.1 * z[3])
    return used, [
        np.round(used / spec.total * 100.0, 2),
        np.round(read, 1),
        np.round(write, 1),
        np.round(read / spec.io_size * ops, 1),
        np.round(write / spec.io_size * ops, 1),
    ]


def interface(c: Chunk, noise: Noise, j: int) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Interface `j`'s (recv, sent, recv packets, sent packets) per second.

    Working-day traffic with short routine bursts, and injected bursts where planned.
    """
    a = c.asset
    iface = a.interfaces[j]
    z = noise.interface(len(a.disks), j)
    factor = np.where(noise.bursts[j] < 0.006, noise.burst_size[j], 1.0)
    for e in c.events:
        if e.kind == NETWORK_BURST and e.target == j:
            rows = c.span(e)
            factor[rows] = e.magnitude * np.exp(0.1 * z[3][rows])
    recv = iface.recv_bytes * (0.1 + c.activity) * np.exp(wander(a.wander[2], c.t) + 0.45 * z[0]) * factor
    sent = recv if iface.loopback else recv * iface.sent_ratio * np.exp(0.3 * z[1])
    recv, sent = np.round(recv, 1), np.round(sent, 1)
    recv_packets = np.round(recv / iface.packet_size * np.exp(0.05 * z[2]), 1)
    # Loopback: every packet sent is received.
    sent_packets = recv_packets if iface.loopback else np.round(sent / iface.packet_size * np.exp(0.05 * z[3]), 1)
    return recv, sent, recv_packets, sent_packets


def samples(c: Chunk, noise: Noise) -> tuple[FloatArray, IntArray]:
    """The chunk's float and int rows in `Columns` order (absent rows included)."""
    a = c.asset
    cols = Columns.of(a)
    size = c.n1 - c.n0
    floats = np.empty((size, cols.floats))
    ints = np.empty((size, cols.ints), dtype=np.int64)
    usage, temperature, frequency, per_core = cpu(c, noise)
    floats[:, 0] = usage
    floats[:, 1] = temperature
    floats[:, 2 : cols.memory] = per_core
    ints[:, 0] = frequency.astype(np.int64)
    floats[:, cols.memory], ints[:, 1], ints[:, 3], ints[:, 4] = memory(c, noise)
    ints[:, 2] = a.mem_total
    for d, spec in enumerate(a.disks):
        used, columns = disk(c, noise, d)
        floats[:, cols.disk(d) : cols.disk(d) + 5] = np.column_stack(columns)
        icol = cols.disk_int(d)
        ints[:, icol : icol + 3] = np.column_stack([np.full(size, spec.total), used, spec.total - used])
    total = np.zeros(size)
    for j in range(cols.interfaces):
        recv, sent, recv_packets, sent_packets = interface(c, noise, j)
        col = cols.interface(j)
        floats[:, col : col + 4] = np.column_stack([recv, sent, recv_packets, sent_packets])
        total += recv + sent
    floats[:, -1] = np.round(total, 1)
    ints[:, -3:] = np.column_stack(system(c, noise))
    return floats, ints
