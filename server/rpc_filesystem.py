"""The Filesystem service: the live tree of one branch, a thin layer over the MetadataEngine.

Interface:
    Backend(datadir, assets=None, metrics=None)   what every servicer shares:
        .meta .chunks .namespace(name) -> Namespace (cached; NotFound says how to create it)
        .tree(context) -> TreeRef                 namespace + branch from call metadata; the
                                                  main branch's tree is created on first use
        .usage() -> (used_bytes, free_bytes)      of the chunk store
        .request_log                              request_log.RequestLog over the engine's store
    attr_to_pb(Attr) -> common_pb2.Attr
    FilesystemServicer(backend)                   every RPC of filesystem.proto
    add_filesystem_service(servicer, server)      registers it; ReadDir returns its reply
                                                  pre-encoded (bytes, encode_dir_entry)

Fast paths for the mount (each saves it a round trip): replies that change a directory carry
the directory's attributes after the change (`parent_attr`); Unlink/RmDir/Rename say which inode
they removed and may drop it at once (`forget`); CommitFile may carry small chunks inline
(stored exactly as PutChunks stores them, before the commit applies); GetChunkMap may carry a
small file's bytes (`inline_max`), unless the caller's cache already holds that generation.

The changing calls carry a `request_id` (the client's, one per logical call, resent by its
retries): they run through `request_log.RequestLog.once`, so a retry of a call that committed
gets that call's result instead of running again (AlreadyExists for its own create).

Namespace and branch come from call metadata (`aifs-namespace`, `aifs-branch`), already
checked against the caller's token by `auth.AuthInterceptor`.
"""

from __future__ import annotations

import stat as stat_mod
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import grpc
from blake3 import blake3

from aifs_core.errors import (
    AIFSError,
    AlreadyExists,
    InvalidArgument,
    NameTooLong,
    NotFound,
    PermissionDenied,
)
from aifs_core.protowire import varint
from aifs_core.types import (
    NAME_MAX,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    Attr,
    ChunkRef,
    DirEntry,
    Namespace,
    TreeRef,
)
from aifs_core.wire import attr_fields, attr_to_pb, chunkref_from_pb, chunkref_to_pb
from aifs_proto.v1 import common_pb2, filesystem_pb2, filesystem_pb2_grpc
from aifs_server import delegated_inos
from aifs_server.auth import call_scope, current_grant
from aifs_server.deadline import Deadline
from aifs_server.events import CHANGED, CREATED, REMOVED, EventHub
from aifs_server.grpc_errors import rpc
from aifs_server.inline_file import InlineSink
from aifs_server.leases import LeaseManager, Session
from aifs_server.request_log import ATTR_OR_NONE, RequestLog, is_retry
from aifs_server.rpc_batch import (
    create_file,
    create_files,
    excl_after,
    listing_cookie,
    unlink_batch,
)

READDIR_DEFAULT = 256
INLINE_COMMIT_MAX = 16 << 20    # inline chunk bytes one CommitFile may carry
INLINE_READ_MAX = 4 << 20       # the most GetChunkMap inlines, whatever the caller asks
READDIR_MAX = 4096
BLOCK_SIZE = 4096
UNBOUNDED_STORE_BYTES = 1 << 50


class Backend:
    """Storage handles shared by the servicers, plus per-call scope resolution."""

    def __init__(self, datadir: Any, assets: Any = None, metrics: Any = None,
                 lease_grants: bool = True) -> None:
        self.datadir = datadir
        self.meta = datadir.meta
        self.chunks = datadir.chunks
        self.assets = assets
        self.metrics = metrics
        self.leases = LeaseManager(grants=lease_grants)
        self.events = EventHub(self.meta.path_of)   # watchers' change events (events.py)
        # exactly-once changing calls (request ids): Filesystem and Versioning share it
        self.request_log = RequestLog(self.meta.store,
                                      metrics.registry if metrics is not None else None)
        delegated_inos.ensure_table(self.meta.store)   # inode numbers given out (CreateFile)
        self._lock = threading.Lock()
        self._namespaces: dict[str, Namespace] = {}
        self._trees: set[TreeRef] = set()

    def namespace(self, name: str) -> Namespace:
        ns = self._namespaces.get(name)
        if ns is not None:
            return ns
        try:
            ns = self.meta.get_namespace(name)
        except NotFound:
            raise NotFound(f"namespace {name!r} does not exist; create it with "
                           f"`aifs format --namespace {name}` (Admin.Format)") from None
        with self._lock:  # namespace policy is fixed at format time: safe to cache
            self._namespaces[name] = ns
        return ns

    def forget_namespace(self, name: str) -> None:
        with self._lock:
            self._namespaces.pop(name, None)

    def tree_ref(self, namespace: str, branch: str) -> TreeRef:
        tree = TreeRef(namespace, branch)
        if tree in self._trees:
            return tree
        self.namespace(namespace)
        if branch == "main":
            self.meta.ensure_tree(tree)
        with self._lock:
            self._trees.add(tree)
        return tree

    def tree(self, context: grpc.ServicerContext) -> TreeRef:
        ns, branch = call_scope(context)
        return self.tree_ref(ns, branch)

    def usage(self) -> tuple[int, int]:
        """(bytes used, bytes free) of the chunk store. A store with no known bound (an object
        store) reports 1 PiB in all, as JuiceFS does, so `df` shows a sensible total."""
        used, free = self.datadir.store.usage()
        if free is None:
            free = max(0, UNBOUNDED_STORE_BYTES - int(used))
        return int(used), int(free)


