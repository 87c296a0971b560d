"""The frames' row order, checked on generated documents (Hypothesis), for the native
decoder and for the Polars flattening of a nested table (`frames_from_arrow`, the path of
pymongoarrow's tables).

The frames come sorted by (orgId, assetId, timestamp), nulls first, each snapshot's disks
and interfaces by name: the order Polars gives with `maintain_order=True`, so rows with
equal keys keep the order they were read in. Timestamps are drawn from a few values (ties
on every key), one day (the keys packed into one integer) and the whole int64 range (too
wide to pack: the keys compared one by one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import bson
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perf_analytics.frames import (
    KEYS,
    Frames,
    frames_from_arrow,
    native_frames_from_raw,
    native_table_from_raw,
)

DAY_MS = 86_400_000
INT64 = 2**63

names = st.none() | st.sampled_from(["", "C:", "D:", "/", "/data", "é", "org-1", "org-10"])
# One range of timestamps per example, so that the narrow one gives many equal keys.
timestamp_ranges = st.sampled_from([(0, 3), (0, DAY_MS - 1), (-INT64, INT64 - 1)])


def _snapshots(bounds: tuple[int, int]) -> st.SearchStrategy[list[dict[str, Any]]]:
    snapshot = st.fixed_dictionaries({
        "orgId": names,
        "assetId": names | st.text(max_size=3),
        "timestamp": st.none() | st.integers(*bounds),
        "disk": st.lists(names, max_size=4),
    })
    return st.lists(snapshot, max_size=80)


def _documents(drawn: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The drawn snapshots as documents, each marked with its position (its process count)
    and each disk with its own (its usage), to see where every row went."""
    docs: list[dict[str, Any]] = []
    disk_mark = 0
    for position, d in enumerate(drawn):
        disks = []
        for name in d["disk"]:
            disks.append({"name": name, "usagePercent": float(disk_mark)})
            disk_mark += 1
        stamp = None if d["timestamp"] is None else bson.DatetimeMS(d["timestamp"])
        docs.append({"orgId": d["orgId"], "assetId": d["assetId"], "timestamp": stamp,
                     "performanceData": {"disk": disks, "system": {"processCount": position}}})
    return docs


def _expected(drawn: list[dict[str, Any]]) -> tuple[list[int], list[float]]:
    """Snapshot and disk marks in the order Polars sorts the keys, stably, nulls first."""
    keys = pl.DataFrame(
        {"orgId": [d["orgId"] for d in drawn], "assetId": [d["assetId"] for d in drawn],
         "timestamp": [d["timestamp"] for d in drawn], "position": range(len(drawn))},
        schema={"orgId": pl.String, "assetId": pl.String, "timestamp": pl.Int64, "position": pl.Int64},
    )
    order = keys.sort(list(KEYS), maintain_order=True)["position"].to_list()
    disks: list[float] = []
    first = [0]
    for d in drawn:
        first.append(first[-1] + len(d["disk"]))
    for position in order:
        named = list(enumerate(drawn[position]["disk"]))
        named.sort(key=lambda item: (item[1] is not None, (item[1] or "").encode()))
        disks.extend(float(first[position] + i) for i, _ in named)
    return order, disks


def _flattened(batches: list[bytes]) -> tuple[Frames, list[Any]]:
    """The nested table of the batches, unsorted, flattened and sorted by Polars."""
    table, refused = native_table_from_raw(batches, with_id=True)
    return frames_from_arrow(table), refused


@pytest.mark.parametrize("decode", [native_frames_from_raw, _flattened], ids=["native", "flattened"])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(timestamp_ranges.flatmap(_snapshots), st.integers(1, 7))
def test_frames_sort_as_polars_sorts_the_keys_stably_with_nulls_first(
    decode: Callable[[list[bytes]], tuple[Frames, list[Any]]], drawn: list[dict[str, Any]], per_batch: int
) -> None:
    docs = _documents(drawn)
    batches = [b"".join(bson.encode(d) for d in docs[i : i + per_batch]) for i in range(0, len(docs), per_batch)]

    frames, refused = decode(batches)

    order, disks = _expected(drawn)
    assert refused == []
    assert frames.snapshots["system_process_count"].to_list() == order
    assert frames.disks["usage_percent"].to_list() == disks
    keys = [(drawn[p]["orgId"], drawn[p]["assetId"]) for p in order for _ in drawn[p]["disk"]]
    assert list(zip(frames.disks["orgId"].to_list(), frames.disks["assetId"].to_list(), strict=True)) == keys
