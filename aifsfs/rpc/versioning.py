"""Client of the Versioning service: snapshots, branches, tags, diff, merge.

Interface:
    GrpcVersioning(channel)
        snapshot(branch="", message="") -> dict    (id, branch, parents, created_ns, message,
                                                    root_hash, signature, tree_branch, uri, tags)
        get_snapshot(ref) / list_snapshots(branch="") / verify(ref) -> dict(ok, problems, nodes)
        prune(keep_last=0, keep_daily=0, keep_within_seconds=0, dry_run=False, branch="")
        create_branch(name, source="") / list_branches() / delete_branch(name) /
        reset_branch(name, ref) / branch_log(name)
        create_tag(name, ref) / list_tags() / delete_tag(name)
        diff(a, b) -> dict(added, removed, changed, nodes_visited)
        merge(source, into, message="", dry_run=False) -> dict(merged, conflicts, snapshot, ...)
        list_tree(ref, ino=1) -> the ListTreeReply message; signing_key() -> 32 raw bytes
        verify_signature(info, public_key) -> bool   (FORMAT.md §6.2, checked on this side)
        pinned_key() -> bytes            the server's key, checked against the pin of (address,
                                         namespace) (aifsfs.keypin; KeyMismatch if it changed)
        get_verified(ref) -> dict        get_snapshot + its signature checked against the pinned
                                         key; BadSignature (an AIFSError) if it does not verify
        .branch                          the branch of this client's channel
        tree_fs(tree_branch) -> GrpcFilesystem   Filesystem calls on another tree (a snapshot's
                                         "@snap:<id>") over this same connection
        in_namespace(ns) -> GrpcVersioning       the same connection and token, namespace `ns`
        open(uri) -> SnapshotFile        aifs-snap://NS/ID/path (ID: a snapshot id or a tag):
                                         a read-only, seekable file read by ranges, after the
                                         signature, every directory on the path and the chunk
                                         map are checked against the signed root. Errors:
                                         InvalidArgument (malformed URI, a symlink), NotFound,
                                         IsADirectory, NotADirectory, BadSignature, and the
                                         server's PermissionDenied for another namespace
    listing_problem(reply, expect) -> (name, problem)   ("", "") when a ListTree reply hashes
                                         to `expect` and each non-directory entry's hash
                                         matches its attributes
A ref is a snapshot id, "tag:NAME", "branch:NAME", a bare tag or branch name, or an
aifs-snap:// URI. The one-transaction changes (snapshot, create/delete/reset branch, create/delete
tag) carry a request id (filesystem.new_request_id) that their retries resend: the server runs
each once. Merge and prune carry none (they span several transactions): a retry after a lost
reply runs them again.
"""

from __future__ import annotations

import copy
import re
import stat
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aifs_core import merkle
from aifs_core.errors import AIFSError, InvalidArgument, IsADirectory, NotADirectory, NotFound
from aifs_core.types import ROOT_INO
from aifs_proto.v1 import common_pb2, versioning_pb2, versioning_pb2_grpc

from ..keypin import check_pinned
from .channel import Channel
from .data import GrpcData
from .filesystem import GrpcFilesystem, call_once, new_request_id
from .snapshot_file import SnapshotFile, SnapshotRaw

pb = versioning_pb2
_SNAP_ID = re.compile(r"[0-9a-fA-F]{32}")


class BadSignature(AIFSError):
    reason = "BAD_SIGNATURE"


def snapshot_dict(s: Any) -> dict[str, Any]:
    return {"id": s.id, "namespace": s.namespace, "branch": s.branch,
            "parents": list(s.parents), "created_ns": s.created_ns, "message": s.message,
            "root_hash": bytes(s.root_hash), "signature": bytes(s.signature),
            "tree_branch": s.tree_branch, "uri": s.uri, "tags": list(s.tags)}


def verify_signature(info: dict[str, Any], public_key: bytes) -> bool:
    """Does `info`'s signature verify over its statement with `public_key` (raw Ed25519)?"""
    stmt = merkle.statement(bytes.fromhex(info["id"]), info["namespace"], info["branch"],
                            info["created_ns"], info["root_hash"],
                            [bytes.fromhex(p) for p in info["parents"]], info["message"])
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(info["signature"], stmt)
    except (InvalidSignature, ValueError):
        return False
    return True


def listing_problem(r: Any, expect: bytes) -> tuple[str, str]:
    """What is wrong with ListTree reply `r` of a directory whose node hash must be `expect`
    (FORMAT.md §6.3): its hash recomputed from the listing, and each file's, symlink's and
    special file's hash recomputed from its listed attributes. (entry name or "" for the
    directory itself, problem); ("", "") when nothing is."""
    a = r.attr
    own = merkle.node_hash(a.mode, a.uid, a.gid, 0,
                           merkle.dir_body((bytes(e.name), bytes(e.hash)) for e in r.entries),
                           dict(zip(r.xattr_names, r.xattr_values, strict=True)))
    if own != expect:
        return "", (f"the directory's hash {own.hex()[:16]} does not match "
                    f"{expect.hex()[:16]} (the metadata was altered)")
    for e in r.entries:
        m = e.attr.mode
        if stat.S_ISDIR(m):
            continue  # checked when it is listed
        body: bytes | int = (bytes(e.content_hash) if stat.S_ISREG(m) else
                             bytes(e.symlink) if stat.S_ISLNK(m) else e.attr.rdev)
        h = merkle.node_hash(m, e.attr.uid, e.attr.gid, e.attr.size, body,
                             dict(zip(e.xattr_names, e.xattr_values, strict=True)))
        if h != bytes(e.hash):
            return (bytes(e.name).decode(errors="replace"),
                    "its hash does not match its attributes (the metadata was altered)")
    return "", ""


