"""The embedded default server: a private MongoDB-compatible server on 127.0.0.1.

`mongod` when one is on PATH, otherwise FerretDB 1.24 with its SQLite backend. State
(data files, log, a small JSON record of the running server) lives in one directory of
ours, so a second call reuses the server the first one started.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from perf_analytics.config import Settings, load_settings
from perf_analytics.errors import ServerError

FERRETDB_MODULE = "github.com/FerretDB/FerretDB"
FERRETDB_VERSION = "v1.24.2"
START_TIMEOUT_S = 30.0
STATE_VERSION = 1  # format of server.json; a record without one predates versions, same shape

log = logging.getLogger(__name__)

# FerretDB 1.x with SQLite finds a document by _id through the path `_ferretdb_sjson->'$._id'`
# (every document an update rewrites, a delete, a find by _id alone) while its unique _id
# index is on `_ferretdb_sjson->"_id"`. SQLite does not take the two for one expression,
# so each such lookup scans the whole table: 1,000 `UpdateOne({_id})` among 2,000 assets,
# 64 to a command, take 5.3 s, and grow with the assets stored. An index on the path the
# lookups use brings them to 0.48 s (bench/README.md). The server never reads SQLite's
# schema, so it neither lists nor minds this index; dropping the collection drops it with
# the table. Python's SQLite builds it and the server's own keeps it: both compute the
# same key for every kind of _id (tests/test_localdb.py checks it with integrity_check).
ID_PATH = "_ferretdb_sjson->'$._id'"
# Before the table's name. FerretDB names an index of a collection table + "_" + the index's
# name, any name a client gives (one named "*_id_path" was refused while ours was
# table + "_*_id_path"), and a table after its collection, whose name holds no "$": so no
# name of FerretDB's starts with one.
ID_PATH_PREFIX = "$_id_path:"
# While the server runs, building the index holds SQLite's write lock, which FerretDB waits
# for up to 10 s: tables beyond this many rows are left for the next start, when no one waits.
LIVE_INDEX_ROWS = 100_000

# Servers this process started, by pid. The server outlives the call that started it, so
# its Popen must not be garbage-collected while it runs: Popen.__del__ would raise a
# ResourceWarning ("subprocess ... is still running"). Keeping it also lets stop_server
# reap its own child instead of leaving a zombie.
_STARTED: dict[int, subprocess.Popen[bytes]] = {}


def cache_dir(settings: Settings | None = None) -> Path:
    """Where installed tools live: `settings.cache_dir` (env PERF_CACHE_DIR, else
    ~/.cache/perf_analytics); without `settings`, the environment's settings."""
    return Path((settings or load_settings()).cache_dir)


def ferretdb_path(settings: Settings | None = None) -> Path:
    return cache_dir(settings) / "bin" / "ferretdb"


@dataclass(frozen=True)
class LocalServer:
    kind: str  # "mongod" or "ferretdb"
    pid: int
    port: int
    state_dir: str

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"


def find_server_binary(settings: Settings | None = None) -> tuple[str, Path | None]:
    """Return (kind, path): mongod on PATH first, else FerretDB (path None if not installed):
    `settings.ferretdb` (env PERF_FERRETDB), on PATH, or built into the cache directory."""
    mongod = shutil.which("mongod")
    if mongod:
        return "mongod", Path(mongod)
    settings = settings or load_settings()
    if settings.ferretdb:
        return "ferretdb", Path(settings.ferretdb)
    on_path = shutil.which("ferretdb")
    if on_path:
        return "ferretdb", Path(on_path)
    cached = ferretdb_path(settings)
    return "ferretdb", cached if cached.exists() else None


