"""The AIFS server: storage core (codec, envelope, KMS, chunk store, metadata) and gRPC services.

Public names (loaded lazily, so `import aifs_server` stays cheap for submodules like errors):
    AssetManager, AssetNotFound, VerifyResult              (assets.py, asset_store.py)
    TensorData, EmbeddingData, KINDS, KindError, ArtifactError, encode_tensor, decode_tensor,
    encode_embedding, decode_embedding, encode_artifact, decode_artifact, asset_id_of,
    asset_uri, parse_asset_uri, is_asset_id, check_kind, normalize_parents   (aifs_core.kinds)
    format_data_dir, open_data_dir                         (datadir.py)

    from aifs_server import AssetManager, TensorData
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "AssetManager": "assets", "VerifyResult": "assets", "AssetNotFound": "asset_store",
    "AssetStore": "asset_store",
    "TensorData": "aifs_core.kinds", "EmbeddingData": "aifs_core.kinds", "KINDS": "aifs_core.kinds", "KindError": "aifs_core.kinds",
    "ArtifactError": "aifs_core.kinds", "encode_tensor": "aifs_core.kinds", "decode_tensor": "aifs_core.kinds",
    "encode_embedding": "aifs_core.kinds", "decode_embedding": "aifs_core.kinds", "encode_artifact": "aifs_core.kinds",
    "decode_artifact": "aifs_core.kinds", "asset_id_of": "aifs_core.kinds", "asset_uri": "aifs_core.kinds",
    "check_kind": "aifs_core.kinds", "normalize_parents": "aifs_core.kinds", "is_asset_id": "aifs_core.kinds",
    "parse_asset_uri": "aifs_core.kinds",
    "format_data_dir": "datadir", "open_data_dir": "datadir",
}

__all__ = [
    "ArtifactError",
    "AssetManager",
    "AssetNotFound",
    "AssetStore",
    "EmbeddingData",
    "KINDS",
    "KindError",
    "TensorData",
    "VerifyResult",
    "asset_id_of",
    "asset_uri",
    "check_kind",
    "decode_artifact",
    "decode_embedding",
    "decode_tensor",
    "encode_artifact",
    "encode_embedding",
    "encode_tensor",
    "format_data_dir",
    "is_asset_id",
    "normalize_parents",
    "open_data_dir",
    "parse_asset_uri",
]

if TYPE_CHECKING:
    from aifs_core.kinds import (
        KINDS,
        ArtifactError,
        EmbeddingData,
        KindError,
        TensorData,
        asset_id_of,
        asset_uri,
        check_kind,
        decode_artifact,
        decode_embedding,
        decode_tensor,
        encode_artifact,
        encode_embedding,
        encode_tensor,
        is_asset_id,
        normalize_parents,
        parse_asset_uri,
    )

    from .asset_store import AssetNotFound, AssetStore
    from .assets import AssetManager, VerifyResult
    from .datadir import format_data_dir, open_data_dir


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'aifs_server' has no attribute {name!r}")
    value = getattr(importlib.import_module(module if "." in module else f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
