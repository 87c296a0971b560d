"""Settings: CLI flags beat environment variables, which beat an optional TOML file.

The TOML file is `perf-analytics.toml` in the working directory, or the path in
PERF_CONFIG. Keys (top level or under [perf_analytics]): uri, db, lake, state_dir,
duckdb_memory_limit, duckdb_threads, server_timeout_ms, cache_dir, ferretdb; and an
[anomalies] table of detector settings (the fields of `AnomalyConfig`). Every environment
variable the package reads is read here, into `Settings`.

An error about a setting of the wrong type names the key and the type it must have,
never the value: a URI may hold a password, and a value in the wrong shape may be a secret.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perf_analytics.errors import ConfigError

DEFAULT_DB = "deskwise"
DEFAULT_LAKE = "data/lake"
DEFAULT_STATE_DIR = "data/localdb"
# DuckDB's share of the machine's memory for lake queries (DuckDB's own default is 80%).
DEFAULT_DUCKDB_MEMORY_LIMIT = "50%"
CONFIG_FILE = "perf-analytics.toml"
# How long to wait for the database server to answer before a command gives up.
DEFAULT_SERVER_TIMEOUT_MS = 10_000
ANOMALIES = "anomalies"  # the TOML table of detector settings

if TYPE_CHECKING:
    from perf_analytics.anomalies.config import AnomalyConfig

_KEYS = (
    "uri", "db", "lake", "state_dir", "duckdb_memory_limit", "duckdb_threads", "server_timeout_ms", "cache_dir",
    "ferretdb",
)
_WHOLE_NUMBERS = ("duckdb_threads", "server_timeout_ms")
_ENV = {
    "uri": "MONGODB_URI",
    "db": "PERF_DB",
    "lake": "PERF_LAKE",
    "state_dir": "PERF_STATE_DIR",
    "duckdb_memory_limit": "PERF_DUCKDB_MEMORY_LIMIT",
    "duckdb_threads": "PERF_DUCKDB_THREADS",
    "server_timeout_ms": "PERF_SERVER_TIMEOUT_MS",
    "cache_dir": "PERF_CACHE_DIR",
    "ferretdb": "PERF_FERRETDB",
}


def _default_cache_dir(environ: Mapping[str, str]) -> str:
    """~/.cache/perf_analytics, or under XDG_CACHE_HOME when that is set."""
    return str(Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "perf_analytics")


@dataclass(frozen=True)
class Settings:
    """Where the toolkit reads and writes.

    `uri` None means the embedded local server (started on demand under `state_dir`).
    `duckdb_memory_limit` and `duckdb_threads` bound the DuckDB connections over the lake
    (a size such as "4GB" or a share of RAM such as "50%"; `duckdb_threads` None: every CPU).
    `server_timeout_ms` is how long to wait for the server to answer. `cache_dir` holds
    the tools the toolkit builds (FerretDB); `ferretdb` names a FerretDB binary to run
    instead. `anomalies` holds the detector settings to change from their defaults
    (`anomaly_config()` checks them).
    """

    uri: str | None = None
    db: str = DEFAULT_DB
    lake: str = DEFAULT_LAKE
    state_dir: str = DEFAULT_STATE_DIR
    duckdb_memory_limit: str = DEFAULT_DUCKDB_MEMORY_LIMIT
    duckdb_threads: int | None = None
    server_timeout_ms: int = DEFAULT_SERVER_TIMEOUT_MS
    cache_dir: str = field(default_factory=lambda: _default_cache_dir({}))
    ferretdb: str | None = None
    anomalies: Mapping[str, Any] = field(default_factory=dict)

    def anomaly_config(self) -> AnomalyConfig:
        """The detectors' settings: the defaults with `anomalies` applied.

        Raises:
            ConfigError: a key that names no detector setting, or a value it cannot take.
        """
        # Imported here: the detectors' package loads Polars, which `--help` must not.
        from perf_analytics.anomalies.config import AnomalyConfig

        known = {f.name for f in fields(AnomalyConfig)}
        unknown = sorted(set(self.anomalies) - known)
        if unknown:
            raise ConfigError(f"[{ANOMALIES}] {unknown[0]}: unknown anomaly setting (the keys are AnomalyConfig's fields)")
        return AnomalyConfig(**self.anomalies)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    section = data.get("perf_analytics", data)
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: perf_analytics must be a table of settings")
    # Keys beside a [perf_analytics] table are not read, so they are unknown too; the
    # [anomalies] table is read wherever it stands at the top level.
    outside = set(data) - {"perf_analytics", ANOMALIES} if section is not data else set()
    unknown = sorted((set(section) - {*_KEYS, ANOMALIES}) | outside)
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(_KEYS)}, [{ANOMALIES}]")
    if ANOMALIES in section and section is not data:
        raise ConfigError(f"{path}: [{ANOMALIES}] is a table of its own, not one of [perf_analytics]")
    values: dict[str, Any] = {}
    for key, value in section.items():
        if key == ANOMALIES:
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: {ANOMALIES} must be a table, not a TOML {_toml_type(value)}")
            continue
        if key in _WHOLE_NUMBERS and isinstance(value, int) and not isinstance(value, bool):
            values[key] = value
            continue
        if not isinstance(value, str):
            # Only the key and the type: the value may be a password put in the wrong shape.
            wanted = "a whole number" if key in _WHOLE_NUMBERS else "a string"
            raise ConfigError(f"{path}: {key} must be {wanted}, not a TOML {_toml_type(value)}")
        values[key] = value
    table = data.get(ANOMALIES, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: {ANOMALIES} must be a table, not a TOML {_toml_type(table)}")
    if table:
        values[ANOMALIES] = dict(table)
    return values


def _toml_type(value: object) -> str:
    """The TOML name of a parsed value's type, for messages that must not show the value."""
    names = {bool: "boolean", int: "integer", float: "float", list: "array", dict: "table"}
    return next((name for kind, name in names.items() if isinstance(value, kind)), "date or time")


