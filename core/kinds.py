"""Asset kinds: pure encoders/decoders shared by the local AssetManager and the client SDK.

No storage, no I/O except reading a directory for `encode_artifact`. Every payload is
self-describing bytes, so an asset's kind can be decoded from its bytes alone.

Interface:
    KINDS = ("blob", "tensor", "embed", "artifact")
    check_kind(kind) -> str                      KindError (a ValueError) listing the valid kinds
    check_payload_head(kind, head: bytes)        KindError when the first bytes cannot be that kind
    KindError(InvalidArgument, ValueError)       bad kind / bad payload (gRPC INVALID_ARGUMENT)
    ArtifactError(KindError)                     artifact ZIP or MANIFEST.json does not verify

    asset_id_of(data) -> str                     lowercase hex BLAKE3-256 (the AssetID)
    is_asset_id(s) -> bool
    asset_uri(namespace, asset_id) -> "aifs://<namespace>/<asset_id>"
    parse_asset_uri(uri) -> (namespace, asset_id)
    normalize_parents(parents) -> list[ParentEdge]   from ids, ParentEdge or dicts

    TensorData(data, dtype=None, shape=None, metadata={})   (the seed's dataclass)
    encode_tensor(TensorData | np.ndarray) -> bytes          the .npy format (allow_pickle=False)
    decode_tensor(bytes, metadata=None) -> TensorData
    EmbeddingData(vectors, model, modality="text", metadata={})  .dim, .count
    encode_embedding(EmbeddingData) -> bytes / decode_embedding(bytes, metadata=None)
    encode_artifact(files: Mapping[str, bytes] | path) -> bytes  ZIP with MANIFEST.json
    decode_artifact(bytes) -> dict[str, bytes]                    verifies the manifest
    artifact_manifest(bytes) -> dict                              the parsed, verified manifest

Formats:
    tensor    exactly `numpy.lib.format` (.npy v1/v2/v3), so `numpy.load` reads a tensor asset.
              dtype (endianness, bool, complex, structured), shape, 0-d and empty arrays and
              Fortran order round-trip; object dtypes are refused (they would need pickle).
    embed     b"AIFSEMB1" + uint32 LE header length + JSON header {count, dim, dtype, modality,
              model} + .npy of a 1-D (dim,) or 2-D (count, dim) float array. The model and
              modality are in-band because they are part of what an embedding *is*: the same
              numbers from two models are two different assets.
    artifact  deterministic ZIP (sorted names, fixed timestamps, stored uncompressed — chunks
              are zstd-compressed anyway) whose first member is MANIFEST.json:
              {"format": "aifs-artifact/1", "files": [{"name", "size", "blake3"}, ...]}.
              Identical files give identical bytes, hence the same AssetID.

User metadata (TensorData.metadata etc.) is not part of the payload: it travels as the asset's
metadata_json. Since the AssetID is the hash of the bytes only, putting the same bytes twice
with different metadata names one asset.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
import numpy as np

from .errors import InvalidArgument
from .merkle import SNAP_SCHEME
from .types import ParentEdge

KINDS: tuple[str, ...] = ("blob", "tensor", "embed", "artifact")


class KindError(InvalidArgument, ValueError):
    """A kind name or payload that cannot be accepted (INVALID_ARGUMENT; also a ValueError)."""


class ArtifactError(KindError):
    """An artifact whose ZIP or MANIFEST.json does not verify."""


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise KindError(
            f"unknown asset kind {kind!r}: valid kinds are {', '.join(KINDS)}"
        )
    return kind


NPY_MAGIC = b"\x93NUMPY"
EMBED_MAGIC = b"AIFSEMB1"
ZIP_MAGIC = b"PK\x03\x04"
_HEADS = {"tensor": NPY_MAGIC, "embed": EMBED_MAGIC, "artifact": ZIP_MAGIC}


def check_payload_head(kind: str, head: bytes) -> None:
    """Cheap check of a payload's first bytes (at least 8 of them, or all if shorter)."""
    check_kind(kind)
    magic = _HEADS.get(kind)
    if magic is not None and not head.startswith(magic):
        raise KindError(
            f"data is not a {kind} payload (it does not start with {magic!r}); encode it with "
            f"aifs_core.kinds.encode_{'embedding' if kind == 'embed' else kind}() "
            f"or store it as kind 'blob'"
        )


