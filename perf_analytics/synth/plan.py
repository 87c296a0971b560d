"""The fleet's plan: its assets, what happens to each, and the labels that tell the truth.

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
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from perf_analytics.synth.assets import Asset, make_assets
from perf_analytics.synth.events import OUTAGE, AssetPlan, plan_assets
from perf_analytics.synth.spec import FleetSpec


@dataclass(frozen=True)
class FleetPlan:
    """A whole fleet, planned: assets with their plans, in the order they report each step."""

    spec: FleetSpec
    assets: list[Asset]
    plans: list[AssetPlan]
    order: list[int]  # indexes into assets: by sample offset, so the file is time-ordered

    @classmethod
    def of(cls, spec: FleetSpec) -> FleetPlan:
        """Plan the fleet `spec` describes (cheap: no samples are made)."""
        assets = make_assets(spec.seed, spec.orgs, spec.assets)
        plans = plan_assets(spec, assets)
        order = sorted(range(len(assets)), key=lambda k: (plans[k].offset_s, k))
        return cls(spec=spec, assets=assets, plans=plans, order=order)

    def timestamp(self, plan: AssetPlan, step: int) -> str:
        """The payload timestamp of an asset's sample `step` (ISO-8601, UTC, whole seconds)."""
        moment = self.spec.start_time + timedelta(seconds=plan.time_of(step))
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

    def labels(self) -> list[dict[str, Any]]:
        """Every event of every asset as a label (see the module docstring), by start time."""
        rows = []
        for a, plan in zip(self.assets, self.plans, strict=True):
            for e in plan.events:
                key = (e.start * self.spec.interval_s + plan.offset_s, a.org_id, a.asset_id, e.kind)
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
        """Snapshots the fleet sends: every slot of every asset minus the outages' slots."""
        missing = sum(e.end - e.start + 1 for plan in self.plans for e in plan.events if e.kind == OUTAGE)
        return len(self.assets) * self.spec.steps - missing


def fleet_labels(spec: FleetSpec) -> list[dict[str, Any]]:
    """The events in the fleet `generate_fleet(spec)` makes, by start time.

    Each label is `{orgId, assetId, metric, kind, start, end, injected}` (see the module
    docstring); it is computed from the plan alone, without generating snapshots.
    """
    return FleetPlan.of(spec).labels()
