"""An in-memory AIFS server behind the mount's client protocols (aifsfs.protocols), for running
the FUSE operations without a kernel or a gRPC server.

Interface:
    FakeServer(chunk_size=4096)     .fs (FsClient), .data (DataClient), .assets (AssetReader):
                                    one object implements all three (a MountClient)
        .calls                      names of the calls made, in order (what a test may count)
        .content(ino) -> bytes      a file's committed bytes, read from its chunk map
        .inodes                     ino -> Attr of every inode the server still keeps

Semantics kept from the real server where the mount depends on them: nlink-0 inodes stay until
Forget (or a removing call with forget=True); a commit bumps the generation; chunk ids are
BLAKE3 of the data; readdir cookies are stable per entry; parent attrs come back from calls
that change a directory. Errors are aifs_core.errors classes, as the gRPC client raises.
"""

from __future__ import annotations

import stat
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import blake3

from aifs_core import errors
from aifs_core.types import (
    ROOT_INO,
    SET_ATIME,
    SET_CTIME,
    SET_GID,
    SET_MODE,
    SET_MTIME,
    SET_SIZE,
    SET_UID,
    Attr,
    ChunkRef,
    DirEntry,
)
from aifsfs.protocols import FileInfo, PutChunksResult, Removed, Renamed, StatFs


