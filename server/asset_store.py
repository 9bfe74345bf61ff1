"""AssetStore: the one place assets are written and read (local AssetManager and gRPC Assets).

Interface:
    AssetStore(datadir)                      a DataDir (datadir.open_data_dir) or anything with
                                             .meta (PosixMeta) and .chunks (ChunkService)
        .put(namespace, kind, data, metadata=None, parents=None, level=None) -> AssetRecord
            data: bytes-like | Iterable[bytes] | BinaryIO (read in pieces). Streams with
            bounded memory: at most about one chunk (the namespace's chunk size) is held.
            Parents (asset ids, ParentEdge or dicts) must be committed -> ParentNotCommitted,
            checked BEFORE any data is stored. A parent may be a snapshot of the namespace,
            aifs-snap://NS/ID (or a tag where ID is: the snapshot's id is stored); it must
            exist. level: zstd level for new chunks (None = the namespace's). Putting the
            same bytes again stores nothing new and returns the existing record (its
            metadata/parents are the first put's: the id is the bytes').
        .open(namespace, asset_id) -> (AssetRecord, Iterator[bytes])   one chunk at a time;
            the iterator checks the whole-content BLAKE3 at the end (CorruptChunk if wrong)
        .info(namespace, asset_id) -> AssetRecord    AssetNotFound; a malformed id InvalidArgument
        .list_assets(namespace, kind="", limit=100, after="") -> list[AssetRecord]
        .delete(namespace, asset_id)                                 chunks are left to GC
        .lineage(namespace, asset_id) -> list[AssetRecord]           ancestors, nearest first
        .verify(namespace, asset_id) -> (ok, detail)                 re-reads and re-hashes
        .uri(namespace, asset_id) -> "aifs://<namespace>/<asset_id>"
        .compute_file_asset_id(tree, ino, deadline=NEVER) -> str   BLAKE3 of a file's content
            from its chunk map (holes read as zeros), cached via meta.set_file_asset_id
            (generation-checked); TimedOut once `deadline` passes
    AssetNotFound(NotFound, KeyError)        an unknown asset id: gRPC NOT_FOUND, and a KeyError
                                             so dict-style `except KeyError` works too

Order of a put (so nothing is half-visible): validate kind and metadata -> check parents ->
for each chunk: BLAKE3 -> ChunkService.put (durable) -> meta.record_chunk -> finally
meta.put_asset in one transaction. A failure before put_asset leaves only unreferenced chunks,
which GC collects.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, BinaryIO

import blake3

from aifs_core.errors import AIFSError, CorruptChunk, InvalidArgument, NotFound, ParentNotCommitted
from aifs_core.kinds import (
    asset_uri,
    check_kind,
    check_payload_head,
    is_asset_id,
    normalize_parents,
)
from aifs_core.types import AssetRecord, ChunkRef, ParentEdge, TreeRef
from aifs_server.deadline import NEVER, Deadline
from aifs_server.metadata.posix import PosixMeta
from aifs_server.metadata.snapshot_parents import canonical_parent, is_snapshot_parent

READ_PIECE = 1 << 20        # read size for file-like inputs
_ZEROS = bytes(1 << 20)     # shared zero buffer for holes


class AssetNotFound(NotFound, KeyError):
    """No asset with this id in this namespace (NotFound, also a KeyError)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.message


DataSource = bytes | bytearray | memoryview | Iterable[bytes] | BinaryIO


