"""Fixtures: a real MongoDB wire-protocol server for the whole session, a throwaway db per test.

MONGODB_URI set: tests run against that server. Unset: a private FerretDB (or mongod)
is started on a free loopback port in a temporary directory and stopped at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from pymongo import MongoClient

from perf_analytics import localdb
from perf_analytics.cli import app
from perf_analytics.config import Settings
from perf_analytics.store import Db, connect_uri, ensure_indexes

_SERVER_NOTE: list[str] = []
_STATE: list[Path] = []  # the state directory of the session's private FerretDB, if one was started


def pytest_report_header(config: pytest.Config) -> str:
    if os.environ.get("MONGODB_URI"):
        return "database: MONGODB_URI (external server)"
    kind, binary = localdb.find_server_binary()
    return f"database: private {kind} started for this session ({binary or 'to be built'})"


@pytest.fixture(scope="session")
def server_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    uri = os.environ.get("MONGODB_URI")
    if uri:
        yield uri
        return
    state = tmp_path_factory.mktemp("localdb")
    server = localdb.start_server(state)
    _SERVER_NOTE.append(f"{server.kind} on port {server.port}")
    if server.kind == "ferretdb":
        _STATE.append(state)
    try:
        yield server.uri
    finally:
        localdb.stop_server(state)


@pytest.fixture
def db_name() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def raw_db(server_uri: str, db_name: str) -> Iterator[Db]:
    """An empty database of its own for one test, dropped afterwards."""
    db = connect_uri(server_uri, db_name)
    try:
        yield db
    finally:
        db.client.drop_database(db_name)
        db.client.close()


@pytest.fixture
def db(raw_db: Db) -> Db:
    """An empty database with the snapshot indexes in place (on the private FerretDB, the
    snapshot collection with the _id path index a command of the embedded server gives it;
    a collection a test makes later, `assets` among them, goes without, as it would until
    the next command)."""
    ensure_indexes(raw_db)
    for state in _STATE:
        localdb.index_id_paths(state, live_rows=localdb.LIVE_INDEX_ROWS)
    return raw_db


@pytest.fixture
def settings(server_uri: str, db_name: str, tmp_path: Path) -> Settings:
    """Settings pointing the library and CLI at this test's database and a private lake."""
    return Settings(uri=server_uri, db=db_name, lake=str(tmp_path / "lake"), state_dir=str(tmp_path / "state"))


@pytest.fixture
def client(server_uri: str) -> Iterator[MongoClient[dict[str, object]]]:
    c: MongoClient[dict[str, object]] = MongoClient(server_uri, tz_aware=True)
    try:
        yield c
    finally:
        c.close()


class Cli(CliRunner):
    """A click runner for the CLI; called, it runs `perf-analytics` on this test's server and lake.

    `cli("sync", "--json")` runs `perf-analytics --uri U --db D --lake L sync --json` with the
    test's `settings`, which are asked for only then: a test of `--help` or of a bad flag
    (`cli.invoke(app, [...])`, as click's runner) needs no server.
    """

    def __init__(self, request: pytest.FixtureRequest) -> None:
        super().__init__()
        self._request = request

    @property
    def settings(self) -> Settings:
        settings: Settings = self._request.getfixturevalue("settings")
        return settings

    def __call__(self, *args: str, env: Mapping[str, str | None] | None = None) -> Result:
        s = self.settings
        return self.invoke(app, ["--uri", str(s.uri), "--db", s.db, "--lake", str(s.lake), *args], env=env)


@pytest.fixture
def cli(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Cli:
    """The CLI in a working directory of its own (`tmp_path`): a click runner, and called,
    the command pointed at this test's database and lake (see `Cli`).

    The settings variables a developer may have exported are removed, so only what a
    test passes reaches the command (MONGODB_URI stays: it names the test server).
    """
    monkeypatch.chdir(tmp_path)
    for var in ("PERF_CONFIG", "PERF_DB", "PERF_LAKE", "PERF_STATE_DIR", "PERF_SERVER_TIMEOUT_MS"):
        monkeypatch.delenv(var, raising=False)
    return Cli(request)
