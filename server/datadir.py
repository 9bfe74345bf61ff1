"""The AIFS data directory: formatting it once, opening it every time the server starts.

Interface:
    format_data_dir(path, *, dry_run=False, chunk_size=1<<20, zstd_level=1,
                    namespace="default") -> FormatResult(created, message, path, dry_run,
                                                         actions, config)
        Idempotent: on an already formatted directory it says so and changes nothing.
        dry_run validates (path writable, not a foreign non-empty directory) and writes nothing.
    open_data_dir(path, *, codec=None) -> DataDir
        The metadata engine and the chunk store are the ones the config records, opened
        through backends (an unknown one is a DataDirError naming it and the known ones).
        .path, .config, .kms, .keys (NamespaceKeyCache), .codec, .store (chunkstore.ChunkStore),
        .chunks (ChunkService), .meta (MetadataEngine), .root_key (macaroon root key, bytes),
        .storage_key (bytes), .signing_key (Ed25519PrivateKey), .signing_public_key,
        .ensure_namespace(name, chunk_size=None, zstd_level=None) -> Namespace (creates it and
        its 'main' tree with the data dir's defaults if new), .close(); a context manager.
    is_formatted(path) -> bool
    open_shared(meta_url, store_url, master, *, chunk_size=1<<20, zstd_level=1,
                namespace="default", codec=None) -> DataDir
        A deployment with no data dir: metadata in PostgreSQL, chunks in a shared store, the
        keys in the database sealed by `master` (secrets.py). The first opener of an empty
        database formats it (idempotent; safe when several start at once); the format options
        only count then. .path is None; .config is the database's (format "aifs-shared").
        create=False: a database without a deployment is a DataDirError (fsck, token).
        A deployment `aifs migrate` has not finished copying is refused (DataDirError).
    DataDirError (FAILED_PRECONDITION, reason DATA_DIR): not formatted, foreign directory,
        unsafe key-file permissions, unsupported format version.

Layout (directory 0700, key files 0600):
    config.json      {"format": "aifs-data-dir", "format_version": 1, ...}  written LAST, so
                     its presence means the format finished
    keyring.json     the LocalKeyring (KMS keys)
    namespace-keys.json  namespace keys wrapped by the KMS (NamespaceKeyCache; first write)
    storage.key      32 random bytes: the key of the keyed BLAKE3 that names stored chunks
    macaroon.key     32 random bytes: the macaroon root key
    signing.key      Ed25519 private key (raw 32 bytes) that signs snapshots; signing.pub
    meta.db          SQLiteMetadata   (config "meta": {"engine": "sqlite", "path": "meta.db"})
    chunks/          LocalChunkStore  (config "chunks": {"store": "local", "path": "chunks"}):
                     ab/cd/<name> files, and small envelopes as rows of chunks/small.sqlite
                     Either section may instead be {"url": "..."} (backends.py).

A format interrupted before config.json was written is resumed by running format again: files
of the layout that are already there (each written atomically) are kept.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from aifs_core.errors import AIFSError, AlreadyExists, InvalidArgument
from aifs_core.fileutil import fsync_dir, write_file_atomic
from aifs_core.types import Namespace, TreeRef
from aifs_server import backends
from aifs_server.metadata.base import MetadataEngine

FORMAT_NAME = "aifs-data-dir"
FORMAT_VERSION = 1

CONFIG = "config.json"
KEYRING = "keyring.json"
STORAGE_KEY = "storage.key"
MACAROON_KEY = "macaroon.key"
SIGNING_KEY = "signing.key"
SIGNING_PUB = "signing.pub"
META_DB = "meta.db"
CHUNKS = "chunks"
NS_KEYS = "namespace-keys.json"
KEY_FILES = (KEYRING, STORAGE_KEY, MACAROON_KEY, SIGNING_KEY)
# Everything format may leave behind (sqlite adds -wal/-shm/-journal next to meta.db).
LAYOUT = {CONFIG, KEYRING, NS_KEYS, STORAGE_KEY, MACAROON_KEY, SIGNING_KEY, SIGNING_PUB, META_DB,
          META_DB + "-wal", META_DB + "-shm", META_DB + "-journal", CHUNKS,
          "aifs.sock"}  # the server's default unix socket lives here too

MIN_CHUNK, MAX_CHUNK = 4096, 64 << 20
_NS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class DataDirError(AIFSError):
    code, reason = grpc.StatusCode.FAILED_PRECONDITION, "DATA_DIR"


@dataclass
class FormatResult:
    created: bool
    message: str
    path: str = ""
    dry_run: bool = False
    actions: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


def validate_namespace_name(name: str) -> str:
    if not isinstance(name, str) or not _NS_RE.match(name):
        raise InvalidArgument(
            f"invalid namespace name {name!r}: use 1-63 characters from A-Z a-z 0-9 . _ -, "
            f"starting with a letter or digit"
        )
    return name


def validate_chunk_size(chunk_size: int) -> int:
    if (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
            or not MIN_CHUNK <= chunk_size <= MAX_CHUNK or chunk_size & (chunk_size - 1)):
        raise InvalidArgument(
            f"invalid chunk size {chunk_size!r}: use a power of two from {MIN_CHUNK} (4 KiB) "
            f"to {MAX_CHUNK} (64 MiB); the default is 1 MiB"
        )
    return chunk_size


def is_formatted(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / CONFIG).is_file()


def _read_config(root: Path) -> dict[str, Any]:
    try:
        config = json.loads((root / CONFIG).read_text())
    except FileNotFoundError:
        raise DataDirError(
            f"{root} is not an AIFS data directory (no {CONFIG}); create one with "
            f"`aifs format --data {root}`"
        ) from None
    except (OSError, ValueError) as e:
        raise DataDirError(f"{root / CONFIG} cannot be read: {e}") from e
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        raise DataDirError(f"{root / CONFIG} is not an AIFS data directory config")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise DataDirError(
            f"{root} has data directory format version {version!r}; this aifs reads version "
            f"{FORMAT_VERSION}: use a matching aifs release"
        )
    return config


def _check_target(root: Path) -> str | None:
    """Validate a format target. Returns 'formatted', 'resume' or None (fresh); raises if bad."""
    if root.exists() or root.is_symlink():
        if not root.is_dir():
            raise DataDirError(f"{root} exists and is not a directory; choose another --data path")
        if is_formatted(root):
            _read_config(root)  # a broken or foreign config is an error, not "formatted"
            return "formatted"
        entries = {p.name for p in root.iterdir()}
        # Temp files of an interrupted atomic write (".tmp-*", ".<name>.tmp<pid>") are ours too.
        foreign = sorted(e for e in entries - LAYOUT if not (e.startswith(".") and "tmp" in e))
        if foreign:
            shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
            raise DataDirError(
                f"{root} is not empty and is not an AIFS data directory (it holds {shown}); "
                f"choose an empty or new directory"
            )
        if not os.access(root, os.W_OK | os.X_OK):
            raise DataDirError(f"{root} is not writable by this user; fix its permissions")
        return "resume" if entries else None
    # Does not exist: the nearest existing ancestor must let us create it.
    parent = root.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise DataDirError(f"cannot create {root}: {parent} is not a writable directory")
    return None


def format_data_dir(path: str | os.PathLike[str], *, dry_run: bool = False,
                    chunk_size: int = 1 << 20, zstd_level: int = 1,
                    namespace: str = "default") -> FormatResult:
    from aifs_core.codec import validate_level

    root = Path(path).absolute()
    validate_chunk_size(chunk_size)
    validate_level(zstd_level)
    validate_namespace_name(namespace)
    state = _check_target(root)
    if state == "formatted":
        return FormatResult(False, f"{root} is already formatted as an AIFS data directory; "
                            f"nothing was changed", str(root), dry_run,
                            config=_read_config(root))
    config: dict[str, Any] = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "created_ns": time.time_ns(),
        "chunk_size": chunk_size, "zstd_level": zstd_level, "default_namespace": namespace,
        "keyring": KEYRING, "meta": {"engine": "sqlite", "path": META_DB},
        "chunks": {"store": "local", "path": CHUNKS},
    }
    actions = [
        f"create directory {root} (0700)" if state is None else f"resume format of {root}",
        f"create {KEYRING} (KMS keyring, 0600)",
        f"create {STORAGE_KEY}, {MACAROON_KEY}, {SIGNING_KEY} (0600)",
        f"create {META_DB} and {CHUNKS}/",
        f"create namespace {namespace!r} (chunk size {chunk_size}, zstd level {zstd_level}) "
        f"and its 'main' tree",
        f"write {CONFIG} (format version {FORMAT_VERSION})",
    ]
    if dry_run:
        return FormatResult(False, f"dry run: {root} can be formatted; nothing was written",
                            str(root), True, actions, config)

    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(root, 0o700)
    from .kms import LocalKeyring

    if (root / KEYRING).exists():
        keyring = LocalKeyring(root / KEYRING)
    else:
        keyring = LocalKeyring.create(root / KEYRING)
    for name in (STORAGE_KEY, MACAROON_KEY):
        if not (root / name).exists():
            write_file_atomic(root / name, secrets.token_bytes(32), 0o600)
    if not (root / SIGNING_KEY).exists():
        sk = Ed25519PrivateKey.generate()
        write_file_atomic(root / SIGNING_PUB,
                      sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw), 0o644)
        write_file_atomic(root / SIGNING_KEY, sk.private_bytes_raw(), 0o600)
    (root / CHUNKS).mkdir(exist_ok=True, mode=0o700)
    os.chmod(root / CHUNKS, 0o700)
    meta = _open_meta(root, config, (root / STORAGE_KEY).read_bytes())
    try:
        _ensure_namespace(meta, namespace, chunk_size, zstd_level, keyring.current_key_id())
    finally:
        meta.close()
    fsync_dir(root)
    write_file_atomic(root / CONFIG, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(),
                  0o600)
    fsync_dir(root)
    return FormatResult(True, f"formatted {root} as an AIFS data directory (namespace "
                        f"{namespace!r}, chunk size {chunk_size}, zstd level {zstd_level})",
                        str(root), False, actions, config)


def _backend_urls(root: Path, config: dict[str, Any]) -> tuple[str, str]:
    """(metadata URL, chunk store URL) the config records; an unknown kind names the file."""
    try:
        return (backends.meta_url(root, config.get("meta")),
                backends.store_url(root, config.get("chunks")))
    except InvalidArgument as e:
        raise DataDirError(f"{root / CONFIG}: {e.message}") from None


def _open_meta(root: Path, config: dict[str, Any], storage_key: bytes) -> MetadataEngine:
    url, _ = _backend_urls(root, config)
    return backends.open_meta(url, storage_key)


def _ensure_namespace(meta: MetadataEngine, name: str, chunk_size: int, zstd_level: int,
                      key_id: str) -> Namespace:
    try:
        ns = meta.create_namespace(Namespace(name=name, chunk_size=chunk_size,
                                             zstd_level=zstd_level, kms_key_id=key_id,
                                             created_ns=time.time_ns()))
    except AlreadyExists:
        ns = meta.get_namespace(name)
    meta.ensure_tree(TreeRef(name, "main"), os.getuid(), os.getgid())
    return ns


def _check_key_file(path: Path) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataDirError(
            f"{path} is missing: the data directory is incomplete; restore it from a backup "
            f"(without it the data cannot be read)"
        ) from None
    if st.st_mode & 0o077:
        raise DataDirError(
            f"{path} is readable by group or others (mode {stat.filemode(st.st_mode)}); it "
            f"holds a secret key: run `chmod 600 {path}` and start again"
        )


@dataclass
class DataDir:
    path: Path | None   # None for a shared deployment (open_shared): no directory of its own
    config: dict[str, Any]
    kms: Any
    keys: Any
    codec: Any
    store: Any
    chunks: Any
    meta: MetadataEngine
    root_key: bytes
    storage_key: bytes
    signing_key: Ed25519PrivateKey

    @property
    def signing_public_key(self) -> Ed25519PublicKey:
        return self.signing_key.public_key()

    def ensure_namespace(self, name: str, chunk_size: int | None = None,
                         zstd_level: int | None = None) -> Namespace:
        """The namespace, created (with its 'main' tree) from the data dir defaults if new."""
        validate_namespace_name(name)
        return _ensure_namespace(
            self.meta, name, validate_chunk_size(chunk_size or self.config["chunk_size"]),
            zstd_level or self.config["zstd_level"], self.kms.current_key_id())

    def close(self) -> None:
        self.meta.close()

    def __enter__(self) -> DataDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_data_dir(path: str | os.PathLike[str], *, codec: Any = None) -> DataDir:
    """Open a formatted data directory. `codec`: a CompressionService to seal chunks with
    (default: a new one at the config's zstd level), e.g. the AssetManager's own, so its
    statistics and level are the ones in use."""
    from aifs_core.codec import CompressionService

    from .chunks import ChunkService
    from .kms import LocalKeyring, NamespaceKeyCache

    root = Path(path).absolute()
    if not root.is_dir():
        raise DataDirError(
            f"{root} is not an AIFS data directory (it does not exist); create one with "
            f"`aifs format --data {root}`"
        )
    config = _read_config(root)
    for name in KEY_FILES:
        _check_key_file(root / name)
    if (root / NS_KEYS).exists():  # written on the first chunk write
        _check_key_file(root / NS_KEYS)
    meta_url, store_url = _backend_urls(root, config)
    for url in (meta_url, store_url):
        try:
            local = backends.local_path(url)
        except InvalidArgument as e:
            raise DataDirError(f"{root / CONFIG}: {e.message}") from None
        if local is not None and not os.path.exists(local):
            # never silently start over with an empty one
            raise DataDirError(
                f"{local} is missing: the data directory is incomplete; restore it from a "
                f"backup"
            )
    storage_key = (root / STORAGE_KEY).read_bytes()
    root_key = (root / MACAROON_KEY).read_bytes()
    raw_sk = (root / SIGNING_KEY).read_bytes()
    if len(storage_key) != 32 or len(root_key) != 32 or len(raw_sk) != 32:
        raise DataDirError(f"a key file in {root} is damaged (wrong length); restore it from a "
                           f"backup")
    kms = LocalKeyring(root / KEYRING)
    keys = NamespaceKeyCache(kms, root / NS_KEYS)
    if codec is None:
        codec = CompressionService(config.get("zstd_level", 1))
    try:
        store = backends.open_store(store_url)
        meta = backends.open_meta(meta_url, storage_key)  # it keys the row MACs
    except InvalidArgument as e:  # a scheme nothing registered
        raise DataDirError(f"{root / CONFIG}: {e.message}") from None
    chunks = ChunkService(store, keys, codec, storage_key)
    return DataDir(path=root, config=config, kms=kms, keys=keys, codec=codec, store=store,
                   chunks=chunks, meta=meta, root_key=root_key, storage_key=storage_key,
                   signing_key=Ed25519PrivateKey.from_private_bytes(raw_sk))


SHARED_FORMAT = "aifs-shared"


def open_shared(meta_url: str, store_url: str, master: Any, *, chunk_size: int = 1 << 20,
                zstd_level: int = 1, namespace: str = "default", codec: Any = None,
                create: bool = True) -> DataDir:
    """Open (formatting it first if the database is empty and `create`) a shared
    deployment."""
    from aifs_core.codec import CompressionService, validate_level

    from .chunks import ChunkService
    from .kms import NamespaceKeyCache
    from .secrets import Initial, SecretsDB

    validate_chunk_size(chunk_size)
    validate_level(zstd_level)
    validate_namespace_name(namespace)
    db = SecretsDB(meta_url)
    if not create and not db.has_secrets():
        raise DataDirError(f"{db.where} holds no AIFS deployment (start a server on it to "
                           f"format it, or `aifs migrate` a data dir into it)")
    store = backends.open_store(store_url)
    # the secrets first (their tables are secrets.py's own): the storage key keys the row MACs
    # that the engine's schema migration may have to compute (metadata/row_mac.py)
    db.bootstrap(master, Initial.generate({
        "format": SHARED_FORMAT, "format_version": FORMAT_VERSION,
        "created_ns": time.time_ns(), "chunk_size": chunk_size, "zstd_level": zstd_level,
        "default_namespace": namespace}))
    shared = db.load(master)
    meta = backends.open_meta(meta_url, shared.storage_key)  # creates or migrates the schema
    try:
        config = dict(shared.config)
        if config.get("format") != SHARED_FORMAT or config.get("format_version") != FORMAT_VERSION:
            raise DataDirError(f"{db.where} holds a {config.get('format')!r} version "
                               f"{config.get('format_version')!r} deployment; this aifs reads "
                               f"{SHARED_FORMAT!r} version {FORMAT_VERSION}")
        if config.get("migrating"):
            raise DataDirError(f"{db.where} is being migrated into (from "
                               f"{config.get('migrated_from')}) and the copy has not finished: "
                               f"run `aifs migrate` to the end first")
        kms = db.keyring(master)
        keys = NamespaceKeyCache(kms, db.namespace_keys())
        # every opener, not only the formatter: one that died after the secrets committed
        # must not leave the deployment without its first namespace
        _ensure_namespace(meta, config["default_namespace"], config["chunk_size"],
                          config["zstd_level"], kms.current_key_id())
    except BaseException:
        meta.close()
        raise
    config["meta"] = {"url": _without_password(meta_url)}
    config["chunks"] = {"url": store_url}
    if codec is None:
        codec = CompressionService(config.get("zstd_level", 1))
    chunks = ChunkService(store, keys, codec, shared.storage_key)
    return DataDir(path=None, config=config, kms=kms, keys=keys, codec=codec, store=store,
                   chunks=chunks, meta=meta, root_key=shared.root_key,
                   storage_key=shared.storage_key,
                   signing_key=Ed25519PrivateKey.from_private_bytes(shared.signing_key))


def _without_password(url: str) -> str:
    """A URL as shown (Introspect, logs): any password replaced."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
