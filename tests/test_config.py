"""Settings: flags beat environment variables, which beat an optional TOML file."""

from __future__ import annotations

import itertools
import re
import socket
from dataclasses import fields
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from perf_analytics.cli import app
from perf_analytics.config import DEFAULT_DB, DEFAULT_LAKE, Settings, load_settings
from perf_analytics.errors import ConfigError


@pytest.fixture(autouse=True)
def _empty_cwd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _one_line(exc: ConfigError) -> str:
    message = str(exc)
    assert "\n" not in message
    return message


def test_without_flags_env_or_file_the_defaults_apply() -> None:
    settings = load_settings(env={})
    assert settings == Settings(uri=None, db="deskwise", lake="data/lake")
    assert (DEFAULT_DB, DEFAULT_LAKE) == ("deskwise", "data/lake")


def test_a_toml_file_in_the_working_directory_is_read() -> None:
    _write(Path("perf-analytics.toml"), 'uri = "mongodb://toml:1"\ndb = "from_toml"\nlake = "/lake/toml"\n')
    settings = load_settings(env={})
    assert (settings.uri, settings.db, settings.lake) == ("mongodb://toml:1", "from_toml", "/lake/toml")


def test_the_settings_may_sit_under_a_perf_analytics_table() -> None:
    _write(Path("perf-analytics.toml"), '[perf_analytics]\ndb = "tabled"\nstate_dir = "/tmp/x"\n')
    settings = load_settings(env={})
    assert (settings.db, settings.state_dir, settings.lake) == ("tabled", "/tmp/x", DEFAULT_LAKE)


def test_env_beats_the_toml_file() -> None:
    _write(Path("perf-analytics.toml"), 'uri = "mongodb://toml:1"\ndb = "from_toml"\nlake = "/lake/toml"\n')
    settings = load_settings(env={"MONGODB_URI": "mongodb://env:2", "PERF_DB": "from_env"})
    assert (settings.uri, settings.db, settings.lake) == ("mongodb://env:2", "from_env", "/lake/toml")


def test_flags_beat_env_and_the_toml_file() -> None:
    _write(Path("perf-analytics.toml"), 'db = "from_toml"\nlake = "/lake/toml"\n')
    env = {"MONGODB_URI": "mongodb://env:2", "PERF_DB": "from_env", "PERF_LAKE": "/lake/env"}
    settings = load_settings(env=env, uri="mongodb://flag:3", db="from_flag")
    assert (settings.uri, settings.db, settings.lake) == ("mongodb://flag:3", "from_flag", "/lake/env")


def test_a_flag_left_unset_does_not_hide_env() -> None:
    settings = load_settings(env={"PERF_DB": "from_env"}, db=None, uri=None)
    assert settings.db == "from_env"


def test_an_empty_env_variable_counts_as_unset() -> None:
    _write(Path("perf-analytics.toml"), 'db = "from_toml"\n')
    assert load_settings(env={"PERF_DB": ""}).db == "from_toml"


def test_perf_config_names_the_file_instead_of_the_working_directory(tmp_path: Path) -> None:
    _write(Path("perf-analytics.toml"), 'db = "from_cwd"\n')
    elsewhere = _write(tmp_path / "other.toml", 'db = "from_perf_config"\n')
    assert load_settings(env={"PERF_CONFIG": str(elsewhere)}).db == "from_perf_config"


def test_the_config_flag_beats_perf_config(tmp_path: Path) -> None:
    by_env = _write(tmp_path / "env.toml", 'db = "from_env_file"\n')
    by_flag = _write(tmp_path / "flag.toml", 'db = "from_flag_file"\n')
    assert load_settings(config_file=by_flag, env={"PERF_CONFIG": str(by_env)}).db == "from_flag_file"


@pytest.mark.parametrize(
    "text",
    ['colour = "blue"\n', '[perf_analytics]\ncolour = "blue"\n', 'colour = "blue"\n[perf_analytics]\ndb = "x"\n'],
    ids=["top-level", "in-table", "beside-table"],
)
def test_an_unknown_toml_key_is_a_one_line_config_error(text: str) -> None:
    _write(Path("perf-analytics.toml"), text)
    with pytest.raises(ConfigError) as info:
        load_settings(env={})
    message = _one_line(info.value)
    assert "unknown setting(s) colour" in message
    assert "perf-analytics.toml" in message


