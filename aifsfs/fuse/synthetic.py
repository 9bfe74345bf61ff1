"""The synthetic, read-only `/.aifs/` tree of the mount.

Interface:
    SYN_BASE                    first synthetic inode (1 << 60): far from the server's inodes
    is_synthetic(ino) -> bool
    Synthetic(assets, call, reader)     assets: an AssetReader; reader: the ChunkReader
        .root_entry() -> Attr               the `/.aifs` directory (looked up from the root)
        await .lookup(parent, name) -> Attr
        await .getattr(ino) -> Attr
        await .listdir(ino) -> list[(name, Attr)]
        await .open(ino) -> None           (EISDIR / ENOENT as FUSEError)
        await .read(ino, offset, size) -> bytes
        .forget(ino)                        the kernel forgot it: drop what we know

Layout:  /.aifs/assets/<lowercase hex BLAKE3-256>  — an asset's bytes. `stat` size is the
asset's length. Reads go through the chunk reader (byte ranges of its chunks) when the server's
GetAsset info lists the chunks; otherwise the asset is streamed (small assets are kept whole).
Listing `/.aifs/assets` lists the namespace's assets (up to `LIST_LIMIT`).
"""

from __future__ import annotations

import errno
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pyfuse3

from aifs_core.types import Attr, ChunkRef
from aifsfs.fuse.chunk_cache import split_range
from aifsfs.fuse.readahead import ChunkReader
from aifsfs.protocols import AssetReader

SYN_BASE = 1 << 60
SYN_ROOT = SYN_BASE + 1        # /.aifs
SYN_ASSETS = SYN_BASE + 2      # /.aifs/assets
_FIRST_ASSET = SYN_BASE + 1000
LIST_LIMIT = 10000
_WHOLE_LIMIT = 64 << 20        # assets streamed without a chunk list are kept when this small
_HEX = set(b"0123456789abcdef")


def is_synthetic(ino: int) -> bool:
    return ino >= SYN_BASE


def _dir_attr(ino: int, nlink: int = 2) -> Attr:
    now = time.time_ns()
    return Attr(ino=ino, mode=stat.S_IFDIR | 0o555, nlink=nlink, uid=0, gid=0, rdev=0,
                size=0, atime_ns=now, mtime_ns=now, ctime_ns=now)


