"""The `perf-analytics` shell: help on every command, one-line errors, exit codes."""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from perf_analytics import __version__
from perf_analytics.cli import SUMMARIES, app


def _command_paths(command: click.Command, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [path]
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, name
            paths.extend(_command_paths(sub, (*path, name)))
    return paths


COMMAND_PATHS = _command_paths(app)


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _one_error_line(result: Result) -> str:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert result.stderr.endswith("\n") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr.rstrip("\n")


def test_the_walk_finds_the_nested_commands() -> None:
    assert ("localdb", "status") in COMMAND_PATHS
    assert {path[0] for path in COMMAND_PATHS if path} >= {"init", "ingest", "migrate", "doctor", "generate"}


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=lambda p: " ".join(p) or "perf-analytics")
def test_every_command_has_help_with_an_example(cli: CliRunner, path: tuple[str, ...]) -> None:
    result = cli.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.stdout, result.stdout


@pytest.mark.parametrize("name", sorted(SUMMARIES))
def test_the_listed_summary_is_the_commands_own_short_help(name: str) -> None:
    command = importlib.import_module(f"perf_analytics.commands.{name}").command
    assert SUMMARIES[name] == command.get_short_help_str(limit=10**6)


def test_the_help_defaults_are_the_librarys_own() -> None:
    from perf_analytics import extract, migrate, pipeline, plots, report, retention, rollups, sync
    from perf_analytics.commands import _defaults
    from perf_analytics.ingest import checkpoint, readers

    assert _defaults.ASSET_BATCH == pipeline.DEFAULT_ASSET_BATCH
    assert _defaults.EXTRACT_CHUNK_ROWS == extract.DEFAULT_CHUNK_ROWS
    assert _defaults.SYNC_CHUNK_ROWS == sync.DEFAULT_CHUNK_ROWS
    assert _defaults.SYNC_SKEW == sync.DEFAULT_SKEW
    assert _defaults.MIGRATE_BATCH_SIZE == migrate.DEFAULT_BATCH_SIZE
    assert _defaults.REPORT_TOP == report.DEFAULT_TOP
    assert _defaults.REPORT_MOST == report.DEFAULT_MOST
    assert _defaults.RETENTION_OLDER_THAN_DAYS == retention.DEFAULT_OLDER_THAN_DAYS
    assert _defaults.PLOT_SUFFIXES == plots.SUFFIXES
    assert _defaults.INGEST_FORMATS == readers.FORMATS
    assert _defaults.INGEST_COMPRESSIONS == readers.COMPRESSIONS
    assert _defaults.CHECKPOINT_DIR == checkpoint.DEFAULT_DIR
    assert _defaults.WINDOWS == rollups.WINDOWS


HEAVY_MODULES = (
    "polars", "pyarrow", "duckdb", "pymongoarrow", "matplotlib", "numpy",
    "dask", "distributed", "starlette", "uvicorn", "pymongo", "rich",
)


def _modules_after(args: list[str], cwd: Path) -> set[str]:
    """The modules a fresh interpreter has imported after running the CLI with `args`."""
    script = (
        "import json, sys\n"
        "from perf_analytics.cli import main\n"
        f"sys.argv = ['perf-analytics', *{args!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERF_")}
    done = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize(
    "args", [["--help"], *([name, "--help"] for name in sorted(SUMMARIES)), ["localdb", "status"]],
    ids=" ".join,
)
def test_help_and_localdb_status_import_none_of_the_data_stack(tmp_path: Path, args: list[str]) -> None:
    modules = _modules_after(args, tmp_path)
    assert "perf_analytics.cli" in modules
    assert {name.partition(".")[0] for name in modules} & set(HEAVY_MODULES) == set()


def test_the_version_is_printed(cli: CliRunner) -> None:
    result = cli.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.stdout


@pytest.mark.parametrize(
    ("credentials", "shown"), [("", ""), ("ops:s3cret@", "***@")], ids=["plain", "the-password-is-not-printed"]
)
def test_an_unreachable_server_is_one_error_line_and_exit_code_1(cli: CliRunner, credentials: str, shown: str) -> None:
    port = _closed_port()
    result = cli.invoke(
        app,
        ["--uri", f"mongodb://{credentials}127.0.0.1:{port}/?directConnection=true", "init"],
        env={"PERF_SERVER_TIMEOUT_MS": "200"},
    )
    line = _one_error_line(result)
    assert line.startswith(f"Error: cannot reach MongoDB at mongodb://{shown}127.0.0.1:{port}/")
    assert result.stdout == ""
    assert "s3cret" not in result.output


def test_a_malformed_uri_is_one_error_line(cli: CliRunner) -> None:
    result = cli.invoke(app, ["--uri", "http://example.com", "init"])
    assert _one_error_line(result).startswith("Error: invalid MongoDB URI: ")


@pytest.mark.parametrize("value", ["soon", "0", "-5"])
def test_a_bad_server_timeout_is_one_error_line(cli: CliRunner, value: str) -> None:
    result = cli.invoke(app, ["--uri", "mongodb://127.0.0.1:1/", "init"], env={"PERF_SERVER_TIMEOUT_MS": value})
    line = _one_error_line(result)
    assert line == (
        "Error: server_timeout_ms (env PERF_SERVER_TIMEOUT_MS) must be a positive whole number of milliseconds, "
        f"got {value!r}"
    )


@pytest.mark.parametrize("name", ["a/b", "my.db", "has space", "$x"])
def test_an_invalid_db_name_is_one_error_line(cli: CliRunner, name: str) -> None:
    result = cli.invoke(app, ["--uri", "mongodb://127.0.0.1:1/", "--db", name, "init"])
    assert _one_error_line(result) == f"Error: invalid database name {name!r}"
    assert result.stdout == ""


def test_the_db_name_from_the_environment_is_checked_too(cli: CliRunner) -> None:
    result = cli.invoke(app, ["--uri", "mongodb://127.0.0.1:1/", "init"], env={"PERF_DB": "a/b"})
    assert _one_error_line(result) == "Error: invalid database name 'a/b'"
