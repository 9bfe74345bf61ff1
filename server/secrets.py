"""Secrets that servers sharing one PostgreSQL database and one bucket share, kept in that
database sealed by a master key each server reads from a file or the environment.

Interface:
    load_master_key(path=None, environ=os.environ) -> MasterKey
        `path`, else $AIFS_MASTER_KEY_FILE (a file of 64 hex digits, mode 0600), else
        $AIFS_MASTER_KEY (64 hex digits, for containers). KeyUnavailable saying what to set.
    write_master_key(path) -> None        a new random master key file (0600; never overwrites)
    MasterKey(key, source)                .seal(name, plaintext) / .open(name, sealed, where)
    SecretsDB(dsn)                        the secret rows of one database (its own short
                                          connections, not the engine's pool)
        .bootstrap(master, initial: Initial) -> bool   store `initial` unless the database
                                          already holds secrets (True if this call stored them)
        .load(master) -> Shared           KeyUnavailable if the master key does not open them
        .put(master, name, value)         replace one secret (migrate clears its mark so)
        .has_secrets() -> bool
        .namespace_keys() -> DBNamespaceKeys   kms.NamespaceKeyRecords in a table
        .keyring(master) -> DBKeyring     kms.KMS whose keys live sealed in the database
        .add_namespace_keys(scopes)       copy a data dir's namespace keys (aifs migrate)
    Initial.generate(config) -> Initial   fresh keys for a new deployment
    Shared: .config (dict), .root_key, .storage_key, .signing_key (raw 32 bytes each)

Why the database and not the bucket: several servers must agree on exactly one set of secrets
and on one namespace key per epoch. PostgreSQL gives that for free (a transaction under an
advisory lock formats once however many servers start at once; a primary key decides which of
two new namespace keys wins), where S3 would need conditional writes not every store has.

Tables (created here with CREATE TABLE IF NOT EXISTS under SECRETS_LOCK: the engine's schema
module knows nothing of them, so its migrations and these never collide):
    aifs_secrets(name PRIMARY KEY, sealed BYTEA, created_ns)   config, keyring, macaroon.key,
        storage.key, signing.key: each AES-256-GCM sealed by the master key, the associated
        data binding the row's name (a row copied onto another name does not open)
    aifs_namespace_keys(scope, epoch, key_id, kms_key_id, wrapped, created)
        namespace keys as a data dir's namespace-keys.json holds them: each wrapped by a KMS
        key of the keyring (so nothing here is usable without the master key either)
Nothing secret is ever stored in the clear, logged or put in an error message.
"""

from __future__ import annotations

import base64
import json
import os
import secrets as pysecrets
import stat
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aifs_core.errors import InvalidArgument, KeyUnavailable, StoreUnavailable
from aifs_core.fileutil import write_file_atomic
from aifs_server.kms import KEY_BYTES, NONCE_BYTES, kek_unwrap, kek_wrap

MASTER_KEY_FILE_ENV = "AIFS_MASTER_KEY_FILE"
MASTER_KEY_ENV = "AIFS_MASTER_KEY"
SECRETS_LOCK = 0x41494653  # "AIFS": advisory lock of the secrets' format (apart from the schema's)
_AAD = b"aifs-secret-v1\x00"
CONNECT_TIMEOUT = 5
SECRET_NAMES = ("config", "keyring", "macaroon.key", "storage.key", "signing.key")

_TABLES = (
    """CREATE TABLE IF NOT EXISTS aifs_secrets (
        name TEXT PRIMARY KEY, sealed BYTEA NOT NULL, created_ns BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS aifs_namespace_keys (
        scope TEXT NOT NULL, epoch INTEGER NOT NULL, key_id TEXT NOT NULL,
        kms_key_id TEXT NOT NULL, wrapped TEXT NOT NULL, created BIGINT NOT NULL,
        PRIMARY KEY (scope, epoch))""",
)


# --- the master key ---------------------------------------------------------------------------

