"""Client of the Filesystem service: POSIX metadata calls, chunk maps and commits.

Interface:
    GrpcFilesystem(channel)              an `aifsfs.protocols.FsClient` over a `Channel`
        lookup, getattr, setattr, readdir -> (entries, eof), mkdir, create, unlink, rmdir,
        rename, symlink, readlink, link, getxattr, setxattr, listxattr, removexattr, statfs,
        get_chunk_map -> (attr, chunk_size, chunks), commit_file -> Attr, forget, file_info.
        Fast paths the mount uses (one round trip each): create_entry / mkdir_entry /
        symlink_entry / link_entry -> (attr, parent attr | None); remove(parent, name,
        directory=, forget=) -> Removed(attr, parent); rename_entry(..., forget=) ->
        Renamed(replaced, parent, new_parent); open_chunk_map(ino, inline_max,
        cached_generation) -> (attr, chunk_size, chunks, inline bytes of slot 0 or b"");
        readdir_maps(ino, cookie, limit, inline_max, inline_total) -> (entries, eof,
        chunk_size, {ino: (chunks, inline bytes)}): the next files' maps in one call;
        commit_file(..., inline=[(id, data)]) stores small chunks with the commit;
        unlink_batch(parent, [(name, ino) | (name, ino, attrs)], forget=True) -> ([(errno,
        attr | None)], parent attr): several unlinks and attribute changes in one call (a
        mount's batch under an exclusive lease); create_file(parent, name, ino, mode, uid,
        gid, commit, request_id, attrs): a file at a delegated number, one call;
        create_files([create_file's kwargs]) -> [(attr, item results)]: several of one
        directory in one call (group commit; fails whole at the first failure)
    (its plain results FileInfo, Removed, Renamed, StatFs are aifsfs.protocols')

The changing calls (mkdir, create, remove, rename, symlink, link, setxattr, removexattr) carry
a `request_id`: 16 random bytes (`new_request_id()`) chosen once per call, in the request message
that every retry of the call resends, so the server runs the call once even when a reply was
lost and the retry goes to another server (server/request_log.py). `call_once(channel, method,
request)` sends such a call: its retries also carry the metadata `aifs-retry: 1`, which tells
the server to look for the id in its log first (a first attempt skips that read).

Attr, DirEntry and ChunkRef are `aifs_core.types`; the messages are converted by
`aifs_core.wire` only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from aifs_core.types import Attr, ChunkRef, DirEntry
from aifs_core.wire import attr_from_pb, chunkref_from_pb, chunkref_to_pb, opt_attr
from aifs_proto.v1 import common_pb2, filesystem_pb2, filesystem_pb2_grpc

from ..protocols import FileInfo, Removed, Renamed, StatFs
from . import inline_file
from .channel import Channel

RETRY_METADATA = ("aifs-retry", "1")


def new_request_id() -> bytes:
    """A changing call's id: random, so two clients (or two calls) never share one."""
    return os.urandom(16)


def _items(items: Iterable[tuple[Any, ...]]) -> list[Any]:
    """unlink_batch's items as UnlinkItems: (name, ino) an unlink, (name, ino, attrs) a
    change of attributes."""
    return [filesystem_pb2.UnlinkItem(name=it[0], ino=it[1]) if len(it) == 2
            else filesystem_pb2.UnlinkItem(
                name=it[0], ino=it[1], setattr=filesystem_pb2.SetAttrRequest(ino=it[1], **it[2]))
            for it in items]


def _results(results: Any) -> list[tuple[int, Attr | None]]:
    return [(x.errno, attr_from_pb(x.attr) if x.HasField("attr") else None) for x in results]


class _RetryMarked:
    """A stub method whose invocations after the first carry RETRY_METADATA. Works under any
    channel's `unary` (the plain one calls it, a mount's session channel calls `with_call`)."""

    def __init__(self, method: Any) -> None:
        self._method = method
        self._sent = 0

    def _metadata(self, metadata: Any) -> list[tuple[str, str]]:
        md = list(metadata or ())
        if self._sent:
            md.append(RETRY_METADATA)
        self._sent += 1
        return md

    def __call__(self, request: Any, metadata: Any = None, **kw: Any) -> Any:
        return self._method(request, metadata=self._metadata(metadata), **kw)

    def with_call(self, request: Any, metadata: Any = None, **kw: Any) -> Any:
        return self._method.with_call(request, metadata=self._metadata(metadata), **kw)


