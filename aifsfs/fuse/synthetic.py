"""The synthetic, read-only `/.aifs/` tree of the mount.

Interface:
    SYN_BASE                    first synthetic inode (1 << 60): far from the server's inodes
    VIEW_TIMEOUT                seconds the kernel may keep entries/attrs of an immutable view
    is_synthetic(ino) -> bool
    Synthetic(assets, call, reader, versions=None, flush=None)
        assets: an AssetReader; reader: the ChunkReader; versions: a GrpcVersioning (the views
        of snapshots, tags and branches; none without it); flush: async () -> [(ino, error)]
        commits everything the mount buffered (the `/.aifs/flush` control file)
        .root_entry() -> Attr               the `/.aifs` directory (looked up from the root)
        await .lookup(parent, name) -> Attr
        await .getattr(ino) -> Attr
        await .listdir(ino) -> list[(name, Attr)]
        await .open(ino) -> None           (EISDIR / ENOENT / EIO as FUSEError)
        await .read(ino, offset, size) -> bytes
        await .readlink(ino) -> bytes
        .timeout(ino) -> float | None       VIEW_TIMEOUT inside an immutable view, else None
        .forget(ino)                        the kernel forgot it: drop what we know
        .assets_for_all                     False (default): `/.aifs/assets/` is the mount
                                            owner's only (set by the mounter, --assets-for-all)

Layout:
    /.aifs/assets/<lowercase hex BLAKE3-256>  an asset's bytes. `stat` size is the asset's
        length. Reads go through the chunk reader when the server's GetAsset info lists the
        chunks; otherwise the asset is streamed (small assets are kept whole). Listing
        `/.aifs/assets` lists the namespace's assets (up to `LIST_LIMIT`). An asset is
        read by id, past every file's permissions, so on an `--allow-other` mount the directory
        is 0500 and its assets 0400, owned by the mount's owner (the kernel enforces it: the
        mount always uses `default_permissions`; others get EACCES); `--assets-for-all`
        makes them 0555/0444 for everyone.
    /.aifs/snapshots/<id>/, /.aifs/tags/<name>/, /.aifs/branches/<name>/ (the branch's head
        snapshot): read-only trees of a snapshot, read through the Filesystem RPCs on its
        frozen tree "@snap:<id>". Before a view is exposed its signature is checked against the
        namespace's pinned key (aifsfs.keypin); each directory is listed with ListTree and its
        node hash recomputed from the listing (aifs_core.merkle) must equal the hash its
        parent's listing gave (the root's: the signed root hash); each file, symlink and
        special file's hash is recomputed from its listed attributes; a file's chunk map (the
        listing carries it; GetChunkMap on open from a server that does not) must give its
        content hash. A mismatch is EIO, with the path logged. ctime is the
        snapshot's time. A snapshot cannot change, so everything under a view's root has
        VIEW_TIMEOUT entry/attr timeouts and verified listings are kept. A pass over a
        view's directory of small files is prefetched as on the live tree (dir_prefetch.py,
        over the verified listings: `_ViewMaps`), so a cold epoch over a tag costs about the
        calls of one over the live tree, not two per file.
    /.aifs/flush  opening it commits everything this mount buffered (EIO if a commit fails);
        it reads as the mount's branch name and a newline. `aifs snapshot create --mount MNT`
        opens and reads it before it snapshots that branch.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pyfuse3
import trio

from aifs_core import merkle
from aifs_core.errors import AIFSError, NotFound
from aifs_core.types import ROOT_INO, Attr, ChunkRef
from aifs_core.wire import attr_from_pb
from aifsfs.fuse.chunk_cache import split_range
from aifsfs.fuse.dir_prefetch import DirPrefetch
from aifsfs.fuse.readahead import ChunkReader
from aifsfs.protocols import AssetReader
from aifsfs.rpc.versioning import listing_problem, verify_signature

log = logging.getLogger("aifsfs.views")

SYN_BASE = 1 << 60
SYN_ROOT = SYN_BASE + 1        # /.aifs
SYN_ASSETS = SYN_BASE + 2      # /.aifs/assets
SYN_SNAPSHOTS = SYN_BASE + 3   # /.aifs/snapshots
SYN_TAGS = SYN_BASE + 4        # /.aifs/tags
SYN_BRANCHES = SYN_BASE + 5    # /.aifs/branches
SYN_FLUSH = SYN_BASE + 6       # /.aifs/flush
_FIRST_DYNAMIC = SYN_BASE + 1000
LIST_LIMIT = 10000
VIEW_TIMEOUT = 24 * 3600.0
_MAX_LISTINGS = 20000          # verified directory listings kept per mount
_WHOLE_LIMIT = 64 << 20        # assets streamed without a chunk list are kept when this small
_HEX = set(b"0123456789abcdef")
_KINDS = {SYN_SNAPSHOTS: "snapshots", SYN_TAGS: "tags", SYN_BRANCHES: "branches"}
_REF_PREFIX = {"snapshots": "", "tags": "tag:", "branches": "branch:"}


def is_synthetic(ino: int) -> bool:
    return ino >= SYN_BASE


def _owner_only(a: Attr) -> Attr:
    """`a` readable only by the mount process's user (the mount's owner) and root."""
    mode = stat.S_IFMT(a.mode) | (0o500 if stat.S_ISDIR(a.mode) else 0o400)
    return dataclasses.replace(a, mode=mode, uid=os.getuid(), gid=os.getgid())


def _dir_attr(ino: int, nlink: int = 2) -> Attr:
    now = time.time_ns()
    return Attr(ino=ino, mode=stat.S_IFDIR | 0o555, nlink=nlink, uid=0, gid=0, rdev=0,
                size=0, atime_ns=now, mtime_ns=now, ctime_ns=now)


def _flush_attr(content: bytes) -> Attr:
    now = time.time_ns()
    return Attr(ino=SYN_FLUSH, mode=stat.S_IFREG | 0o444, nlink=1, uid=0, gid=0, rdev=0,
                size=len(content), atime_ns=now, mtime_ns=now, ctime_ns=now)


def _eio(what: str, *args: Any) -> pyfuse3.FUSEError:
    log.error("refused: " + what, *args)
    return pyfuse3.FUSEError(errno.EIO)


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

    def attr(self, for_all: bool = True) -> Attr:
        a = Attr(ino=self.ino, mode=stat.S_IFREG | 0o444, nlink=1, uid=0, gid=0, rdev=0,
                    size=self.size, atime_ns=self.created_ns, mtime_ns=self.created_ns,
                    ctime_ns=self.created_ns, blocks=(self.size + 511) // 512)
        return a if for_all else _owner_only(a)


class _Snap:
    """One verified snapshot: its info, a Filesystem client on its frozen tree, and the
    directory listings verified so far (a snapshot never changes: they stay right)."""

    def __init__(self, info: dict[str, Any], fs: Any) -> None:
        self.info = info
        self.id: str = info["id"]
        self.created_ns = int(info["created_ns"])
        self.fs = fs
        # server dir inode -> (verified dir attr, {name: verified entry})
        self.listings: dict[int, tuple[Attr, dict[bytes, Any]]] = {}
        self.chunk_size = 0         # the tree's, as its listings give it (0: not given)


class _Node:
    """A view's inode: a directory, file, symlink or special file of a snapshot."""

    __slots__ = ("ino", "key", "snap", "sino", "path", "attr", "expect", "content", "target",
                 "refs", "chunk_size", "root", "parent")

    def __init__(self, ino: int, key: tuple[str, str, str, int], snap: _Snap, sino: int,
                 path: str, attr: Attr, expect: bytes, content: bytes = b"",
                 target: bytes = b"", root: bool = False) -> None:
        self.ino, self.key, self.snap, self.sino, self.path = ino, key, snap, sino, path
        self.attr = attr
        self.expect = expect          # the node hash its parent's listing (or the signature) gave
        self.content = content        # a file's verified content hash
        self.target = target          # a symlink's verified target
        self.refs: dict[int, ChunkRef] | None = None   # a file's verified chunk map
        self.chunk_size = 0
        self.root = root
        self.parent = 0               # the view directory it was listed in (0: a view's root)

    # what DirPrefetch.cold_read reads of a file's state (ops' is an inodes.FileState)
    @property
    def size(self) -> int:
        return self.attr.size

    def is_dirty(self) -> bool:
        return False


