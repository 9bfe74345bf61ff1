"""The Assets service: immutable content-addressed assets over `AssetStore`.

Interface:
    AssetsServicer(backend: rpc_filesystem.Backend)     backend.assets is the AssetStore
    PIECE_MAX = 1 MiB                                   largest data piece GetAsset sends

PutAsset streams the request's data pieces into AssetStore.put through a generator, so memory
stays bounded whatever the asset size; the asset becomes visible only when the whole stream
has arrived, closed by its AssetEnd (the byte count), and its record is committed. A stream
cut in the middle raises out of the generator, AssetStore.put commits nothing, and the chunks
it had stored are unreferenced (GC collects them).

Why the end message: when the server cuts a call (shutdown past its grace), gRPC may end the
handler's request iterator as if the client had finished, before the call shows as
cancelled (`context.is_active()` still true): without an explicit end, a prefix of the
upload would be stored as an asset of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc

from aifs_core.errors import InvalidArgument, TimedOut
from aifs_core.wire import asset_info_to_pb, parent_from_pb
from aifs_proto.v1 import assets_pb2, assets_pb2_grpc, common_pb2
from aifs_server.auth import call_scope
from aifs_server.grpc_errors import rpc
from aifs_server.request_log import EMPTY, is_retry
from aifs_server.rpc_filesystem import Backend

PIECE_MAX = 1 << 20
LIST_DEFAULT = 100
LIST_MAX = 1000


def _check_end(declared: int, received: int, rest: Iterator[Any]) -> None:
    """The end message must count what arrived and be the last one."""
    if declared != received:
        raise InvalidArgument(f"PutAsset: the end message says {declared} data bytes, "
                              f"{received} arrived; nothing was stored")
    if next(rest, None) is not None:
        raise InvalidArgument("PutAsset: a message arrived after the end message; "
                              "nothing was stored")


class AssetsServicer(assets_pb2_grpc.AssetsServicer):
    def __init__(self, backend: Backend) -> None:
        self.b = backend
        self.meta = backend.meta

    def _store(self) -> Any:
        if self.b.assets is None:
            raise InvalidArgument("this server has no asset store configured")
        return self.b.assets

    def _ns(self, context: grpc.ServicerContext) -> str:
        ns, _ = call_scope(context)
        self.b.namespace(ns)
        return ns

    def _count(self, direction: str, n: int) -> None:
        if self.b.metrics is not None:
            self.b.metrics.add_bytes(direction, n)

    @rpc
    def PutAsset(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
        ns = self._ns(context)
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidArgument("PutAsset: the first message must be the AssetHeader "
                                  "(kind, metadata, parents), then data pieces")
        h = first.header
        metadata = h.metadata_json or "{}"  # AssetStore validates it (a JSON object)
        parents = [parent_from_pb(p) for p in h.parents]

        def data() -> Iterator[bytes]:
            # a client that goes away makes the request iterator raise: the exception travels
            # through AssetStore.put, which then commits nothing
            received = 0
            for req in request_iterator:
                part = req.WhichOneof("part")
                if part == "data":
                    self._count("in", len(req.data))
                    received += len(req.data)
                    if req.data:
                        yield req.data
                elif part == "end":
                    _check_end(req.end.size, received, request_iterator)
                    return
                elif part == "header":
                    raise InvalidArgument("PutAsset: a second header arrived mid-stream")
            # no end message: the client went away, or the server cut the stream (shutdown
            # past its grace) and gRPC ended the iterator instead of raising
            if not context.is_active():
                raise TimedOut("PutAsset: the call was cancelled before its stream ended; "
                               "nothing was stored")
            raise InvalidArgument("PutAsset: the stream ended without its end message "
                                  f"(AssetEnd after {received} data bytes); nothing was stored")

        rec = self._store().put(ns, h.kind or "blob", data(), metadata, parents)
        return asset_info_to_pb(ns, rec)

    @rpc
    def GetAsset(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        ns = self._ns(context)
        chunk_size = self.b.namespace(ns).chunk_size
        if request.info_only:
            rec = self._store().info(ns, request.asset_id)
            yield assets_pb2.GetAssetReply(info=asset_info_to_pb(ns, rec, chunk_size))
            return
        rec, pieces = self._store().open(ns, request.asset_id)
        yield assets_pb2.GetAssetReply(info=asset_info_to_pb(ns, rec, chunk_size))
        for piece in pieces:
            view = memoryview(piece)
            for pos in range(0, len(view), PIECE_MAX):
                out = bytes(view[pos:pos + PIECE_MAX])
                self._count("out", len(out))
                yield assets_pb2.GetAssetReply(data=out)

    @rpc
    def ListAssets(self, request: Any, context: grpc.ServicerContext) -> Any:
        ns = self._ns(context)
        limit = min(request.limit or LIST_DEFAULT, LIST_MAX)
        recs = self._store().list_assets(ns, kind=request.kind, limit=limit, after=request.after)
        next_after = recs[-1].asset_id if len(recs) == limit else ""
        return assets_pb2.ListAssetsReply(assets=[asset_info_to_pb(ns, r) for r in recs],
                                          next_after=next_after)

    @rpc
    def DeleteAsset(self, request: Any, context: grpc.ServicerContext) -> Any:
        ns = self._ns(context)

        def run() -> Any:
            self._store().delete(ns, request.asset_id)
            return common_pb2.Empty()
        # at most once per request id (request_log.py; records.delete_asset records it)
        return self.b.request_log.once("DeleteAsset", ns, request.request_id, run, EMPTY,
                                       retry=is_retry(context))

    @rpc
    def VerifyAsset(self, request: Any, context: grpc.ServicerContext) -> Any:
        ns = self._ns(context)
        ok, detail = self._store().verify(ns, request.asset_id)
        return assets_pb2.VerifyAssetReply(ok=ok, detail=detail)

    @rpc
    def GetLineage(self, request: Any, context: grpc.ServicerContext) -> Any:
        ns = self._ns(context)
        return assets_pb2.LineageReply(
            ancestors=[asset_info_to_pb(ns, r)
                       for r in self._store().lineage(ns, request.asset_id)])
