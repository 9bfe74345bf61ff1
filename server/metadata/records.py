"""The rules of namespaces, chunk records and assets, over any `store.Store`.

Interface:
    Records(store)      the namespace, chunk-record and asset part of `MetadataEngine`
                        (metadata/base.py): create/get/list_namespace(s), record_chunk(s),
                        has_chunks, chunk_stats, iter_chunks, gc_candidates, forget_chunk,
                        put/get/list/delete_asset, lineage, close; `posix.PosixMeta` adds trees

Rules kept here: namespace names and parameters; chunk ids are 32 bytes; chunk records are per
namespace; re-recording an unreferenced chunk restarts its GC grace clock; an asset names only
chunks recorded in its namespace and only committed parents, and holds one reference per
chunk-list entry until deleted; putting an existing asset id returns the stored asset.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections import Counter
from collections.abc import Iterator, Sequence

from aifs_core.errors import (
    AlreadyExists,
    InvalidArgument,
    MissingChunk,
    NotFound,
    ParentNotCommitted,
)
from aifs_core.types import AssetRecord, ChunkStats, Namespace
from aifs_server.metadata.snapshot_parents import (
    is_snapshot_parent,
    lineage_record,
    parent_exists,
)
from aifs_server.metadata.store import Store, Tx
from aifs_server.request_log import record

LIST_MAX = 1000           # cap on one list_assets page
_PAGE = 1000              # chunk ids per iter_chunks query
_NS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def now_ns() -> int:
    return time.time_ns()


class Records:
    """Namespaces, chunk records and assets (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        # Namespaces are never deleted, so a positive answer can be cached for good.
        self._namespaces: set[str] = set()

    def close(self) -> None:
        self._store.close()

    # --- namespaces --------------------------------------------------------------------------
    def create_namespace(self, ns: Namespace) -> Namespace:
        if not _NS_NAME.fullmatch(ns.name or ""):
            raise InvalidArgument(
                f"invalid namespace name {ns.name!r}: use 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit")
        if ns.chunk_size <= 0:
            raise InvalidArgument(f"chunk_size must be positive, got {ns.chunk_size}")
        if not 1 <= ns.zstd_level <= 22:
            raise InvalidArgument(f"zstd_level must be 1-22, got {ns.zstd_level}")
        rec = Namespace(ns.name, ns.chunk_size, ns.zstd_level, ns.kms_key_id,
                        ns.created_ns or now_ns())
        if not self._store.single().insert_namespace(rec):
            raise AlreadyExists(f"namespace {ns.name!r} already exists")
        return rec

    def get_namespace(self, name: str) -> Namespace:
        ns = self._store.single().get_namespace(name)
        if ns is None:
            raise NotFound(f"namespace {name!r} does not exist; create it first")
        return ns

    def list_namespaces(self) -> list[Namespace]:
        return self._store.single().list_namespaces()

    def _need_namespace(self, name: str) -> None:
        if name not in self._namespaces:
            self.get_namespace(name)
            self._namespaces.add(name)

    # --- chunk records -----------------------------------------------------------------------
    @staticmethod
    def _check_chunk(chunk_id: bytes, raw_len: int, stored_len: int) -> None:
        if len(chunk_id) != 32:
            raise InvalidArgument(f"chunk id must be 32 bytes (BLAKE3), got {len(chunk_id)}")
        if raw_len < 0 or stored_len < 0:
            raise InvalidArgument("chunk lengths must not be negative")

    @staticmethod
    def _insert_chunk(tx: Tx, namespace: str, chunk_id: bytes, raw_len: int, stored_len: int,
                      now: int) -> bool:
        new = tx.insert_chunk(namespace, chunk_id, raw_len, stored_len, now)
        if not new:
            # Recorded again (re-uploaded): restart the grace clock of an unreferenced chunk so
            # a GC pass cannot take it while the commit that will name it is on its way.
            tx.restart_grace(namespace, chunk_id, now)
        return new

    def record_chunk(self, namespace: str, chunk_id: bytes, raw_len: int, stored_len: int
                     ) -> bool:
        self._check_chunk(chunk_id, raw_len, stored_len)
        self._need_namespace(namespace)
        return self._insert_chunk(self._store.single(), namespace, chunk_id, raw_len,
                                  stored_len, now_ns())

    def record_chunks(self, namespace: str, chunks: Sequence[tuple[bytes, int, int]]
                      ) -> list[bool]:
        """record_chunk of each (chunk_id, raw_len, stored_len), in one transaction: a
        PutChunks batch (durable in the store already) pays one commit, not one per chunk."""
        for chunk in chunks:
            self._check_chunk(*chunk)
        if not chunks:
            return []
        self._need_namespace(namespace)
        now = now_ns()
        with self._store.write() as tx:
            return [self._insert_chunk(tx, namespace, *chunk, now) for chunk in chunks]

    def has_chunks(self, namespace: str, chunk_ids: list[bytes]) -> list[bool]:
        self._need_namespace(namespace)
        found = self._store.single().recorded(namespace, chunk_ids)
        return [bytes(cid) in found for cid in chunk_ids]

    def chunk_stats(self, namespace: str) -> ChunkStats:
        self._need_namespace(namespace)
        return self._store.single().chunk_totals(namespace)

    def iter_chunks(self, namespace: str) -> Iterator[bytes]:
        """Every chunk id recorded in `namespace`, paged so a huge store is never one list."""
        self._need_namespace(namespace)
        after = b""
        while True:
            ids = self._store.single().chunk_ids(namespace, after, _PAGE)
            yield from ids
            if len(ids) < _PAGE:
                return
            after = ids[-1]

    def gc_candidates(self, namespace: str, unreferenced_before_ns: int) -> list[bytes]:
        self._need_namespace(namespace)
        return self._store.single().unreferenced_chunks(namespace, unreferenced_before_ns)

    def forget_chunk(self, namespace: str, chunk_id: bytes) -> bool:
        self._need_namespace(namespace)
        return self._store.single().delete_unreferenced_chunk(namespace, chunk_id)

    # --- assets ------------------------------------------------------------------------------
    def put_asset(self, namespace: str, asset: AssetRecord) -> AssetRecord:
        if not asset.asset_id:
            raise InvalidArgument("asset_id must not be empty")
        if not asset.kind:
            raise InvalidArgument(f"asset {asset.asset_id}: kind must not be empty")
        try:
            json.loads(asset.metadata_json or "{}")
        except ValueError as e:
            raise InvalidArgument(f"asset {asset.asset_id}: metadata_json is not JSON ({e})"
                                  ) from None
        if len({ch.index for ch in asset.chunks}) != len(asset.chunks):
            raise InvalidArgument(f"asset {asset.asset_id}: chunk indices must be unique")
        for ch in asset.chunks:
            if len(ch.chunk_id) != 32:
                raise InvalidArgument(f"asset {asset.asset_id}: chunk id of entry {ch.index} "
                                      f"must be 32 bytes (BLAKE3), got {len(ch.chunk_id)}")
        for p in asset.parents:
            if p.parent_id == asset.asset_id:
                raise InvalidArgument(f"asset {asset.asset_id} cannot be its own parent")
        self._need_namespace(namespace)
        now = now_ns()
        with self._store.write() as tx:
            if tx.asset_exists(namespace, asset.asset_id):
                return _load_asset(tx, namespace, asset.asset_id)
            for p in asset.parents:
                if not parent_exists(tx, namespace, p.parent_id):   # an asset or a snapshot
                    raise ParentNotCommitted(
                        f"parent {'snapshot' if is_snapshot_parent(p.parent_id) else 'asset'} "
                        f"{p.parent_id} of {asset.asset_id} is not committed in "
                        f"namespace {namespace!r}; put the parent first")
            ids = [ch.chunk_id for ch in asset.chunks]
            raw = tx.recorded(namespace, ids)
            for ch in asset.chunks:
                if ch.chunk_id not in raw:
                    raise MissingChunk(
                        f"chunk {ch.chunk_id.hex()} (entry {ch.index}) of asset "
                        f"{asset.asset_id} is not stored in namespace {namespace!r}; "
                        "upload it first")
            stored = asset.stored_bytes
            if not stored and ids:
                stored = tx.stored_bytes(namespace, ids)
            tx.insert_asset(namespace, dataclasses.replace(
                asset, stored_bytes=stored, metadata_json=asset.metadata_json or "{}",
                created_ns=asset.created_ns or now))
            tx.adjust_refs(namespace, Counter(ids), now)
            return _load_asset(tx, namespace, asset.asset_id)

    def get_asset(self, namespace: str, asset_id: str) -> AssetRecord:
        self._need_namespace(namespace)
        with self._store.read() as tx:
            return _load_asset(tx, namespace, asset_id)

    def list_assets(self, namespace: str, kind: str = "", limit: int = 100, after: str = ""
                    ) -> list[AssetRecord]:
        self._need_namespace(namespace)
        limit = 100 if limit <= 0 else min(limit, LIST_MAX)
        with self._store.read() as tx:
            return [_load_asset(tx, namespace, aid)
                    for aid in tx.asset_ids(namespace, kind, after, limit)]

    def delete_asset(self, namespace: str, asset_id: str) -> None:
        self._need_namespace(namespace)
        now = now_ns()
        with self._store.write() as tx:
            if not tx.asset_exists(namespace, asset_id):
                raise NotFound(f"asset {asset_id} does not exist in namespace {namespace!r}")
            deltas: Counter[bytes] = Counter()
            for cid, n in tx.asset_chunk_counts(namespace, asset_id):
                deltas[cid] -= n
            tx.adjust_refs(namespace, deltas, now)
            tx.delete_asset(namespace, asset_id)
            record(tx, None)   # exactly-once calls (request_log.py): no-op outside one

    def lineage(self, namespace: str, asset_id: str) -> list[AssetRecord]:
        self._need_namespace(namespace)
        with self._store.read() as tx:
            _load_asset(tx, namespace, asset_id)  # NotFound for an unknown asset
            out: list[AssetRecord] = []
            seen = {asset_id}
            queue = [asset_id]
            while queue:  # breadth-first: nearest ancestors first
                nxt: list[str] = []
                for aid in queue:
                    for pid in tx.parent_ids(namespace, aid):
                        if pid in seen:
                            continue
                        seen.add(pid)
                        rec = lineage_record(tx, namespace, pid)
                        if rec is None:
                            continue  # a deleted ancestor: its own parents are unknown now
                        out.append(rec)
                        nxt.append(pid)
                queue = nxt
        return out


def _load_asset(tx: Tx, namespace: str, asset_id: str) -> AssetRecord:
    rec = tx.asset(namespace, asset_id)
    if rec is None:
        raise NotFound(f"asset {asset_id} does not exist in namespace {namespace!r}")
    return rec
