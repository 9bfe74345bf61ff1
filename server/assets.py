"""AssetManager: the seed's local asset API over a data directory (no server, no gRPC).

Interface:
    AssetManager(root, compression_level=1, namespace="default")
        Formats `root` if it is not an AIFS data directory yet, then opens it. An invalid level
        (outside 1-22) is a ValueError naming the range, and nothing is created. A non-empty
        directory that is not an AIFS data dir is refused (datadir.DataDirError), untouched.
        An unknown namespace is created with the data dir's defaults. Context manager; .close().
        .compression_service          CompressionService; set_compression_level(n) changes the
                                      zstd level of chunks written from then on
        .put_asset(data, kind, metadata=None, parents=None) -> asset_id
            data: bytes, a binary file or an iterable of bytes (streamed, bounded memory)
        .get_asset(asset_id) -> dict  data, kind, size, stored_bytes, metadata, parents, uri,
                                      asset_id, created_ns, chunk_count
        .open_asset(asset_id) -> (info dict without data, Iterator[bytes])   streaming read
        .put_tensor(TensorData | ndarray, parents=None) -> id;  .get_tensor(id) -> TensorData
        .put_embedding(EmbeddingData | vectors, model=..., modality="text", metadata=None,
                       parents=None) -> id;               .get_embedding(id) -> EmbeddingData
        .put_artifact(files: dict[str, bytes] | directory, metadata=None, parents=None) -> id
        .get_artifact(id) -> dict[str, bytes]   (MANIFEST.json verified: ArtifactError)
        .list_assets(kind=None) -> list[info dict]    .delete_asset(id)
        .verify_asset(id) -> VerifyResult(ok, detail) (truthy when ok)
        .get_lineage(id) -> list[info dict]           ancestors, nearest first
        .stats() -> dict                              chunks, raw and stored bytes

Errors: an unknown asset id raises `AssetNotFound`, which is both `aifs_core.errors.NotFound`
and `KeyError`. An unknown kind or a payload of the wrong kind raises `KindError` (a
ValueError). A parent that is not committed raises `ParentNotCommitted` naming it, and nothing
of the refused asset is stored. Parents may be asset ids, ParentEdge or dicts
{"parent_id", "transform", "transform_digest"}.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from aifs_core.codec import CompressionService, validate_level
from aifs_core.kinds import (
    EmbeddingData,
    KindError,
    TensorData,
    decode_artifact,
    decode_embedding,
    decode_tensor,
    encode_artifact,
    encode_embedding,
    encode_tensor,
)
from aifs_core.types import AssetRecord, ParentEdge

from .asset_store import AssetNotFound, AssetStore, DataSource
from .datadir import DataDir, format_data_dir, is_formatted, open_data_dir

Parents = Iterable[str | ParentEdge | Mapping[str, Any]] | None

__all__ = ["AssetManager", "AssetNotFound", "VerifyResult"]


@dataclass
class VerifyResult:
    ok: bool
    detail: str

    def __bool__(self) -> bool:
        return self.ok


class AssetManager:
    def __init__(self, root: str | os.PathLike[str], compression_level: int = 1,
                 namespace: str = "default") -> None:
        validate_level(compression_level)  # before anything is created on disk
        self.root = os.fspath(root)
        self.namespace = namespace
        if not is_formatted(self.root):
            format_data_dir(self.root, zstd_level=compression_level, namespace=namespace)
        # The data dir seals chunks with this very service, so its stats are real and
        # set_compression_level() changes the level of every chunk written afterwards.
        self.compression_service = CompressionService(compression_level)
        self.datadir: DataDir = open_data_dir(self.root, codec=self.compression_service)
        try:
            self.datadir.ensure_namespace(namespace, zstd_level=compression_level)
            self.store = AssetStore(self.datadir)
        except BaseException:
            self.datadir.close()
            raise
        self._closed = False

    # --- lifecycle --------------------------------------------------------------------------
    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.datadir.close()

    def __enter__(self) -> AssetManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- generic assets ---------------------------------------------------------------------
    def _info(self, record: AssetRecord) -> dict[str, Any]:
        return {
            "asset_id": record.asset_id,
            "kind": record.kind,
            "size": record.size,
            "stored_bytes": record.stored_bytes,
            "metadata": json.loads(record.metadata_json or "{}"),
            "parents": [{"parent_id": p.parent_id, "transform": p.transform,
                         "transform_digest": p.transform_digest} for p in record.parents],
            "uri": self.store.uri(self.namespace, record.asset_id),
            "created_ns": record.created_ns,
            "chunk_count": len(record.chunks),
        }

    def put_asset(self, data: DataSource, kind: str,
                  metadata: Mapping[str, Any] | None = None, parents: Parents = None) -> str:
        record = self.store.put(self.namespace, kind, data, metadata, parents,
                                level=self.compression_service.compression_level)
        return record.asset_id

    def get_asset(self, asset_id: str) -> dict[str, Any]:
        record, data = self.store.read_all(self.namespace, asset_id)
        info = self._info(record)
        info["data"] = data
        return info

    def open_asset(self, asset_id: str) -> tuple[dict[str, Any], Iterator[bytes]]:
        record, it = self.store.open(self.namespace, asset_id)
        return self._info(record), it

    def _get_kind(self, asset_id: str, kind: str) -> tuple[AssetRecord, bytes]:
        record = self.store.info(self.namespace, asset_id)
        if record.kind != kind:
            raise KindError(f"asset {record.asset_id} is a {record.kind}, not a {kind}")
        return self.store.read_all(self.namespace, asset_id)

    # --- tensors ----------------------------------------------------------------------------
    def put_tensor(self, tensor: TensorData | np.ndarray, parents: Parents = None,
                   metadata: Mapping[str, Any] | None = None) -> str:
        if not isinstance(tensor, TensorData):
            tensor = TensorData(data=np.asarray(tensor))
        meta = dict(tensor.metadata)
        meta.update(metadata or {})
        return self.put_asset(encode_tensor(tensor), "tensor", meta, parents)

    def get_tensor(self, asset_id: str) -> TensorData:
        record, data = self._get_kind(asset_id, "tensor")
        return decode_tensor(data, json.loads(record.metadata_json or "{}"))

    # --- embeddings -------------------------------------------------------------------------
    def put_embedding(self, embedding: EmbeddingData | np.ndarray | list[float],
                      model: str | None = None, modality: str = "text",
                      metadata: Mapping[str, Any] | None = None, parents: Parents = None) -> str:
        if not isinstance(embedding, EmbeddingData):
            if model is None:
                raise KindError("put_embedding needs model='...' (the model that made the vectors)")
            embedding = EmbeddingData(vectors=np.asarray(embedding), model=model,
                                      modality=modality, metadata=dict(metadata or {}))
        elif metadata:
            embedding.metadata = {**embedding.metadata, **metadata}
        return self.put_asset(encode_embedding(embedding), "embed", embedding.metadata, parents)

    def get_embedding(self, asset_id: str) -> EmbeddingData:
        record, data = self._get_kind(asset_id, "embed")
        return decode_embedding(data, json.loads(record.metadata_json or "{}"))

    # --- artifacts --------------------------------------------------------------------------
    def put_artifact(self, files: Mapping[str, bytes] | str | os.PathLike[str],
                     metadata: Mapping[str, Any] | None = None, parents: Parents = None) -> str:
        return self.put_asset(encode_artifact(files), "artifact", metadata, parents)

    def get_artifact(self, asset_id: str) -> dict[str, bytes]:
        _record, data = self._get_kind(asset_id, "artifact")
        return decode_artifact(data)

    # --- listing, lineage, verification -----------------------------------------------------
    def list_assets(self, kind: str | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        after = ""
        while True:
            page = self.store.list_assets(self.namespace, kind or "", limit=500, after=after)
            if not page:  # the engine may cap the page size, so only empty means done
                return out
            out.extend(self._info(r) for r in page)
            after = page[-1].asset_id

    def delete_asset(self, asset_id: str) -> None:
        self.store.delete(self.namespace, asset_id)

    def verify_asset(self, asset_id: str) -> VerifyResult:
        ok, detail = self.store.verify(self.namespace, asset_id)
        return VerifyResult(ok, detail)

    def get_lineage(self, asset_id: str) -> list[dict[str, Any]]:
        return [self._info(r) for r in self.store.lineage(self.namespace, asset_id)]

    def stats(self) -> dict[str, int]:
        s = self.datadir.meta.chunk_stats(self.namespace)
        return {"chunks": s.chunks, "raw_bytes": s.raw_bytes, "stored_bytes": s.stored_bytes}