def encode_dir_entry(entry: bytes, inline: bytes | bytearray) -> list[bytes | bytearray]:
    """ReadDirReply's `entries` field (1) holding a serialized DirEntry without inline bytes
    and, when `inline` is not empty, its bytes as a second `map` (4) holding only
    `inline_data` (2): protobuf parsers merge the two maps. Pieces to join, `inline` among them
    as it is: filling `inline_data` and serializing a 4 MiB reply cost ~320 us of CPU per
    147 KiB file (the bytes copied into the message, then several times as upb's encode
    buffer grows); joined behind a few header bytes, ~20 us."""
    if not inline:
        return [b"\x0a" + varint(len(entry)), entry]
    data_head = b"\x12" + varint(len(inline))
    map_head = b"\x22" + varint(len(data_head) + len(inline))
    size = len(entry) + len(map_head) + len(data_head) + len(inline)
    return [b"\x0a" + varint(size), entry, map_head, data_head, inline]


def encode_entries(entries: list[DirEntry]) -> bytes:
    """ReadDirReply's `entries` field (1) for entries with no map: the page as one message
    built from plain dicts (the Attr's own fields: wire.attr_fields) and serialized once, the
    conversion done inside upb. Per entry ~2 us of CPU against ~5 us for a DirEntry message,
    attr_to_pb, CopyFrom and SerializeToString each (and a hand-written varint encoder in
    Python measured no cheaper than the latter: DECISIONS.md, "ReadDir pages built in one
    message")."""
    return filesystem_pb2.ReadDirReply(entries=[
        {"name": e.name, "cookie": e.cookie, "attr": attr_fields(e.attr)} for e in entries]
    ).SerializeToString()


def _serialize_reply(m: Any) -> bytes:
    """A response serializer passing ReadDir's pre-encoded bytes through (a message object,
    should one come, serialized as usual)."""
    return m if type(m) is bytes else bytes(m.SerializeToString())


def add_filesystem_service(servicer: FilesystemServicer, server: grpc.Server) -> None:
    """filesystem_pb2_grpc.add_FilesystemServicer_to_server, with ReadDir's reply sent as the
    bytes it returns (encode_dir_entry)."""
    class _Capture:     # what the generated function registers, kept to be changed
        def __init__(self) -> None:
            self.handlers: dict[str, Any] = {}

        def add_generic_rpc_handlers(self, _: Any) -> None:
            pass

        def add_registered_method_handlers(self, _: str, handlers: dict[str, Any]) -> None:
            self.handlers = handlers

    cap = _Capture()
    filesystem_pb2_grpc.add_FilesystemServicer_to_server(servicer, cap)
    handlers = dict(cap.handlers)
    rd = handlers["ReadDir"]
    handlers["ReadDir"] = grpc.unary_unary_rpc_method_handler(
        rd.unary_unary, request_deserializer=rd.request_deserializer,
        response_serializer=_serialize_reply)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "aifs.v1.Filesystem", handlers),))
    server.add_registered_method_handlers("aifs.v1.Filesystem", handlers)


def _name(name: bytes) -> bytes:
    # the engine validates too; checking here gives the wire a precise reason early
    if len(name) > NAME_MAX:
        raise NameTooLong(f"name is {len(name)} bytes; the limit is {NAME_MAX}")
    return bytes(name)


_EMPTY_ASSET_ID = blake3(b"").hexdigest()


def _known_asset_id(request: Any, changed: list[ChunkRef], inline_sizes: dict[bytes, int]
                    ) -> str:
    """The file's asset id after this commit when the server knows it without reading a byte,
    else "" (computed on demand). Known: a truncating commit to size 0, or one whose whole
    content is a single chunk the server verified in this very call (an inline chunk of exactly
    `size` bytes in slot 0): the asset id (BLAKE3 of the content) is then that chunk's id. The
    client's own claim plays no part."""
    if not request.truncated:
        return ""   # earlier slots may stay: the server has not seen the whole content
    size = request.size
    if size == 0:
        return _EMPTY_ASSET_ID
    slot0 = None
    for ref in changed:   # the engine applies a later change of the same slot last
        if ref.index == 0:
            slot0 = ref
    if (slot0 is not None and slot0.chunk_id and inline_sizes.get(slot0.chunk_id) == size
            and slot0.length >= size):
        return slot0.chunk_id.hex()
    return ""


INLINE_READERS = 4      # chunk files of a ReadDir page read at once (cold disk reads)