# --- ids, uris, parents ---------------------------------------------------------------------

_ASSET_ID_RE = re.compile(r"^[0-9a-f]{64}$")


def asset_id_of(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def is_asset_id(s: str) -> bool:
    return isinstance(s, str) and bool(_ASSET_ID_RE.match(s))


def asset_uri(namespace: str, asset_id: str) -> str:
    if asset_id.startswith(SNAP_SCHEME):   # a snapshot in a lineage: its id is its URI
        return asset_id
    return f"aifs://{namespace}/{asset_id}"


def parse_asset_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("aifs://"):
        raise KindError(f"{uri!r} is not an asset URI (expected aifs://<namespace>/<asset_id>)")
    ns, _, aid = uri[len("aifs://"):].partition("/")
    if not ns or not is_asset_id(aid):
        raise KindError(f"{uri!r} is not an asset URI (expected aifs://<namespace>/<asset_id>)")
    return ns, aid


def normalize_parents(parents: Iterable[str | ParentEdge | Mapping[str, Any]] | None
                      ) -> list[ParentEdge]:
    """Parents given as asset-id strings, ParentEdge objects or dicts with the same fields."""
    out: list[ParentEdge] = []
    for p in parents or ():
        if isinstance(p, ParentEdge):
            edge = ParentEdge(p.parent_id, p.transform, p.transform_digest)
        elif isinstance(p, str):
            edge = ParentEdge(p)
        elif isinstance(p, Mapping):
            unknown = set(p) - {"parent_id", "transform", "transform_digest"}
            if unknown or "parent_id" not in p:
                raise KindError(
                    f"parent {dict(p)!r}: a parent dict needs 'parent_id' and may have "
                    f"'transform' and 'transform_digest' (unknown keys: {sorted(unknown)})"
                )
            edge = ParentEdge(str(p["parent_id"]), str(p.get("transform", "")),
                              str(p.get("transform_digest", "")))
        else:
            raise KindError(f"parent {p!r} must be an asset id, a ParentEdge or a dict")
        if edge.parent_id.startswith(SNAP_SCHEME):  # a snapshot: the server checks it exists
            out.append(edge)
            continue
        edge.parent_id = edge.parent_id.lower()
        if not is_asset_id(edge.parent_id):
            raise KindError(
                f"parent {edge.parent_id!r} is not an asset id (64 lowercase hex digits) or "
                f"a snapshot ({SNAP_SCHEME}NS/ID)"
            )
        out.append(edge)
    return out


# --- tensors --------------------------------------------------------------------------------

@dataclass
class TensorData:
    """An n-d array plus user metadata. dtype/shape default to the array's own."""

    data: np.ndarray
    dtype: str | None = None
    shape: tuple[int, ...] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.data, np.ndarray):
            self.data = np.asarray(self.data)
        arr = self.data
        if self.dtype is None:
            self.dtype = str(arr.dtype)
        elif not _dtype_matches(self.dtype, arr.dtype):
            raise KindError(
                f"TensorData.dtype {self.dtype!r} does not match the array's dtype "
                f"{str(arr.dtype)!r}; pass dtype=str(array.dtype) or leave it out"
            )
        if self.shape is None:
            self.shape = tuple(arr.shape)
        elif tuple(self.shape) != tuple(arr.shape):
            raise KindError(
                f"TensorData.shape {tuple(self.shape)} does not match the array's shape "
                f"{tuple(arr.shape)}; pass shape=array.shape or leave it out"
            )
        else:
            self.shape = tuple(self.shape)
        if self.metadata is None:
            self.metadata = {}


def _dtype_matches(given: Any, actual: np.dtype) -> bool:
    if str(given) == str(actual):
        return True
    try:
        return bool(np.dtype(given) == actual)
    except (TypeError, ValueError, SyntaxError):
        return False


def _npy_bytes(arr: np.ndarray, what: str) -> bytes:
    if arr.dtype.hasobject:
        raise KindError(
            f"{what} has dtype {arr.dtype} which holds Python objects; only plain numeric, "
            f"bool, string and structured dtypes can be stored (objects would need pickle)"
        )
    buf = io.BytesIO()
    # write_array keeps Fortran order and copies non-contiguous input as it goes.
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _read_npy(data: bytes | memoryview, what: str) -> np.ndarray:
    try:
        arr = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:
        raise KindError(f"{what} is not a valid .npy payload: {e}") from e
    return np.asarray(arr)


