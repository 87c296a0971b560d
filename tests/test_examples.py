"""Every example the docs show runs: each command's `--help` examples and README's blocks.

The examples run against a loaded database and lake, as a reader who followed README
would have them: `perf-analytics generate`'s default fleet (seed 0, org-01 and org-02)
over 2026-01-05 and 2026-01-06, ingested, synced and rolled up, in a working directory
whose `data/lake` is the lake and where the archives the examples name exist.

README: fenced blocks tagged `sh` or `python` are examples; untagged blocks are
synopses, layouts or output. A block that cannot run in a test says why in an HTML
comment on the line before it: `<!-- not run: reason -->`. Python blocks run top to
bottom in one namespace, as a reader pastes them into one session; shell lines that
start with `perf-analytics` run in-process through click.
"""

from __future__ import annotations

import gzip
import re
import shlex
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bson
import click
import orjson
import pytest
import zstandard
from click.testing import CliRunner

from perf_analytics import localdb
from perf_analytics.cli import app
from perf_analytics.schema import ASSETS
from perf_analytics.store import connect_uri
from perf_analytics.synth import FleetSpec, fleet_assets, generate_fleet, write_fleet
from tests.test_cli import COMMAND_PATHS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

# The docs' fleet: `perf-analytics generate`'s defaults (seed 0), two days, at 15 minutes
# so that loading it takes a second or two.
FLEET: dict[str, Any] = {"orgs": 2, "assets": 3, "days": 2, "interval_s": 900, "seed": 0}

# FerretDB's upserts scan the collection, so a whole fleet's rollups into MongoDB take many
# minutes there; the one-day `--to-mongo` examples run, the whole-fleet nightly ones do not.
SLOW_SINK = "a whole fleet's rollups into MongoDB: many minutes on FerretDB"

# Example lines (of a help page or README) that cannot run in a test, by their start, with
# the reason. Keep this short.
NOT_RUN = {
    "perf-analytics localdb start --port 27018": "binds a fixed port, which another program may hold",
    "perf-analytics --uri mongodb://127.0.0.1:27017 init --ttl-days 90": "TTL indexes need MongoDB, not FerretDB",
    "perf-analytics nightly --to-mongo --retain-days 30": SLOW_SINK,
    "perf-analytics nightly --scheduler": "needs a Dask scheduler at that address; tests/test_nightly_dask.py runs one",
    "perf-analytics serve": "a long-running service; tests/test_serve.py starts one and calls it over HTTP",
    "curl ": "calls the running service; tests/test_serve.py makes these calls",
    "perf-analytics keys revoke 3f9c0a1b2d4e5f60": "the id stands for one that `keys list` shows",
}

# Examples whose documented outcome is another exit code than 0.
EXIT_CODES = {
    "perf-analytics localdb status": 3,  # not running: the status convention (LSB, systemctl)
}

# The examples include whole nightly runs over every org (and one into MongoDB): minutes
# per help page on a loaded two-core machine, more than the suite's default timeout.
EXAMPLES_TIMEOUT_S = 1800

# The examples' server address stands for the reader's server.
SERVER_IN_EXAMPLES = "mongodb://127.0.0.1:27017"

# The archives the examples name, each one asset's day at hourly samples: (seed, org).
# Seed 0 gives the docs' fleet's first asset again; export.json holds another org's asset.
ARCHIVES = {
    "snapshots-2026-03.ndjson.zst": (0, None),
    "dump/deskwise/performance_snapshots.bson.gz": (0, None),
    "dump/performance_snapshots.bson.gz": (0, None),
    "export.json": (1, "org-7"),
}
# The org the examples call `acme`, loaded and synced with the docs' fleet.
ACME = ("acme.ndjson", (2, "acme"))

# What a Python example may use without defining it: one agent payload, as it arrives.
PAYLOAD = next(generate_fleet(FleetSpec(orgs=1, assets=1, days=1, seed=5)))


@dataclass(frozen=True)
class Workdir:
    """The loaded working directory the examples run in, and the environment they see."""

    path: Path
    env: dict[str, str]


