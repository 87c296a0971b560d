"""The one JSON `default`: lenient for the commands' `--json` output, strict for the HTTP API."""

from __future__ import annotations

from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path

import orjson
import pytest
from bson import ObjectId

from perf_analytics.jsonable import json_default

OID = ObjectId("63d97a451d91d66a10abae42")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (OID, "63d97a451d91d66a10abae42"),
        (date(2026, 1, 5), "2026-01-05"),
        (datetime(2026, 1, 5, 6, 7, 8), "2026-01-05T06:07:08"),
        (datetime(2026, 1, 5, 6, 7, 8, tzinfo=UTC), "2026-01-05T06:07:08+00:00"),
    ],
)
@pytest.mark.parametrize("strict", [False, True])
def test_object_ids_and_dates_are_written_the_same_either_way(value: object, text: str, strict: bool) -> None:
    assert json_default(value, strict=strict) == text


def test_lenient_writes_anything_else_as_its_text() -> None:
    doc = {"path": Path("data/lake"), "id": OID, "n": 1}
    assert orjson.loads(orjson.dumps(doc, default=json_default)) == {
        "path": "data/lake", "id": "63d97a451d91d66a10abae42", "n": 1,
    }


def test_strict_refuses_anything_else() -> None:
    with pytest.raises(TypeError, match="PosixPath is not JSON serializable"):
        json_default(Path("data/lake"), strict=True)
    with pytest.raises(TypeError):
        orjson.dumps({"path": Path("data/lake")}, default=partial(json_default, strict=True))
