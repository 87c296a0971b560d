"""UTC days as the toolkit names them: YYYY-MM-DD text, a `date`, or an aware `datetime`.

Light on purpose (standard library only): the commands parse their day options with it
before any of the data stack is imported.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from perf_analytics.errors import InvalidArgument


def parse_day(value: date | datetime | str) -> date:
    """The UTC day `value` names: a `date`, the UTC day of an aware `datetime`, or YYYY-MM-DD text.

    Raises:
        InvalidArgument: text that is not a YYYY-MM-DD date, or a naive datetime.
    """
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidArgument(f"{value.isoformat()} must be timezone-aware (UTC)")
        return value.astimezone(UTC).date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"not a date (YYYY-MM-DD): {value!r}") from None
