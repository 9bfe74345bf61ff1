"""The Versioning service: thin servicer over aifs_server.versions.Versions.

Interface:
    VersioningServicer(backend: rpc_filesystem.Backend)   builds Versions over backend.meta and
                                                          the data dir's signing key
The namespace comes from call metadata (the interceptor checked it); walks stop at the call's
deadline (deadline.Deadline.of_call). The one-transaction changes (CreateSnapshot, CreateBranch,
DeleteBranch, MoveBranch, CreateTag, DeleteTag) run at most once per request id
(request_log.py): versions.py records its result in the change's transaction, encoded here as
the reply message. Merge and PruneSnapshots span several transactions and carry no id.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from aifs_core.types import TreeRef
from aifs_core.wire import attr_to_pb
from aifs_proto.v1 import common_pb2, versioning_pb2, versioning_pb2_grpc
from aifs_server.auth import call_scope
from aifs_server.deadline import Deadline
from aifs_server.grpc_errors import rpc
from aifs_server.request_log import EMPTY, Codec, is_retry
from aifs_server.rpc_filesystem import Backend
from aifs_server.versions import Snapshot, Versions

pb = versioning_pb2


def _info(s: Snapshot, tags: list[str] | None = None) -> Any:
    return pb.SnapshotInfo(id=s.id, branch=s.branch, parents=list(s.parents),
                           created_ns=s.created_ns, message=s.message, root_hash=s.root,
                           signature=s.signature, tree_branch=s.tree.branch, uri=s.uri,
                           namespace=s.namespace, tags=tags or [])


def _branch_info(r: tuple[str, str, int]) -> Any:
    return pb.BranchInfo(name=r[0], head=r[1], created_ns=r[2])


def _tag_info(r: tuple[str, str, int]) -> Any:
    return pb.TagInfo(name=r[0], snapshot=r[1], created_ns=r[2])


# what versions.py records (its result) -> the reply's bytes; and back to the reply message
_SNAPSHOT = Codec(lambda s: _info(s).SerializeToString(), pb.SnapshotInfo.FromString)
_BRANCH = Codec(lambda r: _branch_info(r).SerializeToString(), pb.BranchInfo.FromString)
_TAG = Codec(lambda r: _tag_info(r).SerializeToString(), pb.TagInfo.FromString)


def _xattrs(d: dict[bytes, bytes]) -> dict[str, list[bytes]]:
    names = sorted(d)
    return {"xattr_names": names, "xattr_values": [d[n] for n in names]}


class VersioningServicer(versioning_pb2_grpc.VersioningServicer):
    def __init__(self, backend: Backend) -> None:
        self.b = backend
        self.v = Versions(backend.meta, backend.datadir.signing_key)

    def _ns(self, context: grpc.ServicerContext) -> str:
        ns, _ = call_scope(context)
        self.b.namespace(ns)
        return ns

    def _once(self, method: str, context: grpc.ServicerContext, ns: str, request: Any, run: Any,
              codec: Codec[Any]) -> Any:
        """run() -> the reply, at most once per request id (request_log.py)."""
        return self.b.request_log.once(method, ns, request.request_id, run, codec,
                                       retry=is_retry(context))

    @rpc
    def CreateSnapshot(self, request: Any, context: grpc.ServicerContext) -> Any:
        ns, branch = call_scope(context)
        self.b.namespace(ns)
        def run() -> Any:
            # a mount's changes answered under an exclusive directory lease (unlinks queued,
            # files created and not sent) reach the server before the snapshot reads the tree
            self.b.leases.read_excl_tree(TreeRef(ns, request.branch or branch),
                                         Deadline.of_call(context))
            return _info(self.v.create_snapshot(ns, request.branch or branch, request.message,
                                                deadline=Deadline.of_call(context)))
        return self._once("CreateSnapshot", context, ns, request, run, _SNAPSHOT)

    @rpc
    def GetSnapshot(self, request: Any, context: grpc.ServicerContext) -> Any:
        ns = self._ns(context)
        s = self.v.resolve(ns, request.ref)
        return _info(s, self.v.tags_of(ns).get(s.id))

    @rpc
    def ListSnapshots(self, request: Any, context: grpc.ServicerContext) -> Any:
        ns = self._ns(context)
        tags = self.v.tags_of(ns)
        return pb.SnapshotList(snapshots=[_info(s, tags.get(s.id))
                                          for s in self.v.list_snapshots(ns, request.branch)])

    @rpc
    def VerifySnapshot(self, request: Any, context: grpc.ServicerContext) -> Any:
        ns = self._ns(context)
        ok, problems, n = self.v.verify(ns, request.ref, Deadline.of_call(context))
        return pb.VerifySnapshotReply(ok=ok, problems=problems, nodes_checked=n)

    @rpc
    def PruneSnapshots(self, request: Any, context: grpc.ServicerContext) -> Any:
        ns = self._ns(context)
        removed, kept = self.v.prune(ns, request.keep_last, request.keep_daily,
                                     request.keep_within_seconds, request.dry_run, request.branch)
        return pb.PruneReply(removed=removed, kept=kept)

    @rpc
    def CreateBranch(self, request: Any, context: grpc.ServicerContext) -> Any:
        ns = self._ns(context)
        source = getattr(request, "from")

        def run() -> Any:
            # a source that is a live tree is read now: its mounts' changes answered under an
            # exclusive lease reach it first (as for CreateSnapshot)
            self.b.leases.read_excl_tree(TreeRef(ns, source or "main"),
                                         Deadline.of_call(context))
            return _branch_info(self.v.create_branch(ns, request.name, source))
        return self._once("CreateBranch", context, ns, request, run, _BRANCH)

    @rpc
    def ListBranches(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.BranchList(branches=[pb.BranchInfo(name=n, head=h, created_ns=t)
                                       for n, h, t in self.v.list_branches(self._ns(context))])

    @contextmanager
    def _replacing(self, ns: str, branch: str, context: grpc.ServicerContext) -> Iterator[None]:
        """Mounts holding leases on the branch's tree must drop them before it changes; its
        watchers are told to list again after (no event per path: events.py, tree_changed)."""
        tree = TreeRef(ns, branch)
        with self.b.leases.tree_change(tree, Deadline.of_call(context)):
            yield
        self.b.events.tree_changed(tree)

    @rpc
    def DeleteBranch(self, request: Any, context: grpc.ServicerContext) -> Any:
        ns = self._ns(context)

        def run() -> Any:
            with self._replacing(ns, request.name, context):
                self.v.delete_branch(ns, request.name)
            return common_pb2.Empty()
        return self._once("DeleteBranch", context, ns, request, run, EMPTY)

    @rpc
    def MoveBranch(self, request: Any, context: grpc.ServicerContext) -> Any:
        ns = self._ns(context)

        def run() -> Any:
            with self._replacing(ns, request.name, context):
                return _branch_info(self.v.reset_branch(ns, request.name, request.to))
        return self._once("MoveBranch", context, ns, request, run, _BRANCH)

    @rpc
    def BranchLog(self, request: Any, context: grpc.ServicerContext) -> Any:
        log = self.v.branch_log(self._ns(context), request.name)
        return pb.BranchLogReply(entries=[pb.BranchLogEntry(seq=q, action=a, snapshot=s, at_ns=t)
                                          for q, a, s, t in log])

    @rpc
    def CreateTag(self, request: Any, context: grpc.ServicerContext) -> Any:
        ns = self._ns(context)
        return self._once("CreateTag", context, ns, request, lambda: _tag_info(
            self.v.create_tag(ns, request.name, request.snapshot)), _TAG)

    @rpc
    def ListTags(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.TagList(tags=[pb.TagInfo(name=n, snapshot=s, created_ns=t)
                                for n, s, t in self.v.list_tags(self._ns(context))])

    @rpc
    def DeleteTag(self, request: Any, context: grpc.ServicerContext) -> Any:
        ns = self._ns(context)

        def run() -> Any:
            self.v.delete_tag(ns, request.name)
            return common_pb2.Empty()
        return self._once("DeleteTag", context, ns, request, run, EMPTY)

    @rpc
    def Diff(self, request: Any, context: grpc.ServicerContext) -> Any:
        d = self.v.diff(self._ns(context), request.a, request.b, Deadline.of_call(context))
        return pb.DiffReply(added=d.added, removed=d.removed, changed=d.changed,
                            nodes_visited=d.visited)

    @rpc
    def Merge(self, request: Any, context: grpc.ServicerContext) -> Any:
        ns = self._ns(context)
        # the merge snapshots its source first: a branch's mounts' changes answered under an
        # exclusive lease reach it before (as for CreateSnapshot; `into` is recalled whole by
        # _replacing; a snapshot or tag as source has no leases: nothing to recall)
        self.b.leases.read_excl_tree(TreeRef(ns, request.source), Deadline.of_call(context))
        with self._replacing(ns, request.into, context):
            r = self.v.merge(ns, request.source, request.into, request.message,
                             request.dry_run, Deadline.of_call(context))
        return pb.MergeReply(merged=r.merged, conflicts=r.conflicts, snapshot=r.snapshot,
                             base=r.base, applied=r.applied)

    @rpc
    def ListTree(self, request: Any, context: grpc.ServicerContext) -> Any:
        ns = self._ns(context)
        attr, own, xattrs, entries = self.v.list_tree(ns, request.snapshot, request.ino or 1)
        ref = common_pb2.ChunkRef
        return pb.ListTreeReply(
            hash=own, attr=attr_to_pb(attr), **_xattrs(xattrs),
            chunk_size=self.b.namespace(ns).chunk_size,
            entries=[pb.TreeEntry(name=e.name, attr=attr_to_pb(e.attr), hash=e.hash,
                                  symlink=e.symlink, content_hash=e.content_hash,
                                  chunks=[ref(index=i, chunk_id=c, length=n)
                                          for i, c, n in e.chunks],
                                  **_xattrs(e.xattrs)) for e in entries])

    @rpc
    def SigningKey(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._ns(context)
        return pb.SigningKeyReply(public_key=self.v.public_key.public_bytes(
            Encoding.Raw, PublicFormat.Raw))


def register(backend: Backend, server: grpc.Server) -> None:
    """Add the Versioning service to a gRPC server (serve.build_server)."""
    versioning_pb2_grpc.add_VersioningServicer_to_server(VersioningServicer(backend), server)
