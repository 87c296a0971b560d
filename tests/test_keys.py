"""`perf-analytics keys`: issued once, stored as salted hashes, listed without secrets, revoked."""

from __future__ import annotations

import orjson

from perf_analytics.service.keys import API_KEYS, KeyCache, create_api_key, verify_api_key
from perf_analytics.store import Db
from tests.conftest import Cli


def keys(cli: Cli, *args: str) -> tuple[int, str, str]:
    result = cli("keys", *args)
    return result.exit_code, result.stdout, result.stderr


def test_create_prints_the_key_alone_on_stdout_and_stores_only_its_hash(cli: Cli, db: Db) -> None:
    code, out, err = keys(cli, "create", "--org", "org-7", "--name", "linux fleet")
    assert code == 0, err
    key = out.strip()
    assert out == key + "\n" and key.startswith("pak_")
    doc = db[API_KEYS].find_one()
    assert doc is not None
    assert err == f"created key {doc['_id']} for org org-7: store it now, it is not shown again\n"
    assert (doc["orgId"], doc["name"], doc["scheme"]) == ("org-7", "linux fleet", "hmac-sha256")
    secret = key.split("_", 2)[2]  # after `pak_<id>_`: the secret itself may hold "_"
    assert len(secret) == 43 and secret not in repr(doc)
    record = verify_api_key(db, key)
    assert record is not None and (record.id, record.org_id) == (doc["_id"], "org-7")


def test_list_shows_ids_orgs_and_states_never_a_key(cli: Cli, db: Db) -> None:
    first, key_1 = create_api_key(db, "org-1", name="one")
    second, key_2 = create_api_key(db, "org-2")
    code, out, _ = keys(cli, "list")
    assert code == 0
    lines = out.splitlines()
    assert [line.split()[:3] for line in lines] == [[first.id, "org-1", "one"], [second.id, "org-2", "-"]]
    assert all(line.endswith("active") for line in lines)
    assert key_1 not in out and key_2 not in out
    code, out, _ = keys(cli, "list", "--org", "org-2", "--json")
    rows = orjson.loads(out)
    assert [(r["id"], r["orgId"], r["revokedAt"]) for r in rows] == [(second.id, "org-2", None)]


def test_a_revoked_key_no_longer_verifies_and_revoking_again_keeps_the_first_time(
    cli: Cli, db: Db
) -> None:
    record, key = create_api_key(db, "org-1")
    code, out, _ = keys(cli, "revoke", record.id)
    assert code == 0
    assert out.startswith(f"revoked key {record.id} of org org-1 (")
    assert verify_api_key(db, key) is None
    first_time = db[API_KEYS].find_one({"_id": record.id})["revokedAt"]  # type: ignore[index]
    assert keys(cli, "revoke", record.id)[0] == 0
    assert db[API_KEYS].find_one({"_id": record.id})["revokedAt"] == first_time  # type: ignore[index]
    assert keys(cli, "list")[1].split()[-3] == "revoked"


def test_revoking_an_unknown_key_is_one_error_line(cli: Cli, db: Db) -> None:
    code, _, err = keys(cli, "revoke", "0123456789abcdef")
    assert code == 1
    assert err == "Error: no API key with id '0123456789abcdef' (see `perf-analytics keys list`)\n"


def test_an_org_outside_the_identifier_rule_is_refused(cli: Cli, db: Db) -> None:
    code, _, err = keys(cli, "create", "--org", "org/*")
    assert code == 1
    assert err.startswith("Error: --org: 'org/*' is not an identifier")
    assert db[API_KEYS].count_documents({}) == 0


def test_a_wrong_secret_a_foreign_shape_or_an_unknown_id_does_not_verify(db: Db) -> None:
    record, key = create_api_key(db, "org-1")
    secret = key.split("_", 2)[2]  # the secret may itself hold "_"
    wrong = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    for candidate in (f"pak_{record.id}_{wrong}", f"pak_{'0' * 16}_{secret}", key + "=", "", secret):
        assert verify_api_key(db, candidate) is None, candidate
    assert verify_api_key(db, key) is not None


def test_the_key_cache_holds_fingerprints_not_keys_and_forgets_the_oldest() -> None:
    cache = KeyCache(ttl=3600, size=2)
    prints = [KeyCache.fingerprint(f"pak_{i}") for i in range(3)]
    for fingerprint in prints:
        cache.put(fingerprint, None)
    assert cache.get(prints[0]) == (False, None)
    assert cache.get(prints[2]) == (True, None)
    assert all(len(fingerprint) == 32 for fingerprint in prints)
    expired = KeyCache(ttl=0, size=2)
    expired.put(prints[0], None)
    assert expired.get(prints[0]) == (False, None)
