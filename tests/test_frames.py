"""The flat analytical frames derived from the snapshot contract."""

from __future__ import annotations

import functools
import random
import subprocess
import sys
from typing import Any

import bson
import polars as pl
import pytest
from bson import Decimal128, Int64, ObjectId
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from perf_analytics.errors import ExtractError
from perf_analytics.extract import frames_from_raw_batches
from perf_analytics.frames import (
    KEYS,
    Decoder,
    arrow_schema,
    empty_frames,
    frames_from_documents,
    native_frames_from_raw,
    raw_decoder,
    snake,
)
from perf_analytics.schema import DISK_FIELDS, validate_snapshot
from perf_analytics.synth import FleetSpec, generate_fleet
from tests.factories import DELETE, series, set_path


def test_every_contract_field_becomes_a_snake_case_column() -> None:
    frames = empty_frames()
    assert "memory_usage_percent" in frames.snapshots.columns
    assert "system_process_count" in frames.snapshots.columns
    assert [snake(n) for n, _, _ in DISK_FIELDS] == frames.disks.columns[4:]
    assert frames.interfaces.columns[:4] == ["orgId", "assetId", "timestamp", "interface"]
    assert arrow_schema().field("timestamp").type.tz == "UTC"


def test_documents_flatten_into_one_row_per_snapshot_disk_and_interface() -> None:
    docs = [validate_snapshot(p) for p in series(3)]
    second_disk = {**docs[0]["performanceData"]["disk"][0], "name": "D:"}
    docs[2]["performanceData"]["disk"].append(second_disk)
    docs[0]["_id"] = ObjectId()
    frames = frames_from_documents(docs)
    assert frames.snapshots.height == 3
    assert frames.disks.height == 4
    assert frames.interfaces.height == 3
    row = frames.snapshots.row(0, named=True)
    assert row["_id"] == docs[0]["_id"].binary
    assert row["cpu_usage"] == 37.5
    assert row["cpu_per_core"] == [30.0, 45.0]
    assert row["system_process_count"] == 120
    assert row["network_bytes_recv_per_sec"] == 1000.0
    assert frames.disks.filter(disk="D:").height == 1


def test_a_snapshot_without_network_has_null_network_totals_not_zero() -> None:
    doc = validate_snapshot(set_path(series(1)[0], "performanceData.network", DELETE))
    frames = frames_from_documents([doc])
    assert frames.snapshots["network_bytes_sent_per_sec"].to_list() == [None]
    assert frames.interfaces.height == 0


# ---- the two decoders of raw BSON batches ----------------------------------------------

# One kind of damage per generated snapshot (the rest stay as stored): what other code or
# older agents leave in the collection. Each is a (dotted path, value) or a deletion; the
# decoders must agree on every one, whether it is read, read as null or refused.
DAMAGE: list[tuple[str, Any]] = [
    ("performanceData.cpu.temperature", DELETE),
    ("performanceData.cpu.perCore", DELETE),
    ("performanceData.cpu.perCore", [1, None, Int64(3), True, float("nan")]),
    ("performanceData.cpu.perCore", "30,45"),  # not an array: an empty list, not refused
    ("performanceData.cpu.perCore", [30.0, "45"]),  # refused
    ("performanceData.cpu.usage", "45.5"),  # refused
    ("performanceData.cpu.usage", Decimal128("45.5")),  # refused
    ("performanceData.cpu.usage", 45),
    ("performanceData.cpu.usage", Int64(45)),
    ("performanceData.cpu.usage", True),
    ("performanceData.cpu.usage", None),
    ("performanceData.cpu.usage", float("nan")),
    ("performanceData.cpu", "busy"),  # not an object: every field null
    ("performanceData.memory", DELETE),
    ("performanceData.memory.swapUsed", DELETE),
    ("performanceData.disk", DELETE),
    ("performanceData.disk", None),
    ("performanceData.disk", []),
    ("performanceData.disk", "C:"),  # not an array: no disks, sums of 0
    ("performanceData.disk", [None, 5, {"usagePercent": 1.0}]),  # objects of nulls, a nameless one
    ("performanceData.disk.0.readBytesPerSec", DELETE),
    ("performanceData.disk.0.usagePercent", "40"),  # refused
    ("performanceData.network", DELETE),
    ("performanceData.network", 7),
    ("performanceData.network.interfaces", DELETE),
    ("performanceData.network.interfaces.0.name", DELETE),
    ("performanceData.network.interfaces.0.bytesSentPerSec", None),
    ("performanceData.system.processCount", 120.9),  # a double count: truncated, as pymongoarrow does
    ("performanceData.system.processCount", "120"),  # refused
    ("performanceData.system", DELETE),
    ("performanceData", DELETE),
    ("timeWindow", DELETE),
    ("agentId", None),
    ("timestamp", "2026-01-05T00:00:00Z"),  # refused
    ("_id", "snap-1"),  # refused
    ("extra", {"odd": [Decimal128("1"), b"\x00", {"deep": None}]}),  # unknown fields are ignored
    ("performanceData.gpu", {"usage": "high"}),
]


