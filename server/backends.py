"""The backend registry: which metadata engine and which chunk store, by URL scheme.

Interface:
    open_meta(url, row_key=None) -> MetadataEngine   e.g. sqlite:///abs/path/meta.db;
                                            row_key: the deployment's storage key (keys the
                                            metadata row MACs: metadata/row_mac.py)
    open_store(url) -> ChunkStore           e.g. file:///abs/path/chunks
    register_meta(scheme, factory, config_name=None)
    register_store(scheme, factory, config_name=None)
        factory(url) -> the store; factory(url, row_key) -> the engine. `config_name` is the name a data dir's config
        records for it ("sqlite", "local"); the scheme is the default.
    meta_url(root, section) -> str          the URL a data dir config's "meta" section names
    store_url(root, section) -> str         ... its "chunks" section
        A section is {"url": URL} or {"engine"/"store": NAME, "path": PATH} with PATH relative
        to the data dir `root` (missing keys: sqlite at meta.db, local at chunks).
    local_path(url) -> str | None           the local file or directory a URL names (None for
                                            a remote one): what must exist for an existing
                                            data dir
    known_meta() / known_stores() -> list[str]   registered schemes

Unknown schemes or config names are InvalidArgument naming what was asked for and what is
known. Built in: sqlite (SQLiteMetadata), postgresql / postgres (PostgresMetadata, a libpq
URL), file (LocalChunkStore) and
s3://BUCKET[/PREFIX]?endpoint=URL&region=R (S3ChunkStore; credentials from the environment).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from aifs_core.errors import InvalidArgument
from aifs_server.chunkstore import ChunkStore
from aifs_server.metadata.base import MetadataEngine

T = TypeVar("T")

MetaFactory = Callable[[str, bytes | None], MetadataEngine]
StoreFactory = Callable[[str], ChunkStore]


class _Registry(Generic[T]):
    """Factories (T) by URL scheme, and the config name each one is recorded under."""

    def __init__(self, what: str, config_key: str) -> None:
        self.what, self.config_key = what, config_key
        self.factories: dict[str, T] = {}
        self.by_config_name: dict[str, str] = {}

    def register(self, scheme: str, factory: T, config_name: str | None = None) -> None:
        self.factories[scheme] = factory
        self.by_config_name[config_name or scheme] = scheme

    def factory(self, url: str) -> T:
        scheme = urlsplit(url).scheme
        factory = self.factories.get(scheme)
        if factory is None:
            raise InvalidArgument(
                f"unknown {self.what} {scheme or url!r} in {url!r}: known are "
                f"{', '.join(s + '://' for s in sorted(self.factories))}")
        return factory

    def url(self, root: Path, section: Any, default_name: str, default_path: str) -> str:
        section = section if isinstance(section, dict) else {}
        if section.get("url"):
            return str(section["url"])
        name = str(section.get(self.config_key, default_name))
        scheme = self.by_config_name.get(name)
        if scheme is None:
            raise InvalidArgument(
                f"unknown {self.what} {name!r} (config key {self.config_key!r}): known are "
                f"{', '.join(sorted(self.by_config_name))}")
        path = root / str(section.get("path", default_path))
        return f"{scheme}://{path.absolute()}"


_META: _Registry[MetaFactory] = _Registry("metadata engine", "engine")
_STORES: _Registry[StoreFactory] = _Registry("chunk store", "store")


def register_meta(scheme: str, factory: MetaFactory, config_name: str | None = None) -> None:
    _META.register(scheme, factory, config_name)


def register_store(scheme: str, factory: StoreFactory, config_name: str | None = None) -> None:
    _STORES.register(scheme, factory, config_name)


def known_meta() -> list[str]:
    return sorted(_META.factories)


def known_stores() -> list[str]:
    return sorted(_STORES.factories)


def open_meta(url: str, row_key: bytes | None = None) -> MetadataEngine:
    return _META.factory(url)(url, row_key)


def open_store(url: str) -> ChunkStore:
    return _STORES.factory(url)(url)


def meta_url(root: Path, section: Any) -> str:
    return _META.url(root, section, "sqlite", "meta.db")


def store_url(root: Path, section: Any) -> str:
    return _STORES.url(root, section, "local", "chunks")


def local_path(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("file", "sqlite"):
        return None
    if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise InvalidArgument(
            f"{url!r} is not a local path URL: write {parts.scheme}:///ABSOLUTE/PATH")
    return unquote(parts.path)


# --- built-in backends -------------------------------------------------------------------

def _sqlite(url: str, row_key: bytes | None) -> MetadataEngine:
    from aifs_server.metadata.sqlite import SQLiteMetadata

    path = local_path(url)
    assert path is not None
    meta = SQLiteMetadata(path, row_key=row_key)
    if os.path.exists(path):
        os.chmod(path, 0o600)  # it names every file: as private as the keys
    return meta


def _file(url: str) -> ChunkStore:
    from aifs_server.chunkstore import LocalChunkStore

    path = local_path(url)
    assert path is not None
    return LocalChunkStore(path)


def _s3(url: str) -> ChunkStore:
    """s3://BUCKET[/PREFIX]?endpoint=http://127.0.0.1:8333&region=us-east-1 (credentials from
    the environment or AWS_SHARED_CREDENTIALS_FILE, never from the URL)."""
    from aifs_server.chunkstore_s3 import S3ChunkStore

    parts = urlsplit(url)
    if parts.username or parts.password:
        raise InvalidArgument("an s3:// URL carries no credentials: set AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY (or a credentials file) instead")
    query = parse_qs(parts.query)
    unknown = set(query) - {"endpoint", "region", "profile"}
    if unknown:
        raise InvalidArgument(f"unknown s3:// URL parameter(s) {', '.join(sorted(unknown))}: "
                              f"known are endpoint, region, profile")

    def one(key: str) -> str | None:
        return query[key][-1] if key in query else None

    return S3ChunkStore(parts.hostname or "", endpoint=one("endpoint"),
                        region=one("region") or "us-east-1", prefix=unquote(parts.path),
                        profile=one("profile"),
                        credentials_file=os.environ.get("AWS_SHARED_CREDENTIALS_FILE"))


def _postgresql(url: str, row_key: bytes | None) -> MetadataEngine:
    """postgresql://[user@]host[:port]/db or postgresql:///db?host=/run/postgresql: a libpq URL,
    passed as is (passwords from PGPASSFILE / PGPASSWORD, never from a config file)."""
    from aifs_server.metadata.postgres import PostgresMetadata

    return PostgresMetadata(url, row_key=row_key)


register_meta("sqlite", _sqlite)
register_meta("postgresql", _postgresql)
register_meta("postgres", _postgresql)  # libpq accepts both schemes
register_store("file", _file, config_name="local")
register_store("s3", _s3)
