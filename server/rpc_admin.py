"""The Admin service: Format, Introspect, ListNamespaces, Fsck, GC.

Interface:
    AdminServicer(backend: rpc_filesystem.Backend)
    FEATURES                      what Introspect advertises
    GC_GRACE_DEFAULT = 3600       (from maintenance) seconds a chunk / orphan inode must have been
                                  unreferenced

Scope: the interceptor checks the namespace named in call metadata; Admin calls that act on
other namespaces (Format of a named namespace, Introspect, ListNamespaces, Fsck, GC) are limited
here to the namespaces the caller's token allows (a "*" token sees them all).

Fsck and GC are maintenance.fsck / maintenance.gc over the allowed namespaces, stopped a
little before the call's deadline (deadline.Deadline.of_call) so the reply still reaches the
client: an fsck cut short says so in its problems (ok false); a GC cut short is TimedOut
(DEADLINE_EXCEEDED) saying what it did.
"""

from __future__ import annotations

import json
from importlib import metadata as importlib_metadata
from typing import Any

import grpc

from aifs_core.errors import AIFSError, InvalidArgument, NotFound, PermissionDenied, TimedOut
from aifs_core.types import Namespace, TreeRef
from aifs_proto.v1 import admin_pb2, admin_pb2_grpc
from aifs_server import maintenance
from aifs_server.auth import call_scope, current_grant
from aifs_server.deadline import MAX_CALL_SECONDS, Deadline
from aifs_server.grpc_errors import rpc
from aifs_server.maintenance import GC_GRACE_DEFAULT
from aifs_server.rpc_filesystem import Backend

FEATURES = ["zstd-wire", "frames", "macaroons", "keyed-chunk-names", "health", "reflection",
            "metrics", "file-info"]
_SECRET_WORDS = ("key", "secret", "token", "password")


def _version() -> str:
    try:
        return importlib_metadata.version("aifs-fs")
    except importlib_metadata.PackageNotFoundError:  # pragma: no cover - not installed
        return "0+unknown"


def _work_deadline(context: grpc.ServicerContext) -> Deadline:
    """The call's deadline less a margin (a tenth of it, at most a second) for the reply.
    An admin's own deadline is honoured however long (a big store's GC may need it); a call
    without one gets MAX_CALL_SECONDS."""
    given = context.time_remaining()
    left = MAX_CALL_SECONDS if given is None else max(0.0, float(given))
    return Deadline.after(left - min(1.0, left / 10))


