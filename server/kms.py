"""Key management: the KMS interface, the local keyring, and namespace keys (design section 6).

Interface:
    KMS (Protocol)
        current_key_id() -> str
        wrap(key_id, data_key) -> bytes
        unwrap(key_id, wrapped) -> bytes        KeyUnavailable naming the key id if it cannot
        rotate() -> str                         new current key id; old keys still unwrap
    LocalKeyring(path)                          JSON file, mode 0600 (looser -> PermissionDenied)
        .export_keys() -> (current, {id: key})  for re-wrapping elsewhere (aifs migrate)
    kek_wrap(kek, key_id, key) / kek_unwrap(kek, key_id, wrapped, where)
                                                the wrapping every keyring uses (so a keyring
                                                moved into a database unwraps the same keys)
        LocalKeyring.create(path) -> LocalKeyring
        .calls: dict[str, int]                  wrap/unwrap calls made (for tests and metrics)
    ChunkKeys (Protocol): what envelope.py takes as `keys`
        wrap_data_key(data_key) -> (key_id, wrapped)
        unwrap_data_key(key_id, wrapped) -> data_key
    KeyProvider (Protocol): what chunks.ChunkService takes as `keys`
        for_namespace(scope) -> ChunkKeys
    NamespaceKeyCache(kms, records)             KeyProvider; one namespace key per namespace and
                                                epoch, wrapped by the KMS, persisted in `records`
                                                (a JSON file path, 0600, or NamespaceKeyRecords),
                                                unwrapped once and cached; chunk data keys are
                                                wrapped locally with it
    NamespaceKeyRecords (Protocol)              .current(scope), .get(scope, key_id),
                                                .add(scope, key_id, rec) -> bool (False: exists)
    NamespaceKeyFile(path)                      NamespaceKeyRecords in a JSON file
        .rotate() -> str                        rotate the KMS; every namespace starts a new
                                                epoch on its next write
        .rotate_namespace(scope) -> str         new epoch for one namespace
        .kms_calls: dict[str, int]              KMS calls this cache made
    DirectKeys(kms)                             KeyProvider wrapping every data key with the KMS
                                                (no cache: one KMS call per chunk)

Wrapping everywhere is AES-256-GCM: wrapped = nonce (12) || ciphertext (32) || tag (16), with
associated data binding the purpose and key id (docs/FORMAT.md has the exact bytes).
"""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
import time
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aifs_core.errors import InvalidArgument, KeyUnavailable, PermissionDenied
from aifs_core.fileutil import write_file_atomic

KEY_BYTES = 32
NONCE_BYTES = 12
WRAPPED_BYTES = NONCE_BYTES + KEY_BYTES + 16
KEYRING_FORMAT = "aifs-keyring-v1"
NSKEYS_FORMAT = "aifs-namespace-keys-v1"
_KMS_AAD = b"aifs-kms-wrap-v1\x00"
_DK_AAD = b"aifs-dk-wrap-v1\x00"


class KMS(Protocol):
    def current_key_id(self) -> str: ...
    def wrap(self, key_id: str, data_key: bytes) -> bytes: ...
    def unwrap(self, key_id: str, wrapped: bytes) -> bytes: ...
    def rotate(self) -> str: ...


class ChunkKeys(Protocol):
    def wrap_data_key(self, data_key: bytes) -> tuple[str, bytes]: ...
    def unwrap_data_key(self, key_id: str, wrapped: bytes) -> bytes: ...


class KeyProvider(Protocol):
    def for_namespace(self, scope: str) -> ChunkKeys: ...


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _write_private_json(path: str, doc: dict[str, Any], *, exclusive: bool = False) -> None:
    """Write `doc` to `path` atomically with mode 0600."""
    if exclusive and os.path.exists(path):
        raise InvalidArgument(f"{path} already exists; refusing to overwrite a key file")
    write_file_atomic(path, json.dumps(doc, indent=1, sort_keys=True).encode("utf-8"))


