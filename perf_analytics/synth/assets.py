"""The assets of a synthetic fleet: who they are and how they behave, independent of time.

A profile depends on (seed, org, index) only, never on the span generated, so the asset
documents can be registered before or after any span of snapshots is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
from bson import ObjectId

from perf_analytics.synth import streams
from perf_analytics.synth.spec import check_count, check_seed

FloatArray = npt.NDArray[np.float64]

_GIB = 1024**3
_GB = 1000**3


@dataclass(frozen=True)
class Disk:
    """One disk of an asset."""

    name: str
    total: int
    fill0: float  # usage % at the start date
    fill_per_day: float  # % per day of slow growth
    io_bytes: float  # typical bytes/s at full activity
    io_size: float  # bytes per operation


@dataclass(frozen=True)
class Interface:
    """One network interface of an asset."""

    name: str
    recv_bytes: float  # typical bytes/s at full activity
    sent_ratio: float
    packet_size: float
    loopback: bool


@dataclass(frozen=True)
class Asset:
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
    disks: tuple[Disk, ...]
    interfaces: tuple[Interface, ...]
    wander: FloatArray  # rows cpu, memory, network; columns (amplitude, omega, phase) x 3

    @property
    def cores(self) -> int:
        """Logical CPUs (one `perCore` value each)."""
        return len(self.core_bias)

    def document(self) -> dict[str, Any]:
        """The `assets` collection's document: `_id` is the payloads' assetId as an ObjectId."""
        return {
            "_id": ObjectId(self.asset_id),
            "orgId": self.org_id,
            "name": self.name,
            "hostname": self.hostname,
            "os": self.os_name,
            "createdAt": self.created_at,
        }


def org_id(org_index: int, orgs: int) -> str:
    """`org-01`, ...: zero-padded to the width of the largest index, so ids sort."""
    return f"org-{org_index + 1:0{max(2, len(str(orgs)))}d}"


def _identity(seed: int, org: str, index: int) -> tuple[datetime, str, str]:
    """Creation time, asset id (an ObjectId's hex of that time) and agent id, from hashes."""
    created = datetime(2023, 1, 1, tzinfo=UTC) + timedelta(
        seconds=int.from_bytes(streams.digest(seed, org, index, "created", size=4)) % (730 * 86400)
    )
    oid = int(created.timestamp()).to_bytes(4) + streams.digest(seed, org, index, "asset", size=8)
    agent = "agent-" + streams.digest(seed, org, index, "agent", size=6).hex()
    return created, oid.hex(), agent


def _naming(rng: np.random.Generator, org: str, number: str, server: bool, windows: bool) -> tuple[str, str, str]:
    """(os name, hostname, display name) in the habits of each platform."""
    short = org.replace("-", "").upper()
    if windows and server:
        os_name = streams.pick(rng, ("Windows Server 2022", "Windows Server 2019"))
        return os_name, f"{short}-SRV{number}", f"{streams.pick(rng, ('File', 'App', 'SQL', 'Print'))} server {number}"
    if windows:
        os_name = streams.pick(rng, ("Windows 11 Pro", "Windows 10 Pro", "Windows 11 Enterprise"))
        return os_name, f"{short}-WS{number}", f"Workstation {number}"
    os_name = streams.pick(rng, ("Ubuntu 22.04 LTS", "Ubuntu 24.04 LTS", "Red Hat Enterprise Linux 9", "Debian 12"))
    role = streams.pick(rng, ("web", "db", "app", "build") if server else ("dev", "lab"))
    return os_name, f"{role}-{number}.{org}.internal", f"{role}-{number}"


def _disks(rng: np.random.Generator, server: bool, windows: bool) -> tuple[Disk, ...]:
    """A system disk and a data disk (and /data on Linux servers), partly filled."""
    if windows:
        system_disk = ("C:", streams.pick(rng, (128, 256, 512) if server else (256, 512, 1024)))
        data_disk = ("D:", streams.pick(rng, (1000, 2000, 4000) if server else (500, 1000, 2000)))
        specs = [system_disk, data_disk]
    else:
        specs = [("/", streams.pick(rng, (64, 128, 256))), ("/var", streams.pick(rng, (100, 250, 500)))]
        if server:
            specs.append(("/data", streams.pick(rng, (1000, 2000, 4000))))
    return tuple(
        Disk(
            name=name,
            total=int(size * _GB * rng.uniform(0.93, 0.99)) // 4096 * 4096,
            fill0=float(rng.uniform(25.0, 72.0)),
            fill_per_day=float(rng.uniform(0.02, 0.35)),
            io_bytes=float(rng.uniform(2e5, 2e6) * (8.0 if server else 1.0)),
            io_size=float(rng.uniform(8192.0, 65536.0)),
        )
        for name, size in specs
    )


def _interfaces(rng: np.random.Generator, server: bool, windows: bool) -> tuple[Interface, ...]:
    """A main link, a second one at a fraction of its traffic, and Linux's loopback."""
    if windows:
        names = ("Ethernet0", "Ethernet1") if server else ("Ethernet", "Wi-Fi")
    else:
        names = streams.pick(rng, (("eth0", "lo"), ("ens160", "ens192", "lo")))
    link = float(rng.uniform(2e6, 2e7) if server else rng.uniform(5e4, 6e5))
    return tuple(
        Interface(
            name=name,
            recv_bytes=link * (0.05 if name == "lo" else (1.0 if i == 0 else 0.15)),
            sent_ratio=float(rng.uniform(0.2, 1.2 if server else 0.5)),
            packet_size=float(rng.uniform(500.0, 1300.0)),
            loopback=name == "lo",
        )
        for i, name in enumerate(names)
    )


def make_asset(seed: int, org_index: int, index: int, orgs: int, per_org: int) -> Asset:
    """One asset's profile; it depends on (seed, org, index) only, never on the time span.

    The draws happen in a fixed order from the asset's own stream: reordering them
    changes every generated file (tests/test_generate.py holds the expected hashes).
    """
    rng = streams.stream(seed, streams.PROFILE, org_index, index)
    org_rng = streams.stream(seed, streams.ORG, org_index)
    tz_hours = float(streams.pick(org_rng, (-8, -6, -5, -3, 0, 1, 2, 5.5, 8, 9, 10)))
    org = org_id(org_index, orgs)
    number = f"{index + 1:0{max(3, len(str(per_org)))}d}"
    created, asset_id, agent_id = _identity(seed, org, index)

    server = bool(rng.random() < 0.35)
    windows = bool(rng.random() < (0.45 if server else 0.85))
    os_name, hostname, name = _naming(rng, org, number, server, windows)

    cores = int(streams.pick(rng, (4, 8, 16) if server else (2, 4, 8)))
    bias = rng.normal(0.0, 6.0, cores)
    core_bias = bias - bias.mean()  # per-core offsets average to zero, so mean(perCore) tracks usage
    disks = _disks(rng, server, windows)
    interfaces = _interfaces(rng, server, windows)

    periods_h = np.array(
        [[rng.uniform(0.6, 3.0), rng.uniform(5.0, 13.0), rng.uniform(36.0, 96.0)] for _ in range(3)]
    )
    amps = np.array([rng.uniform(1.0, 4.0, 3), rng.uniform(0.5, 1.5, 3), rng.uniform(0.05, 0.2, 3)])
    wander = np.concatenate([amps, 2 * np.pi / (periods_h * 3600.0), rng.uniform(0, 2 * np.pi, (3, 3))], axis=1)

    mem_total = int(streams.pick(rng, (16, 32, 64, 128) if server else (8, 16, 32))) * _GIB
    return Asset(
        org_index=org_index,
        index=index,
        org_id=org,
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
        freq_base=float(streams.pick(rng, (2100.0, 2400.0, 2900.0, 3200.0, 3600.0))),
        temp_base=float(rng.uniform(32.0, 45.0)),
        mem_total=mem_total,
        mem_base=float(rng.uniform(40.0, 60.0) if server else rng.uniform(35.0, 55.0)),
        mem_growth=float(rng.uniform(0.2, 1.0) if server else rng.uniform(0.5, 2.0)),
        mem_noise=float(rng.uniform(0.4, 1.2)),
        swap_total=int(streams.pick(rng, (2, 4, 8))) * _GIB,
        proc_base=float(rng.uniform(90.0, 260.0)),
        thread_ratio=float(rng.uniform(8.0, 15.0)),
        disks=disks,
        interfaces=interfaces,
        wander=wander,
    )


def make_assets(seed: int, orgs: int, per_org: int) -> list[Asset]:
    """Every asset of the fleet, org by org."""
    return [make_asset(seed, o, i, orgs, per_org) for o in range(orgs) for i in range(per_org)]


def fleet_assets(*, orgs: int, assets: int, seed: int = 0) -> list[dict[str, Any]]:
    """The `assets` documents of the fleet: `_id` is the payloads' assetId as an ObjectId.

    They depend on (orgs, assets, seed) only, so a demo can register the assets before or
    after generating any span of snapshots. Raises InvalidArgument for a count below 1 or a
    negative seed.
    """
    check_count("orgs", orgs)
    check_count("assets", assets)
    check_seed(seed)
    return [a.document() for a in make_assets(seed, orgs, assets)]