def _parse_server_timeout(value: str | int) -> int:
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(
            f"server_timeout_ms (env PERF_SERVER_TIMEOUT_MS) must be a positive whole number of milliseconds, got {text!r}"
        )
    return int(text)


def parse_duckdb_threads(value: str | int) -> int:
    """`duckdb_threads` as a positive int (TOML gives an int, the environment a string)."""
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise ConfigError("duckdb_threads (env PERF_DUCKDB_THREADS) must be a whole number of at least 1")
    return int(text)


def load_settings(
    *,
    config_file: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    uri: str | None = None,
    db: str | None = None,
    lake: str | None = None,
    state_dir: str | None = None,
    duckdb_memory_limit: str | None = None,
    duckdb_threads: int | None = None,
    server_timeout_ms: int | None = None,
    cache_dir: str | None = None,
    ferretdb: str | None = None,
    anomalies: Mapping[str, Any] | None = None,
) -> Settings:
    """Resolve settings from the arguments (non-None values win), then env, then the TOML file.

    `anomalies` is applied over the file's [anomalies] table, key by key. `env` stands for
    the process environment (tests pass their own).

    Raises:
        ConfigError: an unknown setting, a malformed value, or a config file that is missing or not TOML.
    """
    environ = os.environ if env is None else env
    flags = {"uri": uri, "db": db, "lake": lake, "state_dir": state_dir,
             "duckdb_memory_limit": duckdb_memory_limit, "duckdb_threads": duckdb_threads,
             "server_timeout_ms": server_timeout_ms, "cache_dir": cache_dir, "ferretdb": ferretdb}
    path = config_file or environ.get("PERF_CONFIG")
    values: dict[str, Any] = {"cache_dir": _default_cache_dir(environ)}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        values.update(_read_toml(p))
    elif Path(CONFIG_FILE).is_file():
        values.update(_read_toml(Path(CONFIG_FILE)))
    for key, var in _ENV.items():
        if environ.get(var):
            values[key] = environ[var]
    values.update({k: v for k, v in flags.items() if v is not None})
    if "duckdb_threads" in values:
        values["duckdb_threads"] = parse_duckdb_threads(values["duckdb_threads"])
    values["server_timeout_ms"] = _parse_server_timeout(values.get("server_timeout_ms", DEFAULT_SERVER_TIMEOUT_MS))
    if anomalies:
        values[ANOMALIES] = {**values.get(ANOMALIES, {}), **anomalies}
    settings = replace(Settings(), **values)
    if not settings.db or any(c in settings.db for c in '/\\. "$'):
        raise ConfigError(f"invalid database name {settings.db!r}")
    return settings
