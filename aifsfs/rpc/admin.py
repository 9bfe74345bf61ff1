"""Client of the Admin service (and the standard health check).

Interface:
    GrpcAdmin(channel)
        health(service="") -> "SERVING" | "NOT_SERVING" | ...
        format(namespace=None, chunk_size=0, zstd_level=0, dry_run=False) -> dict
        introspect() -> dict(version, features, config, namespaces)
        list_namespaces() -> [dict]; fsck(read_data=False) -> dict; gc(dry_run=False,
        grace_seconds=None) -> dict   (None: the server's default grace; 0 means 0)
"""

from __future__ import annotations

import json
from typing import Any

from aifs_core.wire import namespace_from_pb
from aifs_proto.v1 import admin_pb2, admin_pb2_grpc, common_pb2

from .channel import Channel


class GrpcAdmin:
    """The Admin service's calls (thread-safe)."""

    def __init__(self, channel: Channel) -> None:
        self._ch = channel
        self._admin = admin_pb2_grpc.AdminStub(channel.grpc)

    def health(self, service: str = "") -> str:
        """Status name of grpc.health.v1 Check: SERVING, NOT_SERVING, SERVICE_UNKNOWN..."""
        return self._ch.health(service)

    def format(self, namespace: str | None = None, chunk_size: int = 0, zstd_level: int = 0,
               dry_run: bool = False) -> dict[str, Any]:
        reply = self._ch.unary(self._admin.Format, admin_pb2.FormatRequest(
            namespace=namespace or self._ch.namespace, chunk_size=chunk_size,
            zstd_level=zstd_level, dry_run=dry_run), idempotent=True)
        return {"created": reply.created, "message": reply.message,
                "namespace": namespace_from_pb(reply.namespace),
                "root_snapshot_id": reply.root_snapshot_id}

    def introspect(self) -> dict[str, Any]:
        reply = self._ch.unary(self._admin.Introspect, common_pb2.Empty())
        try:
            config = json.loads(reply.config_json) if reply.config_json else {}
        except ValueError:
            config = {"_raw": reply.config_json}
        return {"version": reply.version, "features": list(reply.features), "config": config,
                "namespaces": [namespace_from_pb(n) for n in reply.namespaces]}

    def list_namespaces(self) -> list[dict[str, Any]]:
        reply = self._ch.unary(self._admin.ListNamespaces, common_pb2.Empty())
        return [namespace_from_pb(n) for n in reply.namespaces]

    def fsck(self, read_data: bool = False, timeout: float | None = None) -> dict[str, Any]:
        reply = self._ch.unary(self._admin.Fsck, admin_pb2.FsckRequest(read_data=read_data),
                            timeout=timeout or max(self._ch.timeout, 600.0))
        return {"ok": reply.ok, "problems": list(reply.problems),
                "chunks_checked": reply.chunks_checked, "files_checked": reply.files_checked}

    def gc(self, dry_run: bool = False, grace_seconds: int | None = None,
           timeout: float | None = None) -> dict[str, Any]:
        # None leaves the field unset (the server's default grace); 0 means 0
        reply = self._ch.unary(self._admin.GC, admin_pb2.GCRequest(
            dry_run=dry_run, grace_seconds=grace_seconds),
            idempotent=False, timeout=timeout or max(self._ch.timeout, 600.0))
        return {"chunks_deleted": reply.chunks_deleted, "bytes_freed": reply.bytes_freed,
                "orphans_deleted": reply.orphans_deleted,
                "temp_files_deleted": reply.temp_files_deleted}
