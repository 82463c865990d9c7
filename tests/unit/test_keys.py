"""API keys: hashed at rest, verified in constant time, reloaded on change, 0600 files."""

from __future__ import annotations

import stat
import time

from serving.keys import (
    FileKeyStore,
    KeyFile,
    ensure_dev_key,
    issue_key,
    load_key_file,
    split_key,
    verify,
    write_private,
)


def test_issued_key_verifies_and_plaintext_is_not_stored():
    key, record = issue_key("agency-a", "alice")
    assert split_key(key) is not None
    principal = verify(key, {record.key_id: record})
    assert principal and principal.tenant == "agency-a" and principal.user == "alice"
    assert key.split("_", 2)[2] not in KeyFile(keys=[record]).to_json()


def test_wrong_revoked_and_malformed_keys_fail():
    key, record = issue_key("t", "u")
    records = {record.key_id: record}
    assert verify(key[:-1] + ("A" if key[-1] != "A" else "B"), records) is None
    assert verify("gvk_000000000000_secret", records) is None
    for garbage in ["", "Bearer", "gvk", "gvk__", "sk-123", key.replace("gvk", "xyz"), "gvk_short_abc"]:
        assert verify(garbage, records) is None
    record.revoked_at = time.time()
    assert verify(key, records) is None


def test_file_store_reloads_on_change(tmp_path):
    path = tmp_path / "keys.json"
    store = FileKeyStore(path)
    key, record = issue_key("t", "u")
    assert store.authenticate(key) is None
    write_private(path, KeyFile(keys=[record]).to_json())
    assert store.reload() is True
    assert store.authenticate(key) is not None
    assert store.reload() is False  # unchanged file is not re-read
    record.revoked_at = time.time()
    write_private(path, KeyFile(keys=[record]).to_json() + " ")
    store.reload()
    assert store.authenticate(key) is None


def test_dev_key_created_once_with_private_modes(tmp_path):
    store, key_file = tmp_path / "s" / "keys.json", tmp_path / "s" / "dev-api-key"
    path, created = ensure_dev_key(key_store_path=store, key_path=key_file)
    assert created and path == key_file
    for p in (store, key_file):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    assert verify(key, {r.key_id: r for r in load_key_file(store).keys})
    _, created_again = ensure_dev_key(key_store_path=store, key_path=key_file)
    assert not created_again and key_file.read_text().strip() == key
    store.unlink()  # the store lost the key: a new one must be issued
    _, recreated = ensure_dev_key(key_store_path=store, key_path=key_file)
    assert recreated and key_file.read_text().strip() != key