class _ViewMaps:
    """The verified listings of views as DirPrefetch's source of directories (the part of
    leases.LeaseCache it reads): a view never changes, so a listing held is complete and a
    file's map, once verified, stays right."""

    def __init__(self, syn: Synthetic) -> None:
        self.syn = syn

    def _dir(self, ino: int) -> tuple[_Node, dict[bytes, Any]] | None:
        node = self.syn._nodes.get(ino)
        hit = None if node is None else node.snap.listings.get(node.sino)
        return None if hit is None or node is None else (node, hit[1])

    def position(self, ino: int) -> tuple[int, int, int] | None:
        node = self.syn._nodes.get(ino)
        return None if node is None or not node.parent else (node.parent, 0, 0)

    def mapped(self, ino: int) -> list[tuple[Attr, int, list[ChunkRef]]] | None:
        d = self._dir(ino)
        if d is None:
            return None
        out = []
        for name, e in d[1].items():
            child = self.syn._child(d[0], name, e)
            if stat.S_ISREG(child.attr.mode) and child.refs is not None:
                out.append((child.attr, child.chunk_size,
                            [child.refs[i] for i in sorted(child.refs)]))
        return out

    def dir_bytes(self, ino: int) -> int | None:
        d = self._dir(ino)
        return None if d is None else len(d[1])

    def has_map(self, ino: int, generation: int | None = None) -> bool:
        node = self.syn._nodes.get(ino)
        return node is not None and node.refs is not None