def encode_tensor(tensor: TensorData | np.ndarray) -> bytes:
    arr = tensor.data if isinstance(tensor, TensorData) else np.asarray(tensor)
    return _npy_bytes(arr, "tensor")


def decode_tensor(data: bytes, metadata: Mapping[str, Any] | None = None) -> TensorData:
    if bytes(data[:6]) != NPY_MAGIC:
        raise KindError("tensor payload does not start with the .npy magic")
    arr = _read_npy(data, "tensor payload")
    return TensorData(data=arr, dtype=str(arr.dtype), shape=tuple(arr.shape),
                      metadata=dict(metadata or {}))


# --- embeddings -----------------------------------------------------------------------------

@dataclass
class EmbeddingData:
    """One vector (dim,) or a matrix of vectors (count, dim) of floats from one model."""

    vectors: np.ndarray
    model: str
    modality: str = "text"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        arr = np.asarray(self.vectors)
        if arr.dtype.kind in "iu":
            arr = arr.astype(np.float32)  # integer lists are a common way to write floats
        elif arr.dtype.kind != "f":
            raise KindError(f"embedding vectors must be floats, got dtype {arr.dtype}")
        if arr.ndim not in (1, 2):
            raise KindError(
                f"an embedding is a vector (dim,) or a matrix (count, dim); got shape {arr.shape}"
            )
        if arr.shape[-1] == 0:
            raise KindError("an embedding needs dim >= 1")
        if not np.all(np.isfinite(arr)):
            raise KindError("embedding vectors contain NaN or infinity")
        if not isinstance(self.model, str) or not self.model:
            raise KindError("an embedding needs a model name (model='...')")
        if not isinstance(self.modality, str) or not self.modality:
            raise KindError("an embedding needs a modality (e.g. 'text', 'image')")
        self.vectors = arr
        if self.metadata is None:
            self.metadata = {}

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[-1])

    @property
    def count(self) -> int:
        return 1 if self.vectors.ndim == 1 else int(self.vectors.shape[0])


def encode_embedding(emb: EmbeddingData) -> bytes:
    header = json.dumps(
        {"model": emb.model, "modality": emb.modality, "dim": emb.dim, "count": emb.count,
         "dtype": emb.vectors.dtype.str, "ndim": emb.vectors.ndim},
        sort_keys=True, separators=(",", ":"),
    ).encode()
    return EMBED_MAGIC + struct.pack("<I", len(header)) + header + _npy_bytes(
        emb.vectors, "embedding")


def embedding_header(data: bytes) -> dict[str, Any]:
    """The JSON header of an embed payload (model, modality, dim, count, dtype, ndim)."""
    if bytes(data[:8]) != EMBED_MAGIC or len(data) < 12:
        raise KindError("embed payload does not start with the AIFSEMB1 magic")
    (hlen,) = struct.unpack("<I", data[8:12])
    if 12 + hlen > len(data):
        raise KindError("embed payload is truncated (header longer than the data)")
    try:
        header = json.loads(bytes(data[12:12 + hlen]))
    except ValueError as e:
        raise KindError(f"embed payload header is not JSON: {e}") from e
    if not isinstance(header, dict):
        raise KindError("embed payload header is not a JSON object")
    return header


def decode_embedding(data: bytes, metadata: Mapping[str, Any] | None = None) -> EmbeddingData:
    header = embedding_header(data)
    (hlen,) = struct.unpack("<I", data[8:12])
    arr = _read_npy(memoryview(data)[12 + hlen:], "embed payload")
    if arr.shape[-1:] != (header.get("dim"),) or arr.ndim != header.get("ndim"):
        raise KindError(
            f"embed payload header (dim {header.get('dim')}, ndim {header.get('ndim')}) does "
            f"not match its vectors (shape {arr.shape})"
        )
    return EmbeddingData(vectors=arr, model=str(header["model"]),
                         modality=str(header["modality"]), metadata=dict(metadata or {}))


# --- artifacts ------------------------------------------------------------------------------