class MasterKey:
    """The key-encryption key of a shared deployment's secrets (never logged: repr hides it)."""

    def __init__(self, key: bytes, source: str) -> None:
        if len(key) != KEY_BYTES:
            raise KeyUnavailable(f"the master key from {source} is {len(key)} bytes; it must "
                                 f"be {KEY_BYTES} (64 hex digits)")
        self._aead, self.source = AESGCM(key), source

    def __repr__(self) -> str:
        return f"MasterKey(from {self.source})"

    def seal(self, name: str, plaintext: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, _AAD + name.encode())

    def open(self, name: str, sealed: bytes, where: str) -> bytes:
        try:
            return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:],
                                      _AAD + name.encode())
        except (InvalidTag, ValueError):
            raise KeyUnavailable(
                f"the master key from {self.source} does not open the secret {name!r} in "
                f"{where}: it is not the key this deployment was formatted with (or the row "
                f"was altered); give the deployment's master key") from None


def _parse_key(text: str, source: str) -> bytes:
    try:
        return bytes.fromhex(text.strip())
    except ValueError:
        raise KeyUnavailable(f"the master key in {source} is not 64 hex digits") from None


def load_master_key(path: str | os.PathLike[str] | None = None,
                    environ: Mapping[str, str] = os.environ) -> MasterKey:
    path = path or environ.get(MASTER_KEY_FILE_ENV) or None
    if path is not None:
        source = os.fspath(path)
        try:
            st = os.stat(source)
        except FileNotFoundError:
            raise KeyUnavailable(f"the master key file {source} does not exist (create one "
                                 f"with `aifs master-key create {source}`)") from None
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise KeyUnavailable(f"the master key file {source} has mode "
                                 f"{stat.S_IMODE(st.st_mode):04o}: run `chmod 600 {source}`")
        with open(source, encoding="ascii", errors="replace") as f:
            return MasterKey(_parse_key(f.read(), source), source)
    text = environ.get(MASTER_KEY_ENV)
    if text:
        return MasterKey(_parse_key(text, f"${MASTER_KEY_ENV}"), f"${MASTER_KEY_ENV}")
    raise KeyUnavailable(
        f"no master key: servers sharing a database need the deployment's master key; set "
        f"{MASTER_KEY_FILE_ENV} (or pass --master-key-file), or {MASTER_KEY_ENV}")


def write_master_key(path: str | os.PathLike[str]) -> None:
    if os.path.exists(path):
        raise InvalidArgument(f"{os.fspath(path)} already exists; refusing to overwrite a key")
    write_file_atomic(path, (pysecrets.token_bytes(KEY_BYTES).hex() + "\n").encode(), 0o600)


# --- what is stored ---------------------------------------------------------------------------

@dataclass
class Initial:
    """Everything a new deployment's database starts with (or a migrated data dir's keys)."""

    config: dict[str, Any]
    keyring_current: str
    keyring: dict[str, bytes]
    root_key: bytes
    storage_key: bytes
    signing_key: bytes

    @classmethod
    def generate(cls, config: dict[str, Any]) -> Initial:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(config=config, keyring_current="local:1",
                   keyring={"local:1": os.urandom(KEY_BYTES)},
                   root_key=os.urandom(32), storage_key=os.urandom(32),
                   signing_key=Ed25519PrivateKey.generate().private_bytes_raw())


@dataclass
class Shared:
    config: dict[str, Any]
    root_key: bytes
    storage_key: bytes
    signing_key: bytes

    def __repr__(self) -> str:
        return f"Shared(config={self.config!r})"


def _keyring_doc(current: str, keys: dict[str, bytes]) -> bytes:
    return json.dumps({"current": current, "keys": {k: base64.b64encode(v).decode()
                                                    for k, v in keys.items()}}).encode()


def _keyring_from(doc: bytes) -> tuple[str, dict[str, bytes]]:
    d = json.loads(doc)
    return str(d["current"]), {k: base64.b64decode(v) for k, v in d["keys"].items()}


# --- the database -----------------------------------------------------------------------------