def call_once(channel: Any, method: Any, request: Any, timeout: float | None = None) -> Any:
    """A changing call whose `request` holds a request id: retried like any non-idempotent
    call (through `channel.unary`), each retry marked so that the server first looks the id up
    (a first attempt cannot have been recorded: it skips that read, one round trip to the
    database less)."""
    return channel.unary(_RetryMarked(method), request, idempotent=False, timeout=timeout)


def _inline_bytes(m: Any, refs: list[ChunkRef], view: memoryview | None) -> Any:
    """A ReadDir entry's inline bytes: in the reply, or (inline_offset) a slice of the
    mapped inline file -- a memoryview, the length of the file's one chunk; b"" when the
    server's offset does not fit what it wrote (then the open asks as usual)."""
    if not m.HasField("inline_offset"):
        return bytes(m.inline_data)
    at = m.inline_offset
    if view is None or len(refs) != 1 or refs[0].index != 0:
        return b""
    end = at + refs[0].length
    return view[at:end] if end <= len(view) else b""


class GrpcFilesystem:
    """The Filesystem service's calls (thread-safe: the stub and channel are)."""

    def __init__(self, channel: Channel) -> None:
        self._ch = channel
        self._fs = filesystem_pb2_grpc.FilesystemStub(channel.grpc)
        # ReadDir's inline bytes through /dev/shm when the server is on this machine
        self._inline_files = inline_file.available(getattr(channel, "addresses", ()))
        if self._inline_files:
            inline_file.sweep()

    def lookup(self, parent: int, name: bytes) -> Attr:
        r = self._ch.unary(self._fs.Lookup, filesystem_pb2.LookupRequest(parent=parent, name=name))
        return attr_from_pb(r.attr)

    def getattr(self, ino: int) -> Attr:
        return attr_from_pb(self._ch.unary(self._fs.GetAttr,
                                        filesystem_pb2.InodeRequest(ino=ino)).attr)

    def setattr(self, ino: int, fields: int, *, mode: int = 0, uid: int = 0, gid: int = 0,
                size: int = 0, atime_ns: int = 0, mtime_ns: int = 0, ctime_ns: int = 0) -> Attr:
        r = self._ch.unary(self._fs.SetAttr, filesystem_pb2.SetAttrRequest(
            ino=ino, fields=fields, mode=mode, uid=uid, gid=gid, size=size, atime_ns=atime_ns,
            mtime_ns=mtime_ns, ctime_ns=ctime_ns))
        return attr_from_pb(r.attr)

    def readdir(self, ino: int, cookie: int = 0, limit: int = 1000
                ) -> tuple[list[DirEntry], bool]:
        r = self._ch.unary(self._fs.ReadDir, filesystem_pb2.ReadDirRequest(
            ino=ino, cookie=cookie, limit=limit))
        # positional, `name` as upb gives it (bytes already): per entry of a listing
        return [DirEntry(e.name, attr_from_pb(e.attr), e.cookie) for e in r.entries], r.eof

    def readdir_maps(self, ino: int, cookie: int, limit: int, inline_max: int,
                     inline_total: int) -> tuple[list[DirEntry], bool, int,
                                                 dict[int, tuple[list[ChunkRef], bytes]]]:
        """readdir whose regular files also carry their whole chunk map and, when small,
        their bytes: (entries, eof, chunk size, {ino: (refs, inline bytes or b"")})."""
        side = inline_file.InlineFile.make() if inline_total and self._inline_files else None
        try:
            r = self._ch.unary(self._fs.ReadDir, filesystem_pb2.ReadDirRequest(
                ino=ino, cookie=cookie, limit=limit, with_maps=True, inline_max=inline_max,
                inline_total=inline_total, inline_file=side.path if side else ""))
            view = side.view() if side is not None else None
        finally:
            if side is not None:
                side.close()
        entries: list[DirEntry] = []
        maps: dict[int, tuple[list[ChunkRef], bytes]] = {}
        for e in r.entries:
            de = DirEntry(name=bytes(e.name), attr=attr_from_pb(e.attr), cookie=e.cookie)
            entries.append(de)
            if e.HasField("map"):
                refs = [chunkref_from_pb(c) for c in e.map.chunks]
                maps[de.attr.ino] = (refs, _inline_bytes(e.map, refs, view))
        return entries, r.eof, r.chunk_size, maps

    def mkdir(self, parent: int, name: bytes, mode: int = 0o755, uid: int = 0, gid: int = 0
              ) -> Attr:
        return self.mkdir_entry(parent, name, mode, uid, gid)[0]

    def mkdir_entry(self, parent: int, name: bytes, mode: int = 0o755, uid: int = 0,
                    gid: int = 0) -> tuple[Attr, Attr | None, int]:
        """(the directory's attrs, its parent's, its listing cookie in the parent: nonzero
        only while this session holds the parent exclusively)."""
        r = call_once(self._ch, self._fs.MkDir, filesystem_pb2.MkDirRequest(
            parent=parent, name=name, mode=mode, uid=uid, gid=gid,
            request_id=new_request_id()))
        return attr_from_pb(r.attr), opt_attr(r, "parent_attr"), r.cookie

    def create(self, parent: int, name: bytes, mode: int = 0o100644, uid: int = 0,
               gid: int = 0, rdev: int = 0) -> Attr:
        return self.create_entry(parent, name, mode, uid, gid, rdev)[0]

    def create_entry(self, parent: int, name: bytes, mode: int = 0o100644, uid: int = 0,
                     gid: int = 0, rdev: int = 0) -> tuple[Attr, Attr | None, int]:
        """(the new inode's attrs, its parent's, its listing cookie: as mkdir_entry's)."""
        r = call_once(self._ch, self._fs.Create, filesystem_pb2.CreateRequest(
            parent=parent, name=name, mode=mode, uid=uid, gid=gid, rdev=rdev,
            request_id=new_request_id()))
        return attr_from_pb(r.attr), opt_attr(r, "parent_attr"), r.cookie

    def unlink_batch(self, parent: int, items: Sequence[tuple[Any, ...]], forget: bool = True
                     ) -> tuple[list[tuple[int, Attr | None]], Attr | None]:
        """Unlink several (name, inode seen under it) of `parent` in one call and one
        transaction: ([(errno or 0, attrs after it | None)], the parent's attrs). An item whose
        name is gone or names another inode now is left alone (ENOENT, ESTALE). An item
        (name, inode, attrs) sets that inode's attributes instead (`attrs`: setattr's keyword
        arguments with `fields`; no size), in order with the unlinks."""
        r = call_once(self._ch, self._fs.UnlinkBatch, filesystem_pb2.UnlinkBatchRequest(
            parent=parent, forget=forget, request_id=new_request_id(), items=_items(items)))
        return _results(r.results), opt_attr(r, "parent_attr")

    def unlink(self, parent: int, name: bytes) -> None:
        self.remove(parent, name)

    def rmdir(self, parent: int, name: bytes) -> None:
        self.remove(parent, name, directory=True)

    def remove(self, parent: int, name: bytes, *, directory: bool = False,
               forget: bool = False) -> Removed:
        """Unlink (or RmDir with directory=True). forget: drop the inode at once if this was
        its last link -- only when the caller holds no handle of it."""
        method = self._fs.RmDir if directory else self._fs.Unlink
        r = call_once(self._ch, method, filesystem_pb2.NameRequest(
            parent=parent, name=name, forget=forget, request_id=new_request_id()))
        return Removed(opt_attr(r, "attr"), opt_attr(r, "parent_attr"))

    def rename(self, parent: int, name: bytes, new_parent: int, new_name: bytes,
               flags: int = 0) -> None:
        self.rename_entry(parent, name, new_parent, new_name, flags)

    def rename_entry(self, parent: int, name: bytes, new_parent: int, new_name: bytes,
                     flags: int = 0, forget: bool = False) -> Renamed:
        r = call_once(self._ch, self._fs.Rename, filesystem_pb2.RenameRequest(
            parent=parent, name=name, new_parent=new_parent, new_name=new_name, flags=flags,
            forget=forget, request_id=new_request_id()))
        return Renamed(opt_attr(r, "replaced"), opt_attr(r, "parent_attr"),
                       opt_attr(r, "new_parent_attr"))

    def symlink(self, parent: int, name: bytes, target: bytes, uid: int = 0, gid: int = 0
                ) -> Attr:
        return self.symlink_entry(parent, name, target, uid, gid)[0]

    def symlink_entry(self, parent: int, name: bytes, target: bytes, uid: int = 0,
                      gid: int = 0) -> tuple[Attr, Attr | None]:
        r = call_once(self._ch, self._fs.Symlink, filesystem_pb2.SymlinkRequest(
            parent=parent, name=name, target=target, uid=uid, gid=gid,
            request_id=new_request_id()))
        return attr_from_pb(r.attr), opt_attr(r, "parent_attr")

    def readlink(self, ino: int) -> bytes:
        return bytes(self._ch.unary(self._fs.ReadLink, filesystem_pb2.InodeRequest(ino=ino)).target)

    def link(self, ino: int, new_parent: int, new_name: bytes) -> Attr:
        return self.link_entry(ino, new_parent, new_name)[0]

    def link_entry(self, ino: int, new_parent: int, new_name: bytes
                   ) -> tuple[Attr, Attr | None]:
        r = call_once(self._ch, self._fs.Link, filesystem_pb2.LinkRequest(
            ino=ino, new_parent=new_parent, new_name=new_name,
            request_id=new_request_id()))
        return attr_from_pb(r.attr), opt_attr(r, "parent_attr")

    def getxattr(self, ino: int, name: bytes) -> bytes:
        r = self._ch.unary(self._fs.GetXattr, filesystem_pb2.XattrRequest(ino=ino, name=name))
        return bytes(r.value)

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        call_once(self._ch, self._fs.SetXattr, filesystem_pb2.XattrRequest(
            ino=ino, name=name, value=value, flags=flags, request_id=new_request_id()))

    def listxattr(self, ino: int) -> list[bytes]:
        r = self._ch.unary(self._fs.ListXattr, filesystem_pb2.InodeRequest(ino=ino))
        return [bytes(n) for n in r.names]

    def removexattr(self, ino: int, name: bytes) -> None:
        call_once(self._ch, self._fs.RemoveXattr, filesystem_pb2.XattrRequest(
            ino=ino, name=name, request_id=new_request_id()))

    def statfs(self) -> StatFs:
        r = self._ch.unary(self._fs.StatFs, common_pb2.Empty())
        return StatFs(block_size=r.block_size, blocks=r.blocks, blocks_free=r.blocks_free,
                      blocks_avail=r.blocks_avail, files=r.files, files_free=r.files_free,
                      name_max=r.name_max, stored_bytes=r.stored_bytes,
                      logical_bytes=r.logical_bytes)

    def get_chunk_map(self, ino: int, first: int = 0, count: int = 0
                      ) -> tuple[Attr, int, list[ChunkRef]]:
        r = self._ch.unary(self._fs.GetChunkMap, filesystem_pb2.ChunkMapRequest(
            ino=ino, first_index=first, count=count))
        return attr_from_pb(r.attr), r.chunk_size, [chunkref_from_pb(c) for c in r.chunks]

    def open_chunk_map(self, ino: int, inline_max: int = 0,
                       cached_generation: int | None = None
                       ) -> tuple[Attr, int, list[ChunkRef], bytes]:
        """The whole chunk map, plus slot 0's bytes when the file is at most `inline_max`
        bytes in slot 0 alone and not still at `cached_generation` (else b"")."""
        req = filesystem_pb2.ChunkMapRequest(ino=ino, inline_max=inline_max)
        if cached_generation is not None:
            req.cached_generation = cached_generation
        r = self._ch.unary(self._fs.GetChunkMap, req)
        if r.inline_data:
            self._ch.wire_stats.add(received_bytes=len(r.inline_data),
                                received_raw_bytes=len(r.inline_data))
        return (attr_from_pb(r.attr), r.chunk_size, [chunkref_from_pb(c) for c in r.chunks],
                bytes(r.inline_data))

    def commit_file(self, ino: int, chunks: Iterable[ChunkRef | tuple[int, bytes, int]],
                    size: int, truncated: bool = False, mtime_ns: int = 0,
                    asset_id: str = "", durable: bool = False,
                    inline: Sequence[tuple[bytes, bytes]] = ()) -> Attr:
        """Apply changed slots. `inline`: (chunk id, data) of small chunks to store with this
        commit instead of by put_chunks (at most 16 MiB in all)."""
        # Idempotent: the same slots and size applied twice give the same file (and storing a
        # chunk twice is a no-op), so a retry after a lost reply is safe.
        # durable=True (fsync) returns only once the commit is on the server's stable storage.
        r = self._ch.unary(self._fs.CommitFile, self._commit_request(
            ino, chunks, size, truncated, mtime_ns, asset_id, durable, inline))
        return attr_from_pb(r.attr)

    def _commit_request(self, ino: int, chunks: Iterable[ChunkRef | tuple[int, bytes, int]],
                        size: int, truncated: bool = False, mtime_ns: int = 0,
                        asset_id: str = "", durable: bool = False,
                        inline: Sequence[tuple[bytes, bytes]] = ()) -> Any:
        if inline:
            n = sum(len(d) for _, d in inline)
            self._ch.wire_stats.add(sent_bytes=n, sent_raw_bytes=n)
        return filesystem_pb2.CommitFileRequest(
            ino=ino, chunks=[chunkref_to_pb(c) for c in chunks], size=size,
            truncated=truncated, mtime_ns=mtime_ns, asset_id=asset_id, durable=durable,
            inline_chunks=[filesystem_pb2.InlineChunk(chunk_id=bytes(c), data=bytes(d))
                           for c, d in inline])

    def create_file(self, parent: int, name: bytes, ino: int, mode: int, uid: int, gid: int,
                    commit: tuple[Sequence[Any], dict[str, Any]] | None = None,
                    request_id: bytes | None = None, attrs: dict[str, int] | None = None,
                    items: Sequence[tuple[Any, ...]] = ()
                    ) -> tuple[Attr, Attr | None, list[tuple[int, Attr | None]], int]:
        """A regular file at an inode number delegated to this session, with its first
        commit (commit_file's (args, kwargs) after the inode) or empty: (attrs after it,
        the parent's, the results of `items`, its listing cookie: nonzero only while this
        session holds `parent` exclusively). `attrs`: attribute changes made before it was
        sent (setattr's keyword arguments with `fields`; no size), applied before the commit
        in its transaction. `items`: attribute changes of other files of `parent`
        (unlink_batch's (name, ino, attrs) items), applied first; their results come third,
        as unlink_batch's.
        `request_id`: the caller's, kept across its own later attempts."""
        req = self._create_request(parent, name, ino, mode, uid, gid, commit, request_id,
                                   attrs, items)
        r = call_once(self._ch, self._fs.CreateFile, req)
        return attr_from_pb(r.attr), opt_attr(r, "parent_attr"), _results(r.results), r.cookie

    def create_files(self, files: Sequence[dict[str, Any]]
                     ) -> list[tuple[Attr, list[tuple[int, Attr | None]], int]]:
        """Several create_file calls of one directory in one (group commit): `files` are
        create_file's keyword arguments (request_id required: a file the call did before
        failing is answered again by it when sent alone). (attrs after it, the results of
        its items, its listing cookie) per file, in order. Any failure raises: then send
        each on its own."""
        req = filesystem_pb2.CreateFilesRequest(
            files=[self._create_request(**f) for f in files])
        r = call_once(self._ch, self._fs.CreateFiles, req)
        return [(attr_from_pb(e.attr), _results(e.results), e.cookie) for e in r.entries]

    def _create_request(self, parent: int, name: bytes, ino: int, mode: int, uid: int,
                        gid: int, commit: tuple[Sequence[Any], dict[str, Any]] | None = None,
                        request_id: bytes | None = None, attrs: dict[str, int] | None = None,
                        items: Sequence[tuple[Any, ...]] = ()) -> Any:
        req = filesystem_pb2.CreateFileRequest(parent=parent, name=name, ino=ino, mode=mode,
                                               uid=uid, gid=gid,
                                               request_id=request_id or new_request_id())
        if attrs:
            req.setattr.CopyFrom(filesystem_pb2.SetAttrRequest(ino=ino, **attrs))
        req.items.extend(_items(items))
        if commit is not None:
            req.commit.CopyFrom(self._commit_request(ino, *commit[0], **commit[1]))
        return req

    def forget(self, ino: int) -> None:
        self._ch.unary(self._fs.Forget, filesystem_pb2.InodeRequest(ino=ino))

    def file_info(self, ino: int) -> FileInfo:
        r = self._ch.unary(self._fs.GetFileInfo, filesystem_pb2.InodeRequest(ino=ino))
        return FileInfo(asset_id=r.asset_id, uri=r.uri, kind=r.kind,
                        stored_bytes=r.stored_bytes, logical_bytes=r.logical_bytes)
