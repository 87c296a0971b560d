"""The public API: what `perf_analytics` exports, how it loads, and how its calls are made."""

from __future__ import annotations

import ast
import inspect
import json
import re
import subprocess
import sys
import tomllib
from dataclasses import FrozenInstanceError
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import perf_analytics
from perf_analytics import (
    InvalidArgument,
    LoadOptions,
    ingest_archives,
    ingest_archives_all_orgs,
    parse_day,
    validate_archives,
)
from perf_analytics.cli import app
from perf_analytics.ingest import IngestSummary

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("polars", "pyarrow", "duckdb", "pymongo", "pymongoarrow", "matplotlib", "numpy", "dask")


@pytest.mark.parametrize("name", perf_analytics.__all__)
def test_every_exported_name_imports(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from perf_analytics import {name}", namespace)
    assert namespace[name] is getattr(perf_analytics, name)


def test_the_names_type_checkers_see_are_the_exported_ones() -> None:
    tree = ast.parse((ROOT / "perf_analytics" / "__init__.py").read_text())
    guarded = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    seen = {alias.name for node in guarded.body if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert seen | {"__version__"} == set(perf_analytics.__all__)
    assert len(perf_analytics.__all__) == len(set(perf_analytics.__all__))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'read_windows'"):
        _ = perf_analytics.read_windows  # type: ignore[attr-defined]


def test_importing_the_package_loads_none_of_the_data_stack() -> None:
    script = "import json, sys, perf_analytics; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    loaded = {name.partition(".")[0] for name in json.loads(done.stdout)}
    assert loaded & set(HEAVY) == set()


def test_no_exported_function_takes_arbitrary_keyword_options() -> None:
    loose = [
        name for name in perf_analytics.__all__
        if inspect.isfunction(value := getattr(perf_analytics, name))
        and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(value).parameters.values())
    ]
    assert loose == []


def test_load_options_are_keyword_only(tmp_path: Path) -> None:
    archive = tmp_path / "a.ndjson"
    with pytest.raises(TypeError, match="positional"):
        ingest_archives(None, [archive], "org-a", LoadOptions())  # type: ignore[arg-type,misc]
    with pytest.raises(TypeError, match="positional"):
        ingest_archives_all_orgs(None, [archive], LoadOptions())  # type: ignore[arg-type,misc]


@pytest.mark.parametrize("load", [ingest_archives_all_orgs, validate_archives])
def test_the_loading_calls_take_their_options_as_one_load_options(load: Any, tmp_path: Path) -> None:
    # The options are one value, passed whole, not eleven keywords repeated per function.
    with pytest.raises(TypeError, match="unexpected keyword argument 'batch_size'"):
        load(None, [tmp_path / "a.ndjson"], batch_size=10)
    shared = {"options", "progress"}
    for function in (ingest_archives, ingest_archives_all_orgs, validate_archives):
        keywords = {n for n, p in inspect.signature(function).parameters.items() if p.kind is p.KEYWORD_ONLY}
        assert keywords == shared, function.__name__


@pytest.mark.parametrize(("name", "keywords"), [("flag_anomalies", {"options"}), ("flag_assets", {"options", "state"})])
def test_the_flag_calls_take_their_options_as_one_flag_options(name: str, keywords: set[str]) -> None:
    # day, history, config, last_seen and now are one FlagOptions, not keywords repeated per function.
    import perf_analytics.anomalies as anomalies

    function = getattr(anomalies, name)
    params = inspect.signature(function).parameters.values()
    assert {p.name for p in params if p.kind is p.KEYWORD_ONLY} == keywords
    assert perf_analytics.FlagOptions is anomalies.FlagOptions


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch_size": 0}, "batch_size must be a whole number >= 1, got 0"),
        ({"workers": True}, "workers must be a whole number >= 1, got True"),
        ({"commit_seconds": -1.0}, "commit_seconds must be a finite number >= 0, got -1.0"),
        ({"commit_seconds": float("nan")}, "commit_seconds must be a finite number >= 0, got nan"),
        ({"fmt": "csv"}, "fmt must be one of ndjson, json, bson, got 'csv'"),
        ({"compression": "xz"}, "compression must be one of none, gzip, zstd, got 'xz'"),
    ],
)
def test_load_options_are_checked_when_built(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        LoadOptions(**change)
    assert str(raised.value) == message
    assert isinstance(raised.value, ValueError)


def test_load_options_are_frozen() -> None:
    options = LoadOptions(batch_size=10)
    with pytest.raises(FrozenInstanceError):
        options.batch_size = 20  # type: ignore[misc]


def test_the_package_ships_its_type_hints() -> None:
    assert (ROOT / "perf_analytics" / "py.typed").is_file()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["perf_analytics"]


@pytest.mark.parametrize(
    ("value", "day"),
    [("2026-03-01", date(2026, 3, 1)), (date(2026, 3, 1), date(2026, 3, 1)),
     (datetime(2026, 3, 1, 23, 30, tzinfo=UTC), date(2026, 3, 1))],
)
def test_parse_day_reads_text_dates_and_aware_times(value: object, day: date) -> None:
    assert parse_day(value) == day  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "message"), [
    ("March", "not a date (YYYY-MM-DD): 'March'"),
    (datetime(2026, 3, 1), "2026-03-01T00:00:00 must be timezone-aware"),
])
def test_parse_day_refuses_what_names_no_utc_day(value: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        parse_day(value)  # type: ignore[arg-type]


def test_a_bad_day_option_is_named_by_its_own_flag(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["--lake", str(tmp_path), "nightly", "--from", "soon", "--to", "2026-03-01"])
    assert result.exit_code == 1
    assert result.stderr == "Error: --from: not a date (YYYY-MM-DD): 'soon'\n"


def test_a_load_summary_reads_as_lines_for_a_person() -> None:
    summary = IngestSummary(read=3, inserted=2, duplicates=1, seconds=1.0, rejects_path=None,
                            orphan_assets=["a1"], orphaned=1)
    assert summary.describe().splitlines() == [
        "read 3 · inserted 2 · duplicates 1 · rejected 0 · orphaned 1 · 1.0s (3 docs/s)",
        "1 asset(s) not found in assets (snapshots kept): a1",
    ]