class FakeServer:
    def __init__(self, chunk_size: int = 4096) -> None:
        self.chunk_size = chunk_size
        self.address = "unix:/fake.sock"
        self.calls: list[str] = []
        now = time.time_ns()
        self.inodes: dict[int, Attr] = {ROOT_INO: Attr(ROOT_INO, stat.S_IFDIR | 0o755, 2, 0, 0,
                                                        0, 0, now, now, now)}
        self.entries: dict[int, dict[bytes, tuple[int, int]]] = {ROOT_INO: {}}  # name->(ino,cookie)
        self.maps: dict[int, dict[int, ChunkRef]] = {}
        self.links: dict[int, bytes] = {}
        self.xattrs: dict[int, dict[bytes, bytes]] = {}
        self.chunks: dict[bytes, bytes] = {}
        self._next_ino = ROOT_INO + 1
        self._next_cookie = 1

    # the one object is each of the three clients
    @property
    def fs(self) -> FakeServer:
        return self

    @property
    def data(self) -> FakeServer:
        return self

    @property
    def assets(self) -> FakeServer:
        return self

    # --- helpers ---------------------------------------------------------------------------------
    def _attr(self, ino: int) -> Attr:
        a = self.inodes.get(ino)
        if a is None:
            raise errors.NotFound(f"inode {ino} not found")
        return a

    def _dir(self, ino: int) -> dict[bytes, tuple[int, int]]:
        self._attr(ino)
        d = self.entries.get(ino)
        if d is None:
            raise errors.NotADirectory(f"inode {ino} is not a directory")
        return d

    def _touch(self, ino: int, **kw: int) -> Attr:
        a = self.inodes[ino]
        now = time.time_ns()
        fields = {"mtime_ns": now, "ctime_ns": now} | kw
        for k, v in fields.items():
            setattr(a, k, v)
        return Attr(**vars(a))

    def _new(self, parent: int, name: bytes, mode: int, uid: int, gid: int, rdev: int = 0
             ) -> tuple[Attr, Attr | None]:
        d = self._dir(parent)
        if name in d:
            raise errors.AlreadyExists(f"{name!r} exists")
        ino, self._next_ino = self._next_ino, self._next_ino + 1
        now = time.time_ns()
        is_dir = stat.S_ISDIR(mode)
        self.inodes[ino] = Attr(ino, mode, 2 if is_dir else 1, uid, gid, rdev, 0, now, now, now)
        if is_dir:
            self.entries[ino] = {}
            self.inodes[parent].nlink += 1
        elif stat.S_ISREG(mode):
            self.maps[ino] = {}
        d[name] = (ino, self._next_cookie)
        self._next_cookie += 1
        return Attr(**vars(self.inodes[ino])), self._touch(parent)

    def _unlinked(self, ino: int, forget: bool) -> Attr:
        a = self.inodes[ino]
        a.nlink = 0 if stat.S_ISDIR(a.mode) else a.nlink - 1
        a.ctime_ns = time.time_ns()
        out = Attr(**vars(a))
        if a.nlink == 0 and forget:
            self._drop(ino)
        return out

    def _drop(self, ino: int) -> None:
        for table in (self.inodes, self.entries, self.maps, self.links, self.xattrs):
            table.pop(ino, None)   # type: ignore[attr-defined]

    def content(self, ino: int) -> bytes:
        a = self._attr(ino)
        out = bytearray(a.size)
        for idx, ref in self.maps[ino].items():
            start = idx * self.chunk_size
            piece = self.chunks[ref.chunk_id][:ref.length][:max(0, a.size - start)]
            out[start:start + len(piece)] = piece
        return bytes(out)

    # --- FsClient --------------------------------------------------------------------------------
    def lookup(self, parent: int, name: bytes) -> Attr:
        self.calls.append("lookup")
        hit = self._dir(parent).get(name)
        if hit is None:
            raise errors.NotFound(f"{name!r} not found")
        return Attr(**vars(self.inodes[hit[0]]))

    def getattr(self, ino: int) -> Attr:
        self.calls.append("getattr")
        return Attr(**vars(self._attr(ino)))

    def setattr(self, ino: int, fields: int, *, mode: int = 0, uid: int = 0, gid: int = 0,
                size: int = 0, atime_ns: int = 0, mtime_ns: int = 0, ctime_ns: int = 0) -> Attr:
        self.calls.append("setattr")
        a = self._attr(ino)
        if fields & SET_MODE:
            a.mode = stat.S_IFMT(a.mode) | mode
        if fields & SET_UID:
            a.uid = uid
        if fields & SET_GID:
            a.gid = gid
        if fields & SET_SIZE:
            cs = self.chunk_size
            m = self.maps[ino]
            for idx in [i for i in m if i * cs >= size]:
                del m[idx]
            last = (size - 1) // cs if size else -1
            if last in m:   # keep the slot's leading bytes only (truncation never re-encrypts)
                m[last] = ChunkRef(last, m[last].chunk_id, min(m[last].length, size - last * cs))
            a.size = size
            a.generation += 1
            a.mtime_ns = time.time_ns()
        if fields & SET_ATIME:
            a.atime_ns = atime_ns
        if fields & SET_MTIME:
            a.mtime_ns = mtime_ns
        a.ctime_ns = ctime_ns if fields & SET_CTIME else time.time_ns()
        return Attr(**vars(a))

    def readdir(self, ino: int, cookie: int = 0, limit: int = 1000
                ) -> tuple[list[DirEntry], bool]:
        self.calls.append("readdir")
        items = sorted(self._dir(ino).items(), key=lambda kv: kv[1][1])
        after = [DirEntry(n, Attr(**vars(self.inodes[i])), c) for n, (i, c) in items if c > cookie]
        return after[:limit], len(after) <= limit

    def mkdir_entry(self, parent: int, name: bytes, mode: int = 0o755, uid: int = 0,
                    gid: int = 0) -> tuple[Attr, Attr | None, int]:
        self.calls.append("mkdir")
        return (*self._new(parent, name, stat.S_IFDIR | mode, uid, gid), 0)   # no leases here

    def create_entry(self, parent: int, name: bytes, mode: int = 0o100644, uid: int = 0,
                     gid: int = 0, rdev: int = 0) -> tuple[Attr, Attr | None, int]:
        self.calls.append("create")
        return (*self._new(parent, name, mode, uid, gid, rdev), 0)

    def symlink_entry(self, parent: int, name: bytes, target: bytes, uid: int = 0,
                      gid: int = 0) -> tuple[Attr, Attr | None]:
        self.calls.append("symlink")
        a, pa = self._new(parent, name, stat.S_IFLNK | 0o777, uid, gid)
        self.links[a.ino] = target
        self.inodes[a.ino].size = len(target)
        return Attr(**vars(self.inodes[a.ino])), pa

    def link_entry(self, ino: int, new_parent: int, new_name: bytes
                   ) -> tuple[Attr, Attr | None]:
        self.calls.append("link")
        d = self._dir(new_parent)
        if new_name in d:
            raise errors.AlreadyExists(f"{new_name!r} exists")
        self._attr(ino).nlink += 1
        d[new_name] = (ino, self._next_cookie)
        self._next_cookie += 1
        return self._touch(ino, mtime_ns=self.inodes[ino].mtime_ns), self._touch(new_parent)

    def remove(self, parent: int, name: bytes, *, directory: bool = False,
               forget: bool = False) -> Removed:
        self.calls.append("rmdir" if directory else "unlink")
        d = self._dir(parent)
        hit = d.get(name)
        if hit is None:
            raise errors.NotFound(f"{name!r} not found")
        ino = hit[0]
        is_dir = stat.S_ISDIR(self.inodes[ino].mode)
        if directory and not is_dir:
            raise errors.NotADirectory(f"{name!r} is not a directory")
        if not directory and is_dir:
            raise errors.IsADirectory(f"{name!r} is a directory")
        if directory and self.entries[ino]:
            raise errors.NotEmpty(f"{name!r} is not empty")
        del d[name]
        if is_dir:
            self.inodes[parent].nlink -= 1
        return Removed(self._unlinked(ino, forget), self._touch(parent))

    def rename_entry(self, parent: int, name: bytes, new_parent: int, new_name: bytes,
                     flags: int = 0, forget: bool = False) -> Renamed:
        self.calls.append("rename")
        src, dst = self._dir(parent), self._dir(new_parent)
        hit = src.get(name)
        if hit is None:
            raise errors.NotFound(f"{name!r} not found")
        replaced = None
        old = dst.get(new_name)
        if old is not None and old[0] != hit[0]:
            if stat.S_ISDIR(self.inodes[old[0]].mode) and self.entries[old[0]]:
                raise errors.NotEmpty(f"{new_name!r} is not empty")
            replaced = self._unlinked(old[0], forget)
        del src[name]
        dst[new_name] = (hit[0], self._next_cookie)
        self._next_cookie += 1
        return Renamed(replaced, self._touch(parent), self._touch(new_parent))

    def readlink(self, ino: int) -> bytes:
        self.calls.append("readlink")
        return self.links[ino]

    def getxattr(self, ino: int, name: bytes) -> bytes:
        self.calls.append("getxattr")
        v = self.xattrs.get(ino, {}).get(name)
        if v is None:
            raise errors.NotFound(f"no attribute {name!r}")
        return v

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        self.calls.append("setxattr")
        self.xattrs.setdefault(ino, {})[name] = value

    def listxattr(self, ino: int) -> list[bytes]:
        self.calls.append("listxattr")
        return list(self.xattrs.get(ino, {}))

    def removexattr(self, ino: int, name: bytes) -> None:
        self.calls.append("removexattr")
        if self.xattrs.get(ino, {}).pop(name, None) is None:
            raise errors.NotFound(f"no attribute {name!r}")

    def statfs(self) -> StatFs:
        self.calls.append("statfs")
        return StatFs(4096, 1 << 20, 1 << 19, 1 << 19, 1 << 20, 1 << 19, 255, 0, 0)

    def get_chunk_map(self, ino: int, first: int = 0, count: int = 0
                      ) -> tuple[Attr, int, list[ChunkRef]]:
        self.calls.append("get_chunk_map")
        a = self._attr(ino)
        refs = [r for i, r in sorted(self.maps.get(ino, {}).items())]
        return Attr(**vars(a)), self.chunk_size, refs

    def open_chunk_map(self, ino: int, inline_max: int = 0,
                       cached_generation: int | None = None
                       ) -> tuple[Attr, int, list[ChunkRef], bytes]:
        self.calls.append("open_chunk_map")
        a = self._attr(ino)
        refs = [r for i, r in sorted(self.maps.get(ino, {}).items())]
        inline = b""
        if (inline_max and len(refs) == 1 and refs[0].index == 0
                and a.size <= min(inline_max, self.chunk_size)
                and cached_generation != a.generation):
            inline = self.chunks[refs[0].chunk_id][:refs[0].length]
        return Attr(**vars(a)), self.chunk_size, refs, inline

    def commit_file(self, ino: int, chunks: Iterable[ChunkRef | tuple[int, bytes, int]],
                    size: int, truncated: bool = False, mtime_ns: int = 0,
                    asset_id: str = "", durable: bool = False,
                    inline: Sequence[tuple[bytes, bytes]] = ()) -> Attr:
        self.calls.append("commit_file")
        a = self._attr(ino)
        for cid, data in inline:
            assert blake3.blake3(data).digest() == cid
            self.chunks[bytes(cid)] = bytes(data)
        m = self.maps[ino]
        for c in chunks:
            ref = c if isinstance(c, ChunkRef) else ChunkRef(*c)
            if ref.chunk_id:
                assert ref.chunk_id in self.chunks, "commit names a chunk never stored"
                m[ref.index] = ref
            else:
                m.pop(ref.index, None)
        a.size = size if truncated else max(a.size, size)
        a.generation += 1
        a.mtime_ns = mtime_ns or time.time_ns()
        a.ctime_ns = time.time_ns()
        return Attr(**vars(a))

    def forget(self, ino: int) -> None:
        self.calls.append("forget")
        a = self.inodes.get(ino)
        if a is not None and a.nlink == 0:
            self._drop(ino)

    def file_info(self, ino: int) -> FileInfo:
        self.calls.append("file_info")
        data = self.content(ino)
        aid = blake3.blake3(data).hexdigest()
        return FileInfo(aid, f"aifs://default/{aid}", "blob", len(data), len(data))

    # --- DataClient ------------------------------------------------------------------------------
    def has_chunks(self, chunk_ids: Sequence[bytes]) -> list[bool]:
        self.calls.append("has_chunks")
        return [bytes(c) in self.chunks for c in chunk_ids]

    def put_chunks(self, chunks: Iterable[tuple[bytes, bytes | bytearray | memoryview]],
                   compress: bool | None = None, timeout: float | None = None
                   ) -> PutChunksResult:
        self.calls.append("put_chunks")
        r = PutChunksResult()
        for cid, data in chunks:
            raw = bytes(data)
            assert blake3.blake3(raw).digest() == bytes(cid)
            if bytes(cid) in self.chunks:
                r.deduplicated += 1
            else:
                self.chunks[bytes(cid)] = raw
                r.stored += 1
            r.raw_bytes += len(raw)
        return r

    def get_chunks(self, ranges: Sequence[tuple[bytes, int, int]],
                   accept_zstd: bool | None = None, timeout: float | None = None
                   ) -> list[bytes]:
        self.calls.append("get_chunks")
        out = []
        for cid, off, n in ranges:
            data = self.chunks.get(bytes(cid))
            if data is None:
                raise errors.MissingChunk(f"chunk {bytes(cid).hex()} missing")
            out.append(data[off:off + n] if n else data[off:])
        return out

    # --- AssetReader (no assets in this fake) ----------------------------------------------------
    def stat_asset(self, asset_id: str) -> dict[str, Any]:
        raise errors.NotFound(f"asset {asset_id} not found")

    def list_assets(self, kind: str | None = None, limit: int | None = None
                    ) -> list[dict[str, Any]]:
        return []

    def get_asset_stream(self, asset_id: str, timeout: float | None = None
                         ) -> tuple[dict[str, Any], Iterator[bytes]]:
        raise errors.NotFound(f"asset {asset_id} not found")
