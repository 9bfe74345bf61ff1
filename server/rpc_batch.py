"""Exclusive directory leases on the Filesystem service (docs/LEASES.md "Exclusive directory
leases"): when a mount's change leaves it the only one caching a directory, the reply leases
the directory to it exclusively, and UnlinkBatch, the call that carries the unlinks it then
answered itself.

Interface (used by rpc_filesystem.FilesystemServicer):
    wants_excl(context) -> bool         the call carries `aifs-excl-ok: 1` (a mount that
                                        batches; others are never granted one)
    excl_after(fs, context, tree, sess, parent, new_inos=(), grant=True)
                                        after `sess` changed `parent`: grant (or keep) its
                                        exclusive lease on it, covering its children (listed
                                        here, at most EXCL_MAX_ENTRIES) and `new_inos`; the
                                        reply then carries metadata `aifs-excl: <parent>`
                                        and, when the call asked (`aifs-inos-want: 1`),
                                        `aifs-inos: <first>:<count>`: DELEGATE inode numbers
                                        for CreateFile (both trailing metadata)
    listing_cookie(fs, tree, sess, parent, name) -> int
                                        a new entry's ReadDir cookie for a session holding
                                        `parent` exclusively, else 0 (EntryReply.cookie)
    create_file(fs, request, context) -> EntryReply
                                        a regular file at a delegated inode number (used
                                        once) with, if the request carries them, its folded
                                        attribute changes and its first commit: one
                                        transaction, exactly once per request id
    create_files(fs, request, context) -> CreateFilesReply
                                        several CreateFileRequests of one directory (group
                                        commit: closes that happened together), each as
                                        create_file, in order, their inline chunks stored
                                        first in one batch; fails at the first that fails
                                        (those before it are done and logged by request id)
    unlink_batch(fs, request, context) -> UnlinkBatchReply
                                        the items (unlinks, and attribute changes of files the
                                        mount answered itself) in one transaction, exactly once
                                        per request id (request_log.py), recalling the other
                                        sessions' leases on the directory and the named inodes
                                        first
    UNLINK_RESULTS                      request_log codec of [(errno, Attr | None)]
    BATCH_MAX                           items one call may carry
    CREATE_FILES_MAX                    files one CreateFiles may carry
"""

from __future__ import annotations

import contextlib
import stat
import struct
from typing import Any

import grpc

from aifs_core.errors import InvalidArgument
from aifs_core.types import NAME_MAX, SET_SIZE
from aifs_core.wire import attr_to_pb
from aifs_proto.v1 import filesystem_pb2
from aifs_server.deadline import Deadline
from aifs_server.events import CHANGED, CREATED, REMOVED
from aifs_server.request_log import ATTR_OR_NONE, Codec, is_retry
from aifs_server.space_reserve import FREES_SPACE

EXCL_MAX_ENTRIES = 20_000   # a directory larger than this is not leased exclusively (the grant
#                             lists it: bounded work on the caller's path)
BATCH_MAX = 1024
CREATE_FILES_MAX = 64
DELEGATE = 256
_CODE = struct.Struct("<IH")      # errno, length of the encoded attrs that follow


def _encode(results: list[tuple[int, Any]]) -> bytes:
    out = []
    for code, a in results:
        b = ATTR_OR_NONE.encode(a)
        out.append(_CODE.pack(code, len(b)) + b)
    return b"".join(out)


def _decode(b: bytes) -> list[tuple[int, Any]]:
    out: list[tuple[int, Any]] = []
    off = 0
    while off < len(b):
        code, n = _CODE.unpack_from(b, off)
        off += _CODE.size
        out.append((code, ATTR_OR_NONE.decode(b[off:off + n])))
        off += n
    return out


UNLINK_RESULTS: Codec[list[tuple[int, Any]]] = Codec(_encode, _decode)


def _flag(context: grpc.ServicerContext, key: str) -> bool:
    return any(k == key and v == "1" for k, v in context.invocation_metadata() or ())


def wants_excl(context: grpc.ServicerContext) -> bool:
    return _flag(context, "aifs-excl-ok")


def _children(meta: Any, tree: Any, parent: int) -> list[int] | None:
    kids: list[int] = []
    cookie = 0
    while True:
        entries, eof = meta.readdir(tree, parent, cookie, 4096)
        kids.extend(e.attr.ino for e in entries)
        if len(kids) > EXCL_MAX_ENTRIES:
            return None
        if eof or not entries:
            return kids
        cookie = entries[-1].cookie


