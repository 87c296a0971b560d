"""The fleet's arguments, checked once: how many orgs and assets, which span, which seed.

Every other module of the fleet reads these numbers from one `FleetSpec`, the one
argument of the public functions, so a bad argument is reported when the spec is built,
before any work starts, in the words of the library's arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast

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
    """A synthetic fleet, described: every argument of `generate_fleet`, `fleet_labels` and `write_fleet`.

    Built once with keywords (`FleetSpec(orgs=2, assets=5, days=1)`) and passed whole, so
    the three functions cannot be called with arguments that differ by accident. `assets`
    is per organisation; each asset sends one snapshot every `interval_s` seconds for `days`
    days from `start` (a datetime, a date meaning its midnight UTC, or ISO-8601 text;
    default `DEFAULT_START`, fixed so the output depends on the seed alone).
    `anomalies=False` leaves out injected anomalies but keeps routine reboots and
    agent-update outages. The same spec always gives the same bytes.

    Raises:
        InvalidArgument: on construction, for the first bad argument (named as here).
    """

    orgs: int
    assets: int  # per organisation
    days: int
    interval_s: int = 60  # seconds between two snapshots of one asset
    seed: int = 0
    start: datetime | date | str | None = None  # a datetime in UTC, whole seconds, once built
    anomalies: bool = True

    def __post_init__(self) -> None:
        for name in ("orgs", "assets", "days", "interval_s"):
            check_count(name, getattr(self, name))
        if self.interval_s > 86400:
            raise InvalidArgument(f"interval_s must be at most 86400 (one day), got {self.interval_s}")
        check_seed(self.seed)
        # Frozen, so the checked start replaces the given one through object.__setattr__:
        # two specs of the same moment, given as a date or as text, are then equal.
        object.__setattr__(self, "start", parse_start(self.start))

    @property
    def start_time(self) -> datetime:
        """`start` as checked: the first moment of the fleet, UTC, whole seconds."""
        return cast(datetime, self.start)

    @property
    def start_epoch(self) -> int:
        """`start` in seconds since 1970 (the series models work in plain seconds)."""
        return int(self.start_time.timestamp())

    @property
    def steps(self) -> int:
        """Sample slots per asset over the whole span."""
        return self.days * 86400 // self.interval_s

    @property
    def window(self) -> str:
        """The `timeWindow` every payload carries."""
        return time_window_for(self.interval_s)

    @property
    def end(self) -> datetime:
        """The moment just after the span (exclusive)."""
        return self.start_time + timedelta(seconds=self.steps * self.interval_s)