def _read_private_json(path: str, what: str) -> dict[str, Any]:
    """Read a key file, refusing one that others can read or write."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise KeyUnavailable(
            f"{what} {path} does not exist: restore it from your backup (without it the "
            f"data it protects cannot be decrypted)"
        ) from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise PermissionDenied(
            f"{what} {path} has mode {stat.S_IMODE(st.st_mode):04o}; it holds secret keys and "
            f"must be readable by its owner only: run `chmod 600 {path}`"
        )
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as exc:
        raise KeyUnavailable(f"{what} {path} cannot be read ({exc}): restore it from backup") from None
    if not isinstance(doc, dict):
        raise KeyUnavailable(f"{what} {path} is not a JSON object: restore it from backup")
    return doc


def kek_wrap(kek: bytes, key_id: str, data_key: bytes) -> bytes:
    """A key wrapped by the KMS key `key_id` (the bytes every keyring stores)."""
    return _seal(kek, bytes(data_key), _KMS_AAD + key_id.encode())


def kek_unwrap(kek: bytes, key_id: str, wrapped: bytes, where: str) -> bytes:
    if len(wrapped) != WRAPPED_BYTES:
        raise KeyUnavailable(
            f"a key wrapped by KMS key {key_id!r} is {len(wrapped)} bytes, expected "
            f"{WRAPPED_BYTES}: the record holding it is damaged; restore it from backup"
        )
    try:
        return AESGCM(kek).decrypt(
            wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _KMS_AAD + key_id.encode()
        )
    except InvalidTag:
        raise KeyUnavailable(
            f"KMS key {key_id!r} in {where} does not unwrap this key: the keyring is not the "
            f"one the data was written with (or was altered); restore the original keyring "
            f"from backup"
        ) from None


class LocalKeyring:
    """KMS backed by a local JSON file of 256-bit key-encryption keys ("local:1", ...)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self.calls = {"wrap": 0, "unwrap": 0}
        doc = _read_private_json(self.path, "keyring")
        try:
            if doc.get("format") != KEYRING_FORMAT:
                raise ValueError(f"format is {doc.get('format')!r}, expected {KEYRING_FORMAT!r}")
            self._keys = {kid: _unb64(v) for kid, v in doc["keys"].items()}
            self._current = str(doc["current"])
            if self._current not in self._keys or any(
                len(k) != KEY_BYTES for k in self._keys.values()
            ):
                raise ValueError("current key missing or a key is not 256 bits")
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise KeyUnavailable(
                f"keyring {self.path} is damaged ({exc}): restore it from backup"
            ) from None

    @classmethod
    def create(cls, path: str | os.PathLike[str]) -> LocalKeyring:
        """Make a new keyring file (mode 0600) with one key, "local:1". Refuses to overwrite."""
        doc = {"format": KEYRING_FORMAT, "current": "local:1",
               "keys": {"local:1": _b64(os.urandom(KEY_BYTES))}, "created": int(time.time())}
        _write_private_json(os.fspath(path), doc, exclusive=True)
        return cls(path)

    def current_key_id(self) -> str:
        return self._current

    def _kek(self, key_id: str) -> bytes:
        kek = self._keys.get(key_id)
        if kek is None:
            raise KeyUnavailable(
                f"KMS key {key_id!r} is not in keyring {self.path} (it has "
                f"{', '.join(sorted(self._keys))}): restore the keyring this data was written "
                f"with from backup"
            )
        return kek

    def wrap(self, key_id: str, data_key: bytes) -> bytes:
        with self._lock:
            self.calls["wrap"] += 1
        return kek_wrap(self._kek(key_id), key_id, data_key)

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        with self._lock:
            self.calls["unwrap"] += 1
        return kek_unwrap(self._kek(key_id), key_id, wrapped, f"keyring {self.path}")

    def export_keys(self) -> tuple[str, dict[str, bytes]]:
        """(current key id, {key id: key}): what `aifs migrate` re-wraps into a database."""
        with self._lock:
            return self._current, dict(self._keys)

    def rotate(self) -> str:
        """Add a new key and make it current; older keys stay for reading."""
        with self._lock:
            n = 1 + max(
                (int(k.split(":", 1)[1]) for k in self._keys if k.split(":", 1)[1].isdigit()),
                default=0,
            )
            key_id = f"local:{n}"
            keys = dict(self._keys)
            keys[key_id] = os.urandom(KEY_BYTES)
            doc = {"format": KEYRING_FORMAT, "current": key_id,
                   "keys": {k: _b64(v) for k, v in keys.items()}, "rotated": int(time.time())}
            _write_private_json(self.path, doc)
            self._keys, self._current = keys, key_id
            return key_id


def _dk_aad(scope: str, key_id: str) -> bytes:
    s, k = scope.encode(), key_id.encode()
    return _DK_AAD + len(s).to_bytes(2, "big") + s + k


