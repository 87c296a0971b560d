"""The fleet's arguments, checked once: how many orgs and assets, which span, which seed.

Every other module of the fleet reads these numbers from one `FleetSpec`, so a bad
argument is reported before any work starts, in the words of the library's arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from perf_analytics.errors import InvalidArgument
from perf_analytics.schema import TIME_WINDOWS

DEFAULT_START = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday; fixed so output depends on the seed only


def check_count(name: str, value: Any) -> int:
    """`value` if it is a whole number >= 1, else an InvalidArgument naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(f"{name} must be a whole number >= 1, got {value!r}")
    return value


def check_seed(seed: Any) -> int:
    """`seed` if it is a whole number >= 0, else an InvalidArgument."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidArgument(f"seed must be a whole number >= 0, got {seed!r}")
    return seed


def parse_start(start: datetime | date | str | None) -> datetime:
    """The first moment of the fleet in UTC, whole seconds; a date means its midnight UTC."""
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
            raise InvalidArgument(f"start {start!r} is not a date (YYYY-MM-DD) or ISO-8601 time") from None
        start = parsed
    if not isinstance(start, datetime):
        start = datetime(start.year, start.month, start.day, tzinfo=UTC)
    moment = start if start.tzinfo else start.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(microsecond=0)


def time_window_for(interval_s: int) -> str:
    """The agents' `timeWindow` nearest to `interval_s` (by ratio: 180 s is "5min")."""
    return min(TIME_WINDOWS, key=lambda w: abs(math.log(interval_s / TIME_WINDOWS[w].total_seconds())))


@dataclass(frozen=True)
class FleetSpec:
    """The checked generation arguments and the figures that follow from them."""

    orgs: int
    per_org: int  # assets per organisation
    days: int
    interval: int  # seconds between two snapshots of one asset
    seed: int
    start: datetime
    anomalies: bool

    @classmethod
    def of(
        cls,
        *,
        orgs: int,
        assets: int,
        days: int,
        interval_s: int,
        seed: int,
        start: datetime | date | str | None,
        anomalies: bool,
    ) -> FleetSpec:
        """Check the public functions' arguments; raises InvalidArgument on the first bad one."""
        checked = [check_count(name, value) for name, value in (("orgs", orgs), ("assets", assets), ("days", days))]
        interval = check_count("interval_s", interval_s)
        if interval > 86400:
            raise InvalidArgument(f"interval_s must be at most 86400 (one day), got {interval_s}")
        return cls(
            orgs=checked[0],
            per_org=checked[1],
            days=checked[2],
            interval=interval,
            seed=check_seed(seed),
            start=parse_start(start),
            anomalies=anomalies,
        )

    @property
    def start_epoch(self) -> int:
        """`start` in seconds since 1970 (the series models work in plain seconds)."""
        return int(self.start.timestamp())

    @property
    def steps(self) -> int:
        """Sample slots per asset over the whole span."""
        return self.days * 86400 // self.interval

    @property
    def window(self) -> str:
        """The `timeWindow` every payload carries."""
        return time_window_for(self.interval)

    @property
    def end(self) -> datetime:
        """The moment just after the span (exclusive)."""
        return self.start + timedelta(seconds=self.steps * self.interval)
