"""The synthetic fleet: valid, deterministic, labelled truthfully, written atomically."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from dataclasses import FrozenInstanceError
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import zstandard
from bson import ObjectId, json_util
from click.testing import CliRunner

from perf_analytics.cli import app
from perf_analytics.errors import InvalidArgument
from perf_analytics.schema import parse_timestamp, validate_snapshot
from perf_analytics.synth import (
    ANOMALY_KINDS,
    DEFAULT_START,
    FleetSpec,
    default_labels_path,
    fleet_assets,
    fleet_labels,
    generate_fleet,
    time_window_for,
    write_fleet,
)

# Five days at five-minute intervals: small enough to be quick, long enough that every
# kind of anomaly is injected somewhere (a test below checks that it is).
FLEET: dict[str, Any] = {"orgs": 2, "assets": 4, "days": 5, "interval_s": 300, "seed": 7}
STEPS = FLEET["days"] * 86400 // FLEET["interval_s"]

Docs = dict[str, dict[datetime, dict[str, Any]]]


def _when(stamp: str) -> datetime:
    return parse_timestamp(stamp)


def _by_asset(docs: list[dict[str, Any]]) -> Docs:
    out: Docs = defaultdict(dict)
    for doc in docs:
        out[doc["assetId"]][_when(doc["timestamp"])] = doc
    return out


def _window(label: dict[str, Any], interval_s: int = FLEET["interval_s"]) -> list[datetime]:
    """Every sample time a label covers, first and last included."""
    start, end = _when(label["start"]), _when(label["end"])
    count = int((end - start).total_seconds()) // interval_s + 1
    return [start + timedelta(seconds=k * interval_s) for k in range(count)]


def _read_lines(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    elif path.name.endswith(".zst"):
        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return [orjson.loads(line) for line in data.splitlines()]


def _metric(doc: dict[str, Any], path: str) -> float:
    """The value at a label's metric path, e.g. `disk[C:].usagePercent`."""
    node: Any = doc["performanceData"]
    for part in path.split("."):
        match = re.fullmatch(r"(\w+)\[(.+)\]", part)
        if match:
            node = next(item for item in node[match[1]] if item["name"] == match[2])
        else:
            node = node[part]
    return float(node)


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return list(generate_fleet(FleetSpec(**FLEET)))


@pytest.fixture(scope="module")
def labels() -> list[dict[str, Any]]:
    return fleet_labels(FleetSpec(**FLEET))


@pytest.fixture(scope="module")
def clean_docs() -> list[dict[str, Any]]:
    return list(generate_fleet(FleetSpec(**FLEET, anomalies=False)))


# ---- the payloads ------------------------------------------------------------------------