def _write_archive(path: Path, seed: int, org: str | None) -> list[dict[str, Any]]:
    """A small archive in the format its name says (NDJSON with zstd, BSON with gzip, a JSON
    array); returns the documents of its assets, in `org` when given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    args: dict[str, Any] = {"orgs": 1, "assets": 1, "days": 1, "interval_s": 3600, "seed": seed}
    docs = [{**doc, "orgId": org or doc["orgId"]} for doc in generate_fleet(FleetSpec(**args))]
    if path.name.endswith(".bson.gz"):
        path.write_bytes(gzip.compress(b"".join(bson.encode(doc) for doc in docs)))
    elif path.name.endswith(".json"):
        path.write_bytes(orjson.dumps(docs))
    else:
        lines = b"".join(orjson.dumps(doc, option=orjson.OPT_APPEND_NEWLINE) for doc in docs)
        path.write_bytes(zstandard.compress(lines) if path.name.endswith(".zst") else lines)
    assets = fleet_assets(orgs=1, assets=1, seed=seed)
    return [{**doc, "orgId": org or doc["orgId"]} for doc in assets]


def _run_cli(args: list[str], workdir: Workdir) -> click.testing.Result:
    return CliRunner().invoke(app, args, env=workdir.env, catch_exceptions=False)


@pytest.fixture(scope="module")
def workdir(server_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workdir]:
    """The docs' fleet and the examples' archives, loaded, synced and rolled up, in the
    working directory every example of this module runs in."""
    path = tmp_path_factory.mktemp("examples")
    db_name = f"t_{uuid.uuid4().hex[:12]}"
    env = {"MONGODB_URI": server_uri, "PERF_DB": db_name}
    db = connect_uri(server_uri, db_name)
    with pytest.MonkeyPatch.context() as patch:
        try:
            patch.chdir(path)
            for name in ("PERF_CONFIG", "PERF_LAKE", "PERF_STATE_DIR"):
                patch.delenv(name, raising=False)
            for name, value in env.items():
                patch.setenv(name, value)  # for the Python examples, which read the environment
            loaded = Workdir(path=path, env=env)
            write_fleet(path / "docs-fleet.ndjson.zst", FleetSpec(**FLEET))
            # The application's asset documents: the examples' fleets are seed 0's first
            # five assets of each org, and the archives' assets.
            assets = {doc["_id"]: doc for doc in fleet_assets(orgs=2, assets=5, seed=0)}
            for name, (seed, org) in [*ARCHIVES.items(), ACME]:
                assets.update((doc["_id"], doc) for doc in _write_archive(path / name, seed, org))
            db[ASSETS].insert_many(list(assets.values()))
            for args in (
                ["init"],
                ["ingest", "docs-fleet.ndjson.zst", ACME[0]],
                ["sync"],
                *(["rollup", "--org", org, "--date", day] for org in ("org-01", "org-02")
                  for day in ("2026-01-05", "2026-01-06")),
            ):
                result = _run_cli(args, loaded)
                assert result.exit_code == 0, (args, result.output)
            yield loaded
        finally:
            localdb.stop_server(path / "data" / "localdb")  # what `localdb start` examples left
            db.client.drop_database(db_name)
            db.client.close()


# ---- the examples, as the docs show them ------------------------------------------------------


def help_examples(path: tuple[str, ...]) -> list[str]:
    """The example command lines of one `--help` page, continuation lines joined."""
    text = CliRunner().invoke(app, [*path, "--help"], terminal_width=1000).stdout
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.fullmatch(r"\s*Examples?:", line)) + 1
    examples: list[str] = []
    pending = ""
    for line in lines[start:]:
        if not line.strip():
            break
        pending += line.strip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        examples.append(pending)
        pending = ""
    return examples


@dataclass(frozen=True)
class Block:
    """One fenced README block: its language, first line number and text."""

    lang: str
    line: int
    text: str
    not_run: str | None


def readme_blocks(text: str) -> list[Block]:
    """Every fenced block with a language tag, and its `<!-- not run: ... -->` note if any."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = re.fullmatch(r"```(\w*)\s*", lines[i])
        if not match:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        note = re.fullmatch(r"<!-- not run: (.+) -->", before.strip())
        if match[1]:
            blocks.append(Block(match[1], i + 1, "\n".join(lines[i + 1 : end]), note[1] if note else None))
        i = end + 1
    return blocks


def shell_commands(text: str) -> list[str]:
    """A shell block's command lines: continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def not_run(line: str) -> bool:
    return any(line.startswith(start) for start in NOT_RUN)


def run_command_line(line: str, workdir: Workdir) -> None:
    """Run one `perf-analytics ...` line in-process; it must succeed. A line that keeps the
    output in a shell variable (`KEY=$(perf-analytics ...)`) runs its command."""
    captured = re.fullmatch(r"\w+=\$\((perf-analytics [^)]*)\)(\s+#.*)?", line)
    line = captured[1] if captured else line
    args = shlex.split(line.replace(SERVER_IN_EXAMPLES, workdir.env["MONGODB_URI"]), comments=True)
    assert args[0] == "perf-analytics", f"not a perf-analytics command: {line}"
    result = _run_cli(args[1:], workdir)
    assert result.exit_code in (0, EXIT_CODES.get(line, 0)), f"{line}\n{result.output}"


HELP_PAGES = COMMAND_PATHS
BLOCKS = readme_blocks(README.read_text())


@pytest.mark.timeout(EXAMPLES_TIMEOUT_S)
@pytest.mark.slow
@pytest.mark.parametrize("path", HELP_PAGES, ids=lambda p: " ".join(p) or "perf-analytics")
def test_every_help_example_runs(workdir: Workdir, path: tuple[str, ...]) -> None:
    examples = help_examples(path)
    assert examples, f"no examples in {' '.join(path)} --help"
    for line in examples:
        if not not_run(line):
            run_command_line(line, workdir)


@pytest.mark.timeout(EXAMPLES_TIMEOUT_S)
@pytest.mark.slow
def test_the_readme_shell_examples_run(workdir: Workdir) -> None:
    ran = 0
    for block in BLOCKS:
        if block.lang == "sh" and block.not_run is None:
            for line in shell_commands(block.text):
                if not not_run(line):
                    run_command_line(line, workdir)
                    ran += 1
    assert ran >= 5


@pytest.mark.timeout(EXAMPLES_TIMEOUT_S)
@pytest.mark.slow
def test_the_readme_python_examples_run_in_order_in_one_session(workdir: Workdir) -> None:
    namespace: dict[str, Any] = {"payload": dict(PAYLOAD)}
    blocks = [b for b in BLOCKS if b.lang == "python" and b.not_run is None]
    assert len(blocks) >= 4
    try:
        for block in blocks:
            code = compile(block.text, f"README.md:{block.line}", "exec")
            exec(code, namespace)  # the README's own examples: running them is the point
    finally:
        if "db" in namespace:  # the session's client, which a reader's session leaves open
            namespace["db"].client.close()


def test_the_not_run_notes_are_few_and_give_a_reason() -> None:
    notes = [b for b in BLOCKS if b.not_run is not None]
    assert len(notes) <= 4, [b.line for b in notes]
    assert all(len(b.not_run or "") >= 10 for b in notes)


# ---- the parsers, on inputs whose answer is known ---------------------------------------------


def test_help_examples_join_continuation_lines() -> None:
    lines = help_examples(("generate",))
    assert "perf-analytics generate --orgs 2 --assets 5 --days 1 --out fleet.ndjson.zst" in lines
    joined = [line for line in lines if "--assets-out" in line]
    assert joined and joined[0].startswith("perf-analytics generate --orgs 3") and "\\" not in joined[0]


def test_readme_blocks_read_language_and_not_run_note() -> None:
    text = "a\n\n<!-- not run: needs a scheduler -->\n```sh\nmake x\n```\n```\nsynopsis\n```\n```python\nx = 1\n```\n"
    blocks = readme_blocks(text)
    assert [(b.lang, b.text, b.not_run) for b in blocks] == [
        ("sh", "make x", "needs a scheduler"),
        ("python", "x = 1", None),
    ]


def test_shell_commands_drop_comments_and_join_continuations() -> None:
    text = "# setup\nperf-analytics sync \\\n    --org a   # why\n\nperf-analytics runs\n"
    assert shell_commands(text) == ["perf-analytics sync  --org a   # why", "perf-analytics runs"]


@pytest.mark.slow
def test_a_failing_example_fails_the_test(workdir: Workdir) -> None:
    with pytest.raises(AssertionError, match="No such option"):
        run_command_line("perf-analytics sync --no-such-option", workdir)