@pytest.mark.parametrize(
    ("text", "said"),
    [
        *[(text, "perf-analytics.toml: not valid TOML") for text in ['db = \n', 'db = "a"\ndb = "b"\n', "[perf_analytics\n"]],
        # a setting that is not a string
        *[(text, "perf-analytics.toml: ") for text in ["db = 5\n", 'lake = ["a", "b"]\n', "perf_analytics = 3\n"]],
    ],
)
def test_a_config_file_that_is_not_valid_toml_or_has_a_setting_of_the_wrong_type_is_a_one_line_config_error(
    text: str, said: str
) -> None:
    _write(Path("perf-analytics.toml"), text)
    with pytest.raises(ConfigError) as info:
        load_settings(env={})
    assert said in _one_line(info.value)


def test_a_file_that_is_not_utf8_is_a_one_line_config_error() -> None:
    Path("perf-analytics.toml").write_bytes(b'db = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(env={})
    assert "not valid TOML" in _one_line(info.value)


def test_a_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=tmp_path / "nope.toml", env={})
    assert _one_line(info.value) == f"config file {tmp_path / 'nope.toml'} does not exist"


def test_a_missing_perf_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(env={"PERF_CONFIG": str(tmp_path / "nope.toml")})


def test_settings_are_named_keyword_arguments() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        load_settings(env={}, colour="blue")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="positional"):
        load_settings({})  # type: ignore[misc]


@pytest.mark.parametrize("name", ["a/b", "a.b", "a b", "a$b", 'a"b', "a\\b"])
def test_an_invalid_database_name_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={}, db=name)
    assert _one_line(info.value) == f"invalid database name {name!r}"


def test_the_cli_reports_a_missing_config_file_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERF_CONFIG", raising=False)
    result = CliRunner().invoke(app, ["--config", "nope.toml", "localdb", "status"])
    assert result.exit_code == 1
    assert result.stderr == "Error: config file nope.toml does not exist\n"
    assert result.stdout == ""


def test_the_cli_reads_the_toml_file_of_the_working_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("PERF_CONFIG", "PERF_DB"):
        monkeypatch.delenv(var, raising=False)
    _write(Path("perf-analytics.toml"), 'db = "a/b"\n')
    result = CliRunner().invoke(app, ["localdb", "status"])
    assert result.exit_code == 1
    assert result.stderr == "Error: invalid database name 'a/b'\n"


# ---- settings are never echoed --------------------------------------------------------

SECRET = "s3cret-pw"


