"""The embedded server: start, reuse, status, stop, in a state directory of the test's own.

These run with or without MONGODB_URI: they always start a private mongod or FerretDB.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner
from pymongo import MongoClient

from perf_analytics import localdb
from perf_analytics.cli import app


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "localdb-state"
    try:
        yield state
    finally:
        localdb.stop_server(state)


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, state_dir: Path) -> CliRunner:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PERF_CONFIG", raising=False)
    monkeypatch.setenv("PERF_STATE_DIR", str(state_dir))
    return CliRunner()


def _answers_ping(uri: str) -> bool:
    client: MongoClient[dict[str, object]] = MongoClient(uri, serverSelectionTimeoutMS=2000)
    try:
        return client.admin.command("ping").get("ok") == 1.0
    finally:
        client.close()


def _listening_addresses(pid: int) -> set[str]:
    return {
        conn.laddr.ip
        for conn in psutil.Process(pid).net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    }


def _exited(pid: int) -> bool:
    """Gone, or a zombie waiting for init to reap it."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in {"PERF_CONFIG", "MONGODB_URI"}}


def test_start_server_runs_a_private_server_on_loopback_that_answers_ping(state_dir: Path) -> None:
    server = localdb.start_server(state_dir)
    assert server.uri == f"mongodb://127.0.0.1:{server.port}/?directConnection=true"
    assert server.state_dir == str(state_dir.resolve())
    assert server.kind == localdb.find_server_binary()[0]
    assert _answers_ping(server.uri)
    assert _listening_addresses(server.pid) == {"127.0.0.1"}


def test_a_second_start_reuses_the_running_server(state_dir: Path) -> None:
    first = localdb.start_server(state_dir)
    second = localdb.start_server(state_dir)
    assert (second.pid, second.port) == (first.pid, first.port)


def test_server_status_sees_the_running_server(state_dir: Path) -> None:
    assert localdb.server_status(state_dir) is None
    server = localdb.start_server(state_dir)
    assert localdb.server_status(state_dir) == server


def test_stop_server_stops_it_and_status_is_then_none(state_dir: Path) -> None:
    server = localdb.start_server(state_dir)
    assert localdb.stop_server(state_dir) == server
    assert localdb.server_status(state_dir) is None
    assert _exited(server.pid)
    assert not (state_dir / "server.json").exists()


def test_stopping_when_nothing_runs_returns_none(state_dir: Path) -> None:
    assert localdb.stop_server(state_dir) is None


def test_a_server_started_by_another_process_is_reused_and_stopped(state_dir: Path) -> None:
    started = subprocess.run(
        [sys.executable, "-m", "perf_analytics.cli", "localdb", "start"],
        env={**_child_env(), "PERF_STATE_DIR": str(state_dir)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert started.returncode == 0, started.stderr
    server = localdb.server_status(state_dir)
    assert server is not None
    assert started.stdout.startswith(f"{server.kind} running on {server.uri} (pid {server.pid}")
    assert localdb.start_server(state_dir) == server
    assert localdb.stop_server(state_dir) == server
    assert _exited(server.pid)


def test_cli_status_exits_3_and_says_not_running_when_stopped(cli: CliRunner) -> None:
    result = cli.invoke(app, ["localdb", "status"])
    assert result.exit_code == 3
    assert result.stdout.startswith("not running; would start ")


def test_cli_start_status_and_stop(cli: CliRunner, state_dir: Path) -> None:
    started = cli.invoke(app, ["localdb", "start"])
    assert started.exit_code == 0, started.output
    server = localdb.server_status(state_dir)
    assert server is not None
    assert started.stdout.startswith(f"{server.kind} running on {server.uri} (pid {server.pid}")

    status = cli.invoke(app, ["localdb", "status"])
    assert status.exit_code == 0
    assert status.stdout == f"{server.kind} running on {server.uri} (pid {server.pid})\n"

    stopped = cli.invoke(app, ["localdb", "stop"])
    assert stopped.exit_code == 0
    assert stopped.stdout == f"stopped {server.kind} (pid {server.pid})\n"
    assert cli.invoke(app, ["localdb", "status"]).exit_code == 3
    assert cli.invoke(app, ["localdb", "stop"]).stdout == "no local server was running\n"