class SecretsDB:
    """The secret rows of one PostgreSQL database (see the module docstring)."""

    def __init__(self, dsn: str) -> None:
        if not dsn.startswith(("postgresql://", "postgres://")):
            raise InvalidArgument(
                f"shared secrets live in a PostgreSQL database; {dsn.split(':', 1)[0]}:// "
                f"metadata is for one server: use a data dir (`aifs server --data DIR`)")
        import psycopg

        self._dsn = dsn
        info = psycopg.conninfo.conninfo_to_dict(dsn)
        self.where = f"the metadata database {info.get('dbname', '')!r}"

    @contextmanager
    def _conn(self) -> Iterator[Any]:
        import psycopg

        try:
            with psycopg.connect(self._dsn, autocommit=True,
                                 connect_timeout=CONNECT_TIMEOUT) as conn:
                yield conn
        except psycopg.OperationalError as e:
            raise StoreUnavailable(f"{self.where} cannot be reached: {e}".strip()) from e

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        """One transaction holding the secrets' advisory lock, the tables created first."""
        with self._conn() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SECRETS_LOCK,))
            for stmt in _TABLES:
                conn.execute(stmt)
            yield conn

    def has_secrets(self) -> bool:
        with self._conn() as conn:
            r = conn.execute("SELECT to_regclass('aifs_secrets') IS NOT NULL").fetchone()
            if not r or not r[0]:
                return False
            return conn.execute(
                "SELECT 1 FROM aifs_secrets WHERE name = 'config'").fetchone() is not None

    def bootstrap(self, master: MasterKey, initial: Initial) -> bool:
        """Store `initial`, sealed, unless the database holds secrets already. Safe when
        several servers start at once: the advisory lock lets one in at a time, and the
        others then find the rows."""
        with self._tx() as conn:
            if conn.execute("SELECT 1 FROM aifs_secrets WHERE name = 'config'").fetchone():
                return False
            now = time.time_ns()
            rows = {
                "keyring": _keyring_doc(initial.keyring_current, initial.keyring),
                "macaroon.key": initial.root_key, "storage.key": initial.storage_key,
                "signing.key": initial.signing_key,
                # config last in name only: the whole set commits at once
                "config": json.dumps(initial.config, sort_keys=True).encode(),
            }
            for name, value in rows.items():
                conn.execute("INSERT INTO aifs_secrets (name, sealed, created_ns) "
                             "VALUES (%s, %s, %s)", (name, master.seal(name, value), now))
            return True

    def put(self, master: MasterKey, name: str, value: bytes) -> None:
        """Replace one secret (sealed again under `master`)."""
        with self._tx() as conn:
            conn.execute("UPDATE aifs_secrets SET sealed = %s WHERE name = %s",
                         (master.seal(name, value), name))

    def _read(self, master: MasterKey, names: tuple[str, ...]) -> dict[str, bytes]:
        with self._conn() as conn:
            if not conn.execute("SELECT to_regclass('aifs_secrets') IS NOT NULL").fetchone()[0]:
                raise KeyUnavailable(f"{self.where} holds no AIFS secrets: it was never "
                                     f"formatted for shared servers")
            rows = dict(conn.execute("SELECT name, sealed FROM aifs_secrets WHERE name = "
                                     "ANY(%s)", (list(names),)).fetchall())
        missing = [n for n in names if n not in rows]
        if missing:
            raise KeyUnavailable(f"{self.where} lacks the secret(s) {', '.join(missing)}: "
                                 f"restore the database from backup")
        return {n: master.open(n, bytes(rows[n]), self.where) for n in names}

    def load(self, master: MasterKey) -> Shared:
        got = self._read(master, ("config", "macaroon.key", "storage.key", "signing.key"))
        return Shared(config=json.loads(got["config"]), root_key=got["macaroon.key"],
                      storage_key=got["storage.key"], signing_key=got["signing.key"])

    def keyring(self, master: MasterKey) -> DBKeyring:
        return DBKeyring(self, master)

    def namespace_keys(self) -> DBNamespaceKeys:
        return DBNamespaceKeys(self)

    def add_namespace_keys(self, scopes: dict[str, Any]) -> int:
        """Copy a NamespaceKeyFile's records ({scope: {"keys": {key_id: rec}}}); returns how
        many were added (existing ones are kept)."""
        n = 0
        with self._tx() as conn:
            for scope, entry in scopes.items():
                for key_id, rec in entry.get("keys", {}).items():
                    cur = conn.execute(
                        "INSERT INTO aifs_namespace_keys (scope, epoch, key_id, kms_key_id, "
                        "wrapped, created) VALUES (%s, %s, %s, %s, %s, %s) "
                        "ON CONFLICT DO NOTHING",
                        (scope, int(key_id.split(":")[1]), key_id, rec["kms_key_id"],
                         rec["wrapped"], int(rec.get("created", 0))))
                    n += cur.rowcount
        return n