def test_every_generated_snapshot_passes_the_contract(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        validate_snapshot(doc)


def test_payloads_have_the_agent_shape_with_several_disks_and_interfaces(docs: list[dict[str, Any]]) -> None:
    doc = docs[0]
    assert list(doc) == ["orgId", "agentId", "assetId", "timestamp", "timeWindow", "performanceData"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["timestamp"])
    assert doc["timeWindow"] == "5min"
    perf = doc["performanceData"]
    assert list(perf) == ["cpu", "memory", "disk", "network", "system"]
    assert set(perf["cpu"]) == {"usage", "temperature", "frequency", "perCore"}
    assert set(perf["memory"]) == {"usagePercent", "usedBytes", "totalBytes", "availableBytes", "swapUsed"}
    for d in docs[:200]:
        assert len(d["performanceData"]["disk"]) >= 2
        assert len(d["performanceData"]["network"]["interfaces"]) >= 2
        assert isinstance(d["performanceData"]["system"]["processCount"], int)


def test_related_fields_agree_with_each_other(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        perf = doc["performanceData"]
        cpu, mem = perf["cpu"], perf["memory"]
        assert abs(statistics.fmean(cpu["perCore"]) - cpu["usage"]) < 0.01
        assert mem["usedBytes"] + mem["availableBytes"] == mem["totalBytes"]
        assert abs(mem["usedBytes"] / mem["totalBytes"] * 100 - mem["usagePercent"]) < 0.01
        for disk in perf["disk"]:
            assert disk["usedBytes"] + disk["freeBytes"] == disk["totalBytes"]
        network = perf["network"]
        total = sum(i["bytesRecvPerSec"] + i["bytesSentPerSec"] for i in network["interfaces"])
        assert abs(total - network["totalUsage"]) < 1.0
        assert perf["system"]["threadCount"] >= perf["system"]["processCount"]


def test_the_file_order_is_time_order_across_assets(docs: list[dict[str, Any]]) -> None:
    stamps = [doc["timestamp"] for doc in docs]
    assert stamps == sorted(stamps)
    assert len({doc["assetId"] for doc in docs[:50]}) == FLEET["orgs"] * FLEET["assets"]


def test_workstation_cpu_follows_the_working_day(docs: list[dict[str, Any]]) -> None:
    hostnames = {str(a["_id"]): a["hostname"] for a in fleet_assets(**_ids_args())}
    spreads = []
    for asset_id, samples in _by_asset(docs).items():
        if "-WS" not in hostnames[asset_id]:
            continue
        by_hour: dict[int, list[float]] = defaultdict(list)
        for when, doc in samples.items():
            if when.weekday() < 5:
                by_hour[when.hour].append(doc["performanceData"]["cpu"]["usage"])
        hourly = [statistics.median(values) for values in by_hour.values()]
        spreads.append(max(hourly) - min(hourly))
    assert spreads, "the fleet has workstations"
    assert min(spreads) > 10


def test_temperature_rises_with_cpu(docs: list[dict[str, Any]]) -> None:
    cpu = [d["performanceData"]["cpu"]["usage"] for d in docs if d["assetId"] == docs[0]["assetId"]]
    temp = [d["performanceData"]["cpu"]["temperature"] for d in docs if d["assetId"] == docs[0]["assetId"]]
    assert statistics.correlation(cpu, temp) > 0.8


# ---- determinism ----------------------------------------------------------------------------


def _ids_args() -> dict[str, int]:
    return {"orgs": FLEET["orgs"], "assets": FLEET["assets"], "seed": FLEET["seed"]}


@pytest.mark.parametrize("name", ["fleet.ndjson", "fleet.ndjson.gz", "fleet.ndjson.zst"])
def test_the_same_seed_writes_identical_bytes_and_another_seed_does_not(tmp_path: Path, name: str) -> None:
    args = {"orgs": 2, "assets": 2, "days": 1, "interval_s": 300}
    first, second, other = (tmp_path / d for d in ("a", "b", "c"))
    for directory, seed in ((first, 3), (second, 3), (other, 4)):
        directory.mkdir()
        write_fleet(directory / name, FleetSpec(seed=seed, **args), assets_path=directory / "assets.ndjson")
    for file in (name, "fleet.labels.json", "assets.ndjson"):
        assert (first / file).read_bytes() == (second / file).read_bytes(), file
        assert (first / file).read_bytes() != (other / file).read_bytes(), file


def test_the_default_start_is_a_fixed_date_and_start_moves_the_data() -> None:
    args = {"orgs": 1, "assets": 1, "days": 1, "interval_s": 3600}
    first = next(generate_fleet(FleetSpec(**args)))
    assert _when(first["timestamp"]) - DEFAULT_START < timedelta(seconds=60)
    moved = next(generate_fleet(FleetSpec(**args, start="2025-06-01")))
    assert moved["timestamp"].startswith("2025-06-01T00:00:")
    assert next(generate_fleet(FleetSpec(**args, start=datetime(2025, 6, 1, tzinfo=UTC)))) == moved


# Golden output: the sha256 of every file `write_fleet` writes for three fixed fleets. They
# were recorded from perf_analytics/generate.py at commit 4d1e514, before the generator
# became the perf_analytics/synth package, by calling
#     write_fleet(f"{name}.ndjson", assets_path=f"{name}.assets.ndjson", **GOLDEN[name][0])
# (today's `write_fleet(f"{name}.ndjson", FleetSpec(**GOLDEN[name][0]), assets_path=...)`)
# and hashing each file with hashlib.sha256; the package must keep writing these bytes.
# Plain NDJSON only: compressed bytes also depend on the zlib and zstd builds. A change of
# numpy's random streams or of orjson's float formatting would show here too; only then,
# and knowingly, record new hashes the same way.
GOLDEN: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    "demo": (  # pipelines/demo.py's fleet
        {"orgs": 3, "assets": 4, "days": 2, "interval_s": 60, "seed": 7},
        {
            "demo.ndjson": "fc57c6c18edebc533b32c5fb9a69cdb8dcf3669cb7569a4856a5a1f0981e6069",
            "demo.labels.json": "ba95db681a96f90ab93e725fc83d470e1b3a38ceff52fa7870bea7475ffa2a12",
            "demo.assets.ndjson": "5714a75047338ebeb4cf735ce344d51f20ac1334cd72ad58267fb97c3fd15c87",
        },
    ),
    "every_kind": (  # FLEET above: every kind of anomaly is injected somewhere
        FLEET,
        {
            "every_kind.ndjson": "a0deb7d1dfe7fa226e9965a0936078a336518869dfa5ad5002c933c84c07548a",
            "every_kind.labels.json": "947dab9a9a863bfe95232347f87674c9feb483c2154ea308468f6d38cd7683ec",
            "every_kind.assets.ndjson": "de11e89870e94a291b69c683216e6cbf710afef79e17aded371283931b365263",
        },
    ),
    "clean": (  # routine life only, from another start, at a 15-minute interval
        {"orgs": 1, "assets": 3, "days": 2, "interval_s": 900, "seed": 3, "start": "2025-03-30", "anomalies": False},
        {
            "clean.ndjson": "d2f66f03c9fa4293c6b8bd40b6ce7673365dfdba0547c31e32c154674a854e05",
            "clean.labels.json": "17deff876f01244eda55fa220108d4fe1f57e63b74dfc6a3697d84166d6e0cb1",
            "clean.assets.ndjson": "7dd35346a1788c078d6a56e726316eb3f4ae4eb9bb727bf38b38833e57e316e6",
        },
    ),
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_the_generator_writes_the_recorded_bytes(tmp_path: Path, name: str) -> None:
    args, expected = GOLDEN[name]
    write_fleet(tmp_path / f"{name}.ndjson", FleetSpec(**args), assets_path=tmp_path / f"{name}.assets.ndjson")
    assert {p.name: _sha256(p) for p in tmp_path.iterdir()} == expected


def test_two_processes_write_the_same_bytes_whatever_their_hash_seed(tmp_path: Path) -> None:
    """Nothing may depend on the interpreter's string hashing (set or dict order of str)."""
    args = ["--orgs", "2", "--assets", "3", "--days", "1", "--interval", "300", "--seed", "11"]
    for run, hash_seed in (("a", "1"), ("b", "2")):
        (tmp_path / run).mkdir()
        subprocess.run(
            [sys.executable, "-m", "perf_analytics.cli", "generate", *args, "--out", "f.ndjson.zst",
             "--assets-out", "assets.ndjson"],
            cwd=tmp_path / run, env={**os.environ, "PYTHONHASHSEED": hash_seed}, check=True, capture_output=True,
        )
    for file in ("f.ndjson.zst", "f.labels.json", "assets.ndjson"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file


# ---- counts, ids and labels -----------------------------------------------------------------


def test_count_is_every_interval_of_every_asset_minus_the_labelled_outages(
    docs: list[dict[str, Any]], labels: list[dict[str, Any]]
) -> None:
    missing = sum(len(_window(label)) for label in labels if label["kind"] == "outage")
    assert missing > 0
    assert len(docs) == FLEET["orgs"] * FLEET["assets"] * STEPS - missing


def test_the_missing_samples_are_exactly_the_outage_windows(
    docs: list[dict[str, Any]], labels: list[dict[str, Any]]
) -> None:
    outages: dict[str, set[datetime]] = defaultdict(set)
    for label in labels:
        if label["kind"] == "outage":
            outages[label["assetId"]].update(_window(label))
    for asset_id, samples in _by_asset(docs).items():
        first = min(samples)
        offset = (first - DEFAULT_START).total_seconds() % FLEET["interval_s"]
        grid = {DEFAULT_START + timedelta(seconds=k * FLEET["interval_s"] + offset) for k in range(STEPS)}
        assert grid - set(samples) == outages[asset_id]
        assert set(samples) <= grid


def test_asset_ids_are_object_ids_of_the_asset_documents(docs: list[dict[str, Any]]) -> None:
    assets = fleet_assets(**_ids_args())
    assert len(assets) == FLEET["orgs"] * FLEET["assets"]
    ids = {str(a["_id"]) for a in assets}
    assert all(isinstance(a["_id"], ObjectId) for a in assets)
    assert {doc["assetId"] for doc in docs} == ids
    assert all(re.fullmatch(r"[0-9a-f]{24}", i) for i in ids)
    assert {a["orgId"] for a in assets} == {"org-01", "org-02"}
    owner = {str(a["_id"]): a["orgId"] for a in assets}
    assert all(owner[doc["assetId"]] == doc["orgId"] for doc in docs)
    assert {str(a["_id"]) for a in fleet_assets(**{**_ids_args(), "seed": 8})}.isdisjoint(ids)
    assert all(a["createdAt"].tzinfo is not None and a["createdAt"] < DEFAULT_START for a in assets)


def test_labels_lie_inside_the_data_and_cover_every_kind_on_some_assets(
    docs: list[dict[str, Any]], labels: list[dict[str, Any]]
) -> None:
    samples = _by_asset(docs)
    first, last = _when(docs[0]["timestamp"]), _when(docs[-1]["timestamp"])
    for label in labels:
        assert set(label) == {"orgId", "assetId", "metric", "kind", "start", "end", "injected"}
        assert first < _when(label["start"]) <= _when(label["end"]) <= last
        if label["kind"] != "outage":
            assert set(_window(label)) <= set(samples[label["assetId"]]), label
    injected = [label for label in labels if label["injected"]]
    assert {label["kind"] for label in injected} == set(ANOMALY_KINDS)
    assert 0 < len({label["assetId"] for label in injected}) < FLEET["orgs"] * FLEET["assets"]


def test_each_label_marks_data_that_is_anomalous(
    docs: list[dict[str, Any]], clean_docs: list[dict[str, Any]], labels: list[dict[str, Any]]
) -> None:
    data, clean = _by_asset(docs), _by_asset(clean_docs)
    interval = FLEET["interval_s"]
    checked: set[str] = set()
    for label in labels:
        if label["kind"] == "outage":
            continue
        series = data[label["assetId"]]
        window = _window(label)
        values = [_metric(series[t], label["metric"]) for t in window]
        before = _metric(series[window[0] - timedelta(seconds=interval)], label["metric"])
        after = series.get(window[-1] + timedelta(seconds=interval))
        kind = label["kind"]
        if kind == "cpu_saturation":
            assert min(values) > 90
        elif kind == "memory_leak":
            assert values[-1] > 90 and values[-1] > values[0]
        elif kind == "disk_fill":
            assert values[-1] > 95 and values[-1] > values[0]
        elif kind == "flatline":
            assert len(set(values)) == 1 and len(values) > 1
            assert before != values[0]
            assert after is None or _metric(after, label["metric"]) != values[0]
        elif kind in ("level_shift", "network_burst"):
            # The anomaly-free fleet has the same noise: compare with it sample by sample.
            # (It may miss a sample where a routine outage gave way to the anomaly.)
            pairs = [
                (_metric(series[t], label["metric"]), _metric(clean[label["assetId"]][t], label["metric"]))
                for t in window
                if t in clean[label["assetId"]]
            ]
            if kind == "level_shift":
                assert statistics.fmean(v - n for v, n in pairs) > 10
            else:
                assert min(v / n for v, n in pairs) > 10
        elif kind == "reboot":
            system = series[window[0]]["performanceData"]["system"]
            assert values[0] < interval < before
            assert system["processCount"] < series[window[-1]]["performanceData"]["system"]["processCount"]
        checked.add(kind)
    assert checked == set(ANOMALY_KINDS) - {"outage"}


def test_injected_anomalies_alter_the_data_only_inside_their_labels(
    docs: list[dict[str, Any]], clean_docs: list[dict[str, Any]], labels: list[dict[str, Any]]
) -> None:
    data, clean = _by_asset(docs), _by_asset(clean_docs)
    clean_labels = fleet_labels(FleetSpec(**FLEET, anomalies=False))
    labelled: dict[str, set[datetime]] = defaultdict(set)
    for label in labels + clean_labels:
        labelled[label["assetId"]].update(_window(label))
    reboots = [
        {(label["assetId"], label["start"]) for label in batch if label["kind"] == "reboot"}
        for batch in (labels, clean_labels)
    ]
    rebooted = {asset_id for asset_id, _ in reboots[0] ^ reboots[1]}
    assert rebooted, "some asset has an injected reboot"
    for asset_id, series in data.items():
        for when, doc in series.items():
            normal = clean[asset_id].get(when)
            if when in labelled[asset_id] or normal is None:
                continue
            if asset_id in rebooted:
                # A reboot resets the uptime counter and memory for good, not only for its warm-up.
                doc, normal = orjson.loads(orjson.dumps(doc)), orjson.loads(orjson.dumps(normal))
                for d in (doc, normal):
                    del d["performanceData"]["system"]["uptime"]
                    del d["performanceData"]["memory"]
            assert doc == normal, (asset_id, when)
    for label in labels:
        if label["injected"] and label["kind"] not in ("outage", "reboot"):
            normal = clean[label["assetId"]]
            changed = [
                _metric(data[label["assetId"]][t], label["metric"]) != _metric(normal[t], label["metric"])
                for t in _window(label)
                if t in normal
            ]
            assert all(changed), label


# ---- files ----------------------------------------------------------------------------------


def test_gz_and_zst_files_hold_the_same_records_as_plain_and_as_the_generator(tmp_path: Path) -> None:
    args = {"orgs": 1, "assets": 3, "days": 1, "interval_s": 120, "seed": 2}
    records = []
    for name in ("f.ndjson", "f.ndjson.gz", "f.ndjson.zst"):
        summary = write_fleet(tmp_path / name, FleetSpec(**args), labels_path=tmp_path / f"{name}.labels.json")
        lines = _read_lines(tmp_path / name)
        assert summary.snapshots == len(lines)
        records.append(lines)
    assert records[0] == records[1] == records[2] == list(generate_fleet(FleetSpec(**args)))
    compressed = (tmp_path / "f.ndjson.gz").read_bytes()
    assert compressed[4:8] == b"\0\0\0\0", "no modification time in the gzip header"
    assert gzip.decompress(compressed) == (tmp_path / "f.ndjson").read_bytes()


def test_the_labels_file_holds_the_arguments_and_the_labels(tmp_path: Path) -> None:
    summary = write_fleet(tmp_path / "fleet.ndjson.zst", FleetSpec(**FLEET))
    assert summary.labels_path == tmp_path / "fleet.labels.json"
    written = orjson.loads(summary.labels_path.read_bytes())
    assert written["labels"] == fleet_labels(FleetSpec(**FLEET))
    assert written["snapshots"] == summary.snapshots
    assert (written["intervalSeconds"], written["timeWindow"], written["start"]) == (300, "5min", "2026-01-05T00:00:00Z")
    assert summary.labels == len(written["labels"])
    assert summary.injected == sum(1 for label in written["labels"] if label["injected"])


@pytest.mark.parametrize(
    ("out", "labels"),
    [
        ("fleet.ndjson.zst", "fleet.labels.json"),
        ("runs/x.jsonl.gz", "runs/x.labels.json"),
        ("plain.ndjson", "plain.labels.json"),
        ("noext", "noext.labels.json"),
    ],
)
def test_the_default_labels_path_drops_compression_and_ndjson_suffixes(out: str, labels: str) -> None:
    assert default_labels_path(out) == Path(labels)


def test_the_assets_file_is_extended_json_with_oids_and_dates(tmp_path: Path) -> None:
    write_fleet(tmp_path / "f.ndjson", FleetSpec(orgs=2, assets=2, days=1), assets_path=tmp_path / "assets.ndjson")
    lines = (tmp_path / "assets.ndjson").read_text().splitlines()
    raw = orjson.loads(lines[0])
    assert set(raw) == {"_id", "orgId", "name", "hostname", "os", "createdAt"}
    assert re.fullmatch(r"[0-9a-f]{24}", raw["_id"]["$oid"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z", raw["createdAt"]["$date"])
    options = json_util.RELAXED_JSON_OPTIONS.with_options(tz_aware=True, tzinfo=UTC)
    assert [json_util.loads(line, json_options=options) for line in lines] == fleet_assets(orgs=2, assets=2)


def test_a_failed_write_leaves_no_file_under_the_final_name(tmp_path: Path) -> None:
    def stop(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_fleet(tmp_path / "fleet.ndjson.zst", FleetSpec(orgs=1, assets=2, days=1), progress=stop)
    assert not (tmp_path / "fleet.ndjson.zst").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_progress_reports_reach_the_total(tmp_path: Path) -> None:
    reports: list[tuple[int, int]] = []
    summary = write_fleet(
        tmp_path / "f.ndjson", FleetSpec(**FLEET), progress=lambda done, total: reports.append((done, total))
    )
    assert reports[-1] == (summary.snapshots, summary.snapshots)
    assert [done for done, _ in reports] == sorted(done for done, _ in reports)


# ---- arguments --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "window"),
    [(1, "1min"), (60, "1min"), (180, "5min"), (300, "5min"), (900, "15min"), (3600, "1hour"), (86400, "1day")],
)
def test_the_time_window_is_the_nearest_to_the_interval(interval: int, window: str) -> None:
    assert time_window_for(interval) == window


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"orgs": 0}, "orgs must be a whole number >= 1, got 0"),
        ({"days": 1.5}, "days must be a whole number >= 1, got 1.5"),
        ({"interval_s": 0}, "interval_s must be a whole number >= 1, got 0"),
        ({"interval_s": 86401}, "interval_s must be at most 86400 (one day), got 86401"),
        ({"seed": -1}, "seed must be a whole number >= 0, got -1"),
        ({"start": "last week"}, "start 'last week' is not a date (YYYY-MM-DD) or ISO-8601 time"),
    ],
)
def test_bad_arguments_raise_invalid_argument(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        fleet_labels(FleetSpec(**{**FLEET, **change}))
    assert str(raised.value) == message


def test_a_spec_is_checked_once_and_equal_for_the_same_moment_however_given() -> None:
    by_text = FleetSpec(orgs=1, assets=2, days=1, start="2025-06-01")
    assert by_text == FleetSpec(orgs=1, assets=2, days=1, start=date(2025, 6, 1))
    assert by_text.start == by_text.start_time == datetime(2025, 6, 1, tzinfo=UTC)
    assert FleetSpec(orgs=1, assets=2, days=1).start_time == DEFAULT_START
    with pytest.raises(FrozenInstanceError):
        by_text.days = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    "call",
    [
        lambda: generate_fleet(orgs=1, assets=1, days=1),  # type: ignore[call-arg]
        lambda: fleet_labels(orgs=1, assets=1, days=1),  # type: ignore[call-arg]
        lambda: write_fleet("f.ndjson", orgs=1, assets=1, days=1),  # type: ignore[call-arg]
    ],
)
def test_the_fleet_functions_take_the_spec_whole_not_its_fields(call: Any) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'orgs'"):
        call()


def test_writing_into_a_missing_directory_is_an_invalid_argument(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="does not exist"):
        write_fleet(tmp_path / "nope" / "f.ndjson", FleetSpec(orgs=1, assets=1, days=1))


# ---- the command --------------------------------------------------------------------------------


def test_the_command_writes_the_fleet_and_prints_one_summary_line(cli: CliRunner, tmp_path: Path) -> None:
    args = ["--orgs", "1", "--assets", "2", "--days", "1", "--interval", "300", "--seed", "5"]
    result = cli.invoke(app, ["generate", *args, "--out", "fleet.ndjson.zst", "--assets-out", "assets.ndjson"])
    assert result.exit_code == 0, result.output
    count = len(_read_lines(tmp_path / "fleet.ndjson.zst"))
    labels = orjson.loads((tmp_path / "fleet.labels.json").read_bytes())["labels"]
    injected = sum(1 for label in labels if label["injected"])
    expected = (
        rf"wrote {count} snapshots of 2 assets in 1 org to fleet\.ndjson\.zst in \d+\.\ds; "
        rf"{len(labels)} labels? \({injected} injected anomalies\) in fleet\.labels\.json; "
        r"asset documents in assets\.ndjson\n"
    )
    assert re.fullmatch(expected, result.stdout), result.stdout
    assert result.stderr == ""
    assert len((tmp_path / "assets.ndjson").read_text().splitlines()) == 2


def test_the_command_honours_start_labels_and_no_anomalies(cli: CliRunner, tmp_path: Path) -> None:
    args = ["--assets", "2", "--days", "2", "--interval", "600", "--start", "2025-03-02", "--no-anomalies"]
    result = cli.invoke(app, ["generate", *args, "--out", "clean.ndjson", "--labels", "truth.json"])
    assert result.exit_code == 0, result.output
    records = _read_lines(tmp_path / "clean.ndjson")
    assert records[0]["timestamp"].startswith("2025-03-02T00:0")
    assert records[0]["timeWindow"] == "15min"
    written = orjson.loads((tmp_path / "truth.json").read_bytes())
    assert not any(label["injected"] for label in written["labels"])
    assert records == list(generate_fleet(FleetSpec(orgs=2, assets=2, days=2, interval_s=600, start="2025-03-02", anomalies=False)))


@pytest.mark.parametrize(
    ("option", "value"),
    [("--orgs", "0"), ("--assets", "-1"), ("--days", "0"), ("--interval", "0"), ("--interval", "90000"),
     ("--seed", "-3"), ("--start", "05/01/2026")],
)
def test_bad_options_are_usage_errors(cli: CliRunner, option: str, value: str) -> None:
    result = cli.invoke(app, ["generate", "--out", "f.ndjson", option, value])
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and f"Invalid value for '{option}'" in errors[0], result.stderr
    assert not (Path.cwd() / "f.ndjson").exists()


def test_a_missing_output_option_is_a_usage_error(cli: CliRunner) -> None:
    result = cli.invoke(app, ["generate", "--orgs", "1"])
    assert result.exit_code == 2
    assert "Error: Missing option '--out'." in result.stderr


def test_a_library_error_is_one_error_line_and_exit_code_1(cli: CliRunner) -> None:
    result = cli.invoke(app, ["generate", "--out", "missing/f.ndjson"])
    assert result.exit_code == 1
    assert result.stderr == "Error: directory missing does not exist (for f.ndjson)\n"
    assert result.stdout == ""

