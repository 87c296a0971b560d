"""Resuming only the same load, versioned state files, and the rejects file, on the real server.

A checkpoint names everything that changes a load's outcome; a load that differs in any
of it starts afresh (and says so), never skipping what the other load had committed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from pymongo import MongoClient

from perf_analytics import localdb
from perf_analytics.errors import CheckpointError, InvalidArgument, ServerError
from perf_analytics.ingest import checkpoint as ckpt
from perf_analytics.schema import SNAPSHOTS
from perf_analytics.store import Db
from tests.conftest import Cli
from tests.factories import series, set_path
from tests.test_ingest import load, write_ndjson


def interrupted(db: Db, paths: list[Path], tmp_path: Path, batches: int = 3, **kw: Any) -> dict[str, Any]:
    """Run a load that is killed after `batches` batches; return its checkpoint."""
    calls = {"n": 0}

    def stop(done_bytes: int, docs: int) -> None:
        calls["n"] += 1
        if calls["n"] == batches:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        load(db, paths, tmp_path, batch_size=10, commit_seconds=0, progress=stop, **kw)
    (path,) = (tmp_path / "checkpoints").glob("ingest-*.json")
    saved: dict[str, Any] = json.loads(path.read_text())
    assert saved["records_done"] == 10 * batches
    return saved


def two_orgs(tmp_path: Path, name: str = "a.ndjson") -> Path:
    records = [r for pair in zip(series(300, org="org-a"), series(300, org="org-b"), strict=True) for r in pair]
    return write_ndjson(tmp_path / name, records)


@pytest.mark.slow
def test_a_load_for_all_orgs_never_resumes_the_checkpoint_of_a_load_for_one_org(db: Db, tmp_path: Path) -> None:
    archive = two_orgs(tmp_path)
    interrupted(db, [archive], tmp_path, org_id="org-a")
    summary = load(db, [archive], tmp_path, batch_size=10)
    assert db[SNAPSHOTS].count_documents({"orgId": "org-b"}) == 300
    assert db[SNAPSHOTS].count_documents({"orgId": "org-a"}) == 300
    assert (summary.resumed_from, summary.read, summary.rejected) == (0, 600, 0)
    assert summary.set_aside == "org"


@pytest.mark.parametrize("change", ["format", "compression", "rejects"])
def test_a_load_with_other_settings_starts_afresh_and_says_what_differed(
    db: Db, tmp_path: Path, change: str
) -> None:
    archive = two_orgs(tmp_path)
    first: dict[str, Any] = {"rejects": tmp_path / "r1.ndjson"}
    interrupted(db, [archive], tmp_path, org_id="org-a", **first)
    second = {**first, {"format": "fmt", "compression": "compression", "rejects": "rejects"}[change]:
              {"format": "ndjson", "compression": "none", "rejects": tmp_path / "r2.ndjson"}[change]}
    summary = load(db, [archive], tmp_path, "org-a", batch_size=10, **second)
    rejects = second["rejects"].read_bytes().splitlines()
    assert len(rejects) == 300  # every rejected record is in the file of this load
    assert (summary.resumed_from, summary.read, summary.rejected) == (0, 600, 300)
    assert summary.set_aside == change


def test_an_archive_rewritten_in_place_with_the_same_size_and_mtime_is_loaded_afresh(
    db: Db, tmp_path: Path
) -> None:
    archive = write_ndjson(tmp_path / "a.ndjson", series(60, asset="a1"))
    before = archive.stat()
    interrupted(db, [archive], tmp_path)
    write_ndjson(archive, series(60, asset="a2"))
    os.utime(archive, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (archive.stat().st_size, archive.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    summary = load(db, [archive], tmp_path, batch_size=10)
    assert db[SNAPSHOTS].count_documents({"assetId": "a2"}) == 60
    assert summary.set_aside == "archive a.ndjson (head_sha256)"


def test_the_same_load_resumes_and_its_checkpoint_names_server_and_settings_without_credentials(
    db: Db, tmp_path: Path, server_uri: str
) -> None:
    archive = two_orgs(tmp_path)
    saved = interrupted(db, [archive], tmp_path, org_id="org-b", fmt="ndjson")
    identity = saved["identity"]
    assert saved["version"] == 1
    assert identity["server"] == ckpt.server_identity(db.client)
    assert (identity["database"], identity["org"], identity["format"], identity["compression"]) == (
        db.name, "org-b", "ndjson", None)
    assert identity["archives"][0]["size"] == archive.stat().st_size
    summary = load(db, [archive], tmp_path, "org-b", fmt="ndjson", batch_size=10)
    assert (summary.set_aside, summary.resumed_from, summary.read) == (None, 30, 600)
    host = identity["server"].split(",")[0]
    with_password: MongoClient[Any] = MongoClient(f"mongodb://someone:s3cret@{host}/", connect=False)
    try:
        assert ckpt.server_identity(with_password) == host
    finally:
        with_password.close()


def test_a_checkpoint_of_an_unknown_version_is_refused_and_restart_overrides_it(
    cli: Cli, db: Db, tmp_path: Path
) -> None:
    archive = write_ndjson(tmp_path / "a.ndjson", series(30))
    saved = interrupted(db, [archive], tmp_path, batches=2)
    (path,) = (tmp_path / "checkpoints").glob("ingest-*.json")
    path.write_text(json.dumps({**saved, "version": 2, "shape": "from a newer release"}))
    with pytest.raises(CheckpointError, match=r"has format version 2; this perf_analytics reads version 1"):
        load(db, [archive], tmp_path, batch_size=10)
    base = ["ingest", str(archive), "--batch-size", "10",
            "--checkpoint-dir", str(tmp_path / "checkpoints")]
    result = cli(*base)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: checkpoint {path} has format version 2; ")
    assert result.stderr.rstrip().endswith("pass --restart to start the load over")
    result = cli(*base, "--restart", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["read"] == 30


def test_a_server_state_file_of_an_unknown_version_is_refused(tmp_path: Path) -> None:
    record = tmp_path / "server.json"
    record.write_text(json.dumps({"version": 7, "kind": "ferretdb", "pid": os.getpid(), "port": 1,
                                  "state_dir": str(tmp_path)}))
    with pytest.raises(ServerError, match=r"server.json has format version 7; this perf_analytics reads version 1"):
        localdb.server_status(tmp_path)
    # A record from before versions (same shape) is still read: its server is not running.
    record.write_text(json.dumps({"kind": "ferretdb", "pid": 2**22 + 1, "port": 1, "state_dir": str(tmp_path)}))
    assert localdb.server_status(tmp_path) is None


def test_the_rejects_file_refuses_to_be_one_of_the_archives(cli: Cli, db: Db, tmp_path: Path) -> None:
    archive = write_ndjson(tmp_path / "a.ndjson", series(5))
    content = archive.read_bytes()
    with pytest.raises(InvalidArgument, match="is one of the archives to load"):
        load(db, [archive], tmp_path, rejects=tmp_path / "." / "a.ndjson")
    linked = tmp_path / "linked.ndjson"
    os.link(archive, linked)
    result = cli("ingest", str(archive), "--rejects", str(linked), "--checkpoint-dir", str(tmp_path / "cp"))
    assert result.exit_code == 1
    assert result.stderr == f"Error: the rejects file {linked} is one of the archives to load; name another file\n"
    assert archive.read_bytes() == content
    assert db[SNAPSHOTS].count_documents({}) == 0


def test_a_resume_whose_rejects_file_is_gone_is_an_error_not_a_file_of_zero_bytes(
    db: Db, tmp_path: Path
) -> None:
    records: list[Any] = series(40)
    records[3] = set_path(records[3], "performanceData.cpu.usage", -1)
    archive = write_ndjson(tmp_path / "a.ndjson", records)
    rejects = tmp_path / "rejects.ndjson"
    saved = interrupted(db, [archive], tmp_path, batches=2, rejects=rejects)
    assert saved["rejects_bytes"] == rejects.stat().st_size > 0
    rejects.unlink()
    with pytest.raises(CheckpointError, match=r"rejects.ndjson is missing, .* pass --restart"):
        load(db, [archive], tmp_path, batch_size=10, rejects=rejects)
    assert not rejects.exists()


def test_the_rejects_file_is_synced_before_every_checkpoint_that_counts_it(
    db: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real os.fsync runs; the test only notes which file each call was for."""
    synced: list[str] = []
    real_fsync = os.fsync

    def noting_fsync(fd: int) -> None:
        synced.append(str(Path(f"/proc/self/fd/{fd}").readlink()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", noting_fsync)
    records: list[Any] = series(50)
    for i in (2, 23, 41):
        records[i] = "not json"
    archive = write_ndjson(tmp_path / "a.ndjson", records)
    rejects = tmp_path / "rejects.ndjson"
    load(db, [archive], tmp_path, batch_size=10, commit_seconds=0, rejects=rejects)
    checkpoints = [i for i, name in enumerate(synced) if "ingest-" in Path(name).name]
    assert len(checkpoints) >= 5
    for i in checkpoints:
        assert synced[i - 1] == str(rejects.resolve()), synced[: i + 1]
    assert [orjson.loads(x)["position"] for x in rejects.read_bytes().splitlines()] == ["line 3", "line 24", "line 42"]
