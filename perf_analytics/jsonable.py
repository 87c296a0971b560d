"""The one `default` for JSON encoders (orjson, json): how values JSON has no type for are written.

Two callers want two strictness levels of the same rule:

- the commands' `--json` output (`strict=False`): dates as ISO 8601, anything else as its
  text (ObjectIds, paths), so a summary always prints;
- the agents' HTTP API (`strict=True`): ObjectIds as hex and dates as ISO 8601, anything
  else a TypeError, so an unexpected type in a response is a bug found, not a string sent.
"""

from __future__ import annotations

from datetime import date


def json_default(value: object, *, strict: bool = False) -> str:
    """`value` as JSON text: a date or datetime as ISO 8601, an ObjectId as hex; with
    `strict`, any other type raises TypeError, without it becomes `str(value)`."""
    if isinstance(value, date):  # a datetime too; orjson writes aware ones itself
        return value.isoformat()
    if not strict:
        return str(value)
    # Imported here, not with the module: the commands import this and start without bson.
    from bson import ObjectId

    if isinstance(value, ObjectId):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