class DBNamespaceKeys:
    """kms.NamespaceKeyRecords in aifs_namespace_keys: the newest epoch is current; the primary
    key (scope, epoch) lets one of two servers starting the same epoch win."""

    def __init__(self, db: SecretsDB) -> None:
        self._db = db
        self.where = db.where

    def current(self, scope: str) -> str | None:
        with self._db._conn() as conn:
            r = conn.execute("SELECT key_id FROM aifs_namespace_keys WHERE scope = %s "
                             "ORDER BY epoch DESC LIMIT 1", (scope,)).fetchone()
        return None if r is None else str(r[0])

    def get(self, scope: str, key_id: str) -> dict[str, Any] | None:
        with self._db._conn() as conn:
            r = conn.execute("SELECT kms_key_id, wrapped, created FROM aifs_namespace_keys "
                             "WHERE scope = %s AND key_id = %s", (scope, key_id)).fetchone()
        return None if r is None else {"kms_key_id": r[0], "wrapped": r[1], "created": r[2]}

    def add(self, scope: str, key_id: str, rec: dict[str, Any]) -> bool:
        with self._db._conn() as conn:
            cur = conn.execute(
                "INSERT INTO aifs_namespace_keys (scope, epoch, key_id, kms_key_id, wrapped, "
                "created) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (scope, int(key_id.split(":")[1]), key_id, rec["kms_key_id"], rec["wrapped"],
                 int(rec["created"])))
            return bool(cur.rowcount == 1)


class DBKeyring:
    """kms.KMS over the sealed "keyring" row. Another server's rotation is seen when a key id
    this one does not know turns up (the row is read again), and at the next start."""

    def __init__(self, db: SecretsDB, master: MasterKey) -> None:
        self._db, self._master = db, master
        self.calls = {"wrap": 0, "unwrap": 0}
        self._reload()

    def _reload(self) -> None:
        doc = self._db._read(self._master, ("keyring",))["keyring"]
        self._current, self._keys = _keyring_from(doc)

    def current_key_id(self) -> str:
        return self._current

    def _kek(self, key_id: str) -> bytes:
        if key_id not in self._keys:
            self._reload()
        kek = self._keys.get(key_id)
        if kek is None:
            raise KeyUnavailable(f"KMS key {key_id!r} is not in the keyring of {self._db.where}"
                                 f" (it has {', '.join(sorted(self._keys))}): restore the "
                                 f"database from backup")
        return kek

    def wrap(self, key_id: str, data_key: bytes) -> bytes:
        self.calls["wrap"] += 1
        return kek_wrap(self._kek(key_id), key_id, data_key)

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        self.calls["unwrap"] += 1
        return kek_unwrap(self._kek(key_id), key_id, wrapped, f"the keyring of {self._db.where}")

    def rotate(self) -> str:
        with self._db._tx() as conn:
            r = conn.execute("SELECT sealed FROM aifs_secrets WHERE name = 'keyring' "
                             "FOR UPDATE").fetchone()
            current, keys = _keyring_from(self._master.open("keyring", bytes(r[0]),
                                                            self._db.where))
            n = 1 + max((int(k.split(":", 1)[1]) for k in keys
                         if k.split(":", 1)[1].isdigit()), default=0)
            current = f"local:{n}"
            keys[current] = os.urandom(KEY_BYTES)
            conn.execute("UPDATE aifs_secrets SET sealed = %s WHERE name = 'keyring'",
                         (self._master.seal("keyring", _keyring_doc(current, keys)),))
        self._current, self._keys = current, keys
        return current