def excl_after(fs: Any, context: grpc.ServicerContext, tree: Any, sess: Any, parent: int,
               new_inos: tuple[int, ...] = (), grant: bool = True) -> None:
    leases = fs.leases
    if sess is None or not wants_excl(context):
        return
    if leases.holds_excl(sess, tree, parent):
        for ino in new_inos:
            leases.cover(sess, tree, parent, ino)
    elif grant and leases.may_excl(sess, tree, parent):
        since = leases.mark()
        try:
            kids = _children(fs.meta, tree, parent)
        except Exception:  # noqa: BLE001 - no grant is always safe
            return
        if kids is None or not leases.grant_excl(sess, tree, parent, kids, since):
            return
    else:
        return
    md = [("aifs-excl", str(parent))]
    if _flag(context, "aifs-inos-want"):
        with contextlib.suppress(Exception):     # none given: the mount asks Create again
            first = fs.meta.take_inos(tree, DELEGATE)
            md.append(("aifs-inos", f"{first}:{DELEGATE}"))
    # trailing, not initial: they then travel with the reply and its status in one batch
    # (an initial-metadata send of its own was an eighth of a CreateFile's server time); a
    # call that fails after this grants nothing, and its error status replaces them
    context.set_trailing_metadata(tuple(md))


def _attrs(req: Any) -> dict[str, int]:
    """A SetAttrRequest folded into CreateFile or carried by an UnlinkBatch item: setattr's
    keyword arguments. A size change is refused: it may free space and must fence the data
    path, so the mount sends it as a SetAttr of its own."""
    if req.fields & SET_SIZE:
        raise InvalidArgument("a size change is sent as a SetAttr call, not folded into "
                              "CreateFile or an UnlinkBatch")
    return {"fields": req.fields, "mode": req.mode, "uid": req.uid, "gid": req.gid, "size": 0,
            "atime_ns": req.atime_ns, "mtime_ns": req.mtime_ns, "ctime_ns": req.ctime_ns}


def create_file(fs: Any, request: Any, context: grpc.ServicerContext) -> Any:
    tree = fs.b.tree(context)
    sess = fs._session(context, tree)
    a, results = _create_one(fs, tree, sess, request, context, None)
    excl_after(fs, context, tree, sess, request.parent, (a.ino,))
    # no parent_attr: the mount answered the create itself and does not read it (reading it
    # again after the commit was an eighth of the call's server time)
    reply = filesystem_pb2.EntryReply(
        attr=attr_to_pb(a), cookie=listing_cookie(fs, tree, sess, request.parent,
                                                    bytes(request.name)))
    _results(reply, results)
    return reply


def create_files(fs: Any, request: Any, context: grpc.ServicerContext) -> Any:
    files = request.files
    if not files or len(files) > CREATE_FILES_MAX:
        raise InvalidArgument(f"CreateFiles carries {len(files)} files; it takes 1 to "
                              f"{CREATE_FILES_MAX}")
    parent = files[0].parent
    if any(f.parent != parent for f in files):
        raise InvalidArgument("the files of one CreateFiles are in one directory (parent)")
    tree = fs.b.tree(context)
    sess = fs._session(context, tree)
    # every file's inline chunks in one batch: their writes overlap and share the fan-out
    # directories' fsyncs (the point of grouping, with the one call)
    inline = [c for f in files if f.HasField("commit") for c in f.commit.inline_chunks]
    stored = fs._store_inline(tree.namespace, inline) if inline else {}
    reply = filesystem_pb2.CreateFilesReply()
    made: list[int] = []
    for f in files:
        a, results = _create_one(fs, tree, sess, f, context, stored)
        made.append(a.ino)
        entry = reply.entries.add(attr=attr_to_pb(a))
        _results(entry, results)
    excl_after(fs, context, tree, sess, parent, tuple(made))
    for f, entry in zip(files, reply.entries, strict=True):
        entry.cookie = listing_cookie(fs, tree, sess, parent, bytes(f.name))
    return reply


def listing_cookie(fs: Any, tree: Any, sess: Any, parent: int, name: bytes) -> int:
    """The new entry's ReadDir cookie for a caller that holds `parent` exclusively (no other
    client adds to it without recalling that first, so the caller's kept listing of it may
    take the name at its end: docs/LEASES.md "Listings of what this mount made"); 0 for any
    other caller."""
    if sess is None or not fs.leases.holds_excl(sess, tree, parent):
        return 0
    return int(fs.meta.listing_cookie(tree, parent, name))


