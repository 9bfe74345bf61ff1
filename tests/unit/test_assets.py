"""AssetManager / AssetStore on a real data directory: on-disk properties, kinds, streaming,
lineage, verification and bad input."""

from __future__ import annotations

import os
import random
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import blake3
import numpy as np
import pytest

from aifs_core.errors import AIFSError, InvalidArgument, NotFound, ParentNotCommitted
from aifs_core.kinds import ArtifactError, EmbeddingData, KindError, encode_artifact
from aifs_core.types import ChunkRef, ParentEdge, TreeRef
from aifs_server import AssetManager, TensorData
from aifs_server.asset_store import AssetNotFound, AssetStore
from aifs_server.datadir import format_data_dir, open_data_dir
from tests.stored_chunks import StoredChunk, stored_chunks
from tests.unit.test_kinds import _arrays, _rezip

MARKER = b"zebra-quokka-7f3a"


def _text(n_words: int, seed: int = 0) -> bytes:
    rnd = random.Random(seed)
    words = [b"tensor", b"chunk", b"frame", b"zstd", b"model", b"epoch", b"loss", b"batch"]
    return b" ".join(rnd.choice(words) for _ in range(n_words))


def _stored_files(root: Path) -> list[StoredChunk]:
    return sorted(stored_chunks(root / "chunks"))


def _disk(root: Path) -> tuple[int, int]:
    files = _stored_files(root)
    return len(files), sum(p.size() for p in files)


@pytest.fixture
def am(tmp_path: Path) -> Iterator[AssetManager]:
    with AssetManager(tmp_path / "aifs") as m:
        yield m


def test_compressed_encrypted_on_disk_and_deduplicated(am: AssetManager, tmp_path: Path) -> None:
    root = tmp_path / "aifs"
    text = (_text(20000) + b" " + MARKER + b" ") * 3
    aid = am.put_asset(text, "blob", {"source": "unit"})
    assert aid == blake3.blake3(text).hexdigest()
    files, stored = _disk(root)
    assert files >= 1 and stored < len(text) // 2
    info = am.get_asset(aid)
    assert info["data"] == text and info["size"] == len(text)
    assert 0 < info["stored_bytes"] < len(text) // 2
    assert info["uri"] == f"aifs://default/{aid}" and info["kind"] == "blob"
    assert info["metadata"] == {"source": "unit"} and info["asset_id"] == aid

    # No stored file holds the plaintext (chunks are encrypted; metadata never holds content).
    am.close()
    candidates = _stored_files(root) + [p for p in root.iterdir() if p.name.startswith("meta.db")]
    assert any(p.name == "meta.db" for p in candidates)
    for p in candidates:
        content = p.read_bytes()
        assert MARKER not in content, p
        assert b"tensor chunk" not in content and b"chunk frame" not in content, p

    # Put again (a new manager over the same dir): same id, nothing new on disk.
    with AssetManager(root) as again:
        stats = again.stats()
        assert again.put_asset(text, "blob") == aid
        assert _disk(root) == (files, stored)
        assert again.stats() == stats
        assert again.get_asset(aid)["metadata"] == {"source": "unit"}


def test_set_compression_level_changes_new_chunks(tmp_path: Path) -> None:
    data = _text(60000, seed=3)
    with AssetManager(tmp_path / "fast", compression_level=1) as fast:
        s1 = fast.get_asset(fast.put_asset(data, "blob"))["stored_bytes"]
        assert fast.compression_service.get_compression_stats()["bytes_in"] >= len(data)
    with AssetManager(tmp_path / "small", compression_level=1) as small:
        small.compression_service.set_compression_level(19)
        assert small.compression_service.get_compression_stats()["compression_level"] == 19
        s19 = small.get_asset(small.put_asset(data, "blob"))["stored_bytes"]
    assert s19 < s1


@pytest.mark.parametrize("name", list(_arrays()))
def test_tensor_round_trip_through_store(am: AssetManager, name: str) -> None:
    arr = _arrays()[name]
    tid = am.put_tensor(TensorData(data=arr, dtype=str(arr.dtype), shape=arr.shape,
                                   metadata={"name": name}))
    back = am.get_tensor(tid)
    assert back.data.dtype == arr.dtype and back.data.dtype.str == arr.dtype.str
    assert back.data.shape == arr.shape
    assert back.data.tobytes() == arr.tobytes()
    assert back.metadata == {"name": name}
    assert am.get_asset(tid)["kind"] == "tensor"


