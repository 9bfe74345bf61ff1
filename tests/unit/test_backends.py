"""The backend registry: URLs and data dir config sections to real engines and stores."""

from __future__ import annotations

from pathlib import Path

import pytest

from aifs_core.errors import InvalidArgument
from aifs_core.types import Namespace
from aifs_server import backends
from aifs_server.chunkstore import ChunkStore, LocalChunkStore
from aifs_server.metadata.sqlite import SQLiteMetadata
from tests.services import s3_location_for
from tests.stored_chunks import stored_chunks


def test_built_in_backends_open_from_urls(tmp_path: Path) -> None:
    store = backends.open_store(f"file://{tmp_path / 'chunks'}")
    assert isinstance(store, LocalChunkStore) and store.root == str(tmp_path / "chunks")
    assert store.put("ab" * 32, b"x")
    assert [c.name for c in stored_chunks(tmp_path / "chunks")] == ["ab" * 32]
    meta = backends.open_meta(f"sqlite://{tmp_path / 'meta.db'}")
    try:
        assert isinstance(meta, SQLiteMetadata)
        meta.create_namespace(Namespace("ns", 4096, 1, "k", 1))
        assert meta.get_namespace("ns").chunk_size == 4096
    finally:
        meta.close()
    assert (tmp_path / "meta.db").stat().st_mode & 0o777 == 0o600
    assert "sqlite" in backends.known_meta()
    assert "file" in backends.known_stores()


def test_config_sections_become_urls(tmp_path: Path) -> None:
    assert backends.meta_url(tmp_path, {"engine": "sqlite", "path": "meta.db"}) == \
        f"sqlite://{tmp_path / 'meta.db'}"
    assert backends.store_url(tmp_path, {"store": "local", "path": "chunks"}) == \
        f"file://{tmp_path / 'chunks'}"
    # what a data dir config without the sections meant: the embedded defaults
    assert backends.meta_url(tmp_path, None) == f"sqlite://{tmp_path / 'meta.db'}"
    assert backends.store_url(tmp_path, {}) == f"file://{tmp_path / 'chunks'}"
    assert backends.store_url(tmp_path, {"url": "file:///srv/chunks"}) == "file:///srv/chunks"
    with pytest.raises(InvalidArgument, match=r"unknown chunk store 'tape' \(config key 'store'\): known are local, s3"):
        backends.store_url(tmp_path, {"store": "tape"})


def test_unknown_schemes_and_bad_local_urls_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"unknown chunk store 'gs'.*known are file://"):
        backends.open_store("gs://bucket/prefix")
    with pytest.raises(InvalidArgument, match=r"unknown metadata engine 'mysql'"):
        backends.open_meta("mysql://db/aifs")
    with pytest.raises(InvalidArgument, match="file:///ABSOLUTE/PATH"):
        backends.local_path("file://otherhost/x")
    with pytest.raises(InvalidArgument, match="sqlite:///ABSOLUTE/PATH"):
        backends.local_path("sqlite:relative.db")
    assert backends.local_path("file:///a%20b/c") == "/a b/c"
    assert backends.local_path("s3://bucket/x") is None


def test_a_registered_factory_is_chosen_by_scheme_and_config_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []

    def factory(url: str) -> ChunkStore:
        opened.append(url)
        return LocalChunkStore(tmp_path / "elsewhere")

    # registered the way the next backends register, undone after the test
    monkeypatch.setattr(backends._STORES, "factories", dict(backends._STORES.factories))
    monkeypatch.setattr(backends._STORES, "by_config_name",
                        dict(backends._STORES.by_config_name))
    backends.register_store("other", factory, config_name="another")
    url = backends.store_url(tmp_path, {"store": "another", "path": "x"})
    assert url == f"other://{tmp_path / 'x'}"
    store = backends.open_store(url)
    assert opened == [url] and store.put("cd" * 32, b"y")
    assert "other" in backends.known_stores()


def test_s3_urls_open_a_store_in_a_real_bucket(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    loc = s3_location_for(tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", loc.sw.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", loc.sw.secret_key)
    store = backends.open_store(loc.url)
    assert store.put("ef" * 32, b"through the registry") is True
    # the same objects, seen by a store built directly
    assert loc.store().get("ef" * 32) == b"through the registry"
    assert "s3" in backends.known_stores()


def test_s3_urls_refuse_credentials_and_unknown_parameters() -> None:
    with pytest.raises(InvalidArgument, match="carries no credentials"):
        backends.open_store("s3://key:secret@bucket/p?endpoint=http://127.0.0.1:1")
    with pytest.raises(InvalidArgument, match="unknown s3:// URL parameter"):
        backends.open_store("s3://bucket/p?endpoint=http://127.0.0.1:1&acl=public")


def test_postgresql_urls_open_the_engine_on_a_real_database(pg_dsn: str) -> None:
    meta = backends.open_meta(pg_dsn)
    try:
        meta.create_namespace(Namespace("ns", 1 << 20, 1, "k1"))
        assert [n.name for n in meta.list_namespaces()] == ["ns"]
        assert "postgresql" in backends.known_meta()
    finally:
        meta.close()