def _fits_inline(a: Attr, refs: list[ChunkRef], limit: int) -> bool:
    """A file whose bytes may ride with its map: one chunk in slot 0, within `limit`."""
    return (0 < a.size <= limit and len(refs) == 1 and refs[0].index == 0
            and bool(refs[0].chunk_id))


class FilesystemServicer(filesystem_pb2_grpc.FilesystemServicer):
    """Leases (docs/LEASES.md, leases.py): a read carrying a live session id (metadata
    `aifs-session`) leases what it returned when no change of it started since the read began
    (initial metadata `aifs-lease: 1` says so; initial, because an error's status would replace
    trailing metadata and a negative lookup is leased too). Every change recalls the other
    sessions' leases on the inodes it touches before it commits; a removed or replaced inode
    the change learns only from its own transaction is recalled before the answer."""

    def __init__(self, backend: Backend) -> None:
        self.b = backend
        self.meta = backend.meta
        self.leases = backend.leases
        # threads start on the first submit (ReadDir with maps of a cold page)
        self._inline_readers = ThreadPoolExecutor(INLINE_READERS,
                                                  thread_name_prefix="aifs-inline-read")

    # --- leases -------------------------------------------------------------------------------
    def _session(self, context: grpc.ServicerContext, tree: TreeRef) -> Session | None:
        for k, v in context.invocation_metadata():
            if k == "aifs-session":
                return self.leases.session(str(v), tree)
        return None

    def _grant(self, context: grpc.ServicerContext, sess: Session | None, tree: TreeRef,
               inos: list[int], since: int) -> None:
        if sess is not None and self.leases.grant(sess, tree, inos, since):
            context.send_initial_metadata((("aifs-lease", "1"),))

    def _read_excl(self, context: grpc.ServicerContext, tree: TreeRef, sess: Session | None,
                   inos: list[int]) -> bool:
        """Before a read: another session's exclusive lease covering one of `inos` is
        recalled (its holder sends its pending changes first); True if one was."""
        return self.leases.read_excl(tree, inos, sess, Deadline.of_call(context))

    def _change(self, context: grpc.ServicerContext, tree: TreeRef, inos: list[int]) -> Any:
        return self.leases.change(tree, inos, self._session(context, tree),
                                  Deadline.of_call(context))

    def _recall_after(self, context: grpc.ServicerContext, tree: TreeRef, ino: int | None,
                      known: set[int]) -> None:
        """A victim the change found itself (a race moved the name since our lookup)."""
        if ino is not None and ino not in known:
            self.leases.recall(tree, [ino], self._session(context, tree),
                               Deadline.of_call(context))

    def _ino_of(self, tree: TreeRef, parent: int, name: bytes) -> int | None:
        try:
            return self.meta.lookup(tree, parent, name).ino
        except (NotFound, AIFSError):
            return None

    def _once(self, method: str, context: grpc.ServicerContext, tree: TreeRef, request: Any,
              run: Any) -> Any:
        """run() -> Attr | None, at most once per request id (request_log.py)."""
        return self.b.request_log.once(method, tree.namespace, request.request_id, run,
                                       ATTR_OR_NONE, retry=is_retry(context))

    # --- calls --------------------------------------------------------------------------------
    @rpc
    def Lookup(self, request: Any, context: grpc.ServicerContext) -> Any:
        tree = self.b.tree(context)
        sess = self._session(context, tree)
        self._read_excl(context, tree, sess, [request.parent])
        since = self.leases.mark()
        try:
            a = self.meta.lookup(tree, request.parent, _name(request.name))
        except NotFound:
            # a negative entry is the parent's to lease: its entries are what changes
            self._grant(context, sess, tree, [request.parent], since)
            raise
        if self._read_excl(context, tree, sess, [a.ino]):   # covered through another name
            since = self.leases.mark()
            a = self.meta.lookup(tree, request.parent, _name(request.name))
        self._grant(context, sess, tree, [request.parent, a.ino], since)
        return filesystem_pb2.EntryReply(attr=attr_to_pb(a))

    @rpc
    def GetAttr(self, request: Any, context: grpc.ServicerContext) -> Any:
        tree = self.b.tree(context)
        sess = self._session(context, tree)
        self._read_excl(context, tree, sess, [request.ino])
        since = self.leases.mark()
        a = self.meta.getattr(tree, request.ino)
        self._grant(context, sess, tree, [request.ino], since)
        return filesystem_pb2.AttrReply(attr=attr_to_pb(a))

    @rpc
    def SetAttr(self, request: Any, context: grpc.ServicerContext) -> Any:
        tree = self.b.tree(context)
        with self._change(context, tree, [request.ino]):
            a = self.meta.setattr(
                tree, request.ino, request.fields, mode=request.mode,
                uid=request.uid, gid=request.gid, size=request.size, atime_ns=request.atime_ns,
                mtime_ns=request.mtime_ns, ctime_ns=request.ctime_ns)
        self.b.events.inode(tree, CHANGED, a.ino, stat_mod.S_ISDIR(a.mode))
        return filesystem_pb2.AttrReply(attr=attr_to_pb(a))

    @rpc
    def ReadDir(self, request: Any, context: grpc.ServicerContext) -> Any:
        limit = min(request.limit or READDIR_DEFAULT, READDIR_MAX)
        tree = self.b.tree(context)
        sess = self._session(context, tree)
        self._read_excl(context, tree, sess, [request.ino])
        since = self.leases.mark()
        if request.with_maps:
            # maps and bytes are what GetChunkMap gives: `get`, beyond ReadDir's `stat`
            grant = current_grant()
            if grant is not None and not grant.allows_verb("get"):
                raise PermissionDenied("ReadDir with_maps returns chunk maps and file bytes, "
                                       "which needs the `get` verb; this token lacks it")
        read = self.meta.readdir_maps if request.with_maps else self._readdir
        entries, eof, maps = read(tree, request.ino, request.cookie, limit)
        if self._read_excl(context, tree, sess, [e.attr.ino for e in entries]):
            since = self.leases.mark()          # an entry is covered through another name
            entries, eof, maps = read(tree, request.ino, request.cookie, limit)
        sink = (InlineSink.open(request.inline_file, context.peer())
                if request.with_maps and request.inline_file else None)
        try:
            parts = self._dir_page(tree, entries, maps, request, sink)
        finally:
            # closed here, not in a call-end callback: a client that cancels ends the call
            # while this thread may still write, and a descriptor closed under it could be
            # reused by another call's open before its pwrite (GetChunks does the same)
            if sink is not None:
                sink.close()
        if sink is not None and self.b.metrics is not None:
            self.b.metrics.add_bytes("out_file", sink.at)
        tail = filesystem_pb2.ReadDirReply(eof=eof)
        if request.with_maps:
            tail.chunk_size = self.b.namespace(tree.namespace).chunk_size
        self._grant(context, sess, tree, [request.ino, *(e.attr.ino for e in entries)], since)
        parts.append(tail.SerializeToString())
        return b"".join(parts)     # sent as it is (_serialize_reply)

    def _dir_page(self, tree: TreeRef, entries: list[DirEntry], maps: dict[int, list[ChunkRef]],
                  request: Any, sink: InlineSink | None) -> list[bytes | bytearray]:
        """A ReadDir page's entries as sent: a plain listing in one piece; with maps, each
        entry with its map and its bytes up to the call's budgets (in `sink`, the client's
        file, when it gave one)."""
        parts: list[bytes | bytearray] = []
        budget = min(request.inline_total, INLINE_READ_MAX)
        if not request.with_maps:        # a plain listing: the whole page in one go
            parts.append(encode_entries(entries))
        ahead = self._read_inline_ahead(tree, entries, maps, request.inline_max, budget) \
            if request.with_maps else {}
        for e in entries if request.with_maps else []:
            pe = filesystem_pb2.DirEntry(name=e.name, cookie=e.cookie)
            data: bytes | bytearray = b""
            a = e.attr
            if request.with_maps and stat_mod.S_ISREG(a.mode):
                # the map and the attr it goes with were read together, with the listing
                refs = maps.get(a.ino, [])
                pe.map.SetInParent()        # present even with no chunks (empty file)
                pe.map.chunks.extend(chunkref_to_pb(r) for r in refs)
                limit = min(request.inline_max, budget)
                got = ahead.pop(a.ino, None)
                if got is None:
                    data = self._inline_buffer(tree, a, refs, limit)
                else:
                    data = got.result() if a.size <= limit else b""    # as with `limit`
                budget -= len(data)
                at = sink.place([data]) if sink is not None and data else None
                if at is not None:      # the bytes went to the client's file instead
                    pe.map.inline_offset = at
                    data = b""
            pe.attr.CopyFrom(attr_to_pb(a))
            parts.extend(encode_dir_entry(pe.SerializeToString(), data))
        return parts

    def _read_inline_ahead(self, tree: TreeRef, entries: list[DirEntry],
                           maps: dict[int, list[ChunkRef]], inline_max: int, budget: int
                           ) -> dict[int, Future[bytes | bytearray]]:
        """The bytes of the page's files that will go inline, read INLINE_READERS at a time
        (ino -> future): one after the other, a cold page waited for each chunk file's open
        and read in turn (most of a cold epoch's ReadDir time). Chosen as _dir_page will
        take them, in order within the budget; one that fails or is not asked for costs
        only its read."""
        todo: list[tuple[int, Attr, list[ChunkRef]]] = []
        for e in entries:
            a = e.attr
            refs = maps.get(a.ino, [])
            if stat_mod.S_ISREG(a.mode) and _fits_inline(a, refs, min(inline_max, budget)):
                todo.append((a.ino, a, refs))
                budget -= a.size
        if len(todo) < 2:
            return {}
        return {ino: self._inline_readers.submit(self._inline_buffer, tree, a, refs, a.size)
                for ino, a, refs in todo}

    def _readdir(self, tree: TreeRef, ino: int, cookie: int, limit: int
                 ) -> tuple[list[DirEntry], bool, dict[int, list[ChunkRef]]]:
        return (*self.meta.readdir(tree, ino, cookie, limit), {})

    @rpc
    def MkDir(self, request: Any, context: grpc.ServicerContext) -> Any:
        tree = self.b.tree(context)
        sess = self._session(context, tree)
        since = self.leases.mark()
        made: list[Attr] = []

        def run() -> Attr:
            with self._change(context, tree, [request.parent]):
                a = self.meta.mkdir(tree, request.parent, _name(request.name), request.mode,
                                    request.uid, request.gid)
            self.b.events.entry(tree, CREATED, request.parent, _name(request.name), a.ino, True)
            made.append(a)
            return a
        a = self._once("MkDir", context, tree, request, run)
        # The new directory is empty: its maker may lease that (a change of it by anyone
        # since the mark, i.e. since before it existed, refuses the grant), so creates in it
        # need no negative lookup. Not a replayed answer: the directory was made before the
        # mark, and entries may have come into it since.
        if made:
            self._grant(context, sess, tree, [a.ino], since)
            # ... and hold it exclusively: the first file made in it is then made by the
            # mount without a call too (one CreateFile at its close, not Create + CommitFile)
            excl_after(self, context, tree, sess, a.ino)
        return self._entry_reply(tree, a, request.parent, sess, request.name)

    @rpc
    def Create(self, request: Any, context: grpc.ServicerContext) -> Any:
        mode = request.mode
        if stat_mod.S_IFMT(mode) == 0:
            mode |= stat_mod.S_IFREG
        tree = self.b.tree(context)

        def run() -> Attr:
            with self._change(context, tree, [request.parent]):
                a = self.meta.create(tree, request.parent, _name(request.name), mode,
                                     request.uid, request.gid, request.rdev)
            self.b.events.entry(tree, CREATED, request.parent, _name(request.name), a.ino,
                                False)
            return a
        a = self._once("Create", context, tree, request, run)
        sess = self._session(context, tree)
        excl_after(self, context, tree, sess, request.parent, (a.ino,))
        return self._entry_reply(tree, a, request.parent, sess, request.name)

    def _entry_reply(self, tree: TreeRef, a: Attr, parent: int, sess: Any = None,
                     name: bytes = b"") -> Any:
        """`sess` and `name`: the new entry's listing cookie goes with it (listing_cookie)."""
        return filesystem_pb2.EntryReply(
            attr=attr_to_pb(a), parent_attr=self._attr_or_none(tree, parent),
            cookie=listing_cookie(self, tree, sess, parent, bytes(name)) if name else 0)

    def _attr_or_none(self, tree: TreeRef, ino: int) -> common_pb2.Attr | None:
        """The inode's attributes for a reply's optional field (None when it is gone)."""
        try:
            return attr_to_pb(self.meta.getattr(tree, ino))
        except NotFound:
            return None

    @rpc
    def Unlink(self, request: Any, context: grpc.ServicerContext) -> Any:
        tree = self.b.tree(context)
        victim = self._ino_of(tree, request.parent, _name(request.name))
        known = {request.parent} | ({victim} if victim is not None else set())

        def run() -> Attr:
            with self._change(context, tree, list(known)):
                # the engine drops an nlink-0 inode in the unlink's own transaction
                a = (self.meta.unlink(tree, request.parent, _name(request.name), forget=True)
                     if request.forget
                     else self.meta.unlink(tree, request.parent, _name(request.name)))
            self.b.events.entry(tree, REMOVED, request.parent, _name(request.name), a.ino,
                                False)
            return a
        a = self._once("Unlink", context, tree, request, run)
        self._recall_after(context, tree, a.ino, known)
        excl_after(self, context, tree, self._session(context, tree), request.parent)
        return filesystem_pb2.RemoveReply(attr=attr_to_pb(a),
                                          parent_attr=self._attr_or_none(tree, request.parent))

    @rpc
    def UnlinkBatch(self, request: Any, context: grpc.ServicerContext) -> Any:
        return unlink_batch(self, request, context)

    @rpc
    def RmDir(self, request: Any, context: grpc.ServicerContext) -> Any:
        tree = self.b.tree(context)
        victim = self._ino_of(tree, request.parent, _name(request.name))
        known = {request.parent} | ({victim} if victim is not None else set())

        def run() -> Attr:
            with self._change(context, tree, list(known)):
                # the removed directory comes from rmdir's own transaction (no lookup racing it)
                a = self.meta.rmdir(tree, request.parent, _name(request.name),
                                    forget=request.forget)
            self.b.events.entry(tree, REMOVED, request.parent, _name(request.name), a.ino, True)
            return a
        a = self._once("RmDir", context, tree, request, run)
        self._recall_after(context, tree, a.ino, known)
        return filesystem_pb2.RemoveReply(attr=attr_to_pb(a),
                                          parent_attr=self._attr_or_none(tree, request.parent))

    @rpc
    def Rename(self, request: Any, context: grpc.ServicerContext) -> Any:
        tree = self.b.tree(context)
        name, new_name = _name(request.name), _name(request.new_name)
        flags = request.flags
        # Replacing an existing name unlinks the victim: that is a delete, so a caller without
        # `delete` renames with RENAME_NOREPLACE semantics. The engine checks the target inside
        # the rename's own transaction, so no victim can appear between a check and the act.
        # RENAME_EXCHANGE removes nothing and needs only `put` (the interceptor's verb).
        grant = current_grant()
        may_delete = grant is None or grant.allows_verb("delete")
        forced = not may_delete and not flags & (RENAME_EXCHANGE | RENAME_NOREPLACE)
        # the moved inode (its ctime; a directory's "..") and the one a replace unlinks
        moved = self._ino_of(tree, request.parent, name)
        target = self._ino_of(tree, request.new_parent, new_name)
        known = {request.parent, request.new_parent} | {i for i in (moved, target)
                                                         if i is not None}

        def run() -> Attr | None:
            with self._change(context, tree, list(known)):
                # what a replace unlinked comes from rename's own transaction (None: nothing)
                replaced = self.meta.rename(
                    tree, request.parent, name, request.new_parent, new_name,
                    flags | RENAME_NOREPLACE if forced else flags, forget=request.forget)
            self._renamed_events(tree, request, moved, target)
            return replaced
        try:
            replaced = self._once("Rename", context, tree, request, run)
            self._recall_after(context, tree, replaced.ino if replaced is not None else None,
                               known)
        except AlreadyExists:
            if not forced:
                raise  # the caller asked for RENAME_NOREPLACE itself: EEXIST as asked
            if self._same_inode(tree, request.parent, name, request.new_parent, new_name):
                replaced = None  # POSIX: renaming a name onto a link of itself does nothing
            else:
                raise PermissionDenied(
                    f"rename onto existing name {new_name.decode('utf-8', 'replace')!r} "
                    f"replaces (deletes) it, which needs the `delete` verb; this token allows "
                    f"put but not delete") from None
        reply = filesystem_pb2.RenameReply(
            parent_attr=self._attr_or_none(tree, request.parent),
            new_parent_attr=self._attr_or_none(tree, request.new_parent))
        if replaced is not None:
            reply.replaced.CopyFrom(attr_to_pb(replaced))
        return reply

    def _renamed_events(self, tree: TreeRef, request: Any, moved: int | None,
                        target: int | None) -> None:
        """A rename's events: the old path removed, the new one created; an exchange
        changes what both paths name (each then names the other's inode)."""
        ev = self.b.events
        if not ev.watching(tree) or moved is None:
            return
        name, new_name = _name(request.name), _name(request.new_name)
        is_dir = stat_mod.S_ISDIR(self.meta.getattr(tree, moved).mode)
        if request.flags & RENAME_EXCHANGE and target is not None:
            ev.entry(tree, CHANGED, request.new_parent, new_name, moved, is_dir)
            ev.entry(tree, CHANGED, request.parent, name, target,
                     stat_mod.S_ISDIR(self.meta.getattr(tree, target).mode))
            return
        ev.entry(tree, REMOVED, request.parent, name, moved, is_dir)
        ev.entry(tree, CREATED, request.new_parent, new_name, moved, is_dir)

    def _same_inode(self, tree: TreeRef, parent: int, name: bytes, new_parent: int,
                    new_name: bytes) -> bool:
        """True when both names are links of one inode (a rename between them removes
        nothing). Read after the refused rename: that rename changed nothing, so a race here
        can only turn a no-op into PermissionDenied, never let a victim be removed."""
        try:
            return (self.meta.lookup(tree, parent, name).ino
                    == self.meta.lookup(tree, new_parent, new_name).ino)
        except NotFound:
            return False

    @rpc
    def Symlink(self, request: Any, context: grpc.ServicerContext) -> Any:
        tree = self.b.tree(context)

        def run() -> Attr:
            with self._change(context, tree, [request.parent]):
                a = self.meta.symlink(tree, request.parent, _name(request.name),
                                      request.target, request.uid, request.gid)
            self.b.events.entry(tree, CREATED, request.parent, _name(request.name), a.ino,
                                False)
            return a
        a = self._once("Symlink", context, tree, request, run)
        return self._entry_reply(tree, a, request.parent)

    @rpc
    def ReadLink(self, request: Any, context: grpc.ServicerContext) -> Any:
        tree = self.b.tree(context)
        self._read_excl(context, tree, self._session(context, tree), [request.ino])
        return filesystem_pb2.ReadLinkReply(target=self.meta.readlink(tree, request.ino))

    @rpc
    def Link(self, request: Any, context: grpc.ServicerContext) -> Any:
        tree = self.b.tree(context)

        def run() -> Attr:
            with self._change(context, tree, [request.ino, request.new_parent]):
                a = self.meta.link(tree, request.ino, request.new_parent,
                                   _name(request.new_name))
            self.b.events.entry(tree, CREATED, request.new_parent, _name(request.new_name),
                                a.ino, False)
            return a
        a = self._once("Link", context, tree, request, run)
        return self._entry_reply(tree, a, request.new_parent)

    @rpc
    def GetXattr(self, request: Any, context: grpc.ServicerContext) -> Any:
        tree = self.b.tree(context)
        self._read_excl(context, tree, self._session(context, tree), [request.ino])
        return filesystem_pb2.XattrReply(value=self.meta.getxattr(tree, request.ino,
                                                                  request.name))

    @rpc
    def SetXattr(self, request: Any, context: grpc.ServicerContext) -> Any:
        tree = self.b.tree(context)

        def run() -> None:
            with self._change(context, tree, [request.ino]):   # ctime
                self.meta.setxattr(tree, request.ino, request.name, request.value,
                                   request.flags)
            self._changed_event(tree, request.ino)
        self._once("SetXattr", context, tree, request, run)
        return common_pb2.Empty()

    @rpc
    def ListXattr(self, request: Any, context: grpc.ServicerContext) -> Any:
        tree = self.b.tree(context)
        self._read_excl(context, tree, self._session(context, tree), [request.ino])
        return filesystem_pb2.ListXattrReply(names=self.meta.listxattr(tree, request.ino))

    @rpc
    def RemoveXattr(self, request: Any, context: grpc.ServicerContext) -> Any:
        tree = self.b.tree(context)

        def run() -> None:
            with self._change(context, tree, [request.ino]):
                self.meta.removexattr(tree, request.ino, request.name)
            self._changed_event(tree, request.ino)
        self._once("RemoveXattr", context, tree, request, run)
        return common_pb2.Empty()

    @rpc
    def StatFs(self, request: Any, context: grpc.ServicerContext) -> Any:
        tree = self.b.tree(context)
        used, free = self.b.usage()
        ts = self.meta.tree_stats(tree)
        cs = self.meta.chunk_stats(tree.namespace)
        total_blocks = (used + free) // BLOCK_SIZE
        free_blocks = free // BLOCK_SIZE
        # Inodes are not preallocated: report a nominal 2**32 total (or what is in use, if
        # more), so that f_ffree <= f_files and `df -i` shows used = files - ffree.
        total_files = max(2**32, ts.files)
        return filesystem_pb2.StatFsReply(
            block_size=BLOCK_SIZE, blocks=total_blocks, blocks_free=free_blocks,
            blocks_avail=free_blocks, files=total_files, files_free=total_files - ts.files,
            name_max=NAME_MAX, stored_bytes=cs.stored_bytes, logical_bytes=ts.logical_bytes)

    @rpc
    def GetChunkMap(self, request: Any, context: grpc.ServicerContext) -> Any:
        tree = self.b.tree(context)
        sess = self._session(context, tree)
        self._read_excl(context, tree, sess, [request.ino])
        since = self.leases.mark()
        a, refs = self.meta.get_chunk_map(tree, request.ino, request.first_index, request.count)
        if request.first_index == 0 and request.count == 0:   # the whole map: leasable
            self._grant(context, sess, tree, [request.ino], since)
        reply = filesystem_pb2.ChunkMapReply(
            attr=attr_to_pb(a), chunk_size=self.b.namespace(tree.namespace).chunk_size,
            chunks=[chunkref_to_pb(r)
                    for r in refs])
        if (request.first_index == 0
                and not (request.HasField("cached_generation")
                         and request.cached_generation == a.generation)):
            reply.inline_data = self._inline(tree, a, refs,
                                             min(request.inline_max, INLINE_READ_MAX))
        return reply

    def _inline(self, tree: TreeRef, a: Attr, refs: list[ChunkRef], limit: int) -> bytes:
        """A small file's bytes for a reply: when it is at most `limit` bytes, held in slot 0
        alone; else b""."""
        return bytes(self._inline_buffer(tree, a, refs, limit))

    def _inline_buffer(self, tree: TreeRef, a: Attr, refs: list[ChunkRef], limit: int
                       ) -> bytes | bytearray:
        """_inline's bytes, maybe as the bytearray they were decrypted into (ReadDir joins
        them into its reply: no copy to bytes)."""
        if not _fits_inline(a, refs, limit):
            return b""
        try:
            return self.b.chunks.read_buffer(tree.namespace, refs[0].chunk_id, refs[0].length)
        except AIFSError:
            return b""   # a missing or damaged chunk: the read path reports it precisely

    @rpc
    def CommitFile(self, request: Any, context: grpc.ServicerContext) -> Any:
        tree = self.b.tree(context)
        return filesystem_pb2.AttrReply(attr=attr_to_pb(self._commit_file(tree, request,
                                                                           context)))

    @rpc
    def CreateFile(self, request: Any, context: grpc.ServicerContext) -> Any:
        return create_file(self, request, context)

    @rpc
    def CreateFiles(self, request: Any, context: grpc.ServicerContext) -> Any:
        return create_files(self, request, context)

    def _commit_file(self, tree: TreeRef, request: Any, context: grpc.ServicerContext) -> Attr:
        """CommitFile's work: the file's attrs after it."""
        kw = self._commit_args(tree, request)
        with self._change(context, tree, [request.ino]):
            a = self.meta.commit_file(tree, request.ino, durable=request.durable, **kw)
        self.b.events.inode(tree, CHANGED, a.ino, False)
        return a

    def _changed_event(self, tree: TreeRef, ino: int) -> None:
        if self.b.events.watching(tree):
            self.b.events.inode(tree, CHANGED, ino,
                                stat_mod.S_ISDIR(self.meta.getattr(tree, ino).mode))

    def _commit_args(self, tree: TreeRef, request: Any,
                     stored: dict[bytes, int] | None = None) -> dict[str, Any]:
        """A CommitFileRequest checked, its inline chunks stored: commit_file's keyword
        arguments but the inode and `durable` (CreateFile applies them in its create's
        transaction: rpc_batch.py). `stored`: the caller stored them already (CreateFiles,
        one batch for its files), their plaintext lengths by id."""
        chunk_size = self.b.namespace(tree.namespace).chunk_size
        changed: list[ChunkRef] = []
        for c in request.chunks:
            if c.chunk_id and len(c.chunk_id) != 32:
                raise InvalidArgument(
                    f"chunk id at index {c.index} is {len(c.chunk_id)} bytes; ids are 32-byte "
                    f"BLAKE3 digests")
            if c.length > chunk_size:
                raise InvalidArgument(
                    f"chunk slot {c.index} claims {c.length} bytes; the namespace's chunk size "
                    f"is {chunk_size}")
            changed.append(chunkref_from_pb(c))
        inline_sizes: dict[bytes, int] = {}
        if stored is not None:
            inline_sizes = {bytes(c.chunk_id): stored[bytes(c.chunk_id)]
                            for c in request.inline_chunks}
        elif request.inline_chunks:
            inline_sizes = self._store_inline(tree.namespace, request.inline_chunks)
        # The client's `asset_id` is a claim the server could only check by reading the whole
        # file: it is never stored (GetFileInfo, the xattr and aifs:// URIs would publish it).
        # Only an id the server can derive from what it verified itself is cached now; any
        # other is computed from the stored chunks on first request (per generation).
        return {"changed": changed, "size": request.size, "truncated": request.truncated,
                "mtime_ns": request.mtime_ns,
                "asset_id": _known_asset_id(request, changed, inline_sizes)}

    def _store_inline(self, ns_name: str, items: Any) -> dict[bytes, int]:
        """Store CommitFile's inline chunks as PutChunks would: verified against their ids,
        sealed, durable, and recorded only once durable (a record never names a chunk a crash
        could lose). Returns each verified chunk's plaintext length by id."""
        ns = self.b.namespace(ns_name)
        total = 0
        batch: list[tuple[bytes, bytes]] = []
        for item in items:
            cid = bytes(item.chunk_id)
            if len(cid) != 32:
                raise InvalidArgument(f"inline chunk id is {len(cid)} bytes; ids are 32-byte "
                                      f"BLAKE3 digests of the plaintext")
            if len(item.data) > ns.chunk_size:
                raise InvalidArgument(
                    f"inline chunk {cid.hex()} is {len(item.data)} bytes; the namespace's chunk "
                    f"size is {ns.chunk_size}")
            total += len(item.data)
            if total > INLINE_COMMIT_MAX:
                raise InvalidArgument(
                    f"CommitFile carries more than {INLINE_COMMIT_MAX} bytes of inline chunks; "
                    f"upload the larger ones with PutChunks first")
            batch.append((cid, bytes(item.data)))
        if len(batch) == 1:
            cid, plain = batch[0]
            results = [self.b.chunks.put(ns_name, cid, plain, ns.zstd_level)]
        else:
            results = self.b.chunks.put_batch(ns_name, batch, ns.zstd_level)
        for (cid, plain), (_new, stored_len) in zip(batch, results, strict=True):
            self.meta.record_chunk(ns_name, cid, len(plain), int(stored_len))
        if self.b.metrics is not None:
            self.b.metrics.add_bytes("in", total)
        return {cid: len(plain) for cid, plain in batch}

    @rpc
    def Forget(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.meta.forget(self.b.tree(context), request.ino)
        return common_pb2.Empty()

    @rpc
    def GetFileInfo(self, request: Any, context: grpc.ServicerContext) -> Any:
        tree = self.b.tree(context)
        self._read_excl(context, tree, self._session(context, tree), [request.ino])
        a, refs = self.meta.get_chunk_map(tree, request.ino, 0, 0)
        if not stat_mod.S_ISREG(a.mode):
            return filesystem_pb2.FileInfoReply(kind="", logical_bytes=a.size)
        if self.b.assets is None:
            raise InvalidArgument("this server has no asset store configured")
        asset_id = self.b.assets.compute_file_asset_id(tree, request.ino,
                                                      Deadline.of_call(context))
        stored = 0
        for cid in {r.chunk_id for r in refs if r.chunk_id}:
            try:
                stored += int(self.b.chunks.stored_size(tree.namespace, cid))
            except NotFound:
                pass  # fsck reports missing chunks; info stays answerable
        return filesystem_pb2.FileInfoReply(
            asset_id=asset_id, uri=f"aifs://{tree.namespace}/{asset_id}", kind="blob",
            stored_bytes=stored, logical_bytes=a.size)
