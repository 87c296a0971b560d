"""The embedded server: start, reuse, status, stop, in a state directory of the test's own.

These run with or without MONGODB_URI: they always start a private mongod or FerretDB.
"""

from __future__ import annotations

import json
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


def _servers_of(state: Path) -> list[int]:
    """Pids of the server processes whose command line names `state`."""
    where = str(state.resolve())
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        args = proc.info["cmdline"] or []
        if proc.info["status"] != psutil.STATUS_ZOMBIE and any(where in arg for arg in args) and (
            "ferretdb" in args[0] or "mongod" in args[0]
        ):
            found.append(proc.info["pid"])
    return found


def test_a_server_that_does_not_answer_is_never_doubled_and_stop_still_stops_it(
    cli: CliRunner, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that runs but does not answer (here: stopped with SIGSTOP; in life, a busy
    or stuck one) still holds the data files: starting again must wait for it or say so,
    never start a second server over the same files."""
    import signal

    server = localdb.start_server(state_dir)
    monkeypatch.setattr(localdb, "START_TIMEOUT_S", 3.0)
    os.kill(server.pid, signal.SIGSTOP)
    try:
        assert localdb.server_status(state_dir) is None  # it does not answer...
        assert localdb.recorded_server(state_dir) == server  # ...but it runs from here
        with pytest.raises(localdb.ServerError, match=f"pid {server.pid}.*localdb stop"):
            localdb.start_server(state_dir)
        assert _servers_of(state_dir) == [server.pid]
        status = cli.invoke(app, ["localdb", "status"])
        assert status.exit_code == 3
        assert status.stdout.startswith(f"{server.kind} (pid {server.pid}) runs but does not answer")
    finally:
        os.kill(server.pid, signal.SIGCONT)
    assert localdb.start_server(state_dir) == server  # answering again: the same server

    os.kill(server.pid, signal.SIGSTOP)
    stopped = localdb.stop_server(state_dir)  # a stopped server is stopped all the same
    assert stopped == server
    assert _exited(server.pid)
    assert _servers_of(state_dir) == []


def test_a_record_whose_pid_now_belongs_to_another_program_is_no_server(state_dir: Path) -> None:
    server = localdb.start_server(state_dir)
    localdb.stop_server(state_dir)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = {"version": localdb.STATE_VERSION, "kind": server.kind, "pid": other.pid, "port": server.port,
                  "state_dir": server.state_dir}
        (state_dir / "server.json").write_text(json.dumps(record))
        assert localdb.recorded_server(state_dir) is None
        assert localdb.stop_server(state_dir) is None
        assert other.poll() is None  # not ours: left alone
    finally:
        other.kill()
        other.wait()


def _sqlite_indexes(state: Path, db_name: str) -> dict[str, str]:
    """Index name -> table name, as SQLite's schema of the server's file for `db_name` has them."""
    import sqlite3

    con = sqlite3.connect(f"file:{state / 'ferretdb' / (db_name + '.sqlite')}?mode=ro", uri=True)
    try:
        return dict(con.execute("SELECT name, tbl_name FROM sqlite_master WHERE type = 'index'").fetchall())
    finally:
        con.close()


def _lookup_plan(state: Path, db_name: str, table: str) -> str:
    """SQLite's plan for the statement FerretDB rewrites a document with, found by _id."""
    import sqlite3

    quoted = '"' + table.replace('"', '""') + '"'
    con = sqlite3.connect(f"file:{state / 'ferretdb' / (db_name + '.sqlite')}?mode=ro", uri=True)
    try:
        rows = con.execute(
            f"EXPLAIN QUERY PLAN UPDATE {quoted} SET _ferretdb_sjson = ? WHERE {localdb.ID_PATH} = ?", ("{}", '"a"')
        ).fetchall()
        return " ".join(str(row[-1]) for row in rows)
    finally:
        con.close()


def test_ferretdb_collections_get_an_index_on_the_path_their_id_lookups_use(state_dir: Path) -> None:
    server = localdb.start_server(state_dir)
    if server.kind != "ferretdb":
        pytest.skip("the _id path index is for FerretDB's SQLite files; this server is mongod")
    client: MongoClient[dict[str, object]] = MongoClient(server.uri, serverSelectionTimeoutMS=5000)
    odd_name = "It's odd; -- ü"  # FerretDB makes no collection whose name has a '"': its SQL would break
    try:
        db = client["lookups"]
        db.assets.insert_many([{"_id": f"a{i}", "orgId": "o", "n": i} for i in range(50)])
        db.big.insert_many([{"_id": i} for i in range(60)])
        db[odd_name].insert_many([{"_id": f"x{i}"} for i in range(5)])
        tables = set(_sqlite_indexes(state_dir, "lookups").values())
        table = next(tbl for tbl in tables if tbl.startswith("assets"))
        big = next(tbl for tbl in tables if tbl.startswith("big"))
        odd = next(tbl for tbl in tables if tbl.startswith("it's odd"))
        assert "USING INDEX" not in _lookup_plan(state_dir, "lookups", table)  # FerretDB's own index is not used

        # While the server runs, the collections up to the row limit are indexed, and those
        # above it are left for the next start.
        assert sorted(localdb.index_id_paths(state_dir, live_rows=55)) == sorted([table, odd])
        assert localdb.index_id_paths(state_dir, live_rows=55) == []
        assert f"{localdb.ID_PATH_PREFIX}{big}" not in _sqlite_indexes(state_dir, "lookups")
        assert f"USING INDEX {localdb.ID_PATH_PREFIX}{table}" in _lookup_plan(state_dir, "lookups", table)
        assert f"USING INDEX {localdb.ID_PATH_PREFIX}{odd}" in _lookup_plan(state_dir, "lookups", odd)

        # The server neither lists the index nor minds it: lookups, updates, deletes and index
        # commands behave as before, and dropping the collection drops it.
        assert [ix["name"] for ix in db.assets.list_indexes()] == ["_id_"]
        assert db.assets.update_one({"_id": "a7"}, {"$set": {"n": -7}}).modified_count == 1
        assert db.assets.find_one({"_id": "a7"}) == {"_id": "a7", "orgId": "o", "n": -7}
        assert db.assets.delete_many({"_id": {"$in": ["a1", "a2"]}}).deleted_count == 2
        assert db[odd_name].update_one({"_id": "x3"}, {"$set": {"n": 3}}).modified_count == 1
        assert db[odd_name].find_one({"_id": "x3"}) == {"_id": "x3", "n": 3}
        db.assets.create_index("orgId")
        db.assets.create_index("n", name="*_id_path")  # any name a client gives is free: ours starts with "$"
        assert sorted(ix["name"] for ix in db.assets.list_indexes()) == ["*_id_path", "_id_", "orgId_1"]
        db.assets.drop_indexes()
        assert [ix["name"] for ix in db.assets.list_indexes()] == ["_id_"]
        assert db.assets.count_documents({}) == 48

        client.close()
        localdb.stop_server(state_dir)
        server = localdb.start_server(state_dir)  # stopped: every collection, however large
        assert f"{localdb.ID_PATH_PREFIX}{big}" in _sqlite_indexes(state_dir, "lookups")
        client = MongoClient(server.uri, serverSelectionTimeoutMS=5000)
        db = client["lookups"]

        # A collection made since: a command finding the server running (what every command
        # on the embedded default does first) indexes it.
        db.later.insert_one({"_id": 1})
        later = next(tbl for tbl in _sqlite_indexes(state_dir, "lookups").values() if tbl.startswith("later"))
        assert f"{localdb.ID_PATH_PREFIX}{later}" not in _sqlite_indexes(state_dir, "lookups")
        assert localdb.start_server(state_dir).pid == server.pid
        assert f"{localdb.ID_PATH_PREFIX}{later}" in _sqlite_indexes(state_dir, "lookups")

        db.big.drop()
        assert not any(tbl == big for tbl in _sqlite_indexes(state_dir, "lookups").values())
        assert db.assets.find_one({"_id": "a7"}) == {"_id": "a7", "orgId": "o", "n": -7}
    finally:
        client.close()


def test_an_unreadable_data_file_is_left_to_the_server(state_dir: Path) -> None:
    (state_dir / "ferretdb").mkdir(parents=True)
    (state_dir / "ferretdb" / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    assert localdb.index_id_paths(state_dir) == []
    assert (state_dir / "ferretdb" / "junk.sqlite").read_bytes() == b"not a database at all" * 100


def _ferretdb_like_file(path: Path, tables: dict[str, int]) -> None:
    """A SQLite file laid out as FerretDB's data files are: `_ferretdb_collections` naming
    each table, each table one JSON document a row (`rows` of them, _id 0, 1, ...)."""
    import sqlite3

    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)  # a plain path, not a URI: any character of it is the file's
    try:
        con.execute("CREATE TABLE _ferretdb_collections (name TEXT, table_name TEXT, settings TEXT)")
        for table, rows in tables.items():
            con.execute("INSERT INTO _ferretdb_collections VALUES (?, ?, '{}')", (table, table))
            quoted = '"' + table.replace('"', '""') + '"'
            con.execute(f"CREATE TABLE {quoted} (_ferretdb_sjson TEXT)")
            con.executemany(f"INSERT INTO {quoted} VALUES (?)", [(f'{{"_id": {i}}}',) for i in range(rows)])
        con.commit()
    finally:
        con.close()


def test_a_table_indexed_on_the_path_under_another_name_gets_no_second_index(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "state" / "ferretdb" / "db.sqlite"
    _ferretdb_like_file(path, {"old_11111111": 3, "new_22222222": 3})
    con = sqlite3.connect(path)
    con.execute(f'CREATE INDEX "old_11111111_*_id_path" ON "old_11111111" ({localdb.ID_PATH})')
    con.close()
    assert localdb.index_id_paths(tmp_path / "state") == ["new_22222222"]
    con = sqlite3.connect(path)
    try:
        names = sorted(name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'index'"))
    finally:
        con.close()
    assert names == [f"{localdb.ID_PATH_PREFIX}new_22222222", "old_11111111_*_id_path"]


def test_a_state_directory_whose_name_a_uri_would_cut_is_indexed_in_place(tmp_path: Path) -> None:
    state = tmp_path / "state?x=1#2%41"
    _ferretdb_like_file(state / "ferretdb" / "db.sqlite", {"assets_11111111": 3})
    assert localdb.index_id_paths(state) == ["assets_11111111"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state?x=1#2%41"]  # no file made beside it


def test_the_servers_sqlite_finds_every_kind_of_id_through_an_index_built_by_ours(state_dir: Path) -> None:
    """The index is built by Python's SQLite and kept by the server's own: both must compute
    the same key for every _id, or the server's updates and deletes by _id miss the row."""
    import sqlite3
    from datetime import UTC, datetime

    from bson import ObjectId

    server = localdb.start_server(state_dir)
    if server.kind != "ferretdb":
        pytest.skip("the _id path index is for FerretDB's SQLite files; this server is mongod")
    ids: list[object] = [
        "plain", 'quo"te', "back\\slash", "<b>&amp;</b>", "é ünï 😀", "tab\tnew\nline\x01", "", 7, -(2**40),
        1.5, 1e300, -0.25, True, ObjectId(), datetime(2026, 12, 3, 6, 7, 8, 9000, tzinfo=UTC), {"a": 1, "b": "x"},
    ]
    client: MongoClient[dict[str, object]] = MongoClient(server.uri, serverSelectionTimeoutMS=5000, tz_aware=True)
    try:
        coll = client["kinds"]["docs"]
        coll.insert_many([{"_id": value, "n": 0} for value in ids])
        assert len(localdb.index_id_paths(state_dir, live_rows=localdb.LIVE_INDEX_ROWS)) == 1
        for value in ids:  # the server writes each back by _id, through the index
            assert coll.update_one({"_id": value}, {"$set": {"n": 1}}).matched_count == 1
        assert [doc["n"] for doc in coll.find()] == [1] * len(ids)
        for value in ids[::2]:
            assert coll.delete_one({"_id": value}).deleted_count == 1
        assert sorted(repr(doc["_id"]) for doc in coll.find()) == sorted(repr(value) for value in ids[1::2])
        coll.insert_many([{"_id": value, "n": 2} for value in ids[::2]])  # keys the server's SQLite computes
        con = sqlite3.connect(f"{(state_dir / 'ferretdb' / 'kinds.sqlite').absolute().as_uri()}?mode=ro", uri=True)
        try:
            assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]  # our SQLite's keys agree
        finally:
            con.close()
    finally:
        client.close()


def test_a_data_file_another_writer_holds_is_skipped_and_indexed_by_a_later_call(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "state" / "ferretdb" / "db.sqlite"
    _ferretdb_like_file(path, {"assets_11111111": 3})
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # a server in the middle of its write transaction
        writer.execute("INSERT INTO assets_11111111 VALUES ('{\"_id\": 99}')")
        assert localdb.index_id_paths(tmp_path / "state", live_rows=localdb.LIVE_INDEX_ROWS) == []
        writer.execute("COMMIT")
    finally:
        writer.close()
    assert localdb.index_id_paths(tmp_path / "state", live_rows=localdb.LIVE_INDEX_ROWS) == ["assets_11111111"]
    con = sqlite3.connect(path)
    try:
        assert con.execute("SELECT count(*) FROM assets_11111111").fetchone() == (4,)  # the writer's row kept
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        con.close()