def _fleet_documents() -> list[dict[str, Any]]:
    """A small generated fleet as stored (ObjectId `_id` first), every damage applied to
    some of its snapshots, untouched ones in between."""
    docs = []
    for i, payload in enumerate(generate_fleet(FleetSpec(orgs=2, assets=3, days=1, interval_s=900, seed=7))):
        doc = {"_id": ObjectId(), **validate_snapshot(payload)}
        if i % 3 == 1:
            path, value = DAMAGE[(i // 3) % len(DAMAGE)]
            doc = set_path(doc, path, value)
        docs.append(doc)
    return docs


def _batches(docs: list[dict[str, Any]], per_batch: int) -> list[bytes]:
    return [b"".join(bson.encode(d) for d in docs[i : i + per_batch]) for i in range(0, len(docs), per_batch)]


def test_the_native_decoder_is_built_and_in_use() -> None:
    assert raw_decoder() == "native"


@pytest.mark.slow
def test_both_decoders_give_equal_frames_and_skip_the_same_documents() -> None:
    docs = _fleet_documents()
    assert len(docs) > 3 * len(DAMAGE)  # every damage is applied at least once
    batches = _batches(docs, 50)

    native = frames_from_raw_batches(batches, decoder="native")
    reference = frames_from_raw_batches(batches, decoder="pymongoarrow")

    for name, order in (("snapshots", KEYS), ("disks", (*KEYS, "disk")), ("interfaces", (*KEYS, "interface"))):
        got, expected = getattr(native.frames, name), getattr(reference.frames, name)
        # Rows that tie on the sort keys (a snapshot's nameless disks) come in no set order.
        assert_frame_equal(got.sort(pl.all()), expected.sort(pl.all()))
        assert_frame_equal(got, got.sort(order, maintain_order=True))
        assert got.select(order).equals(expected.select(order))
    assert native.skipped == reference.skipped
    assert native.skipped_count == reference.skipped_count == 35
    assert native.frames.snapshots.height == len(docs) - 35



def _element(key: str, value: Any, rng: random.Random) -> tuple[bytes, bytes]:
    """One BSON element (type byte, key, value), objects within it shuffled: (with a
    repeated key now and then, without)."""
    if isinstance(value, dict):
        noisy, clean = _shuffled(value, rng)
        return b"\x03" + key.encode() + b"\x00" + noisy, b"\x03" + key.encode() + b"\x00" + clean
    if isinstance(value, list):  # an array keeps its order
        items = [_element(str(i), v, rng) for i, v in enumerate(value)]
        head = b"\x04" + key.encode() + b"\x00"
        return head + _document(b"".join(e[0] for e in items)), head + _document(b"".join(e[1] for e in items))
    plain = bson.encode({key: value})[4:-1]
    return plain, plain


def _document(body: bytes) -> bytes:
    return (len(body) + 5).to_bytes(4, "little") + body + b"\x00"


def _shuffled(doc: dict[str, Any], rng: random.Random) -> tuple[bytes, bytes]:
    """`doc` as BSON with its fields in a random order: (now and then one of its keys
    written a second time, later, with another value, as raw bytes can; without that)."""
    items = [(key, _element(key, value, rng)) for key, value in doc.items()]
    rng.shuffle(items)
    noisy = [element for _, (element, _) in items]
    if items and rng.random() < 0.3:
        first = rng.randrange(len(items))
        noise = rng.choice(["again", 1.5, None, {"x": 1}, [2.0]])
        noisy.insert(rng.randint(first + 1, len(items)), bson.encode({items[first][0]: noise})[4:-1])
    return _document(b"".join(noisy)), _document(b"".join(element for _, (_, element) in items))


@functools.cache
def _stored_documents() -> tuple[dict[str, Any], ...]:
    return tuple(_fleet_documents())


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 500), st.integers(0, 2**32))
def test_both_decoders_agree_whatever_the_order_of_the_fields_and_on_repeated_keys(start: int, seed: int) -> None:
    rng = random.Random(seed)  # one seed drives every shuffle: small examples for Hypothesis
    docs = [_shuffled(d, rng) for d in _stored_documents()[start : start + 40]]
    noisy, clean = ([b"".join(d[n] for d in docs[i : i + 15]) for i in range(0, len(docs), 15)] for n in (0, 1))

    native = frames_from_raw_batches(clean, decoder="native")
    reference = frames_from_raw_batches(clean, decoder="pymongoarrow")
    for name in ("snapshots", "disks", "interfaces"):
        got, expected = getattr(native.frames, name), getattr(reference.frames, name)
        assert_frame_equal(got.sort(pl.all()), expected.sort(pl.all()))
    assert native.skipped == reference.skipped
    assert native.frames.snapshots.height + native.skipped_count == len(docs)

    # A repeated key is read once, at its first occurrence. pymongoarrow cannot be the
    # reference here (it fails on some repeated keys), nor can the refused documents'
    # report (Python's decoder keeps a key's last value): the decoder's own output is.
    with_repeats, refused = native_frames_from_raw(noisy)
    without, refused_without = native_frames_from_raw(clean)
    for name in ("snapshots", "disks", "interfaces"):
        assert_frame_equal(getattr(with_repeats, name), getattr(without, name))
    assert refused == refused_without