class _Asset:
    __slots__ = ("asset_id", "ino", "size", "created_ns", "chunk_size", "chunks", "whole")

    def __init__(self, asset_id: str, ino: int, info: dict[str, Any]) -> None:
        self.asset_id = asset_id
        self.ino = ino
        self.size = int(info.get("size", 0))
        self.created_ns = int(info.get("created_ns", 0)) or time.time_ns()
        self.chunk_size = int(info.get("chunk_size", 0) or 0)
        raw = info.get("chunks") or []
        self.chunks: dict[int, ChunkRef] = {}
        for i, c in enumerate(raw):
            if isinstance(c, ChunkRef):
                self.chunks[c.index] = c
            elif isinstance(c, dict):
                self.chunks[int(c.get("index", i))] = ChunkRef(
                    int(c.get("index", i)), bytes(c["chunk_id"]), int(c["length"]))
            else:
                idx, cid, ln = c
                self.chunks[int(idx)] = ChunkRef(int(idx), bytes(cid), int(ln))
        self.whole: bytes | None = None

    def attr(self) -> Attr:
        return Attr(ino=self.ino, mode=stat.S_IFREG | 0o444, nlink=1, uid=0, gid=0, rdev=0,
                    size=self.size, atime_ns=self.created_ns, mtime_ns=self.created_ns,
                    ctime_ns=self.created_ns, blocks=(self.size + 511) // 512)


class Synthetic:
    def __init__(self, assets: AssetReader, call: Callable[..., Awaitable[Any]],
                 reader: ChunkReader) -> None:
        self.assets = assets
        self.call = call          # runs a blocking client call in a worker thread
        self.reader = reader
        self._by_id: dict[str, _Asset] = {}
        self._by_ino: dict[int, _Asset] = {}
        self._next = _FIRST_ASSET

    def root_entry(self) -> Attr:
        return _dir_attr(SYN_ROOT, 3)

    async def _asset(self, asset_id: str) -> _Asset:
        a = self._by_id.get(asset_id)
        if a is not None:
            return a
        info = await self.call(self.assets.stat_asset, asset_id)
        a = self._by_id.get(asset_id)   # another request may have won meanwhile
        if a is None:
            a = _Asset(asset_id, self._next, info)
            self._next += 1
            self._by_id[asset_id] = a
            self._by_ino[a.ino] = a
        return a

    async def lookup(self, parent: int, name: bytes) -> Attr:
        if parent == SYN_ROOT:
            if name == b"assets":
                return _dir_attr(SYN_ASSETS)
            raise pyfuse3.FUSEError(errno.ENOENT)
        if parent == SYN_ASSETS:
            if len(name) != 64 or not set(name) <= _HEX:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return (await self._asset(name.decode())).attr()
        raise pyfuse3.FUSEError(errno.ENOTDIR if parent in self._by_ino else errno.ENOENT)

    async def getattr(self, ino: int) -> Attr:
        if ino == SYN_ROOT:
            return self.root_entry()
        if ino == SYN_ASSETS:
            return _dir_attr(SYN_ASSETS)
        a = self._by_ino.get(ino)
        if a is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return a.attr()

    async def listdir(self, ino: int) -> list[tuple[bytes, Attr]]:
        if ino == SYN_ROOT:
            return [(b"assets", _dir_attr(SYN_ASSETS))]
        if ino == SYN_ASSETS:
            infos = await self.call(self.assets.list_assets, None, LIST_LIMIT)
            out = []
            for info in infos:
                aid = str(info["asset_id"])
                a = self._by_id.get(aid)
                if a is None:
                    a = _Asset(aid, self._next, info)
                    self._next += 1
                    self._by_id[aid] = a
                    self._by_ino[a.ino] = a
                out.append((aid.encode(), a.attr()))
            return out
        raise pyfuse3.FUSEError(errno.ENOTDIR)

    async def open(self, ino: int) -> None:
        if ino in (SYN_ROOT, SYN_ASSETS):
            raise pyfuse3.FUSEError(errno.EISDIR)
        if ino not in self._by_ino:
            raise pyfuse3.FUSEError(errno.ENOENT)

    async def read(self, ino: int, offset: int, size: int) -> bytes:
        a = self._by_ino.get(ino)
        if a is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        end = min(a.size, offset + size)
        if offset >= end:
            return b""
        if a.chunks and a.chunk_size:
            parts = []
            for idx, off, n in split_range(offset, end - offset, a.chunk_size):
                ref = a.chunks.get(idx) or ChunkRef(idx, b"", 0)
                parts.append(await self.reader.read(ref, off, n, whole=n > 65536))
            return b"".join(parts)
        if a.whole is not None:
            return a.whole[offset:end]
        data = await self.call(self._stream_range, a.asset_id, offset, end)
        if len(data) == a.size and a.size <= _WHOLE_LIMIT:
            a.whole = data
            return data[offset:end]
        return data

    def _stream_range(self, asset_id: str, offset: int, end: int) -> bytes:
        """Blocking fallback: stream the asset and keep [offset, end) (or all of a small one)."""
        info, pieces = self.assets.get_asset_stream(asset_id)
        if int(info.get("size", 0)) <= _WHOLE_LIMIT:
            return b"".join(pieces)
        out = bytearray()
        pos = 0
        for piece in pieces:
            p_end = pos + len(piece)
            if p_end > offset and pos < end:
                out += piece[max(0, offset - pos):min(len(piece), end - pos)]
            pos = p_end
            if pos >= end:
                break
        return bytes(out)

    def forget(self, ino: int) -> None:
        a = self._by_ino.pop(ino, None)
        if a is not None:
            self._by_id.pop(a.asset_id, None)