def test_embeddings_and_artifacts_round_trip(am: AssetManager, tmp_path: Path) -> None:
    vec = np.linspace(0, 1, 768, dtype=np.float32)
    eid = am.put_embedding(vec, model="text-embedding-3", modality="text", metadata={"doc": 1})
    emb = am.get_embedding(eid)
    assert np.array_equal(emb.vectors, vec) and emb.model == "text-embedding-3"
    assert emb.dim == 768 and emb.metadata == {"doc": 1}
    mat = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
    eid2 = am.put_embedding(EmbeddingData(mat, model="clip", modality="image"))
    assert np.array_equal(am.get_embedding(eid2).vectors, mat)
    with pytest.raises(KindError, match="model"):
        am.put_embedding(vec)

    files = {"weights.bin": os.urandom(5000), "conf/config.json": b"{}"}
    aid = am.put_artifact(files, metadata={"run": 7})
    assert am.get_artifact(aid) == files
    d = tmp_path / "art"
    for n, c in files.items():
        (d / n).parent.mkdir(parents=True, exist_ok=True)
        (d / n).write_bytes(c)
    assert am.put_artifact(d) == aid  # same files -> same bytes -> same id

    with pytest.raises(KindError, match="is a artifact, not a tensor"):
        am.get_tensor(aid)


def test_artifact_tampering_detected_on_read(am: AssetManager) -> None:
    blob = encode_artifact({"a.txt": b"hello world"})
    # A consistent ZIP (CRCs right) whose file no longer matches MANIFEST.json ...
    aid = am.put_asset(_rezip(blob, {"a.txt": b"HELLO world"}), "artifact")
    with pytest.raises(ArtifactError, match="does not match its BLAKE3"):
        am.get_artifact(aid)
    # ... and bytes edited in place (the ZIP's own CRC catches it first).
    aid2 = am.put_asset(blob.replace(b"hello world", b"HELLO world"), "artifact")
    with pytest.raises(ArtifactError, match="CRC"):
        am.get_artifact(aid2)