def _create_one(fs: Any, tree: Any, sess: Any, request: Any, context: grpc.ServicerContext,
                stored: dict[bytes, int] | None) -> tuple[Any, list[tuple[int, Any]]]:
    """One CreateFileRequest's work: (its attrs, the results of the items it carried).
    `stored`: its inline chunks were stored already (CreateFiles), their lengths by id."""
    name = bytes(request.name)
    if len(name) > NAME_MAX:
        raise InvalidArgument(f"name is {len(name)} bytes; the limit is {NAME_MAX}")
    before = _items(request.items)
    if any(len(b) == 2 for b in before):
        # unlinks free space, a create may not take the reserve: they go in an UnlinkBatch
        raise InvalidArgument("CreateFile carries attribute changes only (every item sets "
                              "`setattr`); unlinks go in an UnlinkBatch")

    def run() -> Any:
        # One transaction: the number used up (delegated_inos.py), the create, its folded
        # attributes and its first commit; the request log records the attrs after them, so
        # a retry of a call that committed is answered from the log and runs nothing.
        commit = None
        if request.HasField("commit"):
            commit = fs._commit_args(tree, request.commit, stored)  # inline chunks stored first
        attrs = _attrs(request.setattr) if request.HasField("setattr") else None
        with fs.leases.change(tree, [request.parent, request.ino, *(b[1] for b in before)],
                              sess, Deadline.of_call(context)):
            out = fs.meta.create_at(tree, request.parent, name, request.ino, request.mode,
                                    request.uid, request.gid, attrs=attrs, commit=commit,
                                    durable=request.HasField("commit") and request.commit.durable,
                                    before=before)
        fs.b.events.entry(tree, CREATED, request.parent, name, request.ino,
                          stat.S_ISDIR(request.mode))
        _item_events(fs, tree, request.parent, before, out[1:])
        return out
    results = fs.b.request_log.once("CreateFile", tree.namespace, request.request_id, run,
                                    UNLINK_RESULTS, retry=is_retry(context))
    return results[0][1], results[1:]


def _item_events(fs: Any, tree: Any, parent: int, items: list[tuple[Any, ...]],
                 results: list[tuple[int, Any]]) -> None:
    """Watchers' events of the items that applied: an unlink REMOVED, a setattr CHANGED."""
    if not fs.b.events.watching(tree):
        return
    for item, (code, a) in zip(items, results, strict=True):
        if code == 0 and a is not None:
            fs.b.events.entry(tree, CHANGED if len(item) > 2 else REMOVED, parent, item[0],
                              a.ino, stat.S_ISDIR(a.mode))


def _items(pb_items: Any) -> list[tuple[Any, ...]]:
    """UnlinkItems checked: (name, ino) an unlink, (name, ino, setattr kwargs) a change."""
    if len(pb_items) > BATCH_MAX:
        raise InvalidArgument(f"a call carries {len(pb_items)} items; the limit is "
                              f"{BATCH_MAX}")
    items: list[tuple[Any, ...]] = []
    for it in pb_items:
        if not it.ino:
            raise InvalidArgument("every UnlinkBatch item names the inode it unlinks or "
                                  "changes (ino)")
        if len(it.name) > NAME_MAX:
            raise InvalidArgument(f"a name is {len(it.name)} bytes; the limit is {NAME_MAX}")
        items.append((bytes(it.name), it.ino, _attrs(it.setattr)) if it.HasField("setattr")
                     else (bytes(it.name), it.ino))
    return items


def _results(reply: Any, results: list[tuple[int, Any]]) -> None:
    for code, a in results:
        r = reply.results.add(errno=code)
        if a is not None:
            r.attr.CopyFrom(attr_to_pb(a))


def unlink_batch(fs: Any, request: Any, context: grpc.ServicerContext) -> Any:
    tree = fs.b.tree(context)
    sess = fs._session(context, tree)
    items = _items(request.items)
    known = [request.parent, *(it[1] for it in items)]
    if all(len(it) > 2 for it in items):
        # attribute changes alone free no space: they may not take the disk-full reserve
        # (space_reserve.py), which is kept for the removals that make room
        FREES_SPACE.set(False)

    def run() -> list[tuple[int, Any]]:
        with fs.leases.change(tree, known, sess, Deadline.of_call(context)):
            out = list(fs.meta.unlink_many(tree, request.parent, items,
                                           forget=request.forget))
        _item_events(fs, tree, request.parent, items, out)
        return out
    results = fs.b.request_log.once("UnlinkBatch", tree.namespace, request.request_id, run,
                                    UNLINK_RESULTS, retry=is_retry(context))
    # a batch is often a recall's flush: granting again here would hand the lease back while
    # the recalling call still waits for the ack
    excl_after(fs, context, tree, sess, request.parent, grant=False)
    reply = filesystem_pb2.UnlinkBatchReply()
    _results(reply, results)
    pa = fs._attr_or_none(tree, request.parent)
    if pa is not None:
        reply.parent_attr.CopyFrom(pa)
    return reply
