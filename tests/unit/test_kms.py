"""LocalKeyring and NamespaceKeyCache: real key files, rotation, refusals, KMS call counts."""

from __future__ import annotations

import json
import os
import stat

import pytest

from aifs_core.errors import InvalidArgument, KeyUnavailable, PermissionDenied
from aifs_server.kms import DirectKeys, LocalKeyring, NamespaceKeyCache


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_create_makes_a_private_json_keyring(tmp_path) -> None:
    path = tmp_path / "keyring.json"
    kr = LocalKeyring.create(path)
    assert _mode(path) == 0o600
    doc = json.loads(path.read_text())
    assert doc["current"] == "local:1" == kr.current_key_id()
    assert set(doc["keys"]) == {"local:1"}
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]
    with pytest.raises(InvalidArgument, match="already exists"):
        LocalKeyring.create(path)


def test_wrap_unwrap_and_rotation(tmp_path) -> None:
    path = tmp_path / "keyring.json"
    kr = LocalKeyring.create(path)
    dk = os.urandom(32)
    w1 = kr.wrap("local:1", dk)
    assert dk not in w1 and len(w1) == 60
    assert kr.unwrap("local:1", w1) == dk

    assert kr.rotate() == "local:2" == kr.current_key_id()
    w2 = kr.wrap(kr.current_key_id(), dk)
    assert _mode(path) == 0o600
    reopened = LocalKeyring(path)  # rotation is on disk
    assert reopened.current_key_id() == "local:2"
    assert reopened.unwrap("local:1", w1) == dk  # old keys still read
    assert reopened.unwrap("local:2", w2) == dk
    assert reopened.rotate() == "local:3"
    assert kr.calls["wrap"] == 2 and kr.calls["unwrap"] == 1


def test_looser_permissions_are_refused(tmp_path) -> None:
    path = tmp_path / "keyring.json"
    LocalKeyring.create(path)
    os.chmod(path, 0o644)
    with pytest.raises(PermissionDenied, match="chmod 600") as exc:
        LocalKeyring(path)
    assert "0644" in str(exc.value) and str(path) in str(exc.value)
    os.chmod(path, 0o600)
    LocalKeyring(path)


def test_unknown_key_and_wrong_keyring_say_what_to_do(tmp_path) -> None:
    kr = LocalKeyring.create(tmp_path / "a.json")
    other = LocalKeyring.create(tmp_path / "b.json")
    wrapped = kr.wrap("local:1", os.urandom(32))
    with pytest.raises(KeyUnavailable, match="'local:9'.*restore") as exc:
        kr.unwrap("local:9", wrapped)
    assert exc.value.reason == "KEY_UNAVAILABLE"
    with pytest.raises(KeyUnavailable, match="'local:1'.*does not unwrap.*restore"):
        other.unwrap("local:1", wrapped)
    with pytest.raises(KeyUnavailable, match="60"):
        kr.unwrap("local:1", wrapped[:-1])


