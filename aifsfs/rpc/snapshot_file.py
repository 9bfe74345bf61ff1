"""A read-only, seekable file of a snapshot, read by ranges (what `AIFSClient.open` returns).

Interface:
    SnapshotRaw(data, uri, size, chunk_size, refs, info)   an io.RawIOBase
        data: a GrpcData (get_chunks) scoped to the snapshot's namespace; refs: the file's
        verified chunk map {slot index: ChunkRef}; info: the snapshot's (verified) info dict
        readinto(b) fills b up to EOF with ONE GetChunks call for the slots the range touches
        (holes and the part of a slot past its stored length read as zeros); readall() reads
        the rest in calls of at most READALL_BATCH bytes; seek/tell; never writable.
    SnapshotFile(raw)            io.BufferedReader over it (a FRAME_SIZE buffer: a small read
                                 fetches one 64 KiB frame, which is what the server decrypts
                                 anyway; a read larger than that goes straight to readinto)
        .uri .size .snapshot (info dict) .path; read, readinto, readline, seek, tell, peek,
        context manager

The chunk map was checked against the snapshot's signed Merkle root before this object exists
(GrpcVersioning.open); the server opens each chunk under AES-GCM, so bytes of another chunk or
altered bytes never arrive as this file's.
"""

from __future__ import annotations

import io
from typing import Any

from aifs_core.types import ChunkRef

from ..fuse.chunk_cache import FRAME_SIZE, split_range
from .data import GrpcData

READALL_BATCH = 32 << 20      # bytes per GetChunks call when reading to the end


class SnapshotRaw(io.RawIOBase):
    def __init__(self, data: GrpcData, uri: str, size: int, chunk_size: int,
                 refs: dict[int, ChunkRef], info: dict[str, Any]) -> None:
        super().__init__()
        self._data = data
        self.uri = self.name = uri
        self.size = size
        self.chunk_size = chunk_size
        self.refs = refs
        self.snapshot = info
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._checkClosed()  # type: ignore[attr-defined]
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()  # type: ignore[attr-defined]
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence ({whence})")
        if base + offset < 0:
            raise OSError(22, f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, b: Any) -> int:
        self._checkClosed()  # type: ignore[attr-defined]
        out = memoryview(b).cast("B")
        n = max(0, min(len(out), self.size - self._pos))
        if n:
            self._fill(out[:n], self._pos)
            self._pos += n
        return n

    def readall(self) -> bytes:
        out = bytearray(max(0, self.size - self._pos))
        for start in range(0, len(out), READALL_BATCH):
            self.readinto(memoryview(out)[start:start + READALL_BATCH])
        return bytes(out)

    def _fill(self, out: memoryview, offset: int) -> None:
        """out[:] = the file's bytes at [offset, offset + len(out)): one call for every slot
        the range touches that has a chunk; the rest (holes, past a slot's length) is zeros."""
        pieces = split_range(offset, len(out), self.chunk_size)
        want: list[tuple[bytes, int, int]] = []
        where: list[tuple[int, int]] = []     # (position in out, length) of each range asked
        pos = 0
        for idx, off, n in pieces:
            ref = self.refs.get(idx)
            have = max(0, min(n, (ref.length if ref and ref.chunk_id else 0) - off))
            if have:
                assert ref is not None
                want.append((ref.chunk_id, off, have))
                where.append((pos, have))
            out[pos + have:pos + n] = bytes(n - have)
            pos += n
        for (at, n), got in zip(where, self._data.get_chunks(want), strict=True):
            out[at:at + n] = got


class SnapshotFile(io.BufferedReader):
    """A snapshot's file (see the module docstring); `raw` is its SnapshotRaw."""

    raw: SnapshotRaw

    def __init__(self, raw: SnapshotRaw) -> None:
        super().__init__(raw, buffer_size=FRAME_SIZE)

    @property
    def uri(self) -> str:
        return self.raw.uri

    @property
    def size(self) -> int:
        return self.raw.size

    @property
    def snapshot(self) -> dict[str, Any]:
        return self.raw.snapshot

    def __repr__(self) -> str:
        return f"<SnapshotFile {self.uri} size={self.size}>"