class GrpcVersioning:
    """The Versioning service's calls (thread-safe)."""

    def __init__(self, channel: Channel) -> None:
        self._ch = channel
        self._v = versioning_pb2_grpc.VersioningStub(channel.grpc)
        self._pinned: bytes | None = None
        self._scoped: dict[str, GrpcVersioning] = {}

    def _call(self, method: str, request: Any, idempotent: bool = True) -> Any:
        return self._ch.unary(getattr(self._v, method), request, idempotent=idempotent,
                              timeout=max(self._ch.timeout, 120.0))

    def _call_once(self, method: str, request: Any) -> Any:
        """A change whose request carries a request id (filesystem.call_once)."""
        return call_once(self._ch, getattr(self._v, method), request,
                         timeout=max(self._ch.timeout, 120.0))

    def snapshot(self, branch: str = "", message: str = "") -> dict[str, Any]:
        return snapshot_dict(self._call_once("CreateSnapshot", pb.CreateSnapshotRequest(
            branch=branch, message=message, request_id=new_request_id())))

    def get_snapshot(self, ref: str) -> dict[str, Any]:
        return snapshot_dict(self._call("GetSnapshot", pb.RefRequest(ref=ref)))

    def list_snapshots(self, branch: str = "") -> list[dict[str, Any]]:
        r = self._call("ListSnapshots", pb.ListSnapshotsRequest(branch=branch))
        return [snapshot_dict(s) for s in r.snapshots]

    def verify(self, ref: str) -> dict[str, Any]:
        r = self._call("VerifySnapshot", pb.RefRequest(ref=ref))
        return {"ok": r.ok, "problems": list(r.problems), "nodes_checked": r.nodes_checked}

    def prune(self, keep_last: int = 0, keep_daily: int = 0, keep_within_seconds: int = 0,
              dry_run: bool = False, branch: str = "") -> dict[str, list[str]]:
        r = self._call("PruneSnapshots", pb.PruneRequest(
            keep_last=keep_last, keep_daily=keep_daily, keep_within_seconds=keep_within_seconds,
            dry_run=dry_run, branch=branch), idempotent=dry_run)
        return {"removed": list(r.removed), "kept": list(r.kept)}

    def create_branch(self, name: str, source: str = "") -> dict[str, Any]:
        req = pb.CreateBranchRequest(name=name, request_id=new_request_id())
        setattr(req, "from", source)  # `from` is a Python keyword
        r = self._call_once("CreateBranch", req)
        return {"name": r.name, "head": r.head, "created_ns": r.created_ns}

    def list_branches(self) -> list[dict[str, Any]]:
        r = self._call("ListBranches", common_pb2.Empty())
        return [{"name": b.name, "head": b.head, "created_ns": b.created_ns} for b in r.branches]

    def delete_branch(self, name: str) -> None:
        self._call_once("DeleteBranch", pb.VersionNameRequest(name=name,
                                                         request_id=new_request_id()))

    def reset_branch(self, name: str, ref: str) -> dict[str, Any]:
        r = self._call_once("MoveBranch", pb.MoveBranchRequest(name=name, to=ref,
                                                               request_id=new_request_id()))
        return {"name": r.name, "head": r.head, "created_ns": r.created_ns}

    def branch_log(self, name: str) -> list[dict[str, Any]]:
        r = self._call("BranchLog", pb.VersionNameRequest(name=name))
        return [{"seq": e.seq, "action": e.action, "snapshot": e.snapshot, "at_ns": e.at_ns}
                for e in r.entries]

    def create_tag(self, name: str, ref: str) -> dict[str, Any]:
        r = self._call_once("CreateTag", pb.CreateTagRequest(name=name, snapshot=ref,
                                                             request_id=new_request_id()))
        return {"name": r.name, "snapshot": r.snapshot, "created_ns": r.created_ns}

    def list_tags(self) -> list[dict[str, Any]]:
        r = self._call("ListTags", common_pb2.Empty())
        return [{"name": t.name, "snapshot": t.snapshot, "created_ns": t.created_ns}
                for t in r.tags]

    def delete_tag(self, name: str) -> None:
        self._call_once("DeleteTag", pb.VersionNameRequest(name=name,
                                                         request_id=new_request_id()))

    def diff(self, a: str, b: str) -> dict[str, Any]:
        r = self._call("Diff", pb.DiffRequest(a=a, b=b))
        return {"added": list(r.added), "removed": list(r.removed), "changed": list(r.changed),
                "nodes_visited": r.nodes_visited}

    def merge(self, source: str, into: str, message: str = "", dry_run: bool = False
              ) -> dict[str, Any]:
        r = self._call("Merge", pb.MergeRequest(source=source, into=into, message=message,
                                                dry_run=dry_run), idempotent=False)
        return {"merged": r.merged, "conflicts": list(r.conflicts), "snapshot": r.snapshot,
                "base": r.base, "applied": list(r.applied)}

    def list_tree(self, ref: str, ino: int = 1) -> Any:
        return self._call("ListTree", pb.ListTreeRequest(snapshot=ref, ino=ino))

    def signing_key(self) -> bytes:
        return bytes(self._call("SigningKey", common_pb2.Empty()).public_key)

    @property
    def branch(self) -> str:
        return self._ch.branch

    def pinned_key(self) -> bytes:
        if self._pinned is None:
            self._pinned = check_pinned(self._ch.address, self._ch.namespace, self.signing_key())
        return self._pinned

    def get_verified(self, ref: str) -> dict[str, Any]:
        info = self.get_snapshot(ref)
        if not verify_signature(info, self.pinned_key()):
            raise BadSignature(f"snapshot {info['id']} ({ref}): the signature does not verify "
                               f"with the pinned key of namespace {self._ch.namespace!r}")
        return info

    def tree_fs(self, tree_branch: str) -> GrpcFilesystem:
        # a shallow copy shares the gRPC connection, token and failover state; only the branch
        # sent in each call's metadata differs (a channel is one namespace and branch)
        ch = copy.copy(self._ch)
        ch.branch = tree_branch
        return GrpcFilesystem(ch)

    def in_namespace(self, namespace: str) -> GrpcVersioning:
        if namespace == self._ch.namespace:
            return self
        v = self._scoped.get(namespace)
        if v is None:   # kept: its key pin is checked once
            ch = copy.copy(self._ch)   # the connection and token are shared; the server
            ch.namespace, ch.branch = namespace, "main"   # checks the token's namespace
            v = self._scoped[namespace] = GrpcVersioning(ch)
        return v

    def open(self, uri: str) -> SnapshotFile:
        """A file of a snapshot, verified from the signed root down (see the module doc)."""
        try:
            ns, ref, path = merkle.parse_snap_uri(uri)
        except ValueError as e:
            raise InvalidArgument(str(e)) from None
        parts = [p for p in path.split("/") if p]
        if not parts:
            raise IsADirectory(f"{uri} is the snapshot's root directory: add a file's path "
                               f"({merkle.SNAP_SCHEME}NS/ID/path/in/tree)")
        if any(p in (".", "..") for p in parts):
            raise InvalidArgument(f"{uri}: '.' and '..' are not allowed in a snapshot path")
        v = self.in_namespace(ns)
        # an id, or a tag (a citation never moves; a branch head would, so it is not taken)
        info = v.get_verified(ref.lower() if _SNAP_ID.fullmatch(ref) else f"tag:{ref}")
        ino, expect, walked = ROOT_INO, bytes(info["root_hash"]), ""
        entry: Any = None
        for i, name in enumerate(parts):
            r = v.list_tree(info["id"], ino)
            bad, problem = listing_problem(r, expect)
            if problem:
                raise BadSignature(f"{uri}: snapshot {info['id']}: {walked}/{bad}: {problem}")
            entry = next((e for e in r.entries if bytes(e.name) == name.encode()), None)
            walked += "/" + name
            if entry is None:
                raise NotFound(f"{uri}: {walked} does not exist in snapshot {info['id']}")
            mode = entry.attr.mode
            if stat.S_ISLNK(mode):
                raise InvalidArgument(f"{uri}: {walked} is a symbolic link (to "
                                      f"{bytes(entry.symlink).decode(errors='replace')!r}); "
                                      "open the path it names")
            if i < len(parts) - 1 and not stat.S_ISDIR(mode):
                raise NotADirectory(f"{uri}: {walked} is not a directory")
            ino, expect = int(entry.attr.ino), bytes(entry.hash)
        if stat.S_ISDIR(entry.attr.mode):
            raise IsADirectory(f"{uri}: {walked} is a directory in snapshot {info['id']}")
        if not stat.S_ISREG(entry.attr.mode):
            raise InvalidArgument(f"{uri}: {walked} is not a regular file")
        size = int(entry.attr.size)
        _, chunk_size, refs = v.tree_fs(info["tree_branch"]).get_chunk_map(ino)
        if merkle.content_hash(size, [(c.index, c.chunk_id, c.length) for c in refs]) != \
                bytes(entry.content_hash):
            raise BadSignature(f"{uri}: snapshot {info['id']}: {walked}: its chunk map does "
                               "not give its content hash (the metadata was altered)")
        raw = SnapshotRaw(GrpcData(v._ch), merkle.snap_uri(ns, info["id"], walked), size,
                          chunk_size or (1 << 20), {c.index: c for c in refs}, info)
        return SnapshotFile(raw)