def test_missing_or_damaged_keyring(tmp_path) -> None:
    with pytest.raises(KeyUnavailable, match="does not exist.*restore"):
        LocalKeyring(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    os.chmod(bad, 0o600)
    with pytest.raises(KeyUnavailable, match="restore"):
        LocalKeyring(bad)
    bad.write_text(json.dumps({"format": "aifs-keyring-v1", "current": "local:1",
                               "keys": {"local:1": "c2hvcnQ="}}))
    with pytest.raises(KeyUnavailable, match="damaged"):
        LocalKeyring(bad)


def test_namespace_keys_cost_one_kms_call_for_many_chunks(tmp_path) -> None:
    kr = LocalKeyring.create(tmp_path / "keyring.json")
    cache = NamespaceKeyCache(kr, tmp_path / "nskeys.json")
    keys = cache.for_namespace("default")
    data_keys = [os.urandom(32) for _ in range(200)]
    wrapped = [keys.wrap_data_key(dk) for dk in data_keys]
    assert {kid for kid, _ in wrapped} == {"nsk:1"}
    assert kr.calls == {"wrap": 1, "unwrap": 0}
    assert _mode(tmp_path / "nskeys.json") == 0o600

    # a fresh process: the namespace key is unwrapped once, then every data key locally
    kr2 = LocalKeyring(tmp_path / "keyring.json")
    keys2 = NamespaceKeyCache(kr2, tmp_path / "nskeys.json").for_namespace("default")
    assert [keys2.unwrap_data_key(kid, w) for kid, w in wrapped] == data_keys
    assert kr2.calls == {"wrap": 0, "unwrap": 1}

    # without the cache every chunk is a KMS call
    direct = DirectKeys(kr2)
    for dk in data_keys[:10]:
        assert direct.unwrap_data_key(*direct.wrap_data_key(dk)) == dk
    assert kr2.calls == {"wrap": 10, "unwrap": 11}


def test_namespaces_have_separate_keys(tmp_path) -> None:
    kr = LocalKeyring.create(tmp_path / "keyring.json")
    cache = NamespaceKeyCache(kr, tmp_path / "nskeys.json")
    a, b = cache.for_namespace("team-a"), cache.for_namespace("team-b")
    kid, w = a.wrap_data_key(os.urandom(32))
    b.wrap_data_key(os.urandom(32))  # b has its own nsk:1
    with pytest.raises(KeyUnavailable, match="'team-b'.*restore"):
        b.unwrap_data_key(kid, w)
    assert kr.calls["wrap"] == 2


def test_rotation_starts_a_new_epoch_and_old_epochs_still_read(tmp_path) -> None:
    kr = LocalKeyring.create(tmp_path / "keyring.json")
    cache = NamespaceKeyCache(kr, tmp_path / "nskeys.json")
    keys = cache.for_namespace("default")
    dk1, dk2 = os.urandom(32), os.urandom(32)
    before = keys.wrap_data_key(dk1)
    assert cache.rotate() == "local:2"
    after = keys.wrap_data_key(dk2)
    assert before[0] == "nsk:1" and after[0] == "nsk:2"
    doc = json.loads((tmp_path / "nskeys.json").read_text())
    epochs = doc["namespaces"]["default"]["keys"]
    assert epochs["nsk:1"]["kms_key_id"] == "local:1"
    assert epochs["nsk:2"]["kms_key_id"] == "local:2"

    fresh = NamespaceKeyCache(LocalKeyring(tmp_path / "keyring.json"), tmp_path / "nskeys.json")
    k = fresh.for_namespace("default")
    assert k.unwrap_data_key(*before) == dk1 and k.unwrap_data_key(*after) == dk2
    assert k.wrap_data_key(dk1)[0] == "nsk:2"  # the current epoch survives a restart
    assert fresh.rotate_namespace("default") == "nsk:3"


def test_lost_namespace_key_file_is_key_unavailable(tmp_path) -> None:
    kr = LocalKeyring.create(tmp_path / "keyring.json")
    kid, w = NamespaceKeyCache(kr, tmp_path / "nskeys.json").for_namespace("x").wrap_data_key(
        os.urandom(32)
    )
    os.unlink(tmp_path / "nskeys.json")
    fresh = NamespaceKeyCache(kr, tmp_path / "nskeys.json")
    with pytest.raises(KeyUnavailable, match="'nsk:1'.*not in.*restore"):
        fresh.for_namespace("x").unwrap_data_key(kid, w)
    # the namespace key file is as private as the keyring
    (tmp_path / "ns2.json").write_text("{}")
    os.chmod(tmp_path / "ns2.json", 0o640)
    with pytest.raises(PermissionDenied, match="chmod 600"):
        NamespaceKeyCache(kr, tmp_path / "ns2.json")


def test_wrong_keyring_for_namespace_key_is_key_unavailable(tmp_path) -> None:
    kr = LocalKeyring.create(tmp_path / "keyring.json")
    kid, w = NamespaceKeyCache(kr, tmp_path / "nskeys.json").for_namespace("x").wrap_data_key(
        os.urandom(32)
    )
    impostor = LocalKeyring.create(tmp_path / "other.json")
    with pytest.raises(KeyUnavailable, match="local:1"):
        NamespaceKeyCache(impostor, tmp_path / "nskeys.json").for_namespace("x").unwrap_data_key(
            kid, w
        )
