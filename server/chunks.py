"""ChunkService: the one place chunks are verified, sealed, named, stored and opened.

Interface:
    ChunkService(store, keys, codec, storage_key, frame_size=65536)
        store: chunkstore.ChunkStore; keys: kms.KeyProvider (e.g. NamespaceKeyCache);
        codec: codec.CompressionService; storage_key: 32-byte secret of the store.
        .name_for(scope, chunk_id) -> str           the chunk's stored name (64 hex)
        .put(scope, chunk_id, plaintext, level=None) -> (newly_stored, stored_len)
                BLAKE3(plaintext) must equal chunk_id (else InvalidArgument); a chunk already
                stored in `scope` is not sealed again (newly_stored False, its stored length)
        .put_batch(scope, items, level=None) -> list[(newly_stored, stored_len)]
                items: (chunk_id, plaintext) pairs. One has_many for the batch; the absent
                ones are verified and sealed in parallel (zstd, AES-GCM and BLAKE3 release
                the GIL) and handed to the store's put_many as each is sealed: when it
                returns, every chunk of the batch is durable (the store's put_many contract).
        .has(scope, ids) -> list[bool]              one has_many
        .read(scope, chunk_id, offset=0, length=None) -> bytes
                a whole read (offset 0, no length) is checked against the chunk id;
                MissingChunk if the store lacks it (a caller reads only chunks something
                names: its absence is lost data, logged once at WARNING, EIO at a mount)
        .read_buffer(scope, chunk_id, length) -> bytes | bytearray   read(.., 0, length) that
                may come as the bytearray its raw frames were decrypted into (ReadDir joins it)
        .frames(scope, chunk_id, offset=0, length=None) -> Iterator[envelope.Frame]
                both read only the envelope header and the frames the range covers
        .delete(scope, chunk_id) -> bool
        .stored_size(scope, chunk_id) -> int

`scope` is the namespace. The stored name is BLAKE3 keyed by storage_key over
(len(scope) u16 big-endian, scope UTF-8, chunk id): whoever lists the store learns nothing about
content, and dedup (and the namespace key that protects a chunk) is per namespace.
Thread-safe: no mutable state of its own; the store, key cache and codec are thread-safe.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from blake3 import blake3

from aifs_core.codec import CompressionService, validate_level
from aifs_core.errors import CorruptChunk, InvalidArgument, MissingChunk, NotFound
from aifs_server.chunkstore import ChunkStore, RangeReader
from aifs_server.envelope import (
    DEFAULT_FRAME_SIZE,
    MAX_CHUNK_BYTES,
    Frame,
    iter_frames_at,
    open_chunk_at,
    open_chunk_buffer_at,
    seal_chunk,
)
from aifs_server.kms import KeyProvider

CHUNK_ID_BYTES = 32
# Threads sealing and writing one batch; more than the cores buys overlap with fsync waits.
BATCH_WORKERS = 4
# Lost chunks remembered so each is logged once, not on every read of the file using it.
MISSING_LOGGED_MAX = 4096

log = logging.getLogger("aifs.server.chunks")


class ChunkService:
    def __init__(
        self,
        store: ChunkStore,
        keys: KeyProvider,
        codec: CompressionService,
        storage_key: bytes,
        frame_size: int = DEFAULT_FRAME_SIZE,
    ) -> None:
        if len(storage_key) != 32:
            raise InvalidArgument(
                f"storage key must be 32 bytes, got {len(storage_key)}: the data dir's "
                f"storage key file is damaged"
            )
        self.store, self.keys, self.codec = store, keys, codec
        self._storage_key = bytes(storage_key)
        self.frame_size = frame_size
        self._pool = ThreadPoolExecutor(BATCH_WORKERS, thread_name_prefix="aifs-seal")
        self._missing_lock = threading.Lock()
        self._missing_seen: set[str] = set()
        # a running server's upload_pins.UploadPins: its collector deletes no chunk an upload
        # has in flight (pinned before the existence check, so a dying copy is never trusted)
        self.pins: Any = None

    @staticmethod
    def _check_id(chunk_id: bytes) -> bytes:
        if not isinstance(chunk_id, bytes | bytearray) or len(chunk_id) != CHUNK_ID_BYTES:
            raise InvalidArgument(
                f"chunk id must be {CHUNK_ID_BYTES} bytes (a BLAKE3-256 digest), got "
                f"{len(chunk_id) if isinstance(chunk_id, bytes | bytearray) else type(chunk_id).__name__}"
            )
        return bytes(chunk_id)

    def name_for(self, scope: str, chunk_id: bytes) -> str:
        s = scope.encode("utf-8")
        if len(s) > 0xFFFF:
            raise InvalidArgument("namespace name longer than 65535 bytes")
        h = blake3(key=self._storage_key)
        h.update(len(s).to_bytes(2, "big"))
        h.update(s)
        h.update(self._check_id(chunk_id))
        return h.hexdigest()

    def _verify(self, chunk_id: bytes, plaintext: bytes | bytearray | memoryview) -> bytes:
        cid = self._check_id(chunk_id)
        if len(plaintext) > MAX_CHUNK_BYTES:
            raise InvalidArgument(
                f"chunk of {len(plaintext)} bytes exceeds the maximum {MAX_CHUNK_BYTES}"
            )
        if blake3(plaintext).digest() != cid:
            raise InvalidArgument(
                f"chunk id {cid.hex()} is not the BLAKE3 of the {len(plaintext)} bytes sent "
                f"(it is {blake3(plaintext).hexdigest()}): the data was damaged in transit or "
                f"the client computed the id wrongly; send it again"
            )
        return cid

    @staticmethod
    def _check_level(level: int | None) -> None:
        if level is not None:
            try:
                validate_level(level)
            except ValueError as exc:
                raise InvalidArgument(str(exc)) from None

    def _seal(self, scope: str, cid: bytes, plaintext: bytes | bytearray | memoryview,
              level: int | None) -> bytearray:
        return seal_chunk(
            cid, plaintext, self.keys.for_namespace(scope), self.codec, self.frame_size, level
        )

    def put(
        self,
        scope: str,
        chunk_id: bytes,
        plaintext: bytes | bytearray | memoryview,
        level: int | None = None,
    ) -> tuple[bool, int]:
        self._check_level(level)
        cid = self._verify(chunk_id, plaintext)
        if self.pins is not None:
            self.pins.inflight(scope, [cid])
        name = self.name_for(scope, cid)
        if self.store.has_many([name])[0]:
            return False, self.store.size(name)  # stored already: not sealed again
        envelope = self._seal(scope, cid, plaintext, level)
        created = self.store.put(name, envelope)
        return created, len(envelope) if created else self.store.size(name)

    def put_batch(
        self,
        scope: str,
        items: Sequence[tuple[bytes, bytes | bytearray | memoryview]],
        level: int | None = None,
    ) -> list[tuple[bool, int]]:
        self._check_level(level)
        if self.pins is not None:
            self.pins.inflight(scope, [cid for cid, _ in items])
        names = [self.name_for(scope, cid) for cid, _ in items]
        present = self.store.has_many(names)

        def verify_and_seal(cid: bytes, data: bytes | bytearray | memoryview) -> bytearray:
            return self._seal(scope, self._verify(cid, data), data, level)

        todo = [i for i, there in enumerate(present) if not there]
        sealing = [self._pool.submit(verify_and_seal, *items[i]) for i in todo]
        # a chunk stored already is not sealed again, but its upload is still checked
        checks = [self._pool.submit(self._verify, *items[i])
                  for i, there in enumerate(present) if there]
        lengths: dict[int, int] = {}

        def sealed() -> Iterator[tuple[str, bytearray]]:
            # in order, as each is sealed: the store starts writing the first ones while
            # the rest are still being sealed (the first failure re-raises here)
            for i, fut in zip(todo, sealing, strict=True):
                envelope = fut.result()
                lengths[i] = len(envelope)
                yield names[i], envelope

        created = dict(zip(todo, self.store.put_many(sealed()), strict=True))
        for fut in checks:
            fut.result()
        results: list[tuple[bool, int]] = []
        for i, name in enumerate(names):
            if created.get(i):
                results.append((True, lengths[i]))
            else:  # there already, or a copy in this batch (or another) linked it first
                results.append((False, self.store.size(name)))
        return results

    def has(self, scope: str, ids: Iterable[bytes]) -> list[bool]:
        return self.store.has_many([self.name_for(scope, cid) for cid in ids])

    def _reader(self, scope: str, chunk_id: bytes) -> RangeReader:
        name = self.name_for(scope, chunk_id)
        try:
            return self.store.reader(name)
        except NotFound:
            # Something (a chunk map, an asset) named this chunk, so its absence is lost data,
            # not a missing file: MissingChunk (EIO at a mount), never NotFound (ENOENT).
            err = MissingChunk(
                f"chunk {bytes(chunk_id).hex()} of namespace {scope!r} is missing from the "
                f"chunk store {self.store.url} (stored name {name}); the data it held is "
                f"lost: run `aifs fsck` to list the files that use it")
            self._report_missing(name, err)
            raise err from None

    def _report_missing(self, name: str, err: MissingChunk) -> None:
        """Log a lost chunk at WARNING the first time it is read (every read of a damaged file
        would otherwise log again); the set is bounded, so a store with many lost chunks
        logs again only after it was cleared."""
        with self._missing_lock:
            if name in self._missing_seen:
                return
            if len(self._missing_seen) >= MISSING_LOGGED_MAX:
                self._missing_seen.clear()
            self._missing_seen.add(name)
        log.warning("%s", err.message)

    # Reads go through the store's ranged reader: only the envelope's header and the frames a
    # range covers are read (a 4 KiB read of a 1 MiB chunk reads ~70 KiB, not 1 MiB).
    def read(
        self, scope: str, chunk_id: bytes, offset: int = 0, length: int | None = None
    ) -> bytes:
        keys = self.keys.for_namespace(scope)
        with self._reader(scope, chunk_id) as r:
            plain = open_chunk_at(chunk_id, r.read_at, r.size, keys, offset, length)
        if offset == 0 and length is None and blake3(plain).digest() != bytes(chunk_id):
            # a whole read (fsck --read-data) proves the chunk is what its id says: envelopes
            # sealed without frame digests are otherwise checked by their GCM tags only
            raise CorruptChunk(
                f"chunk {bytes(chunk_id).hex()} is corrupt: its plaintext's BLAKE3 is not its "
                f"id. Restore the chunk store from backup, or run `aifs fsck` to list the "
                f"files that use this chunk")
        return plain

    def read_buffer(self, scope: str, chunk_id: bytes, length: int) -> bytes | bytearray:
        """The first `length` bytes (read(scope, id, 0, length)) for a caller that only joins
        or writes them: maybe a bytearray decrypted into (envelope.open_chunk_buffer_at)."""
        keys = self.keys.for_namespace(scope)
        with self._reader(scope, chunk_id) as r:
            return open_chunk_buffer_at(chunk_id, r.read_at, r.size, keys, length)

    def frames(
        self, scope: str, chunk_id: bytes, offset: int = 0, length: int | None = None
    ) -> Iterator[Frame]:
        keys = self.keys.for_namespace(scope)
        with self._reader(scope, chunk_id) as r:
            # iter_frames_at reads before it returns: the file may be closed after
            return iter_frames_at(chunk_id, r.read_at, r.size, keys, offset, length)

    def delete(self, scope: str, chunk_id: bytes) -> bool:
        return self.store.delete(self.name_for(scope, chunk_id))

    def stored_size(self, scope: str, chunk_id: bytes) -> int:
        try:
            return self.store.size(self.name_for(scope, chunk_id))
        except NotFound:
            raise NotFound(
                f"chunk {bytes(chunk_id).hex()} is not stored in namespace {scope!r}"
            ) from None
