"""Settings: CLI flags beat environment variables, which beat an optional TOML file.

The TOML file is `perf-analytics.toml` in the working directory, or the path in
PERF_CONFIG. Keys: uri, db, lake, state_dir (top level or under [perf_analytics]).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from perf_analytics.errors import ConfigError

DEFAULT_DB = "deskwise"
DEFAULT_LAKE = "data/lake"
DEFAULT_STATE_DIR = "data/localdb"
CONFIG_FILE = "perf-analytics.toml"

_KEYS = ("uri", "db", "lake", "state_dir")
_ENV = {"uri": "MONGODB_URI", "db": "PERF_DB", "lake": "PERF_LAKE", "state_dir": "PERF_STATE_DIR"}


@dataclass(frozen=True)
class Settings:
    """Where the toolkit reads and writes.

    `uri` None means the embedded local server (started on demand under `state_dir`).
    """

    uri: str | None = None
    db: str = DEFAULT_DB
    lake: str = DEFAULT_LAKE
    state_dir: str = DEFAULT_STATE_DIR


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
    # Keys beside a [perf_analytics] table are not read, so they are unknown too.
    outside = set(data) - {"perf_analytics"} if section is not data else set()
    unknown = sorted((set(section) - set(_KEYS)) | outside)
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(_KEYS)}")
    for key, value in section.items():
        if not isinstance(value, str):
            raise ConfigError(f"{path}: {key} must be a string, got {value!r}")
    return dict(section)


def load_settings(
    *,
    config_file: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    **flags: str | None,
) -> Settings:
    """Resolve settings from flags (non-None values win), then env, then the TOML file."""
    environ = os.environ if env is None else env
    unknown = sorted(set(flags) - set(_KEYS))
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}")
    path = config_file or environ.get("PERF_CONFIG")
    values: dict[str, Any] = {}
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
    settings = replace(Settings(), **values)
    if not settings.db or any(c in settings.db for c in '/\\. "$'):
        raise ConfigError(f"invalid database name {settings.db!r}")
    return settings
