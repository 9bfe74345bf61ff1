"""A shared deployment (issue 12): PostgreSQL metadata, SeaweedFS chunks, the keys in the
database sealed by a master key. Real services (tests/services.py), opened in process."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from blake3 import blake3

from aifs_core.errors import KeyUnavailable
from aifs_server.datadir import DataDir, open_shared
from aifs_server.secrets import (
    MASTER_KEY_ENV,
    MASTER_KEY_FILE_ENV,
    load_master_key,
    write_master_key,
)
from tests.services import S3Location


@pytest.fixture
def master_file(tmp_path: Path) -> Path:
    p = tmp_path / "master.key"
    write_master_key(p)
    return p


@pytest.fixture
def s3_env(seaweedfs: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in seaweedfs.env().items():
        monkeypatch.setenv(k, v)


def _open(pg_dsn: str, s3: S3Location, master_file: Path, **kw: Any) -> DataDir:
    return open_shared(pg_dsn, s3.url, load_master_key(master_file), **kw)


def test_first_opener_formats_and_every_opener_agrees(pg_dsn: str, s3_bucket: S3Location,
                                                       master_file: Path, s3_env: None) -> None:
    opened: list[DataDir] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            opened.append(_open(pg_dsn, s3_bucket, master_file, chunk_size=1 << 16))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors, errors
        assert len(opened) == 4
        assert len({d.root_key for d in opened}) == 1
        assert len({d.storage_key for d in opened}) == 1
        assert {d.config["chunk_size"] for d in opened} == {1 << 16}
        assert [ns.name for ns in opened[0].meta.list_namespaces()] == ["default"]
        # a chunk sealed by one server opens on another (one namespace key for both)
        data = os.urandom(5000)
        cid = blake3(data).digest()
        writer, reader = opened[0], opened[3]
        writer.chunks.put("default", cid, data)
        assert reader.chunks.read("default", cid) == data
        # and a second namespace's first chunks, written by two servers at once
        ids = []
        for d in opened[:2]:
            payload = os.urandom(3000)
            ids.append((blake3(payload).digest(), payload))
            d.chunks.put("other", ids[-1][0], payload)
        for cid2, payload in ids:
            assert opened[2].chunks.read("other", cid2) == payload
    finally:
        for d in opened:
            d.close()
    # nothing secret in the clear: no row holds a key's bytes
    with psycopg.connect(pg_dsn) as conn:
        blob = b"".join(bytes(r[0]) for r in conn.execute("SELECT sealed FROM aifs_secrets"))
        names = [r[0] for r in conn.execute("SELECT name FROM aifs_secrets ORDER BY name")]
        nsk = conn.execute("SELECT scope, key_id FROM aifs_namespace_keys "
                           "ORDER BY scope").fetchall()
    assert names == ["config", "keyring", "macaroon.key", "signing.key", "storage.key"]
    for secret in (opened[0].root_key, opened[0].storage_key,
                   opened[0].signing_key.private_bytes_raw(), b'"chunk_size"'):
        assert secret not in blob
    assert nsk == [("default", "nsk:1"), ("other", "nsk:1")]


def test_wrong_or_missing_master_key_is_refused(pg_dsn: str, s3_bucket: S3Location,
                                                master_file: Path, tmp_path: Path,
                                                s3_env: None,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    _open(pg_dsn, s3_bucket, master_file).close()
    other = tmp_path / "other.key"
    write_master_key(other)
    with pytest.raises(KeyUnavailable, match="not the key this deployment was formatted with"):
        _open(pg_dsn, s3_bucket, other)
    monkeypatch.delenv(MASTER_KEY_FILE_ENV, raising=False)
    monkeypatch.delenv(MASTER_KEY_ENV, raising=False)
    with pytest.raises(KeyUnavailable, match=MASTER_KEY_FILE_ENV):
        load_master_key()
    os.chmod(master_file, 0o644)
    with pytest.raises(KeyUnavailable, match="chmod 600"):
        load_master_key(master_file)
    # the environment form: the same key as hex
    os.chmod(master_file, 0o600)
    monkeypatch.setenv(MASTER_KEY_ENV, master_file.read_text().strip())
    open_shared(pg_dsn, s3_bucket.url, load_master_key()).close()