class _NamespaceKeys:
    """ChunkKeys of one namespace: data keys wrapped locally by the namespace key."""

    def __init__(self, cache: NamespaceKeyCache, scope: str) -> None:
        self._cache, self._scope = cache, scope

    def wrap_data_key(self, data_key: bytes) -> tuple[str, bytes]:
        key_id, aead = self._cache._current(self._scope)
        nonce = os.urandom(NONCE_BYTES)
        return key_id, nonce + aead.encrypt(nonce, bytes(data_key), _dk_aad(self._scope, key_id))

    def unwrap_data_key(self, key_id: str, wrapped: bytes) -> bytes:
        aead = self._cache._get(self._scope, key_id)
        if len(wrapped) != WRAPPED_BYTES:
            raise KeyUnavailable(
                f"data key wrapped by {key_id!r} is {len(wrapped)} bytes, expected {WRAPPED_BYTES}"
            )
        try:
            return aead.decrypt(
                wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _dk_aad(self._scope, key_id)
            )
        except InvalidTag:
            raise KeyUnavailable(
                f"namespace key {key_id!r} of namespace {self._scope!r} does not unwrap this "
                f"chunk's data key: the namespace key file {self._cache.path} or the keyring is "
                f"not the one the chunk was written with; restore both from backup"
            ) from None


class NamespaceKeyRecords(Protocol):
    """Where namespace keys (each wrapped by the KMS) are kept: a JSON file for a data dir
    (NamespaceKeyFile), a database table for servers sharing one (secrets.DBNamespaceKeys).
    A record is {"kms_key_id": str, "wrapped": base64 str, "created": int}."""

    where: str                                                  # for messages

    def current(self, scope: str) -> str | None: ...           # newest epoch's key id
    def get(self, scope: str, key_id: str) -> dict[str, Any] | None: ...
    def add(self, scope: str, key_id: str, rec: dict[str, Any]) -> bool: ...
        # add and make current; False (nothing changed) if `key_id` exists: another writer won


