"""The service's counters, in Prometheus' text exposition format (version 0.0.4).

Written by hand: counters, one gauge and two histograms are a few lines each, and a
client library would bring a process-global registry the tests would have to reset.
Each uvicorn worker process counts its own requests; a scrape sees the process that
answered it.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Histogram:
    buckets: Sequence[float]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        self.n += 1
        self.total += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{bound:g}"}} {count}' for bound, count in zip(self.buckets, self.counts, strict=True)]
        out += [f'{name}_bucket{{le="+Inf"}} {self.n}', f"{name}_sum {self.total:.6f}", f"{name}_count {self.n}"]
        return out


@dataclass
class Metrics:
    """Everything /metrics reports; `queue_depth` is read when scraped."""

    requests: Counter[tuple[str, str, int]] = field(default_factory=Counter)  # (method, route, status)
    rejects: Counter[str] = field(default_factory=Counter)  # by reason
    snapshots: Counter[str] = field(default_factory=Counter)  # inserted, duplicate, refused
    checks: Counter[str] = field(default_factory=Counter)  # snapshots checked as "columns" or one by one ("record")
    orphan_updates: int = 0
    last_seen_records: int = 0  # pending lastSeen records written (about one per org per round)
    batch_size: Histogram = field(default_factory=lambda: Histogram(BATCH_BUCKETS))
    insert_seconds: Histogram = field(default_factory=lambda: Histogram(SECONDS_BUCKETS))
    queue_depth: Callable[[], int] = lambda: 0

    def render(self) -> str:
        lines = [
            "# HELP perf_serve_requests_total HTTP requests answered, by method, route and status.",
            "# TYPE perf_serve_requests_total counter",
        ]
        for (method, route, status), n in sorted(self.requests.items()):
            lines.append(f'perf_serve_requests_total{{method="{method}",route="{route}",status="{status}"}} {n}')
        lines += [
            "# HELP perf_serve_rejects_total Requests refused, by reason.",
            "# TYPE perf_serve_rejects_total counter",
        ]
        lines += [f'perf_serve_rejects_total{{reason="{reason}"}} {n}' for reason, n in sorted(self.rejects.items())]
        lines += [
            "# HELP perf_serve_snapshots_total Snapshots written, by outcome.",
            "# TYPE perf_serve_snapshots_total counter",
        ]
        lines += [f'perf_serve_snapshots_total{{outcome="{k}"}} {n}' for k, n in sorted(self.snapshots.items())]
        lines += [
            "# HELP perf_serve_checks_total Snapshots checked, by path: a batch's columns or one by one.",
            "# TYPE perf_serve_checks_total counter",
        ]
        lines += [f'perf_serve_checks_total{{path="{k}"}} {n}' for k, n in sorted(self.checks.items())]
        lines += [
            "# HELP perf_serve_orphan_updates_total lastSeen updates for ids the org has no asset for.",
            "# TYPE perf_serve_orphan_updates_total counter",
            f"perf_serve_orphan_updates_total {self.orphan_updates}",
            "# HELP perf_serve_last_seen_records_total Pending lastSeen records written before inserts.",
            "# TYPE perf_serve_last_seen_records_total counter",
            f"perf_serve_last_seen_records_total {self.last_seen_records}",
            "# HELP perf_serve_batch_size Snapshots per insert (group commit).",
            "# TYPE perf_serve_batch_size histogram",
            *self.batch_size.lines("perf_serve_batch_size"),
            "# HELP perf_serve_insert_seconds Time of one batch insert, until the server acknowledged it.",
            "# TYPE perf_serve_insert_seconds histogram",
            *self.insert_seconds.lines("perf_serve_insert_seconds"),
            "# HELP perf_serve_queue_depth Snapshots waiting for their batch.",
            "# TYPE perf_serve_queue_depth gauge",
            f"perf_serve_queue_depth {self.queue_depth()}",
            "# HELP python_gc_collections_total Times the cyclic collector ran, by generation.",
            "# TYPE python_gc_collections_total counter",
        ]
        stats = gc.get_stats()
        lines += [f'python_gc_collections_total{{generation="{g}"}} {s["collections"]}' for g, s in enumerate(stats)]
        lines += [
            "# HELP python_gc_objects_collected_total Objects the cyclic collector freed, by generation.",
            "# TYPE python_gc_objects_collected_total counter",
        ]
        lines += [f'python_gc_objects_collected_total{{generation="{g}"}} {s["collected"]}' for g, s in enumerate(stats)]
        return "\n".join(lines) + "\n"