class Synthetic:
    def __init__(self, assets: AssetReader, call: Callable[..., Awaitable[Any]],
                 reader: ChunkReader, versions: Any = None,
                 flush: Callable[[], Awaitable[list[tuple[int, BaseException]]]] | None = None
                 ) -> None:
        self.assets = assets
        self.call = call          # runs a blocking client call in a worker thread
        self.reader = reader
        self.versions = versions
        self.flush = flush
        self._by_id: dict[str, _Asset] = {}
        self._by_ino: dict[int, _Asset] = {}
        self._next = _FIRST_DYNAMIC
        self._snaps: dict[str, _Snap] = {}
        self._nodes: dict[int, _Node] = {}
        self._node_keys: dict[tuple[str, str, str, int], int] = {}
        # what /.aifs/flush reads: the mount's branch, so that `snapshot create --mount`
        # snapshots the branch this mount writes to
        self._flush_content = (f"{versions.branch}\n".encode()
                               if versions is not None else b"")
        # Assets are read by id, past the permissions of the files that hold them: on a mount
        # other users can enter (--allow-other) only its owner may read them, unless told so.
        self.assets_for_all = False
        self.prefetch = DirPrefetch(reader, _ViewMaps(self), self._push_whole)
        self._nursery: trio.Nursery | None = None

    def start(self, nursery: trio.Nursery) -> None:
        """Background work (directory prefetches of views) runs in the mount's nursery."""
        self._nursery = nursery

    def _push_whole(self, a: Attr, cs: int, data: bytes, chunk_id: bytes) -> None:
        """A prefetched view file's bytes into the kernel's page cache: an immutable file,
        opened with keep_cache, so its pages are right whenever they land."""
        pages = self.reader.pages
        t = None if pages is None or a.size != len(data) else pages.target_for(a.ino, cs, a.size)
        if t is not None and pages is not None:
            pages.offer(t, 0, data, chunk_id)

    def _assets_dir(self) -> Attr:
        a = _dir_attr(SYN_ASSETS)
        return a if self.assets_for_all else _owner_only(a)

    def root_entry(self) -> Attr:
        return _dir_attr(SYN_ROOT, 6)

    def _alloc(self) -> int:
        ino = self._next
        self._next += 1
        return ino

    async def _asset(self, asset_id: str) -> _Asset:
        a = self._by_id.get(asset_id)
        if a is not None:
            return a
        info = await self.call(self.assets.stat_asset, asset_id)
        a = self._by_id.get(asset_id)   # another request may have won meanwhile
        if a is None:
            a = _Asset(asset_id, self._alloc(), info)
            self._by_id[asset_id] = a
            self._by_ino[a.ino] = a
        return a

    # --- views of snapshots ---------------------------------------------------------------
    def _make_snap(self, info: dict[str, Any]) -> _Snap:
        snap = self._snaps.get(info["id"])
        if snap is None:
            assert self.versions is not None
            snap = _Snap(info, self.versions.tree_fs(info["tree_branch"]))
            self._snaps[snap.id] = snap
        return snap

    async def _verified(self, kind: str, name: str) -> _Snap:
        """The snapshot a view names, its signature checked against the pinned key."""
        if self.versions is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if kind == "snapshots" and (len(name) != 32 or not set(name.encode()) <= _HEX):
            raise pyfuse3.FUSEError(errno.ENOENT)
        try:
            info = await self.call(self.versions.get_verified, _REF_PREFIX[kind] + name)
        except NotFound:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        except AIFSError as exc:
            if getattr(exc, "reason", "") in ("BAD_SIGNATURE", "KEY_MISMATCH"):
                raise _eio("/.aifs/%s/%s: %s", kind, name, exc) from None
            raise
        return self._make_snap(info)

    def _node(self, kind: str, name: str, snap: _Snap, sino: int, path: str, attr: Attr,
              expect: bytes, content: bytes = b"", target: bytes = b"",
              root: bool = False) -> _Node:
        key = (kind, name, snap.id, sino)
        ino = self._node_keys.get(key)
        node = self._nodes.get(ino) if ino is not None else None
        shown = dataclasses.replace(attr, ctime_ns=snap.created_ns)
        if node is None:
            ino = self._alloc()
            node = _Node(ino, key, snap, sino, path, shown, expect, content, target, root)
            self._nodes[ino] = node
            self._node_keys[key] = ino
        node.attr = dataclasses.replace(shown, ino=node.ino)
        return node

    async def _view_root(self, kind: str, name: str, snap: _Snap | None = None) -> _Node:
        if snap is None:
            snap = await self._verified(kind, name)
        attr, _ = await self._listing(snap, ROOT_INO, snap.info["root_hash"],
                                      f"/.aifs/{kind}/{name}")
        return self._node(kind, name, snap, ROOT_INO, f"/.aifs/{kind}/{name}", attr,
                          snap.info["root_hash"], root=True)

    async def _listing(self, snap: _Snap, sino: int, expect: bytes, path: str
                       ) -> tuple[Attr, dict[bytes, Any]]:
        """A directory of `snap`, verified: its hash recomputed from the listing must be
        `expect`, and each non-directory entry's hash recomputed from its attributes must be
        the hash listed for it (a directory entry's is checked when it is listed)."""
        hit = snap.listings.get(sino)
        if hit is not None:
            return hit
        assert self.versions is not None
        r = await self.call(self.versions.list_tree, snap.id, sino)
        bad, problem = listing_problem(r, expect)
        if problem:
            raise _eio("snapshot %s: %s: %s", snap.id, f"{path}/{bad}" if bad else path or "/",
                       problem)
        entries: dict[bytes, Any] = {bytes(e.name): e for e in r.entries}
        snap.chunk_size = snap.chunk_size or int(r.chunk_size)
        out = (attr_from_pb(r.attr), entries)
        if len(snap.listings) >= _MAX_LISTINGS:
            snap.listings.clear()
        snap.listings[sino] = out
        return out

    def _child(self, parent: _Node, name: bytes, e: Any) -> _Node:
        kind, vname, _, _ = parent.key
        node = self._node(kind, vname, parent.snap, int(e.attr.ino),
                          f"{parent.path}/{name.decode(errors='replace')}", attr_from_pb(e.attr),
                          bytes(e.hash), bytes(e.content_hash), bytes(e.symlink))
        node.parent = parent.ino
        if node.refs is None and stat.S_ISREG(node.attr.mode) and parent.snap.chunk_size:
            refs = [ChunkRef(int(c.index), bytes(c.chunk_id), int(c.length)) for c in e.chunks]
            # the map the listing gives must give the content hash the listing was verified
            # with; a server that sends no map fails this for a non-empty file, and open then
            # asks GetChunkMap (which checks the same)
            if merkle.content_hash(node.attr.size, [(r.index, r.chunk_id, r.length)
                                                    for r in refs]) == node.content:
                node.refs = {r.index: r for r in refs}
                node.chunk_size = parent.snap.chunk_size
        return node

    async def _view_dir(self, node: _Node) -> dict[bytes, Any]:
        if not stat.S_ISDIR(node.attr.mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        _, entries = await self._listing(node.snap, node.sino, node.expect, node.path)
        return entries

    async def _view_list(self, kind: str) -> list[tuple[bytes, Attr]]:
        if self.versions is None:
            return []
        v = self.versions
        out = []
        if kind == "snapshots":
            infos = await self.call(v.list_snapshots)
            key = await self.call(v.pinned_key)
            for info in infos:
                if not verify_signature(info, key):
                    log.error("refused: snapshot %s: the signature does not verify with the "
                              "pinned key; not listed", info["id"])
                    continue
                node = await self._view_root(kind, info["id"], self._make_snap(info))
                out.append((info["id"].encode(), node.attr))
            return out
        items = (await self.call(v.list_tags) if kind == "tags" else
                 [b for b in await self.call(v.list_branches) if b["head"]])
        for it in items:
            try:
                node = await self._view_root(kind, it["name"])
            except pyfuse3.FUSEError as exc:
                if exc.errno == errno.ENOENT:
                    continue      # removed meanwhile
                raise
            out.append((it["name"].encode(), node.attr))
        return out

    # --- the operations -------------------------------------------------------------------
    async def lookup(self, parent: int, name: bytes) -> Attr:
        if parent == SYN_ROOT:
            if name == b"assets":
                return self._assets_dir()
            if name == b"flush" and self.flush is not None:
                return _flush_attr(self._flush_content)
            for ino, kind in _KINDS.items():
                if name == kind.encode() and self.versions is not None:
                    return _dir_attr(ino)
            raise pyfuse3.FUSEError(errno.ENOENT)
        if parent == SYN_ASSETS:
            if len(name) != 64 or not set(name) <= _HEX:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return (await self._asset(name.decode())).attr(self.assets_for_all)
        if parent in _KINDS:
            try:
                text = name.decode()
            except UnicodeDecodeError:
                raise pyfuse3.FUSEError(errno.ENOENT) from None
            return (await self._view_root(_KINDS[parent], text)).attr
        node = self._nodes.get(parent)
        if node is not None:
            e = (await self._view_dir(node)).get(name)
            if e is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._child(node, name, e).attr
        raise pyfuse3.FUSEError(errno.ENOTDIR if parent in self._by_ino else errno.ENOENT)

    async def getattr(self, ino: int) -> Attr:
        if ino == SYN_ROOT:
            return self.root_entry()
        if ino == SYN_ASSETS:
            return self._assets_dir()
        if ino in _KINDS:
            return _dir_attr(ino)
        if ino == SYN_FLUSH:
            return _flush_attr(self._flush_content)
        node = self._nodes.get(ino)
        if node is not None:
            return node.attr
        a = self._by_ino.get(ino)
        if a is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return a.attr(self.assets_for_all)

    async def listdir(self, ino: int) -> list[tuple[bytes, Attr]]:
        if ino == SYN_ROOT:
            out = [(b"assets", self._assets_dir())]
            if self.versions is not None:
                out += [(k.encode(), _dir_attr(i)) for i, k in _KINDS.items()]
            if self.flush is not None:
                out.append((b"flush", _flush_attr(self._flush_content)))
            return out
        if ino == SYN_ASSETS:
            infos = await self.call(self.assets.list_assets, None, LIST_LIMIT)
            out = []
            for info in infos:
                aid = str(info["asset_id"])
                a = self._by_id.get(aid)
                if a is None:
                    a = _Asset(aid, self._alloc(), info)
                    self._by_id[aid] = a
                    self._by_ino[a.ino] = a
                out.append((aid.encode(), a.attr(self.assets_for_all)))
            return out
        if ino in _KINDS:
            return await self._view_list(_KINDS[ino])
        node = self._nodes.get(ino)
        if node is not None:
            entries = await self._view_dir(node)
            return [(name, self._child(node, name, e).attr)
                    for name, e in sorted(entries.items())]
        raise pyfuse3.FUSEError(errno.ENOTDIR)

    async def open(self, ino: int) -> None:
        if ino in (SYN_ROOT, SYN_ASSETS, *_KINDS):
            raise pyfuse3.FUSEError(errno.EISDIR)
        if ino == SYN_FLUSH and self.flush is not None:
            failed = await self.flush()
            for f_ino, exc in failed:
                log.error("/.aifs/flush: inode %d could not be committed: %s", f_ino, exc)
            if failed:
                raise pyfuse3.FUSEError(errno.EIO)
            return
        node = self._nodes.get(ino)
        if node is not None:
            if stat.S_ISDIR(node.attr.mode):
                raise pyfuse3.FUSEError(errno.EISDIR)
            if stat.S_ISREG(node.attr.mode):
                self.prefetch.opened(ino)
            if stat.S_ISREG(node.attr.mode) and node.refs is None:
                a, cs, refs = await self.call(node.snap.fs.get_chunk_map, node.sino)
                got = merkle.content_hash(node.attr.size,
                                          [(r.index, r.chunk_id, r.length) for r in refs])
                if got != node.content:
                    raise _eio("snapshot %s: %s: its chunk map does not give its content hash",
                               node.snap.id, node.path)
                node.chunk_size = cs or (1 << 20)
                node.refs = {r.index: r for r in refs}
            return
        if ino not in self._by_ino:
            raise pyfuse3.FUSEError(errno.ENOENT)

    async def read(self, ino: int, offset: int, size: int) -> bytes:
        node = self._nodes.get(ino)
        if node is not None:
            if node.refs is None:
                await self.open(ino)
            assert node.refs is not None
            end = min(node.attr.size, offset + size)
            if offset >= end:
                return b""
            if offset == 0 and self._nursery is not None:
                # as ops.read: a cold read may start its directory's prefetch, and waits
                # for the prefetch's call when that plans its chunk
                self.prefetch.cold_read(self._nursery, ino, node)
                first = node.refs.get(0)
                if first is not None:
                    await self.prefetch.wait_planned(first.chunk_id)
            return b"".join([
                await self.reader.read(node.refs.get(idx) or ChunkRef(idx, b"", 0), off, n,
                                       whole=n > 65536)
                for idx, off, n in split_range(offset, end - offset, node.chunk_size)])
        if ino == SYN_FLUSH:
            return self._flush_content[offset:offset + size]
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

    async def readlink(self, ino: int) -> bytes:
        node = self._nodes.get(ino)
        if node is None or not stat.S_ISLNK(node.attr.mode):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return node.target

    def timeout(self, ino: int) -> float | None:
        """Entry/attr timeout for `ino`: long inside an immutable view. A tag's or branch's
        root keeps the mount's usual timeouts (a branch moves; a tag may be deleted and made
        again), a snapshot id's root cannot change."""
        node = self._nodes.get(ino)
        if node is None or (node.root and node.key[0] != "snapshots"):
            return None
        return VIEW_TIMEOUT

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
        node = self._nodes.pop(ino, None)
        if node is not None:
            self._node_keys.pop(node.key, None)
            return
        a = self._by_ino.pop(ino, None)
        if a is not None:
            self._by_id.pop(a.asset_id, None)