MANIFEST_NAME = "MANIFEST.json"
ARTIFACT_FORMAT = "aifs-artifact/1"
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def _check_member_name(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise ArtifactError(f"artifact file name {name!r} must be a non-empty string")
    parts = name.split("/")
    if (name.startswith("/") or "\\" in name or "\x00" in name
            or any(p in ("", ".", "..") for p in parts)):
        raise ArtifactError(
            f"artifact file name {name!r} must be a relative path with '/' separators and no "
            f"'', '.' or '..' components"
        )
    if name == MANIFEST_NAME:
        raise ArtifactError(f"artifact file name {MANIFEST_NAME!r} is reserved for the manifest")
    return name


def _files_from_dir(root: Path) -> dict[str, bytes]:
    if not root.is_dir():
        raise ArtifactError(f"{root} is not a directory (give a directory or a dict name->bytes)")
    files: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            rel = p.relative_to(root).as_posix()
            if p.is_symlink() or not p.is_file():
                raise ArtifactError(
                    f"{p} is not a regular file (symlinks and devices cannot go into an artifact)"
                )
            files[rel] = p.read_bytes()
    return files


def encode_artifact(files: Mapping[str, bytes] | str | os.PathLike[str]) -> bytes:
    if isinstance(files, (str, os.PathLike)):
        files = _files_from_dir(Path(files))
    entries = []
    for name in sorted(files):
        _check_member_name(name)
        content = files[name]
        if not isinstance(content, (bytes, bytearray, memoryview)):
            raise ArtifactError(f"artifact file {name!r}: content must be bytes")
        entries.append((name, bytes(content)))
    manifest = {
        "format": ARTIFACT_FORMAT,
        "files": [{"name": n, "size": len(c), "blake3": blake3.blake3(c).hexdigest()}
                  for n, c in entries],
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, content in [(MANIFEST_NAME, json.dumps(manifest, indent=1, sort_keys=True)
                               .encode())] + entries:
            info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
            info.external_attr = 0o100644 << 16
            info.create_system = 3  # unix, so external_attr means the same everywhere
            zf.writestr(info, content)
    return buf.getvalue()


def _open_artifact(data: bytes) -> tuple[zipfile.ZipFile, dict[str, Any]]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        raw = zf.read(MANIFEST_NAME)
    except KeyError as e:
        raise ArtifactError(f"artifact has no {MANIFEST_NAME}") from e
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ArtifactError(f"artifact is not a valid ZIP: {e}") from e
    try:
        manifest = json.loads(raw)
        if manifest.get("format") != ARTIFACT_FORMAT or not isinstance(manifest["files"], list):
            raise ValueError(f"format is {manifest.get('format')!r}, not {ARTIFACT_FORMAT!r}")
    except (ValueError, KeyError, AttributeError) as e:
        raise ArtifactError(f"artifact {MANIFEST_NAME} is not valid: {e}") from e
    return zf, manifest


def _verified(data: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    zf, manifest = _open_artifact(data)
    with zf:
        listed = {f.get("name"): f for f in manifest["files"]}
        present = [n for n in zf.namelist() if n != MANIFEST_NAME]
        if len(set(present)) != len(present):
            raise ArtifactError("artifact ZIP contains a file name twice")
        if set(present) != set(listed):
            raise ArtifactError(
                f"artifact files do not match {MANIFEST_NAME}: not listed "
                f"{sorted(set(present) - set(listed))}, missing {sorted(set(listed) - set(present))}"
            )
        out: dict[str, bytes] = {}
        for name, entry in sorted(listed.items()):
            try:
                content = zf.read(name)
            except (zipfile.BadZipFile, OSError, ValueError) as e:
                raise ArtifactError(f"artifact file {name!r} cannot be read: {e}") from e
            if len(content) != entry.get("size"):
                raise ArtifactError(
                    f"artifact file {name!r} is {len(content)} bytes but the manifest says "
                    f"{entry.get('size')}"
                )
            if blake3.blake3(content).hexdigest() != entry.get("blake3"):
                raise ArtifactError(
                    f"artifact file {name!r} does not match its BLAKE3 in {MANIFEST_NAME}"
                )
            out[name] = content
    return manifest, out


def decode_artifact(data: bytes) -> dict[str, bytes]:
    return _verified(data)[1]


def artifact_manifest(data: bytes) -> dict[str, Any]:
    return _verified(data)[0]
