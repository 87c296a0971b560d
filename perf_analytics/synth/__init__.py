"""A synthetic fleet: agent snapshots with realistic daily life and labelled anomalies.

Demos, tests and benchmarks need archives that look like what agents send, in any
size, reproducibly, together with the truth about what is unusual in them. This package
makes such a fleet from a handful of numbers and a seed, described once as a `FleetSpec`
(`FleetSpec(orgs=2, assets=5, days=1, seed=7)`) and passed whole to:

- `generate_fleet` yields agent payloads (the shape `schema.validate_snapshot` accepts),
  time-ordered across the whole fleet;
- `fleet_labels` lists the events in that data (injected anomalies, plus the routine
  reboots and agent outages of a normal fleet), computed without generating the data;
- `fleet_assets` gives the `assets` documents whose `_id` are the payloads' `assetId`;
- `write_fleet` writes all three to files (NDJSON, gzip or zstd by extension), atomically.

Every series is a closed-form function of time plus noise drawn from a per-asset random
stream, so the data is generated chunk by chunk in bounded memory, and the same
spec always gives byte-identical files.

Where things live, in the order the data is made:

- `spec`: the arguments, checked once (`FleetSpec`);
- `assets`: each asset's profile (hardware, habits), independent of the span;
- `events`: each asset's plan: boots, routine reboots and outages, injected anomalies;
- `plan`: the whole fleet planned, and its labels;
- `series`: the metric models, numpy over a chunk of steps;
- `payloads`: rows to the agents' payload dicts, chunk by chunk, in time order;
- `writer`: the files.
"""

from perf_analytics.synth.assets import fleet_assets
from perf_analytics.synth.events import (
    ANOMALY_KINDS,
    CPU_SATURATION,
    DISK_FILL,
    FLATLINE,
    LEVEL_SHIFT,
    MEMORY_LEAK,
    NETWORK_BURST,
    OUTAGE,
    OUTAGE_METRIC,
    REBOOT,
)
from perf_analytics.synth.payloads import generate_fleet
from perf_analytics.synth.plan import fleet_labels
from perf_analytics.synth.spec import DEFAULT_START, FleetSpec, time_window_for
from perf_analytics.synth.writer import GenerateSummary, default_labels_path, write_fleet

__all__ = [
    "ANOMALY_KINDS",
    "CPU_SATURATION",
    "DEFAULT_START",
    "DISK_FILL",
    "FLATLINE",
    "LEVEL_SHIFT",
    "MEMORY_LEAK",
    "NETWORK_BURST",
    "OUTAGE",
    "OUTAGE_METRIC",
    "REBOOT",
    "FleetSpec",
    "GenerateSummary",
    "default_labels_path",
    "fleet_assets",
    "fleet_labels",
    "generate_fleet",
    "time_window_for",
    "write_fleet",
]
