"""The snapshot contract: normalisation, precise rejection, and one contract every reader follows."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pyarrow as pa
import pytest
from bson import ObjectId

from perf_analytics import schema
from perf_analytics.doctor import diagnose
from perf_analytics.errors import ValidationError
from perf_analytics.extract import extract_window
from perf_analytics.frames import arrow_schema, frames_from_documents
from perf_analytics.schema import ASSETS, METRIC_STRING, SNAPSHOTS, hashed_key, validate_snapshot
from perf_analytics.store import Db
from tests.factories import DELETE, T0, set_path, snapshot


def test_valid_payload_is_normalised_to_doubles_ints_and_utc_dates() -> None:
    doc = validate_snapshot(snapshot())
    perf = doc["performanceData"]
    assert doc["timestamp"] == T0
    assert type(perf["cpu"]["temperature"]) is float
    assert perf["cpu"]["perCore"] == [30.0, 45.0] and all(type(v) is float for v in perf["cpu"]["perCore"])
    assert type(perf["memory"]["usedBytes"]) is float
    assert type(perf["disk"][0]["readOpsPerSec"]) is float
    assert type(perf["network"]["interfaces"][0]["bytesRecvPerSec"]) is float
    assert type(perf["system"]["processCount"]) is int and perf["system"]["processCount"] == 120
    assert type(perf["system"]["uptime"]) is float


def test_the_callers_payload_is_not_modified() -> None:
    payload = snapshot()
    before = repr(payload)
    validate_snapshot(payload)
    assert repr(payload) == before


def test_unknown_fields_are_kept_at_every_level() -> None:
    payload = set_path(snapshot(agentVersion="2.1"), "performanceData.cpu.model", "Xeon")
    payload = set_path(payload, "performanceData.gpu", {"usage": 3})
    doc = validate_snapshot(payload)
    assert doc["agentVersion"] == "2.1"
    assert doc["performanceData"]["cpu"]["model"] == "Xeon"
    assert doc["performanceData"]["gpu"] == {"usage": 3}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-03-01T12:00:00Z", T0),
        ("2026-03-01T12:00:00", T0),  # naive means UTC
        ("2026-03-01T14:00:00+02:00", T0),
        ("2026-03-01T12:00:00.123456Z", T0 + timedelta(milliseconds=123)),
        (int(T0.timestamp()), T0),  # epoch seconds
        (T0.timestamp(), T0),
        (int(T0.timestamp() * 1000), T0),  # epoch milliseconds
        ({"$date": "2026-03-01T12:00:00Z"}, T0),
        ({"$date": int(T0.timestamp() * 1000)}, T0),
        ({"$date": {"$numberLong": str(int(T0.timestamp() * 1000))}}, T0),
        (datetime(2026, 3, 1, 12, 0), T0),  # naive BSON date
        (datetime(2026, 3, 1, 7, 0, tzinfo=timezone(timedelta(hours=-5))), T0),
    ],
)
def test_timestamps_in_every_accepted_form_become_utc(value: object, expected: datetime) -> None:
    ts = validate_snapshot(snapshot(timestamp=value))["timestamp"]
    assert ts == expected
    assert ts.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("path", "value", "field", "reason"),
    [
        ("orgId", DELETE, "orgId", "is required"),
        ("orgId", "", "orgId", "must not be empty"),
        ("orgId", "   ", "orgId", "must not be empty"),
        ("agentId", DELETE, "agentId", "is required"),
        ("assetId", 17, "assetId", "expected a string, got int"),
        ("timestamp", DELETE, "timestamp", "is required"),
        ("timestamp", "yesterday", "timestamp", "not an ISO-8601 date"),
        ("timestamp", True, "timestamp", "expected a date, got boolean"),
        ("timestamp", float("nan"), "timestamp", "finite"),
        ("timeWindow", "2min", "timeWindow", "'2min' is not one of 1min, 5min, 15min, 1hour, 1day"),
        ("timeWindow", DELETE, "timeWindow", "is required"),
        ("performanceData", DELETE, "performanceData", "is required"),
        ("performanceData", [], "performanceData", "expected an object, got array"),
        ("performanceData.cpu", DELETE, "performanceData.cpu", "is required"),
        ("performanceData.cpu.usage", DELETE, "performanceData.cpu.usage", "is required"),
        ("performanceData.cpu.usage", "45", "performanceData.cpu.usage", "expected a number, got string"),
        ("performanceData.cpu.usage", 100.5, "performanceData.cpu.usage", "outside [0, 100]"),
        ("performanceData.cpu.usage", -1, "performanceData.cpu.usage", "outside [0, 100]"),
        ("performanceData.cpu.usage", math.inf, "performanceData.cpu.usage", "finite"),
        ("performanceData.cpu.usage", False, "performanceData.cpu.usage", "got boolean"),
        ("performanceData.cpu.perCore.1", 101, "performanceData.cpu.perCore[1]", "outside [0, 100]"),
        ("performanceData.cpu.perCore", "30,40", "performanceData.cpu.perCore", "expected an array"),
        ("performanceData.cpu.temperature", -300, "performanceData.cpu.temperature", "absolute zero"),
        ("performanceData.memory", DELETE, "performanceData.memory", "is required"),
        ("performanceData.memory.usedBytes", -5, "performanceData.memory.usedBytes", "must be >= 0"),
        ("performanceData.memory.usedBytes", 9e9, "performanceData.memory.usedBytes", "exceeds totalBytes"),
        ("performanceData.memory.totalBytes", DELETE, "performanceData.memory.totalBytes", "is required"),
        ("performanceData.disk", {"name": "C:"}, "performanceData.disk", "expected an array"),
        ("performanceData.disk.0.name", DELETE, "performanceData.disk[0].name", "is required"),
        ("performanceData.disk.0.name", "", "performanceData.disk[0].name", "must not be empty"),
        ("performanceData.disk.0.usagePercent", 140, "performanceData.disk[0].usagePercent", "outside"),
        ("performanceData.disk.0.usedBytes", 6e11, "performanceData.disk[0].usedBytes", "exceeds totalBytes"),
        ("performanceData.disk.0.writeOpsPerSec", -2, "performanceData.disk[0].writeOpsPerSec", ">= 0"),
        ("performanceData.network.totalUsage", DELETE, "performanceData.network.totalUsage", "is required"),
        ("performanceData.network.interfaces", DELETE, "performanceData.network.interfaces", "is required"),
        ("performanceData.network.interfaces.0", "eth0", "performanceData.network.interfaces[0]", "expected an object"),
        ("performanceData.network.interfaces.0.bytesSentPerSec", None,
         "performanceData.network.interfaces[0].bytesSentPerSec", "is required"),
        ("performanceData.system.processCount", 12.5, "performanceData.system.processCount", "whole number"),
        ("performanceData.system.threadCount", -1, "performanceData.system.threadCount", "whole number"),
        ("performanceData.system.uptime", -60.0, "performanceData.system.uptime", "must be >= 0"),
        ("_id", 12, "_id", "expected an ObjectId or a 24-hex-digit string, got int 12"),
        ("_id", "snap-1", "_id", "expected an ObjectId or a 24-hex-digit string, got string 'snap-1'"),
        ("_id", None, "_id", "expected an ObjectId or a 24-hex-digit string, got null"),
        ("timeWindow", ["1min"], "timeWindow", "['1min'] is not one of"),
        ("timestamp", {"$date": {"$numberLong": "soon"}}, "timestamp", "$numberLong must be a string of digits"),
        ("timestamp", 10**400, "timestamp", "out of range"),
        ("timestamp", "0001-01-01T00:00:00+01:00", "timestamp", "out of range in UTC"),
        ("performanceData.memory.usedBytes", 10**400, "performanceData.memory.usedBytes", "too large"),
    ],
)
def test_each_kind_of_malformed_payload_is_rejected_with_field_and_reason(
    path: str, value: object, field: str, reason: str
) -> None:
    with pytest.raises(ValidationError) as info:
        validate_snapshot(set_path(snapshot(), path, value))
    assert info.value.field == field
    assert reason in info.value.reason
    assert str(info.value).startswith(f"{field}: ")


def test_a_payload_that_is_not_an_object_is_rejected() -> None:
    with pytest.raises(ValidationError, match="expected an object, got array"):
        validate_snapshot([1, 2])


def test_optional_sections_and_fields_may_be_absent_or_null() -> None:
    payload = snapshot()
    for path in ("performanceData.disk", "performanceData.network", "performanceData.system",
                 "performanceData.cpu.perCore", "performanceData.cpu.temperature"):
        payload = set_path(payload, path, DELETE)
    payload = set_path(payload, "performanceData.memory.swapUsed", None)
    doc = validate_snapshot(payload)
    assert set(doc["performanceData"]) == {"cpu", "memory"}
    assert "swapUsed" not in doc["performanceData"]["memory"]
    assert "temperature" not in doc["performanceData"]["cpu"]


def test_org_of_the_call_fills_a_missing_org_and_refuses_a_different_one() -> None:
    payload = set_path(snapshot(), "orgId", DELETE)
    assert validate_snapshot(payload, org_id="org-z")["orgId"] == "org-z"
    with pytest.raises(ValidationError, match="names org 'org-a' but the call is for org 'org-b'"):
        validate_snapshot(snapshot(), org_id="org-b")


def test_an_objectid_is_kept_as_the_document_id() -> None:
    oid = ObjectId()
    assert validate_snapshot(snapshot(_id=oid))["_id"] == oid


def test_timestamps_are_cut_to_milliseconds_like_bson() -> None:
    ts = validate_snapshot(snapshot(timestamp=datetime(2026, 3, 1, 12, 0, 0, 999_999, tzinfo=UTC)))["timestamp"]
    assert ts.microsecond == 999_000


def test_a_24_hex_digit_string_id_is_stored_as_its_objectid() -> None:
    assert validate_snapshot(snapshot(_id="65a0f0f0f0f0f0f0f0f0f0f0"))["_id"] == ObjectId("65a0f0f0f0f0f0f0f0f0f0f0")


BAD_IDS = ["*", "org%2D01", "org%2F01", "org/01", "p|q", "a b", ".", "..", "-x", "_x", "x" * 129, "caf\u00e9", "a\0"]


@pytest.mark.parametrize("field", ["orgId", "assetId", "agentId"])
@pytest.mark.parametrize("value", BAD_IDS)
def test_ids_outside_the_identifier_rule_are_rejected_naming_the_field(field: str, value: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_snapshot(snapshot(**{field: value}))
    assert info.value.field == field
    assert "is not an identifier: use letters, digits and . _ : -" in info.value.reason


@pytest.mark.parametrize("value", ["org-01", "a.b_c:d-e", "A" * 128, "0", "65a0f0f0f0f0f0f0f0f0f0f0"])
def test_ids_inside_the_identifier_rule_are_accepted_unchanged(value: str) -> None:
    doc = validate_snapshot(snapshot(orgId=value, assetId=value, agentId=value))
    assert (doc["orgId"], doc["assetId"], doc["agentId"]) == (value, value, value)


def test_the_org_of_the_call_follows_the_identifier_rule_too() -> None:
    with pytest.raises(ValidationError, match="orgId: '\\*' is not an identifier"):
        validate_snapshot(set_path(snapshot(), "orgId", DELETE), org_id="*")


def test_keys_hashed_from_ids_differ_wherever_the_ids_split() -> None:
    assert hashed_key("p|q", "r") != hashed_key("p", "q|r")
    assert hashed_key("a", "b") == hashed_key("a", "b")
    assert len(hashed_key("a")) == 64


# -- one contract: a field or a section added in schema.TABLES reaches every reader ------


def test_a_field_and_a_section_added_to_the_contract_reach_validation_frames_extraction_and_doctor(
    db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpu, *rest = schema.TABLES
    steal = ("stealPercent", schema.PERCENT, False)
    battery = schema.Table("performanceData.battery", (("chargePercent", schema.PERCENT, True),))
    monkeypatch.setattr(schema, "TABLES", (replace(cpu, fields=(*cpu.fields, steal)), *rest, battery))
    payload = set_path(set_path(snapshot(), "performanceData.cpu.stealPercent", 7), "performanceData.battery", {"chargePercent": 80})

    # validation
    doc = validate_snapshot(payload)
    assert doc["performanceData"]["cpu"]["stealPercent"] == 7.0 and type(doc["performanceData"]["cpu"]["stealPercent"]) is float
    with pytest.raises(ValidationError, match=r"performanceData\.cpu\.stealPercent: percentage 170"):
        validate_snapshot(set_path(payload, "performanceData.cpu.stealPercent", 170))
    with pytest.raises(ValidationError, match=r"performanceData\.battery\.chargePercent: is required"):
        validate_snapshot(set_path(payload, "performanceData.battery", {}))
    # the Arrow schema and the frames
    perf = arrow_schema().field("performanceData").type
    assert perf.field("cpu").type.field("stealPercent").type == pa.float64()
    assert perf.field("battery").type == pa.struct([("chargePercent", pa.float64())])
    frames = frames_from_documents([doc])
    assert frames.snapshots.select("cpu_steal_percent", "battery_charge_percent").row(0) == (7.0, 80.0)
    # extraction from the server
    stored = [{"_id": ObjectId(), **doc}, {"_id": ObjectId(), **validate_snapshot({**payload, "timestamp": T0 + timedelta(minutes=1)})}]
    stored[1]["performanceData"]["cpu"]["stealPercent"] = "7"  # as other code might store it
    db[SNAPSHOTS].insert_many(stored)
    got = extract_window(db, "org-a", T0, T0 + timedelta(hours=1))
    assert got.frames.snapshots.select("cpu_steal_percent", "battery_charge_percent").rows() == [(7.0, 80.0)]
    assert [(p.id, p.reason) for p in got.skipped] == [(stored[1]["_id"], METRIC_STRING)]
    # doctor's off-type filter and repair
    db[ASSETS].insert_one({"_id": "asset-1", "orgId": "org-a", "lastSeen": T0 + timedelta(days=1)})
    report = diagnose(db, "org-a", fix=True)
    assert (report.off_type.found, report.off_type.fixed) == (1, 1)
    assert extract_window(db, "org-a", T0, T0 + timedelta(hours=1)).frames.snapshots["cpu_steal_percent"].to_list() == [7.0, 7.0]
    monkeypatch.undo()
    assert "cpu_steal_percent" not in frames_from_documents([validate_snapshot(snapshot())]).snapshots.columns
