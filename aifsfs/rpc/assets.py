"""Client of the Assets service: immutable assets of any kind, with lineage.

Interface:
    GrpcAssets(channel)
        put_asset(data, kind="blob", metadata=None, parents=None, size_hint=0,
                  on_progress=None, timeout=None) -> asset id (BLAKE3-256 hex)
        get_asset(id) -> dict(data, kind, size, metadata, parents, uri, asset_id, ...)
        get_asset_stream(id, timeout=None) -> (info dict, iterator of bytes)
        download(id, fileobj, on_progress=None) -> info; stat_asset(id) -> info
        list_assets(kind=None, limit=None) -> [info]; delete_asset(id)
        verify_asset(id) -> {"ok", "detail"}; get_lineage(id) -> [info of ancestors]
        put_tensor / get_tensor, put_embedding / get_embedding, put_artifact / get_artifact:
            the kinds' payload encoders are `aifs_core.kinds` (shared with the server)
delete_asset carries a request id (filesystem.call_once): a retry after a lost reply succeeds
instead of saying NotFound. put_asset needs none (the same bytes again return the stored asset).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, BinaryIO

import grpc

from aifs_core.types import ParentEdge
from aifs_core.wire import asset_info_from_pb, parent_to_pb
from aifs_proto.v1 import assets_pb2, assets_pb2_grpc

from ..errors import IncompleteRead, LocalError, RemoteError
from .channel import Channel
from .filesystem import call_once, new_request_id

PIECE_SIZE = 1 << 20            # PutAsset data pieces


def split_pieces(data: bytes | bytearray | memoryview | BinaryIO | Iterable[bytes],
           size: int = PIECE_SIZE) -> Iterator[bytes]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        mv = memoryview(data)
        for i in range(0, len(mv), size):
            yield bytes(mv[i:i + size])
        return
    read = getattr(data, "read", None)
    if callable(read):
        while True:
            piece = read(size)
            if not piece:
                return
            yield bytes(piece)
    else:
        for piece in data:  # type: ignore[union-attr]
            mv = memoryview(piece)
            for i in range(0, len(mv), size):
                yield bytes(mv[i:i + size])


class GrpcAssets:
    """The Assets service's calls (thread-safe)."""

    def __init__(self, channel: Channel) -> None:
        self._ch = channel
        self._assets = assets_pb2_grpc.AssetsStub(channel.grpc)

    def put_asset(self, data: bytes | bytearray | memoryview | BinaryIO | Iterable[bytes],
                  kind: str = "blob", metadata: Mapping[str, Any] | None = None,
                  parents: Iterable[str | ParentEdge | Mapping[str, Any]] | None = None,
                  size_hint: int = 0, on_progress: Callable[[int], None] | None = None,
                  timeout: float | None = None) -> str:
        """Store an immutable asset; returns its AssetID (BLAKE3-256 hex of the bytes)."""
        try:
            metadata_json = json.dumps(dict(metadata or {}), sort_keys=True)
        except (TypeError, ValueError) as e:
            raise LocalError(f"asset metadata must be JSON-serialisable: {e}") from e
        header = assets_pb2.AssetHeader(
            kind=kind, metadata_json=metadata_json,
            parents=[parent_to_pb(p) for p in (parents or [])],
            size_hint=size_hint or (len(data) if isinstance(
                data, (bytes, bytearray, memoryview)) else 0))
        replayable = isinstance(data, (bytes, bytearray, memoryview))

        def requests() -> Iterator[assets_pb2.PutAssetRequest]:
            yield assets_pb2.PutAssetRequest(header=header)
            sent = 0
            for piece in split_pieces(data):
                yield assets_pb2.PutAssetRequest(data=piece)
                sent += len(piece)
                if on_progress is not None:
                    on_progress(len(piece))
            # the server stores the asset only once this arrives (server/rpc_assets.py)
            yield assets_pb2.PutAssetRequest(end=assets_pb2.AssetEnd(size=sent))

        # big uploads need more than the default deadline: the whole stream shares it
        t = timeout or max(self._ch.timeout, 3600.0)
        info = self._ch.client_stream(self._assets.PutAsset, requests, replayable, t)
        return str(info.asset_id)

    def _get_asset_call(self, asset_id: str, info_only: bool, timeout: float
                        ) -> tuple[dict[str, Any], Iterator[Any]]:
        req = assets_pb2.GetAssetRequest(asset_id=asset_id, info_only=info_only)
        call = self._assets.GetAsset(req, metadata=self._ch.metadata(), timeout=timeout)
        first = next(call, None)
        if first is None or not first.HasField("info"):
            raise RemoteError(f"the server answered GetAsset({asset_id}) without the asset info",
                              grpc.StatusCode.INTERNAL, "PROTOCOL", self._ch.address)
        return asset_info_from_pb(first.info), call

    def stat_asset(self, asset_id: str) -> dict[str, Any]:
        """Asset info without its bytes."""
        def attempt() -> dict[str, Any]:
            info, call = self._get_asset_call(asset_id, True, self._ch.timeout)
            for _ in call:  # drain: info_only sends nothing more
                pass
            return info
        return self._ch.retrying(attempt, True)

    def get_asset_stream(self, asset_id: str, timeout: float | None = None
                         ) -> tuple[dict[str, Any], Iterator[bytes]]:
        """(info, iterator of data pieces). Retried until the info arrived, not after."""
        t = timeout or max(self._ch.timeout, 3600.0)
        info, call = self._ch.retrying(lambda: self._get_asset_call(asset_id, False, t), True)

        def pieces() -> Iterator[bytes]:
            got = 0
            try:
                for msg in call:
                    if msg.HasField("data"):
                        got += len(msg.data)
                        yield msg.data
            except grpc.RpcError as err:
                raise self._ch.remote_error(err) from None
            if got != info["size"]:
                raise IncompleteRead(
                    f"asset {asset_id}: received {got} of {info['size']} bytes",
                    address=self._ch.address)
        return info, pieces()

    def download(self, asset_id: str, fileobj: BinaryIO,
                 on_progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        info, pieces = self.get_asset_stream(asset_id)
        for piece in pieces:
            fileobj.write(piece)
            if on_progress is not None:
                on_progress(len(piece))
        return info

    def get_asset(self, asset_id: str) -> dict[str, Any]:
        """The asset's info plus its bytes under "data" (the seed's shape)."""
        t = max(self._ch.timeout, 3600.0)

        def attempt() -> dict[str, Any]:
            # the whole download is one attempt: a stream cut by UNAVAILABLE starts over
            info, call = self._get_asset_call(asset_id, False, t)
            buf = io.BytesIO()
            for msg in call:
                if msg.HasField("data"):
                    buf.write(msg.data)
            info["data"] = buf.getvalue()
            if len(info["data"]) != info["size"]:
                raise IncompleteRead(
                    f"asset {asset_id}: received {len(info['data'])} of {info['size']} bytes",
                    address=self._ch.address)
            return info
        return self._ch.retrying(attempt, True)

    def list_assets(self, kind: str | None = None, limit: int | None = None
                    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        after = ""
        while True:
            page = 1000 if limit is None else min(1000, limit - len(out))
            reply = self._ch.unary(self._assets.ListAssets, assets_pb2.ListAssetsRequest(
                kind=kind or "", limit=page, after=after))
            out.extend(asset_info_from_pb(a) for a in reply.assets)
            after = reply.next_after
            if not after or not reply.assets or (limit is not None and len(out) >= limit):
                return out

    def delete_asset(self, asset_id: str) -> None:
        call_once(self._ch, self._assets.DeleteAsset, assets_pb2.AssetRequest(
            asset_id=asset_id, request_id=new_request_id()))

    def verify_asset(self, asset_id: str) -> dict[str, Any]:
        reply = self._ch.unary(self._assets.VerifyAsset, assets_pb2.AssetRequest(asset_id=asset_id),
                            timeout=max(self._ch.timeout, 600.0))
        return {"ok": reply.ok, "detail": reply.detail}

    def get_lineage(self, asset_id: str) -> list[dict[str, Any]]:
        reply = self._ch.unary(self._assets.GetLineage, assets_pb2.AssetRequest(asset_id=asset_id))
        return [asset_info_from_pb(a) for a in reply.ancestors]

    # kinds: the payload encoders are shared with the server (aifs_core.kinds)

    def put_tensor(self, tensor: Any, parents: Iterable[Any] | None = None,
                   metadata: Mapping[str, Any] | None = None) -> str:
        from aifs_core import kinds
        if not isinstance(tensor, kinds.TensorData):
            tensor = kinds.TensorData(data=tensor)
        meta = dict(tensor.metadata or {})
        meta.update(metadata or {})
        return self.put_asset(kinds.encode_tensor(tensor), kind="tensor", metadata=meta,
                              parents=parents)

    def get_tensor(self, asset_id: str) -> Any:
        from aifs_core import kinds
        a = self.get_asset(asset_id)
        self._expect_kind(a, "tensor")
        return kinds.decode_tensor(a["data"], a["metadata"])

    def put_embedding(self, embedding: Any, parents: Iterable[Any] | None = None,
                      metadata: Mapping[str, Any] | None = None) -> str:
        from aifs_core import kinds
        meta = dict(embedding.metadata or {})
        meta.update(metadata or {})
        return self.put_asset(kinds.encode_embedding(embedding), kind="embed", metadata=meta,
                              parents=parents)

    def get_embedding(self, asset_id: str) -> Any:
        from aifs_core import kinds
        a = self.get_asset(asset_id)
        self._expect_kind(a, "embed")
        return kinds.decode_embedding(a["data"], a["metadata"])

    def put_artifact(self, files: Mapping[str, bytes] | str | os.PathLike[str],
                     parents: Iterable[Any] | None = None,
                     metadata: Mapping[str, Any] | None = None) -> str:
        from aifs_core import kinds
        return self.put_asset(kinds.encode_artifact(files), kind="artifact",
                              metadata=metadata, parents=parents)

    def get_artifact(self, asset_id: str) -> dict[str, bytes]:
        from aifs_core import kinds
        a = self.get_asset(asset_id)
        self._expect_kind(a, "artifact")
        return dict(kinds.decode_artifact(a["data"]))

    def _expect_kind(self, asset: dict[str, Any], kind: str) -> None:
        if asset["kind"] != kind:
            raise LocalError(f"asset {asset['asset_id']} is a {asset['kind']!r}, not a {kind!r}; "
                             f"read it with get_asset()")