class NamespaceKeyFile:
    """NamespaceKeyRecords in one JSON file (mode 0600), rewritten atomically on each add."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = self.where = os.fspath(path)
        if os.path.exists(self.path):
            doc = _read_private_json(self.path, "namespace key file")
            if doc.get("format") != NSKEYS_FORMAT or not isinstance(doc.get("namespaces"), dict):
                raise KeyUnavailable(
                    f"namespace key file {self.path} is damaged (format "
                    f"{doc.get('format')!r}): restore it from backup"
                )
            self._doc = doc
        else:
            self._doc = {"format": NSKEYS_FORMAT, "namespaces": {}}

    def scopes(self) -> dict[str, Any]:
        """{scope: {"current": key_id, "keys": {key_id: rec}}} (what migrate copies)."""
        ns: dict[str, Any] = self._doc["namespaces"]
        return ns

    def current(self, scope: str) -> str | None:
        cur = self._doc["namespaces"].get(scope, {}).get("current")
        return None if cur is None else str(cur)

    def get(self, scope: str, key_id: str) -> dict[str, Any] | None:
        rec = self._doc["namespaces"].get(scope, {}).get("keys", {}).get(key_id)
        return None if rec is None else dict(rec)

    def add(self, scope: str, key_id: str, rec: dict[str, Any]) -> bool:
        ns = self._doc["namespaces"].setdefault(scope, {"current": None, "keys": {}})
        if key_id in ns["keys"]:
            return False
        ns["keys"][key_id] = dict(rec)
        ns["current"] = key_id
        _write_private_json(self.path, self._doc)
        return True


def _epoch(key_id: str | None) -> int:
    return int(key_id.split(":")[1]) if key_id else 0


class NamespaceKeyCache:
    """Namespace keys (design section 6, like S3 bucket keys).

    Each namespace has a 256-bit namespace key per epoch ("nsk:1", "nsk:2", ...), wrapped by the
    KMS and kept in `records` (a JSON file path, mode 0600, or any NamespaceKeyRecords). The
    first use after start unwraps it with one KMS call; after that, chunk data keys are wrapped
    and unwrapped locally, so the KMS (possibly remote) is never called per chunk. An epoch ends
    when the KMS rotates: the next write in that namespace creates a new namespace key under
    the new KMS key; old epochs stay readable. Several servers may share the records: two that
    start the same epoch at once both end up using the one that was stored first.
    """

    def __init__(self, kms: KMS, records: str | os.PathLike[str] | NamespaceKeyRecords) -> None:
        self.kms = kms
        self.records: NamespaceKeyRecords = (
            NamespaceKeyFile(records) if isinstance(records, str | os.PathLike) else records)
        self.path = self.records.where
        self._lock = threading.RLock()
        self.kms_calls = {"wrap": 0, "unwrap": 0, "current_key_id": 0}
        self._aead: dict[tuple[str, str], AESGCM] = {}
        self._current_cache: dict[str, tuple[str, AESGCM]] = {}
        self.kms_calls["current_key_id"] += 1
        self._kms_current = kms.current_key_id()

    def for_namespace(self, scope: str) -> ChunkKeys:
        return _NamespaceKeys(self, scope)

    def _current(self, scope: str) -> tuple[str, AESGCM]:
        hit = self._current_cache.get(scope)
        if hit is not None:
            return hit
        with self._lock:
            hit = self._current_cache.get(scope)
            if hit is not None:
                return hit
            cur = self.records.current(scope)
            rec = None if cur is None else self.records.get(scope, cur)
            if rec is None or rec["kms_key_id"] != self._kms_current:
                cur = self._new_epoch(scope)
            assert cur is not None
            hit = (cur, self._get(scope, cur))
            self._current_cache[scope] = hit
            return hit

    def _new_epoch(self, scope: str) -> str:
        """Store a new namespace key one epoch past the newest. When another writer stored
        that epoch first, use theirs if it is under the current KMS key, else try the next
        (bounded: each lost race means another writer made progress)."""
        for _ in range(16):
            latest = self.records.current(scope)
            key_id = f"nsk:{_epoch(latest) + 1}"
            nskey = os.urandom(KEY_BYTES)
            self.kms_calls["wrap"] += 1
            wrapped = self.kms.wrap(self._kms_current, nskey)
            rec = {"kms_key_id": self._kms_current, "wrapped": _b64(wrapped),
                   "created": int(time.time())}
            if self.records.add(scope, key_id, rec):
                self._aead[(scope, key_id)] = AESGCM(nskey)
                return key_id
            theirs = self.records.get(scope, key_id)
            if theirs is not None and theirs["kms_key_id"] == self._kms_current:
                return key_id
        raise KeyUnavailable(f"could not store a new namespace key for {scope!r} in "
                             f"{self.path}: other servers kept storing newer ones")

    def _get(self, scope: str, key_id: str) -> AESGCM:
        aead = self._aead.get((scope, key_id))
        if aead is not None:
            return aead
        with self._lock:
            aead = self._aead.get((scope, key_id))
            if aead is not None:
                return aead
            rec = self.records.get(scope, key_id)
            if rec is None:
                raise KeyUnavailable(
                    f"namespace key {key_id!r} of namespace {scope!r} is not in "
                    f"{self.path}: restore it (and the keyring) from backup"
                )
            self.kms_calls["unwrap"] += 1
            nskey = self.kms.unwrap(rec["kms_key_id"], _unb64(rec["wrapped"]))
            aead = self._aead[(scope, key_id)] = AESGCM(nskey)
            return aead

    def rotate(self) -> str:
        """Rotate the KMS key; each namespace starts a new epoch on its next write."""
        with self._lock:
            self.kms_calls["rotate"] = self.kms_calls.get("rotate", 0) + 1
            self._kms_current = self.kms.rotate()
            self._current_cache.clear()
            return self._kms_current

    def rotate_namespace(self, scope: str) -> str:
        """Start a new namespace-key epoch for `scope` now; returns the new key id."""
        with self._lock:
            key_id = self._new_epoch(scope)
            self._current_cache.pop(scope, None)
            return key_id


class DirectKeys:
    """KeyProvider and ChunkKeys that wrap each chunk's data key with the KMS itself."""

    def __init__(self, kms: KMS) -> None:
        self.kms = kms

    def for_namespace(self, scope: str) -> ChunkKeys:
        return self

    def wrap_data_key(self, data_key: bytes) -> tuple[str, bytes]:
        key_id = self.kms.current_key_id()
        return key_id, self.kms.wrap(key_id, data_key)

    def unwrap_data_key(self, key_id: str, wrapped: bytes) -> bytes:
        return self.kms.unwrap(key_id, wrapped)