def install_ferretdb(settings: Settings | None = None, *, force: bool = False) -> Path:
    """Build FerretDB from its Go module into the cache directory, once.

    FerretDB's main package panics at start unless build/version/version.txt exists, a
    file its own build tooling generates and the Go module does not ship; so a plain
    `go install .../cmd/ferretdb@v1.24.2` yields a binary that cannot run. We download the
    same module version with the Go tool, add that file to a private copy and build it.
    """
    target = ferretdb_path(settings)
    if target.exists() and not force:
        return target
    go = shutil.which("go")
    if go is None:
        raise ServerError(
            "FerretDB is not installed and Go is not on PATH to build it; "
            "install Go, put mongod on PATH, or set MONGODB_URI",
            retryable=False,
        )
    proc = subprocess.run(
        [go, "mod", "download", "-json", f"{FERRETDB_MODULE}@{FERRETDB_VERSION}"],
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
        check=False,
    )
    if proc.returncode != 0:
        raise ServerError(f"could not download FerretDB {FERRETDB_VERSION}: {proc.stderr.strip()[-300:]}", retryable=True)
    source = Path(json.loads(proc.stdout)["Dir"])
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "ferretdb"
        shutil.copytree(source, work)
        for path in [work, *work.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
        (work / "build" / "version" / "version.txt").write_text(FERRETDB_VERSION + "\n")
        (work / "build" / "version" / "package.txt").write_text("go-module\n")
        partial = target.with_suffix(".partial")
        env = {**os.environ, "GOFLAGS": "-mod=mod"}
        built = subprocess.run(
            [go, "build", "-trimpath", "-o", str(partial), "./cmd/ferretdb"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if built.returncode != 0:
            raise ServerError(f"building FerretDB failed: {built.stderr.strip()[-500:]}", retryable=False)
        partial.replace(target)
    return target


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_alive(pid: int) -> bool:
    """Whether process `pid` of this host still runs (a zombie counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) still answers kill(pid, 0). A server started by
    # another process is reaped by init, which in containers can take seconds or never
    # happen, so on Linux ask /proc whether the process has exited.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


def _ping(port: int, timeout_ms: int = 1000) -> bool:
    # Imported here: `localdb status` asks the pid file first, and --help needs no pymongo.
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    client: MongoClient[dict[str, object]] = MongoClient(
        f"mongodb://127.0.0.1:{port}/?directConnection=true",
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
    )
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


@contextlib.contextmanager
def _locked(state: Path) -> Iterator[None]:
    state.mkdir(parents=True, exist_ok=True)
    with (state / "server.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _record_path(state: Path) -> Path:
    return state / "server.json"


def server_status(state_dir: str | os.PathLike[str]) -> LocalServer | None:
    """The server running from `state_dir`, or None when none answers.

    A record of a format version this code does not know is refused (ServerError), not
    taken for "no server": that would start a second server over the same data files.
    """
    server = recorded_server(state_dir)
    if server is not None and _ping(server.port):
        return server
    return None


def recorded_server(state_dir: str | os.PathLike[str]) -> LocalServer | None:
    """The server that the record of `state_dir` names when its process still runs from
    that directory, whether or not it answers (a busy or stopped server holds the data
    files all the same); None when there is no record or its process is gone.

    Raises:
        ServerError: the record has a format version this code does not know.
    """
    state = Path(state_dir)
    record = _record_path(state)
    try:
        info = json.loads(record.read_text())
    except (FileNotFoundError, ValueError):
        return None
    version = info.pop("version", STATE_VERSION) if isinstance(info, dict) else None
    if version != STATE_VERSION:
        raise ServerError(
            f"{record} has format version {version!r}; this perf_analytics reads version {STATE_VERSION}: "
            "stop that server with the perf_analytics that started it, or remove the file once it is stopped",
            retryable=False,
        )
    try:
        server = LocalServer(**info)
    except TypeError:
        return None
    if not process_alive(server.pid) or not _runs_from(server.pid, state):
        return None
    return server


def _runs_from(pid: int, state: Path) -> bool:
    """Whether process `pid` is a server of `state` (its command line names the
    directory), not another program that has since been given the same pid. True when
    the system does not say (no /proc)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True
    where = os.fsencode(state.resolve())
    return any(where in arg for arg in args)


def index_id_paths(state_dir: str | os.PathLike[str], *, live_rows: int | None = None) -> list[str]:
    """Give each collection of the FerretDB data under `state_dir` an index on the path
    FerretDB looks _id up by (see ID_PATH); return the tables indexed now.

    `live_rows`: the server is running, so tables with more rows than this are skipped (the
    next start indexes them). Anything SQLite refuses (a busy or damaged file) is logged
    and skipped: the index only makes lookups faster, and the server is the judge of its
    own files.
    """
    done: list[str] = []
    for path in sorted((Path(state_dir) / "ferretdb").glob("*.sqlite")):
        try:
            done.extend(_index_file(path, live_rows))
        except sqlite3.Error as exc:
            log.debug("no _id path index in %s: %s", path.name, exc)
    return done


def _index_file(path: Path, live_rows: int | None) -> list[str]:
    done: list[str] = []
    # as_uri escapes the path: in `file:{path}` a "?" or "#" of the state directory ended
    # the path there, and SQLite opened, or created, that other file without mode=rw.
    con = sqlite3.connect(f"{path.absolute().as_uri()}?mode=rw", uri=True, timeout=2.0, isolation_level=None)
    try:
        # Known by what they index, whatever their name (SQLite keeps each CREATE INDEX as written).
        indexed = {
            table
            for table, sql in con.execute("SELECT tbl_name, sql FROM sqlite_master WHERE type = 'index'")
            if isinstance(sql, str) and sql.endswith(f"({ID_PATH})")
        }
        tables = [t for (t,) in con.execute("SELECT table_name FROM _ferretdb_collections")]
        for table in tables:
            if table in indexed:
                continue
            if live_rows is not None:
                (rows,) = con.execute(f"SELECT coalesce(max(rowid), 0) FROM {_quoted(table)}").fetchone()
                if rows > live_rows:
                    continue
            con.execute(f"CREATE INDEX IF NOT EXISTS {_quoted(ID_PATH_PREFIX + table)} ON {_quoted(table)} ({ID_PATH})")
            done.append(table)
    finally:
        con.close()
    return done


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _command(kind: str, binary: Path, state: Path, port: int) -> list[str]:
    if kind == "mongod":
        dbpath = state / "mongod"
        dbpath.mkdir(parents=True, exist_ok=True)
        return [str(binary), "--dbpath", str(dbpath), "--bind_ip", "127.0.0.1", "--port", str(port)]
    sqlite_dir = state / "ferretdb"
    sqlite_dir.mkdir(parents=True, exist_ok=True)
    return [
        str(binary),
        "--handler=sqlite",
        f"--sqlite-url=file:{sqlite_dir}/?_pragma=synchronous(normal)",
        f"--state-dir={state}",
        f"--listen-addr=127.0.0.1:{port}",
        "--debug-addr=-",
        "--telemetry=disable",
        "--log-level=warn",
    ]


def start_server(
    state_dir: str | os.PathLike[str],
    *,
    port: int | None = None,
    install: bool = True,
    settings: Settings | None = None,
) -> LocalServer:
    """Start the private server for `state_dir`, or return the one already running there.

    Which server and where its tools are come from `settings` (the environment's without).
    For FerretDB each call also indexes the _id path of its collections (`index_id_paths`):
    all of them before the server starts, the small ones when it already runs (so a
    collection made since the last start gets it at the next command).

    Raises:
        ServerError: no server can be found or built, or it does not start.
    """
    state = Path(state_dir).resolve()
    with _locked(state):
        running = _answering(recorded_server(state), state)
        if running is not None:
            if running.kind == "ferretdb":
                index_id_paths(state, live_rows=LIVE_INDEX_ROWS)
            return running
        kind, binary = find_server_binary(settings)
        if binary is None:
            if not install:
                raise ServerError("no mongod on PATH and FerretDB is not installed; run `make setup`", retryable=False)
            binary = install_ferretdb(settings)
        if kind == "ferretdb":
            index_id_paths(state)
        port = port or _free_port()
        log = (state / "server.log").open("ab")
        proc = subprocess.Popen(
            _command(kind, binary, state, port),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=state,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = (state / "server.log").read_text(errors="replace")[-400:]
                raise ServerError(f"{kind} exited at start (code {proc.returncode}): {tail.strip()}", retryable=False)
            if _ping(port, timeout_ms=300):
                _STARTED[proc.pid] = proc
                server = LocalServer(kind=kind, pid=proc.pid, port=port, state_dir=str(state))
                tmp = _record_path(state).with_suffix(".tmp")
                tmp.write_text(json.dumps({"version": STATE_VERSION, **asdict(server)}))
                tmp.replace(_record_path(state))
                return server
            time.sleep(0.1)
        proc.kill()
        proc.wait()
        raise ServerError(f"{kind} did not answer on 127.0.0.1:{port} within {START_TIMEOUT_S:.0f}s", retryable=True)


def _answering(server: LocalServer | None, state: Path) -> LocalServer | None:
    """`server` (a process of `state`: `recorded_server`) once it answers a ping, at once
    when it answers the first; None when there is none or it exits meanwhile. It holds
    the data files, so a second server is never started beside it: after
    START_TIMEOUT_S without an answer, ServerError."""
    if server is None:
        return None
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not process_alive(server.pid):
            return None
        if _ping(server.port, timeout_ms=1000):
            return server
        time.sleep(0.2)
    raise ServerError(
        f"the {server.kind} server of {state} (pid {server.pid}) runs but has not answered on 127.0.0.1:"
        f"{server.port} for {START_TIMEOUT_S:.0f}s; a second server over the same files is not started. "
        "Stop it with `perf-analytics localdb stop`, then run the command again",
        retryable=True,
    )


def stop_server(state_dir: str | os.PathLike[str]) -> LocalServer | None:
    """Stop the server running from `state_dir`; return what was stopped (None if nothing)."""
    state = Path(state_dir).resolve()
    with _locked(state):
        server = recorded_server(state)  # answering or not: a hung server is stopped too
        if server is None:
            _record_path(state).unlink(missing_ok=True)
            return None
        os.kill(server.pid, signal.SIGTERM)
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.pid, signal.SIGCONT)  # a stopped process acts on SIGTERM only once resumed
        own = _STARTED.pop(server.pid, None)
        if own is not None:
            try:
                own.wait(timeout=10)
            except subprocess.TimeoutExpired:
                own.kill()
                own.wait()
        else:
            deadline = time.monotonic() + 10
            while process_alive(server.pid) and time.monotonic() < deadline:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(server.pid, os.WNOHANG)
                time.sleep(0.05)
            if process_alive(server.pid):
                os.kill(server.pid, signal.SIGKILL)
        _record_path(state).unlink(missing_ok=True)
        return server