def test_both_decoders_give_the_empty_frames_for_no_documents() -> None:
    for decoder in ("native", "pymongoarrow"):
        got = frames_from_raw_batches([], decoder=decoder).frames
        for name in ("snapshots", "disks", "interfaces"):
            assert_frame_equal(getattr(got, name), getattr(empty_frames(), name))


@pytest.mark.parametrize("decoder", ["native", "pymongoarrow"])
def test_a_refused_document_doctor_cannot_repair_stops_either_decoder_with_one_message(decoder: Decoder) -> None:
    docs = [{"_id": ObjectId(), **validate_snapshot(p)} for p in series(3)]
    docs[1]["agentId"] = 7
    with pytest.raises(ExtractError) as info:
        frames_from_raw_batches(_batches(docs, 2), decoder=decoder)
    assert str(info.value) == (
        f"snapshot {docs[1]['_id']} cannot be read (Got unexpected type `int32` instead of expected type "
        "`string`) and is none of the off-type kinds `doctor --fix` repairs"
    )


@pytest.mark.slow
def test_both_decoders_give_the_mirror_equal_typed_rows_with_refused_ones_in_place() -> None:
    from perf_analytics.sync import _typed_rows, _typed_schema

    raw = [bson.encode(d) for d in _fleet_documents()]
    native = _typed_rows(raw, _typed_schema(), "native")
    reference = _typed_rows(raw, _typed_schema(), "pymongoarrow")
    assert native.num_rows == len(raw)
    assert native.equals(reference)
    assert native.column("typed").to_pylist().count(False) == 30  # the `_id` is no typed column here


@pytest.mark.slow
def test_without_the_native_module_pymongoarrow_decodes_and_asking_for_native_is_a_clear_error() -> None:
    script = (
        "import sys; sys.modules['perf_analytics_native'] = None\n"  # what an absent module does
        "from perf_analytics.errors import ConfigError\n"
        "from perf_analytics.extract import frames_from_raw_batches\n"
        "from perf_analytics.frames import raw_decoder\n"
        "print(raw_decoder())\n"
        "try:\n"
        "    frames_from_raw_batches([], decoder='native')\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [
        "pymongoarrow",
        "the native decoder is not installed: `make setup` builds it",
    ]
    assert "perf_analytics_native is not built" in out.stderr
