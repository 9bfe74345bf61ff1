"""Protobuf messages <-> the shared data types: the one place either side converts them.

Interface:
    attr_to_pb(Attr) -> common_pb2.Attr            attr_from_pb(pb) -> Attr
    attr_fields(Attr) -> dict                      the keywords of a common_pb2.Attr (a
                                                   message constructor's dict argument)
    opt_attr(msg, field) -> Attr | None            an optional Attr field of a reply
    chunkref_to_pb(ChunkRef | (index, id, length))  chunkref_from_pb(pb) -> ChunkRef
    parent_to_pb(id | ParentEdge | {"parent_id", ...})   parent_from_pb(pb) -> ParentEdge
    asset_info_to_pb(namespace, AssetRecord, chunk_size=0) -> assets_pb2.AssetInfo
        with a chunk_size also the chunk list (GetAsset only; listings stay small)
    asset_info_from_pb(pb) -> dict                 the SDK's plain-dict view of an asset
    namespace_from_pb(admin_pb2.NamespaceInfo) -> dict

A value that cannot be converted raises `InvalidArgument` naming it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aifs_core.errors import InvalidArgument
from aifs_core.merkle import SNAP_SCHEME
from aifs_core.types import AssetRecord, Attr, ChunkRef, ParentEdge
from aifs_proto.v1 import admin_pb2, assets_pb2, common_pb2


def attr_to_pb(a: Attr) -> common_pb2.Attr:
    return common_pb2.Attr(
        ino=a.ino, mode=a.mode, nlink=a.nlink, uid=a.uid, gid=a.gid, rdev=a.rdev, size=a.size,
        atime_ns=a.atime_ns, mtime_ns=a.mtime_ns, ctime_ns=a.ctime_ns, blocks=a.blocks,
        generation=a.generation)


def attr_fields(a: Attr) -> dict[str, int]:
    """The Attr as the keyword mapping a message constructor takes for a common_pb2.Attr
    (its own __dict__, not a copy: do not change it): upb converts a list of these in one
    call, where attr_to_pb per entry costs a Python call and twelve keywords each."""
    return a.__dict__


def attr_from_pb(a: common_pb2.Attr) -> Attr:
    # positional (in Attr's field order, _check_attr_fields): a listing converts one per
    # entry, and twelve keywords cost more than reading the twelve fields
    return Attr(a.ino, a.mode, a.nlink, a.uid, a.gid, a.rdev, a.size, a.atime_ns, a.mtime_ns,
                a.ctime_ns, a.blocks, a.generation)


def _check_attr_fields() -> None:
    """attr_fields hands an Attr's __dict__ to protobuf as it is: every field of the one must
    be a field of the other (a field added to one side only would fail every listing)."""
    ours = list(Attr.__dataclass_fields__)
    theirs = [f.name for f in common_pb2.Attr.DESCRIPTOR.fields]
    if ours != theirs:
        raise ImportError(f"aifs_core.types.Attr fields {ours} != common.proto Attr {theirs}")


_check_attr_fields()


def opt_attr(msg: Any, name: str) -> Attr | None:
    return attr_from_pb(getattr(msg, name)) if msg.HasField(name) else None


def chunkref_to_pb(c: ChunkRef | tuple[int, bytes, int]) -> common_pb2.ChunkRef:
    if isinstance(c, ChunkRef):
        return common_pb2.ChunkRef(index=c.index, chunk_id=c.chunk_id, length=c.length)
    index, chunk_id, length = c
    return common_pb2.ChunkRef(index=index, chunk_id=chunk_id, length=length)


def chunkref_from_pb(c: common_pb2.ChunkRef) -> ChunkRef:
    return ChunkRef(index=c.index, chunk_id=bytes(c.chunk_id), length=c.length)


def parent_to_pb(p: str | ParentEdge | Mapping[str, Any]) -> common_pb2.ParentEdge:
    if isinstance(p, str):
        return common_pb2.ParentEdge(parent_id=p)
    if isinstance(p, ParentEdge):
        return common_pb2.ParentEdge(parent_id=p.parent_id, transform=p.transform,
                                     transform_digest=p.transform_digest)
    if isinstance(p, Mapping) and "parent_id" in p:
        return common_pb2.ParentEdge(parent_id=str(p["parent_id"]),
                                     transform=str(p.get("transform", "")),
                                     transform_digest=str(p.get("transform_digest", "")))
    raise InvalidArgument(
        f"parent {p!r} must be an asset id, a ParentEdge or a dict with parent_id")


def parent_from_pb(p: common_pb2.ParentEdge) -> ParentEdge:
    return ParentEdge(p.parent_id, p.transform, p.transform_digest)


def asset_info_to_pb(namespace: str, rec: AssetRecord, chunk_size: int = 0
                     ) -> assets_pb2.AssetInfo:
    chunks = [chunkref_to_pb(c) for c in rec.chunks] if chunk_size else []
    return assets_pb2.AssetInfo(
        chunk_size=chunk_size, chunks=chunks,
        asset_id=rec.asset_id, kind=rec.kind, size=rec.size, stored_bytes=rec.stored_bytes,
        metadata_json=rec.metadata_json or "{}",
        parents=[parent_to_pb(p) for p in rec.parents],
        uri=(rec.asset_id if rec.asset_id.startswith(SNAP_SCHEME)   # a snapshot in a lineage
             else f"aifs://{namespace}/{rec.asset_id}"), created_ns=rec.created_ns,
        chunk_count=len(rec.chunks))


def asset_info_from_pb(info: assets_pb2.AssetInfo) -> dict[str, Any]:
    try:
        metadata = json.loads(info.metadata_json) if info.metadata_json else {}
    except ValueError:
        metadata = {"_raw": info.metadata_json}  # never lose what the server holds
    return {
        "asset_id": info.asset_id,
        "kind": info.kind,
        "size": info.size,
        "stored_bytes": info.stored_bytes,
        "metadata": metadata,
        "parents": [{"parent_id": p.parent_id, "transform": p.transform,
                     "transform_digest": p.transform_digest} for p in info.parents],
        "uri": info.uri,
        "created_ns": info.created_ns,
        "chunk_count": info.chunk_count,
        "chunk_size": info.chunk_size,
        "chunks": [chunkref_from_pb(c) for c in info.chunks],
    }


def namespace_from_pb(n: admin_pb2.NamespaceInfo) -> dict[str, Any]:
    return {"name": n.name, "chunk_size": n.chunk_size, "zstd_level": n.zstd_level,
            "kms_key_id": n.kms_key_id, "stored_bytes": n.stored_bytes,
            "logical_bytes": n.logical_bytes, "chunk_count": n.chunk_count}
