"""Asset kind encoders: exact tensor round trips, embeddings, artifacts and their manifests."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import blake3
import numpy as np
import pytest

from aifs_core import kinds
from aifs_core.errors import InvalidArgument
from aifs_core.kinds import (
    ArtifactError,
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
from aifs_core.types import ParentEdge


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    base = rng.standard_normal((6, 7)).astype(np.float32)
    structured = np.array([(1, 2.5, b"ab"), (-3, 0.0, b"xyz")],
                          dtype=[("i", "<i4"), ("f", ">f8"), ("s", "S3")])
    return {
        "float32_2d": base,
        "float16": rng.standard_normal((3, 4)).astype(np.float16),
        "int8": np.arange(-128, 128, dtype=np.int8).reshape(16, 16),
        "bool": rng.integers(0, 2, (5, 3)).astype(bool),
        "complex64": (rng.standard_normal(8) + 1j * rng.standard_normal(8)).astype(np.complex64),
        "big_endian_i4": np.arange(12, dtype=">i4").reshape(3, 4),
        "structured": structured,
        "zero_d": np.array(3.25, dtype=np.float64),
        "empty_0x3": np.zeros((0, 3), dtype=np.float32),
        "non_contiguous": base[::2, 1::3],
        "fortran": np.asfortranarray(rng.standard_normal((4, 5))),
        "unicode": np.array(["ä", "bc"]),
    }


@pytest.mark.parametrize("name", list(_arrays()))
def test_tensor_round_trip_exact(name: str) -> None:
    arr = _arrays()[name]
    blob = encode_tensor(TensorData(data=arr, dtype=str(arr.dtype), shape=arr.shape,
                                    metadata={"name": name}))
    # The payload is plain .npy: numpy itself reads it.
    assert np.array_equal(np.load(io.BytesIO(blob), allow_pickle=False), arr)
    back = decode_tensor(blob, {"name": name})
    assert back.data.dtype == arr.dtype
    assert back.data.dtype.str == arr.dtype.str  # endianness kept
    assert back.data.shape == arr.shape and back.shape == arr.shape
    assert back.dtype == str(arr.dtype)
    assert back.data.tobytes() == arr.tobytes()
    assert back.metadata == {"name": name}
    if name == "fortran":
        assert back.data.flags.f_contiguous


def test_tensor_refuses_objects_and_mismatches() -> None:
    with pytest.raises(KindError, match="Python objects"):
        encode_tensor(np.array([{"a": 1}, None], dtype=object))
    arr = np.zeros((2, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="does not match the array's dtype"):
        TensorData(data=arr, dtype="int64", shape=(2, 2), metadata={})
    with pytest.raises(ValueError, match="does not match the array's shape"):
        TensorData(data=arr, dtype="float32", shape=(4,), metadata={})
    with pytest.raises(KindError, match=".npy"):
        decode_tensor(b"not a tensor at all")
    with pytest.raises(KindError, match="not a valid .npy"):
        decode_tensor(encode_tensor(arr)[:-5])


def test_embedding_round_trip_vector_and_matrix() -> None:
    vec = np.linspace(-1, 1, 384, dtype=np.float32)
    emb = EmbeddingData(vectors=vec, model="all-MiniLM-L6-v2", modality="text",
                        metadata={"doc": "a"})
    assert emb.dim == 384 and emb.count == 1
    back = decode_embedding(encode_embedding(emb), emb.metadata)
    assert back.model == "all-MiniLM-L6-v2" and back.modality == "text" and back.dim == 384
    assert np.array_equal(back.vectors, vec) and back.vectors.dtype == np.float32
    assert back.metadata == {"doc": "a"}

    mat = np.random.default_rng(1).standard_normal((5, 16))
    back2 = decode_embedding(encode_embedding(EmbeddingData(mat, model="clip", modality="image")))
    assert back2.count == 5 and back2.dim == 16 and np.array_equal(back2.vectors, mat)
    # The model is part of the payload: same numbers, other model -> other bytes (other id).
    assert encode_embedding(EmbeddingData(vec, "m1")) != encode_embedding(EmbeddingData(vec, "m2"))


def test_embedding_bad_input() -> None:
    with pytest.raises(KindError, match="vector"):
        EmbeddingData(np.zeros((2, 2, 2)), model="m")
    with pytest.raises(KindError, match="floats"):
        EmbeddingData(np.array(["a"]), model="m")
    with pytest.raises(KindError, match="model"):
        EmbeddingData(np.zeros(3), model="")
    with pytest.raises(KindError, match="NaN"):
        EmbeddingData(np.array([1.0, np.nan]), model="m")
    with pytest.raises(KindError, match="AIFSEMB1"):
        decode_embedding(b"\x93NUMPY....")


def test_artifact_round_trip_dict_and_directory(tmp_path: Path) -> None:
    files = {"model.bin": bytes(range(256)) * 10, "config/params.json": b'{"lr": 0.1}',
             "empty": b""}
    blob = encode_artifact(files)
    assert blob == encode_artifact(dict(reversed(list(files.items()))))  # deterministic
    assert decode_artifact(blob) == files
    manifest = kinds.artifact_manifest(blob)
    assert [f["name"] for f in manifest["files"]] == sorted(files)
    assert {f["name"]: f["blake3"] for f in manifest["files"]}["model.bin"] == \
        blake3.blake3(files["model.bin"]).hexdigest()

    for name, content in files.items():
        p = tmp_path / "art" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
    assert encode_artifact(tmp_path / "art") == blob


def _rezip(blob: bytes, replace: dict[str, bytes]) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(blob))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, replace.get(info.filename, src.read(info.filename)))
    return out.getvalue()


def test_artifact_tampering_detected() -> None:
    blob = encode_artifact({"a.txt": b"hello", "b.txt": b"world"})
    with pytest.raises(ArtifactError, match="does not match its BLAKE3"):
        decode_artifact(_rezip(blob, {"a.txt": b"HELLO"}))
    with pytest.raises(ArtifactError, match="bytes but the manifest says"):
        decode_artifact(_rezip(blob, {"a.txt": b"hello!"}))
    manifest = json.loads(zipfile.ZipFile(io.BytesIO(blob)).read("MANIFEST.json"))
    manifest["files"] = manifest["files"][:1]
    with pytest.raises(ArtifactError, match="not listed"):
        decode_artifact(_rezip(blob, {"MANIFEST.json": json.dumps(manifest).encode()}))
    with pytest.raises(ArtifactError, match="not a valid ZIP"):
        decode_artifact(blob[:40])


def test_artifact_bad_names(tmp_path: Path) -> None:
    for bad in ("../x", "/abs", "a//b", "MANIFEST.json", ""):
        with pytest.raises(ArtifactError):
            encode_artifact({bad: b"x"})
    with pytest.raises(ArtifactError, match="not a directory"):
        encode_artifact(tmp_path / "missing")


def test_kinds_and_parents() -> None:
    with pytest.raises(ValueError, match="blob, tensor, embed, artifact"):
        kinds.check_kind("video")
    with pytest.raises(InvalidArgument):  # also the gRPC-mapped error
        kinds.check_kind("video")
    with pytest.raises(KindError, match="not a tensor payload"):
        kinds.check_payload_head("tensor", b"hello")
    kinds.check_payload_head("blob", b"anything")
    aid = kinds.asset_id_of(b"x")
    assert kinds.is_asset_id(aid) and kinds.parse_asset_uri(kinds.asset_uri("ns", aid)) == \
        ("ns", aid)
    edges = kinds.normalize_parents(
        [aid.upper(), ParentEdge(aid, "t"), {"parent_id": aid, "transform": "resize",
                                              "transform_digest": "d"}])
    assert edges == [ParentEdge(aid), ParentEdge(aid, "t"), ParentEdge(aid, "resize", "d")]
    with pytest.raises(KindError, match="not an asset id"):
        kinds.normalize_parents(["nothex"])
    with pytest.raises(KindError, match="unknown keys"):
        kinds.normalize_parents([{"parent_id": aid, "oops": 1}])


def test_package_exports_resolve() -> None:
    import aifs_server

    for name in aifs_server.__all__:
        assert getattr(aifs_server, name) is not None, name
    assert aifs_server.TensorData is TensorData
    with pytest.raises(AttributeError):
        _ = aifs_server.no_such_name  # type: ignore[attr-defined]