def _redact(obj: Any) -> Any:
    """Config without secrets: values of keys that look secret are dropped (file names kept)."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if any(w in str(k).lower() for w in _SECRET_WORDS) and not isinstance(v, str | dict):
                continue
            if isinstance(v, bytes | bytearray):
                continue
            out[k] = _redact(v)
        return out
    if isinstance(obj, list):
        return [_redact(v) for v in obj]
    return obj


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(self, backend: Backend) -> None:
        self.b = backend
        self.meta = backend.meta

    # --- helpers ---------------------------------------------------------------------------
    def _allowed(self) -> list[Namespace]:
        grant = current_grant()
        return [ns for ns in self.meta.list_namespaces()
                if grant is None or grant.allows_namespace(ns.name)]

    def _info(self, ns: Namespace) -> Any:
        cs = self.meta.chunk_stats(ns.name)
        return admin_pb2.NamespaceInfo(
            name=ns.name, chunk_size=ns.chunk_size, zstd_level=ns.zstd_level,
            kms_key_id=ns.kms_key_id, stored_bytes=cs.stored_bytes, logical_bytes=cs.raw_bytes,
            chunk_count=cs.chunks)

    # --- RPCs ------------------------------------------------------------------------------
    @rpc
    def Format(self, request: Any, context: grpc.ServicerContext) -> Any:
        name = request.namespace or call_scope(context)[0]
        grant = current_grant()
        if grant is not None and not grant.allows_namespace(name):
            raise PermissionDenied(f"token does not allow admin on namespace {name}")
        cfg = self.b.datadir.config
        chunk_size = request.chunk_size or int(cfg.get("chunk_size", 1 << 20))
        level = request.zstd_level or int(cfg.get("zstd_level", 1))
        try:
            existing: Namespace | None = self.meta.get_namespace(name)
        except NotFound:
            existing = None
        if existing is not None:
            note = ""
            if (request.chunk_size and request.chunk_size != existing.chunk_size) or (
                    request.zstd_level and request.zstd_level != existing.zstd_level):
                note = (f" (its policy is fixed at format: chunk size {existing.chunk_size}, "
                        f"zstd level {existing.zstd_level}; the requested values were ignored)")
            if not request.dry_run:
                self.meta.ensure_tree(TreeRef(name, "main"))
            return admin_pb2.FormatReply(
                created=False, message=f"namespace {name!r} already exists; nothing was "
                                       f"changed{note}",
                namespace=self._info(existing))
        # validate with the data dir's own rules before touching anything
        from aifs_core.codec import validate_level
        from aifs_server import datadir as dd
        try:
            dd.validate_namespace_name(name)
            dd.validate_chunk_size(chunk_size)
            validate_level(level)
        except AIFSError:
            raise
        except ValueError as e:
            raise InvalidArgument(str(e)) from None
        if request.dry_run:
            return admin_pb2.FormatReply(
                created=False,
                message=f"dry run: would create namespace {name!r} (chunk size {chunk_size}, "
                        f"zstd level {level}) and its 'main' tree; nothing was written",
                namespace=admin_pb2.NamespaceInfo(name=name, chunk_size=chunk_size,
                                                  zstd_level=level))
        ns = self.b.datadir.ensure_namespace(name, chunk_size, level)
        self.b.forget_namespace(name)
        return admin_pb2.FormatReply(
            created=True, message=f"created namespace {name!r} (chunk size {ns.chunk_size}, "
                                  f"zstd level {ns.zstd_level}) and its 'main' tree",
            namespace=self._info(ns))

    @rpc
    def Introspect(self, request: Any, context: grpc.ServicerContext) -> Any:
        cfg = _redact(dict(self.b.datadir.config))
        return admin_pb2.IntrospectReply(
            version=_version(), features=FEATURES,
            config_json=json.dumps(cfg, sort_keys=True, default=str),
            namespaces=[self._info(ns) for ns in self._allowed()])

    @rpc
    def ListNamespaces(self, request: Any, context: grpc.ServicerContext) -> Any:
        return admin_pb2.ListNamespacesReply(namespaces=[self._info(ns)
                                                         for ns in self._allowed()])

    @rpc
    def Fsck(self, request: Any, context: grpc.ServicerContext) -> Any:
        r = maintenance.fsck(self.b, [ns.name for ns in self._allowed()],
                             read_data=request.read_data, deadline=_work_deadline(context))
        return admin_pb2.FsckReply(ok=r.ok, problems=r.problems, chunks_checked=r.chunks_checked,
                                   files_checked=r.files_checked)

    @rpc
    def GC(self, request: Any, context: grpc.ServicerContext) -> Any:
        # an explicit 0 is a grace of 0 (free space now); only an unset field is the default
        grace = (request.grace_seconds if request.HasField("grace_seconds")
                 else GC_GRACE_DEFAULT)
        r = maintenance.gc(self.b, [ns.name for ns in self._allowed()], grace_seconds=grace,
                           dry_run=request.dry_run, deadline=_work_deadline(context))
        if not r.complete:  # the reply has no field for "partly done": say it in the error
            raise TimedOut(
                f"GC stopped at the call's deadline after "
                f"{'counting' if request.dry_run else 'deleting'} {r.chunks_deleted} chunks "
                f"({r.bytes_freed} bytes) and {r.orphans_deleted} orphan inodes; run it again "
                f"with a longer --timeout, or offline with `aifs gc --data DIR`")
        return admin_pb2.GCReply(chunks_deleted=r.chunks_deleted, bytes_freed=r.bytes_freed,
                                 orphans_deleted=r.orphans_deleted,
                                 temp_files_deleted=r.temp_files_deleted)