def _pieces(data: Any) -> Iterator[bytes | bytearray | memoryview]:
    """Yield the input in pieces of any size without copying bytes-like input."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        yield memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data)
    elif isinstance(data, str):
        raise InvalidArgument("asset data must be bytes, not str: encode it first "
                              "(e.g. text.encode('utf-8'))")
    elif hasattr(data, "read"):
        while True:
            piece = data.read(READ_PIECE)
            if not piece:
                return
            if isinstance(piece, str):
                raise InvalidArgument("asset data file is open in text mode: open it with 'rb'")
            yield piece
    elif isinstance(data, Iterable):
        for piece in data:
            if not isinstance(piece, (bytes, bytearray, memoryview)):
                raise InvalidArgument(
                    f"asset data iterator yielded {type(piece).__name__}; it must yield bytes"
                )
            yield piece
    else:
        raise InvalidArgument(
            f"asset data must be bytes, a binary file or an iterable of bytes, not "
            f"{type(data).__name__}"
        )


def _rechunk(data: Any, size: int) -> Iterator[bytes]:
    """Fixed-size chunks (the last one shorter) from pieces of any size; memory ~ one chunk."""
    buf = bytearray()
    for piece in _pieces(data):
        mv = memoryview(piece)
        pos = 0
        if buf:
            take = min(size - len(buf), len(mv))
            buf += mv[:take]
            pos = take
            if len(buf) < size:
                continue
            yield bytes(buf)
            buf.clear()
        while len(mv) - pos >= size:  # whole chunks straight from the piece
            yield bytes(mv[pos:pos + size])
            pos += size
        buf += mv[pos:]
    if buf:
        yield bytes(buf)


def _metadata_json(metadata: Mapping[str, Any] | str | None) -> str:
    if metadata is None:
        return "{}"
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except ValueError as e:
            raise InvalidArgument(f"asset metadata is not valid JSON: {e}") from e
        except RecursionError:
            raise InvalidArgument("asset metadata is nested too deeply") from None
    if not isinstance(metadata, Mapping):
        raise InvalidArgument("asset metadata must be a JSON object (a dict)")
    try:
        return json.dumps(dict(metadata), sort_keys=True, separators=(",", ":"),
                          allow_nan=False)
    except RecursionError:
        raise InvalidArgument("asset metadata is nested too deeply") from None
    except (TypeError, ValueError) as e:
        raise InvalidArgument(
            f"asset metadata must be JSON-serialisable (str, numbers, bool, None, lists, "
            f"dicts): {e}"
        ) from e


class AssetStore:
    def __init__(self, datadir: Any) -> None:
        self.datadir = datadir
        self.meta: PosixMeta = datadir.meta
        self.chunks = datadir.chunks

    # --- helpers ----------------------------------------------------------------------------
    @staticmethod
    def uri(namespace: str, asset_id: str) -> str:
        return asset_uri(namespace, asset_id)

    def _check_id(self, asset_id: str) -> str:
        if not isinstance(asset_id, str) or not is_asset_id(asset_id.lower()):
            raise InvalidArgument(
                f"{asset_id!r} is not an asset id (64 hex digits, the BLAKE3 of the content)"
            )
        return asset_id.lower()

    def info(self, namespace: str, asset_id: str) -> AssetRecord:
        aid = self._check_id(asset_id)
        try:
            return self.meta.get_asset(namespace, aid)
        except NotFound:
            raise AssetNotFound(
                f"asset {aid} not found in namespace {namespace!r}: it was never put, or was "
                f"deleted"
            ) from None

    def _check_parents(self, namespace: str, parents: list[ParentEdge]) -> None:
        for edge in parents:
            if is_snapshot_parent(edge.parent_id):
                # stored by id (a tag resolved now); meta.put_asset checks it again in the
                # transaction that stores the asset
                with self.meta.store.read() as tx:
                    edge.parent_id = canonical_parent(tx, namespace, edge.parent_id)
                continue
            try:
                self.meta.get_asset(namespace, edge.parent_id)
            except NotFound:
                raise ParentNotCommitted(
                    f"parent asset {edge.parent_id} is not committed in namespace "
                    f"{namespace!r}; put the parent first, then this asset"
                ) from None

    # --- write ------------------------------------------------------------------------------
    def put(self, namespace: str, kind: str, data: DataSource,
            metadata: Mapping[str, Any] | str | None = None,
            parents: Iterable[str | ParentEdge | Mapping[str, Any]] | None = None,
            level: int | None = None) -> AssetRecord:
        check_kind(kind)
        meta_json = _metadata_json(metadata)
        edges = normalize_parents(parents)
        ns = self.meta.get_namespace(namespace)
        self._check_parents(namespace, edges)  # before any data is stored
        if level is None:
            level = ns.zstd_level

        whole = blake3.blake3()
        refs: list[ChunkRef] = []
        stored = 0
        size = 0
        first = True
        for index, chunk in enumerate(_rechunk(data, ns.chunk_size)):
            if first:
                check_payload_head(kind, chunk[:8])
                first = False
            whole.update(chunk)
            cid = blake3.blake3(chunk).digest()
            _new, stored_len = self.chunks.put(namespace, cid, chunk, level=level)
            self.meta.record_chunk(namespace, cid, len(chunk), stored_len)
            refs.append(ChunkRef(index=index, chunk_id=cid, length=len(chunk)))
            stored += stored_len
            size += len(chunk)
        if first:
            check_payload_head(kind, b"")
        asset_id = whole.hexdigest()
        if any(e.parent_id == asset_id for e in edges):
            raise InvalidArgument(f"asset {asset_id} cannot be its own parent")
        record = AssetRecord(asset_id=asset_id, kind=kind, size=size, chunks=refs,
                             metadata_json=meta_json, parents=edges, stored_bytes=stored,
                             created_ns=time.time_ns())
        return self.meta.put_asset(namespace, record)

    # --- read -------------------------------------------------------------------------------
    def open(self, namespace: str, asset_id: str) -> tuple[AssetRecord, Iterator[bytes]]:
        record = self.info(namespace, asset_id)
        return record, self._iter_content(namespace, record)

    def _iter_content(self, namespace: str, record: AssetRecord) -> Iterator[bytes]:
        whole = blake3.blake3()
        for ref in sorted(record.chunks, key=lambda r: r.index):
            data = self.chunks.read(namespace, ref.chunk_id, 0, ref.length)
            if len(data) != ref.length:
                raise CorruptChunk(
                    f"asset {record.asset_id}: chunk {ref.chunk_id.hex()} returned "
                    f"{len(data)} bytes, expected {ref.length}; run a verify/fsck"
                )
            whole.update(data)
            yield data
        if whole.hexdigest() != record.asset_id:
            raise CorruptChunk(
                f"asset {record.asset_id}: content does not hash to its id; the store is "
                f"damaged, restore from a backup"
            )

    def read_all(self, namespace: str, asset_id: str) -> tuple[AssetRecord, bytes]:
        record, it = self.open(namespace, asset_id)
        return record, b"".join(it)

    def list_assets(self, namespace: str, kind: str = "", limit: int = 100, after: str = ""
             ) -> list[AssetRecord]:
        if kind:
            check_kind(kind)
        return self.meta.list_assets(namespace, kind=kind, limit=limit, after=after)

    def delete(self, namespace: str, asset_id: str) -> None:
        aid = self.info(namespace, asset_id).asset_id
        self.meta.delete_asset(namespace, aid)

    def lineage(self, namespace: str, asset_id: str) -> list[AssetRecord]:
        aid = self.info(namespace, asset_id).asset_id
        return self.meta.lineage(namespace, aid)

    def verify(self, namespace: str, asset_id: str) -> tuple[bool, str]:
        record = self.info(namespace, asset_id)
        try:
            total = 0
            for ref in record.chunks:
                data = self.chunks.read(namespace, ref.chunk_id, 0, ref.length)
                if blake3.blake3(data).digest() != ref.chunk_id:
                    return False, f"chunk {ref.index} ({ref.chunk_id.hex()}) does not match its id"
                total += len(data)
            if total != record.size:
                return False, f"chunks hold {total} bytes, the asset says {record.size}"
            for _ in self._iter_content(namespace, record):
                pass
        except AIFSError as e:
            return False, e.message
        return True, f"{len(record.chunks)} chunks, {record.size} bytes, BLAKE3 matches"

    # --- files as assets --------------------------------------------------------------------
    def compute_file_asset_id(self, tree: TreeRef, ino: int, deadline: Deadline = NEVER) -> str:
        cached, _generation = self.meta.get_file_asset_id(tree, ino)
        if cached:
            return cached
        # Hash the map as of this read; set_file_asset_id ignores the result if the file
        # changed (its generation moved on) in the meantime.
        attr, refs = self.meta.get_chunk_map(tree, ino)
        generation = attr.generation
        chunk_size = self.meta.get_namespace(tree.namespace).chunk_size
        by_index = {r.index: r for r in refs if r.chunk_id}
        whole = blake3.blake3()
        remaining = attr.size
        index = 0
        while remaining > 0:
            # a sparse file of exabytes would otherwise hash zeros until the server stops
            deadline.check(f"computing the asset id of inode {ino} ({attr.size} bytes)")
            span = min(chunk_size, remaining)
            ref = by_index.get(index)
            got = 0
            if ref is not None and ref.length:
                data = self.chunks.read(tree.namespace, ref.chunk_id, 0, min(ref.length, span))
                whole.update(data)
                got = len(data)
            while got < span:  # a hole, or a chunk shorter than its slot: zeros
                deadline.check(f"computing the asset id of inode {ino} ({attr.size} bytes)")
                n = min(span - got, len(_ZEROS))
                whole.update(memoryview(_ZEROS)[:n])
                got += n
            remaining -= span
            index += 1
        asset_id = whole.hexdigest()
        self.meta.set_file_asset_id(tree, ino, generation, asset_id)
        return asset_id