@pytest.mark.parametrize(
    ("value", "toml_type"),
    [
        (f'["mongodb://ops:{SECRET}@db.example/"]', "array"),
        (f'{{ user = "ops", password = "{SECRET}" }}', "table"),
        ("12345", "integer"),
        ("true", "boolean"),
        ("2026-03-01", "date or time"),
    ],
)
def test_a_uri_that_is_not_a_string_is_reported_without_its_value(value: str, toml_type: str) -> None:
    _write(Path("perf-analytics.toml"), f"uri = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(env={})
    assert _one_line(info.value) == f"perf-analytics.toml: uri must be a string, not a TOML {toml_type}"


@pytest.fixture
def cli(cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """The shared runner, with no server configured and a short server timeout."""
    monkeypatch.delenv("MONGODB_URI", raising=False)
    monkeypatch.setenv("PERF_SERVER_TIMEOUT_MS", "200")
    return cli


def _one_error_line(result: Result) -> str:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert result.stderr.endswith("\n") and result.stderr.count("\n") == 1, result.stderr
    assert SECRET not in result.output
    return result.stderr.removesuffix("\n")


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_cli_never_prints_a_password_from_a_bad_toml_value(cli: CliRunner) -> None:
    _write(Path("perf-analytics.toml"), f'[perf_analytics]\nuri = {{ password = "{SECRET}" }}\n')
    line = _one_error_line(cli.invoke(app, ["init"]))
    assert line == "Error: perf-analytics.toml: uri must be a string, not a TOML table"


@pytest.mark.parametrize(
    "uri",
    [
        f"mongodb://ops:{SECRET}@db.example:notaport/",
        f"mongodb://ops:{SECRET}@db@example/",
        f"mongodb+srv://ops:{SECRET}@db.example:27017/",
        f"http://ops:{SECRET}@db.example/",
    ],
    ids=["port", "unescaped-at", "srv-port", "scheme"],
)
def test_the_cli_never_prints_a_password_from_a_malformed_uri(cli: CliRunner, uri: str) -> None:
    _write(Path("perf-analytics.toml"), f'uri = "{uri}"\n')
    assert _one_error_line(cli.invoke(app, ["init"])).startswith("Error: invalid MongoDB URI: ")


def test_the_cli_never_prints_a_password_from_an_unreachable_uri_in_the_environment(cli: CliRunner) -> None:
    port = _closed_port()
    result = cli.invoke(app, ["init"], env={"MONGODB_URI": f"mongodb://ops:{SECRET}@127.0.0.1:{port}/?directConnection=true"})
    line = _one_error_line(result)
    assert line.startswith(f"Error: cannot reach MongoDB at mongodb://***@127.0.0.1:{port}/")


# ---- DuckDB memory and threads ------------------------------------------------------------


def test_duckdb_settings_default_to_half_the_memory_and_every_cpu() -> None:
    settings = load_settings(env={})
    assert (settings.duckdb_memory_limit, settings.duckdb_threads) == ("50%", None)


def test_duckdb_settings_come_from_the_toml_file_and_env_beats_it() -> None:
    _write(Path("perf-analytics.toml"), 'duckdb_memory_limit = "2GB"\nduckdb_threads = 3\n')
    settings = load_settings(env={})
    assert (settings.duckdb_memory_limit, settings.duckdb_threads) == ("2GB", 3)
    settings = load_settings(env={"PERF_DUCKDB_MEMORY_LIMIT": "25%", "PERF_DUCKDB_THREADS": "2"})
    assert (settings.duckdb_memory_limit, settings.duckdb_threads) == ("25%", 2)


@pytest.mark.parametrize("text", ["duckdb_threads = 0\n", "duckdb_threads = -2\n", 'duckdb_threads = "many"\n'])
def test_duckdb_threads_must_be_a_positive_whole_number(text: str) -> None:
    _write(Path("perf-analytics.toml"), text)
    with pytest.raises(ConfigError) as info:
        load_settings(env={})
    assert _one_line(info.value) == "duckdb_threads (env PERF_DUCKDB_THREADS) must be a whole number of at least 1"


def test_duckdb_threads_of_another_toml_type_names_the_type() -> None:
    _write(Path("perf-analytics.toml"), "duckdb_threads = 2.5\n")
    with pytest.raises(ConfigError) as info:
        load_settings(env={})
    assert _one_line(info.value) == "perf-analytics.toml: duckdb_threads must be a whole number, not a TOML float"


def test_every_environment_variable_the_package_reads_is_a_setting(tmp_path: Path) -> None:
    settings = load_settings(env={
        "PERF_SERVER_TIMEOUT_MS": "250", "PERF_CACHE_DIR": str(tmp_path / "cache"),
        "PERF_FERRETDB": "/opt/ferretdb/bin/ferretdb",
    })
    assert (settings.server_timeout_ms, settings.cache_dir, settings.ferretdb) == (
        250, str(tmp_path / "cache"), "/opt/ferretdb/bin/ferretdb",
    )
    assert load_settings(env={"XDG_CACHE_HOME": "/var/cache"}).cache_dir == "/var/cache/perf_analytics"
    assert load_settings(env={}).cache_dir == str(Path.home() / ".cache" / "perf_analytics")


def test_the_server_settings_can_come_from_the_file() -> None:
    _write(Path("perf-analytics.toml"), 'server_timeout_ms = 300\ncache_dir = "tools"\nferretdb = "bin/ferretdb"\n')
    settings = load_settings(env={})
    assert (settings.server_timeout_ms, settings.cache_dir, settings.ferretdb) == (300, "tools", "bin/ferretdb")
    assert load_settings(env={"PERF_SERVER_TIMEOUT_MS": "400"}).server_timeout_ms == 400


def test_the_local_server_is_looked_for_where_the_settings_say(tmp_path: Path) -> None:
    import shutil

    from perf_analytics import localdb

    if shutil.which("mongod"):
        pytest.skip("mongod on PATH comes first")
    named = Settings(ferretdb=str(tmp_path / "my-ferretdb"))
    assert localdb.find_server_binary(named) == ("ferretdb", tmp_path / "my-ferretdb")
    assert localdb.ferretdb_path(Settings(cache_dir=str(tmp_path))) == tmp_path / "bin" / "ferretdb"


@pytest.mark.parametrize("layout", [
    "[anomalies]\ncpu_threshold = 85.0\noutlier_novel_only = false\n",
    '[perf_analytics]\nlake = "lake"\n\n[anomalies]\ncpu_threshold = 85.0\noutlier_novel_only = false\n',
    'lake = "lake"\n\n[anomalies]\ncpu_threshold = 85.0\noutlier_novel_only = false\n',
])
def test_the_anomalies_table_sets_the_detectors(layout: str) -> None:
    _write(Path("perf-analytics.toml"), layout)
    config = load_settings(env={}).anomaly_config()
    assert (config.cpu_threshold, config.outlier_novel_only, config.memory_threshold) == (85.0, False, 90.0)


def test_anomaly_settings_given_as_arguments_apply_over_the_file() -> None:
    _write(Path("perf-analytics.toml"), "[anomalies]\ncpu_threshold = 85.0\npeer_z = 5.0\n")
    config = load_settings(env={}, anomalies={"cpu_threshold": 80.0}).anomaly_config()
    assert (config.cpu_threshold, config.peer_z) == (80.0, 5.0)


@pytest.mark.parametrize(("table", "message"), [
    ("[anomalies]\ncpu_treshold = 85.0\n",
     "[anomalies] cpu_treshold: unknown anomaly setting (the keys are AnomalyConfig's fields)"),
    ("[anomalies]\ncpu_threshold = -1.0\n", "anomaly setting cpu_threshold must be a number >= 0, got -1.0"),
    ("anomalies = 3\n", "perf-analytics.toml: anomalies must be a table, not a TOML integer"),
    ("[perf_analytics]\n[perf_analytics.anomalies]\ncpu_threshold = 85.0\n",
     "perf-analytics.toml: [anomalies] is a table of its own, not one of [perf_analytics]"),
])
def test_a_bad_anomalies_table_is_one_line_naming_the_key(table: str, message: str) -> None:
    _write(Path("perf-analytics.toml"), table)
    with pytest.raises(ConfigError) as info:
        load_settings(env={}).anomaly_config()
    assert _one_line(info.value) == message


@pytest.mark.parametrize("command", [
    ["anomalies", "--org", "org-a", "--date", "2026-03-01"],
    ["rollup", "--org", "org-a", "--date", "2026-03-01"],
    ["nightly", "--date", "2026-03-01"],
])
def test_commands_that_flag_take_a_config_file_whose_mistakes_are_one_line(
    cli: CliRunner, tmp_path: Path, command: list[str]
) -> None:
    tuned = _write(tmp_path / "tuned.toml", "[anomalies]\ncpu_treshold = 85.0\n")
    result = cli.invoke(app, ["--lake", str(tmp_path / "lake"), *command, "--config", str(tuned)])
    assert _one_error_line(result) == (
        "Error: [anomalies] cpu_treshold: unknown anomaly setting (the keys are AnomalyConfig's fields)"
    )


def _readme_table_keys(heading: str) -> list[str]:
    """The keys (first column) of the first table after `heading` in README.md."""
    lines = (Path(__file__).resolve().parents[1] / "README.md").read_text().splitlines()
    after = lines[lines.index(heading):]
    start = next(i for i, line in enumerate(after) if line.startswith("|"))
    table = list(itertools.takewhile(lambda line: line.startswith("|"), after[start:]))
    return [m[1] for line in table if (m := re.match(r"\| `(\w+)` \|", line))]


def test_readme_documents_every_setting_and_every_anomaly_key() -> None:
    from perf_analytics.anomalies.config import AnomalyConfig
    from perf_analytics.config import _ENV, _KEYS

    assert sorted(_readme_table_keys("## The database")) == sorted(_KEYS)
    assert set(_ENV) <= set(_KEYS)
    assert _readme_table_keys("### Anomaly settings") == [f.name for f in fields(AnomalyConfig)]