def test_large_asset_streams_with_bounded_memory(am: AssetManager) -> None:
    total = 64 << 20
    piece = 300_000  # not a divisor of the chunk size: exercises re-chunking

    def gen() -> Iterator[bytes]:
        sent = 0
        n = 0
        while sent < total:
            size = min(piece, total - sent)
            block = blake3.blake3(n.to_bytes(8, "little")).digest(length=4096)
            yield (block * (size // 4096 + 1))[:size]
            sent += size
            n += 1

    expected = blake3.blake3()
    for p in gen():
        expected.update(p)

    tracemalloc.start()
    try:
        aid = am.put_asset(gen(), "blob")
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        info, it = am.open_asset(aid)
        h = blake3.blake3()
        n = 0
        for part in it:
            h.update(part)
            n += len(part)
        _, get_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert aid == expected.hexdigest() == h.hexdigest()
    assert n == total == info["size"] and info["chunk_count"] == 64
    print(f"64 MiB asset: tracemalloc peak put {put_peak >> 10} KiB, get {get_peak >> 10} KiB")
    assert put_peak < 16 << 20, put_peak
    assert get_peak < 16 << 20, get_peak
    assert am.verify_asset(aid)


def test_file_object_input(am: AssetManager, tmp_path: Path) -> None:
    p = tmp_path / "in.bin"
    p.write_bytes(_text(5000))
    with p.open("rb") as f:
        aid = am.put_asset(f, "blob")
    assert am.get_asset(aid)["data"] == p.read_bytes()
    empty = am.put_asset(iter([b"", b""]), "blob")
    assert empty == blake3.blake3(b"").hexdigest()
    assert am.get_asset(empty)["data"] == b"" and am.get_asset(empty)["chunk_count"] == 0
    with p.open("r") as f, pytest.raises(InvalidArgument, match="text mode"):
        am.put_asset(f, "blob")


def test_lineage_and_causality(am: AssetManager, tmp_path: Path) -> None:
    a = am.put_asset(b"raw data", "blob")
    b = am.put_asset(b"cleaned data", "blob",
                     parents=[{"parent_id": a, "transform": "clean", "transform_digest": "d1"}])
    c = am.put_asset(b"features", "blob", parents=[ParentEdge(b, "featurize")])
    info = am.get_asset(c)
    assert info["parents"] == [{"parent_id": b, "transform": "featurize",
                                "transform_digest": ""}]
    assert [x["asset_id"] for x in am.get_lineage(c)] == [b, a]

    # A parent that is not committed: refused, naming it, and nothing of the child stored.
    ghost = blake3.blake3(b"never put").hexdigest()
    root = tmp_path / "aifs"
    disk, stats = _disk(root), am.stats()
    child = b"orphan child content " * 100
    with pytest.raises(ParentNotCommitted, match=ghost):
        am.put_asset(child, "blob", parents=[a, ghost])
    assert _disk(root) == disk and am.stats() == stats
    with pytest.raises(AssetNotFound):
        am.get_asset(blake3.blake3(child).hexdigest())


def test_list_delete_verify(am: AssetManager, tmp_path: Path) -> None:
    ids = {am.put_asset(f"blob {i}".encode(), "blob") for i in range(3)}
    tid = am.put_tensor(TensorData(np.arange(4)))
    assert {x["asset_id"] for x in am.list_assets()} == ids | {tid}
    assert [x["asset_id"] for x in am.list_assets(kind="tensor")] == [tid]
    with pytest.raises(ValueError, match="valid kinds"):
        am.list_assets(kind="video")

    victim = sorted(ids)[0]
    am.delete_asset(victim)
    with pytest.raises(AssetNotFound):
        am.get_asset(victim)
    assert victim not in {x["asset_id"] for x in am.list_assets()}

    # Corrupt a stored chunk on disk: verify says so, a read raises (never wrong bytes).
    big = _text(30000, seed=9)
    aid = am.put_asset(big, "blob")
    result = am.verify_asset(aid)
    assert result and "BLAKE3 matches" in result.detail
    before = {p: p.read_bytes() for p in _stored_files(tmp_path / "aifs")}
    target = max(before, key=lambda p: len(before[p]))  # the big asset's chunk
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    target.write_bytes(bytes(raw))
    bad = am.verify_asset(aid)
    assert not bad and bad.detail
    with pytest.raises(AIFSError):
        am.get_asset(aid)


def test_bad_input(am: AssetManager, tmp_path: Path) -> None:
    root = tmp_path / "aifs"
    disk, stats = _disk(root), am.stats()
    with pytest.raises(ValueError, match="blob, tensor, embed, artifact"):
        am.put_asset(b"data", "video")
    with pytest.raises(KindError, match="not a tensor payload"):
        am.put_asset(b"plain bytes", "tensor")
    with pytest.raises(InvalidArgument, match="not str"):
        am.put_asset("text", "blob")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="JSON"):
        am.put_asset(b"x", "blob", metadata={"f": object()})
    assert _disk(root) == disk and am.stats() == stats

    unknown = blake3.blake3(b"nothing").hexdigest()
    with pytest.raises(AssetNotFound, match=unknown) as ei:
        am.get_asset(unknown)
    assert isinstance(ei.value, KeyError) and isinstance(ei.value, NotFound)
    with pytest.raises(KeyError):
        am.get_tensor(unknown)
    with pytest.raises(InvalidArgument, match="not an asset id"):
        am.get_asset("nope")


@pytest.mark.parametrize("level", [0, 23, -1, "3"])
def test_bad_compression_level_creates_nothing(tmp_path: Path, level: object) -> None:
    with pytest.raises(ValueError, match="1-22"):
        AssetManager(tmp_path / "aifs", compression_level=level)  # type: ignore[arg-type]
    assert not (tmp_path / "aifs").exists()
    with AssetManager(tmp_path / "ok") as m, pytest.raises(ValueError, match="1-22"):
        m.compression_service.set_compression_level(level)  # type: ignore[arg-type]


def test_compute_file_asset_id_with_holes(tmp_path: Path) -> None:
    root = tmp_path / "d"
    cs = 4096
    format_data_dir(root, chunk_size=cs)
    with open_data_dir(root) as dd:
        store = AssetStore(dd)
        tree = TreeRef("default", "main")
        attr = dd.meta.create(tree, 1, b"f.bin", 0o100644, 0, 0)
        c0 = os.urandom(cs)
        c2 = b"tail" * 100  # shorter than its slot
        refs = []
        for index, chunk in ((0, c0), (2, c2)):
            cid = blake3.blake3(chunk).digest()
            _, stored = dd.chunks.put("default", cid, chunk)
            dd.meta.record_chunk("default", cid, len(chunk), stored)
            refs.append(ChunkRef(index, cid, len(chunk)))
        size = 3 * cs + 100  # chunk 1 is a hole; chunk 2 is padded with zeros; chunk 3 a hole
        dd.meta.commit_file(tree, attr.ino, refs, size)
        content = c0 + bytes(cs) + c2 + bytes(cs - len(c2)) + bytes(100)
        expected = blake3.blake3(content).hexdigest()
        assert store.compute_file_asset_id(tree, attr.ino) == expected
        assert dd.meta.get_file_asset_id(tree, attr.ino)[0] == expected
        assert store.compute_file_asset_id(tree, attr.ino) == expected  # from the cache


def test_failed_stream_commits_nothing(am: AssetManager) -> None:
    def broken() -> Iterator[bytes]:
        yield b"a" * (3 << 20)
        raise OSError("client went away")

    with pytest.raises(OSError, match="went away"):
        am.put_asset(broken(), "blob")
    assert am.list_assets() == []


def test_manager_refuses_foreign_directory(tmp_path: Path) -> None:
    from aifs_server.datadir import DataDirError

    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataDirError, match="not an AIFS data directory"):
        AssetManager(foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
