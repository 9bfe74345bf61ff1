"""Conformance suite, part 2 (every engine in metadata_engines.ENGINES): namespaces, chunk
records and refcounts, commit_file and truncate, file asset ids, GC candidates, assets and
lineage, concurrency, reopening."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import blake3
import pytest

from aifs_core.errors import (
    AlreadyExists,
    InvalidArgument,
    IsADirectory,
    MissingChunk,
    NotFound,
    ParentNotCommitted,
)
from aifs_core.types import (
    ROOT_INO,
    SET_SIZE,
    AssetRecord,
    ChunkRef,
    Namespace,
    ParentEdge,
    TreeRef,
)
from aifs_server.metadata.base import MetadataEngine
from tests.unit.metadata_engines import Harness, harness_fixture  # noqa: F401 (fixture)

CS = 1 << 20  # chunk size of the test namespaces
T = TreeRef("ns1")


def cid(n: int) -> bytes:
    return blake3.blake3(b"chunk %d" % n).digest()


@pytest.fixture
def md(harness: Harness) -> Iterator[MetadataEngine]:
    m = harness.open()
    m.create_namespace(Namespace("ns1", CS, 3, "key-1"))
    m.create_namespace(Namespace("ns2", CS, 3, "key-2"))
    m.ensure_tree(T)
    yield m
    m.close()


def refcount(h: Harness, ns: str, chunk: bytes) -> int | None:
    """The stored reference count, read past the engine (None = not recorded)."""
    r = h.scalar("SELECT refcount FROM chunks WHERE namespace = ? AND chunk_id = ?", ns, chunk)
    return None if r is None else int(r)


def record(md: MetadataEngine, *ns_ids: int, ns: str = "ns1", raw: int = CS) -> None:
    for n in ns_ids:
        md.record_chunk(ns, cid(n), raw, raw // 2)


def new_file(md: MetadataEngine, name: bytes = b"f") -> int:
    return md.create(T, ROOT_INO, name, 0o644, 0, 0).ino


# --- namespaces --------------------------------------------------------------------------------

def test_namespaces(md: MetadataEngine) -> None:
    ns = md.get_namespace("ns1")
    assert (ns.chunk_size, ns.zstd_level, ns.kms_key_id) == (CS, 3, "key-1")
    assert ns.created_ns > 0
    assert [n.name for n in md.list_namespaces()] == ["ns1", "ns2"]
    with pytest.raises(AlreadyExists, match="'ns1'"):
        md.create_namespace(Namespace("ns1", CS, 3, "k"))
    with pytest.raises(NotFound, match="'zz'"):
        md.get_namespace("zz")
    for bad in (Namespace("", CS, 3, "k"), Namespace("a/b", CS, 3, "k"),
                Namespace("ok", 0, 3, "k"), Namespace("ok", CS, 0, "k")):
        with pytest.raises(InvalidArgument):
            md.create_namespace(bad)


# --- chunk records -----------------------------------------------------------------------------

def test_record_and_has_chunks(md: MetadataEngine) -> None:
    assert md.record_chunk("ns1", cid(1), 100, 60) is True
    assert md.record_chunk("ns1", cid(1), 100, 60) is False
    assert md.record_chunk("ns1", cid(2), 50, 70) is True
    assert md.has_chunks("ns1", [cid(2), cid(3), cid(1)]) == [True, False, True]
    assert md.has_chunks("ns1", []) == []
    many = [cid(i) for i in range(1200)]  # more than one IN batch
    assert md.has_chunks("ns1", many).count(True) == 2
    st = md.chunk_stats("ns1")
    assert (st.chunks, st.raw_bytes, st.stored_bytes) == (2, 150, 130)
    with pytest.raises(InvalidArgument, match="32 bytes"):
        md.record_chunk("ns1", b"short", 1, 1)
    with pytest.raises(NotFound, match="'nope'"):
        md.record_chunk("nope", cid(1), 1, 1)


def test_chunks_are_per_namespace(md: MetadataEngine) -> None:
    record(md, 1, ns="ns1")
    assert md.has_chunks("ns2", [cid(1)]) == [False]
    assert md.chunk_stats("ns2").chunks == 0
    t2 = TreeRef("ns2")
    md.ensure_tree(t2)
    f = md.create(t2, ROOT_INO, b"f", 0o644, 0, 0).ino
    with pytest.raises(MissingChunk, match=cid(1).hex()):
        md.commit_file(t2, f, [ChunkRef(0, cid(1), 10)], 10)
    with pytest.raises(MissingChunk):
        md.put_asset("ns2", AssetRecord("a" * 64, "blob", 10, [ChunkRef(0, cid(1), 10)]))
    assert md.record_chunk("ns2", cid(1), CS, 5) is True  # its own record, own counts
    md.commit_file(t2, f, [ChunkRef(0, cid(1), 10)], 10)
    assert md.has_chunks("ns2", [cid(1)]) == [True]
    assert md.chunk_stats("ns1").chunks == 1


# --- commit_file -------------------------------------------------------------------------------

def test_commit_file_slots_size_and_refcounts(md: MetadataEngine, harness: Harness) -> None:
    f = new_file(md)
    record(md, 1, 2, 3)
    before = md.getattr(T, f)
    a = md.commit_file(T, f, [ChunkRef(0, cid(1), CS), ChunkRef(1, cid(2), 1000)], CS + 1000)
    assert (a.size, a.blocks, a.generation) == (CS + 1000, -(-(CS + 1000) // 512), 1)
    assert a.mtime_ns >= before.mtime_ns and a.ctime_ns >= before.ctime_ns
    attr, refs = md.get_chunk_map(T, f)
    assert attr == a
    assert refs == [ChunkRef(0, cid(1), CS), ChunkRef(1, cid(2), 1000)]
    assert (refcount(harness, "ns1", cid(1)), refcount(harness, "ns1", cid(2))) == (1, 1)
    # replace slot 1, same content in slot 0 of a second file (dedup counts both)
    b = md.commit_file(T, f, [ChunkRef(1, cid(3), 500)], 10, mtime_ns=123)
    assert b.size == CS + 1000 and b.mtime_ns == 123 and b.generation == 2  # size = max
    assert refcount(harness, "ns1", cid(2)) == 0 and refcount(harness, "ns1", cid(3)) == 1
    g = new_file(md, b"g")
    md.commit_file(T, g, [ChunkRef(0, cid(1), CS)], CS)
    assert refcount(harness, "ns1", cid(1)) == 2
    # clearing a slot makes a hole: fewer blocks, size unchanged
    c = md.commit_file(T, f, [ChunkRef(1, b"", 0)], 0)
    assert c.size == CS + 1000 and c.blocks == CS // 512
    assert md.get_chunk_map(T, f)[1] == [ChunkRef(0, cid(1), CS)]
    assert refcount(harness, "ns1", cid(3)) == 0
    # truncated commit shrinks and drops slots past the new end
    d = md.commit_file(T, f, [], 100, truncated=True)
    assert d.size == 100 and md.get_chunk_map(T, f)[1] == [ChunkRef(0, cid(1), 100)]
    assert d.blocks == 1 and refcount(harness, "ns1", cid(1)) == 2
    # a truncating commit ignores slots it names past its own new end
    e = md.commit_file(T, f, [ChunkRef(0, cid(2), 50), ChunkRef(5, cid(3), 10)], 20,
                       truncated=True)
    assert md.get_chunk_map(T, f)[1] == [ChunkRef(0, cid(2), 20)] and e.size == 20
    assert (refcount(harness, "ns1", cid(1)), refcount(harness, "ns1", cid(2))) == (1, 1)
    assert refcount(harness, "ns1", cid(3)) == 0 and e.blocks == 1


def test_commit_file_errors_leave_file_untouched(md: MetadataEngine) -> None:
    f = new_file(md)
    record(md, 1)
    good = md.commit_file(T, f, [ChunkRef(0, cid(1), 10)], 10)
    with pytest.raises(MissingChunk, match=f"{cid(9).hex()}.*PutChunks"):
        md.commit_file(T, f, [ChunkRef(0, cid(1), 20), ChunkRef(1, cid(9), 5)], CS + 5)
    with pytest.raises(InvalidArgument, match="32 bytes"):
        md.commit_file(T, f, [ChunkRef(0, b"x", 5)], 5)
    with pytest.raises(InvalidArgument, match="length"):
        md.commit_file(T, f, [ChunkRef(0, cid(1), CS + 1)], CS + 1)
    with pytest.raises(InvalidArgument, match="past the file size"):
        md.commit_file(T, f, [ChunkRef(3, cid(1), 5)], 10)
    with pytest.raises(InvalidArgument, match="negative"):
        md.commit_file(T, f, [ChunkRef(-1, cid(1), 5)], 10)
    with pytest.raises(IsADirectory):
        md.commit_file(T, ROOT_INO, [], 0)
    with pytest.raises(NotFound):
        md.commit_file(T, 999, [], 0)
    assert md.get_chunk_map(T, f) == (good, [ChunkRef(0, cid(1), 10)])
    record(md, 5, raw=100)
    with pytest.raises(InvalidArgument, match="exceeds"):
        md.commit_file(T, f, [ChunkRef(0, cid(5), 101)], 101)


def test_get_chunk_map_range(md: MetadataEngine) -> None:
    f = new_file(md)
    record(md, *range(6))
    md.commit_file(T, f, [ChunkRef(i, cid(i), CS) for i in range(6) if i != 2], 6 * CS)
    _, refs = md.get_chunk_map(T, f, first_index=1, count=3)
    assert [r.index for r in refs] == [1, 3]  # slot 2 is a hole
    assert [r.index for r in md.get_chunk_map(T, f, first_index=4)[1]] == [4, 5]
    with pytest.raises(IsADirectory):
        md.get_chunk_map(T, ROOT_INO)


def test_truncate_via_setattr(md: MetadataEngine, harness: Harness) -> None:
    f = new_file(md)
    record(md, 0, 1, 2)
    md.commit_file(T, f, [ChunkRef(i, cid(i), CS) for i in range(3)], 3 * CS, asset_id="aa")
    gen = md.getattr(T, f).generation
    a = md.setattr(T, f, SET_SIZE, size=CS + 10)
    assert a.size == CS + 10 and a.generation == gen + 1
    assert md.get_chunk_map(T, f)[1] == [ChunkRef(0, cid(0), CS), ChunkRef(1, cid(1), 10)]
    assert [refcount(harness, "ns1", cid(i)) for i in range(3)] == [1, 1, 0]
    assert a.blocks == -(-(CS + 10) // 512)
    assert md.get_file_asset_id(T, f) == ("", a.generation)
    b = md.setattr(T, f, SET_SIZE, size=5 * CS)  # grow: a hole, map unchanged
    assert b.size == 5 * CS and b.blocks == a.blocks and b.generation == gen + 2
    assert len(md.get_chunk_map(T, f)[1]) == 2
    c = md.setattr(T, f, SET_SIZE, size=CS)  # exactly at a slot boundary
    assert md.get_chunk_map(T, f)[1] == [ChunkRef(0, cid(0), CS)] and c.blocks == CS // 512
    assert refcount(harness, "ns1", cid(1)) == 0
    d = md.setattr(T, f, SET_SIZE, size=0)
    assert md.get_chunk_map(T, f)[1] == [] and d.blocks == 0 and d.size == 0
    assert refcount(harness, "ns1", cid(0)) == 0
    with pytest.raises(IsADirectory):
        md.setattr(T, ROOT_INO, SET_SIZE, size=0)
    with pytest.raises(InvalidArgument):
        md.setattr(T, f, SET_SIZE, size=-1)


def test_unlink_forget_releases_chunks(md: MetadataEngine, harness: Harness) -> None:
    f = new_file(md)
    record(md, 1, 2)
    md.commit_file(T, f, [ChunkRef(0, cid(1), CS), ChunkRef(1, cid(1), CS),
                          ChunkRef(2, cid(2), 7)], 2 * CS + 7)
    assert refcount(harness, "ns1", cid(1)) == 2
    md.setxattr(T, f, b"user.x", b"1")
    md.unlink(T, ROOT_INO, b"f")
    attr, refs = md.get_chunk_map(T, f)  # still readable while open
    assert attr.nlink == 0 and len(refs) == 3
    assert refcount(harness, "ns1", cid(1)) == 2
    md.forget(T, f)
    assert (refcount(harness, "ns1", cid(1)), refcount(harness, "ns1", cid(2))) == (0, 0)
    assert harness.scalar("SELECT COUNT(*) FROM chunk_maps") == 0
    assert harness.scalar("SELECT COUNT(*) FROM xattrs") == 0
    assert set(md.gc_candidates("ns1", 1 << 62)) == {cid(1), cid(2)}


def test_rename_replace_then_forget_releases_chunks(md: MetadataEngine, harness: Harness) -> None:
    f, g = new_file(md, b"f"), new_file(md, b"g")
    record(md, 1, 2)
    md.commit_file(T, f, [ChunkRef(0, cid(1), 5)], 5)
    md.commit_file(T, g, [ChunkRef(0, cid(2), 5)], 5)
    md.rename(T, ROOT_INO, b"f", ROOT_INO, b"g")
    assert md.orphan_inodes(T) == [g] and refcount(harness, "ns1", cid(2)) == 1
    md.forget(T, g)
    assert refcount(harness, "ns1", cid(2)) == 0 and refcount(harness, "ns1", cid(1)) == 1


def test_file_asset_id_cache(md: MetadataEngine) -> None:
    f = new_file(md)
    record(md, 1)
    assert md.get_file_asset_id(T, f) == ("", 0)
    a = md.commit_file(T, f, [ChunkRef(0, cid(1), 5)], 5, asset_id="abc")
    assert md.get_file_asset_id(T, f) == ("abc", a.generation)
    b = md.commit_file(T, f, [ChunkRef(0, cid(1), 6)], 6)  # no id given: cleared
    assert md.get_file_asset_id(T, f) == ("", b.generation)
    md.set_file_asset_id(T, f, b.generation, "def")
    assert md.get_file_asset_id(T, f) == ("def", b.generation)
    md.set_file_asset_id(T, f, b.generation - 1, "stale")  # generation moved on: ignored
    assert md.get_file_asset_id(T, f) == ("def", b.generation)
    with pytest.raises(NotFound):
        md.set_file_asset_id(T, 999, 0, "x")
    with pytest.raises(NotFound):
        md.get_file_asset_id(T, 999)


def test_concurrent_commits_to_different_slots(md: MetadataEngine, harness: Harness) -> None:
    f = new_file(md)
    threads_n, per = 6, 8
    record(md, *range(threads_n * per))
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads_n)

    def writer(k: int) -> None:
        try:
            barrier.wait()
            for j in range(per):
                idx = k * per + j
                md.commit_file(T, f, [ChunkRef(idx, cid(idx), CS)], (idx + 1) * CS)
        except BaseException as e:  # surfaced below
            errors.append(e)

    ts = [threading.Thread(target=writer, args=(k,)) for k in range(threads_n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []
    attr, refs = md.get_chunk_map(T, f)
    total = threads_n * per
    assert [r.index for r in refs] == list(range(total))
    assert all(r.chunk_id == cid(r.index) for r in refs)
    assert attr.size == total * CS and attr.generation == total
    assert attr.blocks == total * CS // 512
    assert all(refcount(harness, "ns1", cid(i)) == 1 for i in range(total))


# --- GC ----------------------------------------------------------------------------------------

def test_gc_candidates_and_forget_chunk(md: MetadataEngine, harness: Harness) -> None:
    record(md, 1, 2, 3)
    recorded = harness.scalar("SELECT MAX(recorded_ns) FROM chunks")
    assert md.gc_candidates("ns1", recorded - 10**9) == []  # recorded after the cutoff
    assert set(md.gc_candidates("ns1", recorded + 1)) == {cid(1), cid(2), cid(3)}
    f = new_file(md)
    md.commit_file(T, f, [ChunkRef(0, cid(1), 5)], 5)
    assert cid(1) not in md.gc_candidates("ns1", 1 << 62)
    assert md.forget_chunk("ns1", cid(1)) is False  # referenced: kept
    assert md.forget_chunk("ns1", cid(2)) is True
    assert md.forget_chunk("ns1", cid(2)) is False
    assert md.has_chunks("ns1", [cid(1), cid(2)]) == [True, False]
    md.commit_file(T, f, [ChunkRef(0, b"", 0)], 0)  # count drops to 0: grace clock starts now
    since = harness.scalar("SELECT unreferenced_since_ns FROM chunks WHERE chunk_id = ?",
                           cid(1))
    assert since >= recorded
    assert cid(1) not in md.gc_candidates("ns1", since)
    assert cid(1) in md.gc_candidates("ns1", since + 1)
    assert md.gc_candidates("ns2", 1 << 62) == []
    # committing it again stops the clock
    md.commit_file(T, f, [ChunkRef(0, cid(1), 5)], 5)
    assert cid(1) not in md.gc_candidates("ns1", 1 << 62)


# --- assets ------------------------------------------------------------------------------------

def asset(aid: str, *chunks: int, kind: str = "blob", parents: tuple[str, ...] = ()
          ) -> AssetRecord:
    return AssetRecord(aid, kind, 10 * len(chunks),
                       [ChunkRef(i, cid(n), 10) for i, n in enumerate(chunks)],
                       metadata_json='{"k": 1}',
                       parents=[ParentEdge(p, "derive", "d" + p) for p in parents])


def test_put_get_delete_asset_refcounts(md: MetadataEngine, harness: Harness) -> None:
    record(md, 1, 2)
    a = md.put_asset("ns1", asset("a1", 1, 2, 1))
    assert a.chunks == [ChunkRef(0, cid(1), 10), ChunkRef(1, cid(2), 10), ChunkRef(2, cid(1), 10)]
    assert a.stored_bytes == CS  # two distinct chunks of CS // 2 stored bytes each
    assert a.created_ns > 0 and a.metadata_json == '{"k": 1}'
    assert (refcount(harness, "ns1", cid(1)), refcount(harness, "ns1", cid(2))) == (2, 1)
    again = md.put_asset("ns1", asset("a1", 2, kind="tensor"))  # idempotent: existing record
    assert again == a and refcount(harness, "ns1", cid(1)) == 2
    assert md.get_asset("ns1", "a1") == a
    with pytest.raises(NotFound):
        md.get_asset("ns2", "a1")
    md.delete_asset("ns1", "a1")
    assert (refcount(harness, "ns1", cid(1)), refcount(harness, "ns1", cid(2))) == (0, 0)
    with pytest.raises(NotFound, match="a1"):
        md.get_asset("ns1", "a1")
    with pytest.raises(NotFound):
        md.delete_asset("ns1", "a1")


def test_put_asset_errors(md: MetadataEngine) -> None:
    record(md, 1)
    with pytest.raises(MissingChunk, match=cid(7).hex()):
        md.put_asset("ns1", asset("a", 1, 7))
    with pytest.raises(ParentNotCommitted, match="parent asset p0"):
        md.put_asset("ns1", asset("a", 1, parents=("p0",)))
    with pytest.raises(InvalidArgument, match="own parent"):
        md.put_asset("ns1", asset("a", 1, parents=("a",)))
    with pytest.raises(InvalidArgument, match="JSON"):
        md.put_asset("ns1", AssetRecord("a", "blob", 1, [], metadata_json="{nope"))
    with pytest.raises(InvalidArgument):
        md.put_asset("ns1", AssetRecord("", "blob", 1, []))
    with pytest.raises(NotFound):
        md.get_asset("ns1", "a")  # nothing half-written


def test_list_assets_paging_and_kind(md: MetadataEngine) -> None:
    record(md, 1)
    for i in range(7):
        md.put_asset("ns1", asset(f"id{i}", 1, kind="tensor" if i % 2 else "blob"))
    assert [a.asset_id for a in md.list_assets("ns1", limit=3)] == ["id0", "id1", "id2"]
    assert [a.asset_id for a in md.list_assets("ns1", limit=3, after="id2")] == [
        "id3", "id4", "id5"]
    assert [a.asset_id for a in md.list_assets("ns1", kind="tensor")] == ["id1", "id3", "id5"]
    assert [a.asset_id for a in md.list_assets("ns1", kind="tensor", after="id3")] == ["id5"]
    assert md.list_assets("ns1", kind="embed") == []
    assert md.list_assets("ns2") == []
    assert len(md.list_assets("ns1")[0].chunks) == 1


def test_lineage_breadth_first_and_after_delete(md: MetadataEngine) -> None:
    record(md, 1)
    #   root -> a, b ; a -> c ; b, c -> d  (diamond)
    md.put_asset("ns1", asset("root", 1))
    md.put_asset("ns1", asset("a", 1, parents=("root",)))
    md.put_asset("ns1", asset("b", 1, parents=("root",)))
    md.put_asset("ns1", asset("c", 1, parents=("a",)))
    d = md.put_asset("ns1", asset("d", 1, parents=("c", "b")))
    assert d.parents == [ParentEdge("c", "derive", "dc"), ParentEdge("b", "derive", "db")]
    assert [x.asset_id for x in md.lineage("ns1", "d")] == ["c", "b", "a", "root"]
    assert md.lineage("ns1", "root") == []
    with pytest.raises(NotFound):
        md.lineage("ns1", "zz")
    md.delete_asset("ns1", "c")
    assert md.get_asset("ns1", "d").parents[0].parent_id == "c"  # the edge stays
    assert [x.asset_id for x in md.lineage("ns1", "d")] == ["b", "root"]


# --- durability, versioning, lifecycle ---------------------------------------------------------

def test_reopen_keeps_everything(harness: Harness) -> None:
    m = harness.open()
    m.create_namespace(Namespace("ns1", CS, 3, "key-1"))
    m.ensure_tree(T, uid=7)
    d = m.mkdir(T, ROOT_INO, b"d", 0o700, 1, 1)
    f = m.create(T, d.ino, b"f", 0o600, 1, 1)
    m.symlink(T, d.ino, b"s", b"f", 1, 1)
    m.record_chunk("ns1", cid(1), CS, 10)
    a = m.commit_file(T, f.ino, [ChunkRef(0, cid(1), 100)], 100, asset_id="x")
    m.setxattr(T, f.ino, b"user.k", b"v")
    a = m.getattr(T, f.ino)  # setxattr moved ctime
    m.put_asset("ns1", asset("a1", 1))
    gone = m.create(T, d.ino, b"gone", 0o600, 1, 1)
    m.unlink(T, d.ino, b"gone")
    m.close()
    with pytest.raises(InvalidArgument, match="closed"):
        m.getattr(T, ROOT_INO)

    m2 = harness.open()
    try:
        assert m2.getattr(T, ROOT_INO).uid == 7
        assert m2.lookup(T, ROOT_INO, b"d") == m2.getattr(T, d.ino)
        assert m2.get_chunk_map(T, f.ino) == (a, [ChunkRef(0, cid(1), 100)])
        assert m2.get_file_asset_id(T, f.ino) == ("x", a.generation)
        assert m2.getxattr(T, f.ino, b"user.k") == b"v"
        assert m2.readlink(T, m2.lookup(T, d.ino, b"s").ino) == b"f"
        assert m2.get_asset("ns1", "a1").chunks == [ChunkRef(0, cid(1), 10)]
        assert m2.orphan_inodes(T) == [gone.ino]
        assert m2.has_chunks("ns1", [cid(1)]) == [True]
        assert m2.create(T, ROOT_INO, b"n", 0o644, 0, 0).ino > gone.ino  # no reuse
        stats = m2.tree_stats(T)
        assert stats.files == 6 and stats.logical_bytes == 100 + 1  # root d f s gone n
    finally:
        m2.close()


def test_iter_chunks_lists_every_recorded_chunk_of_its_namespace_only(harness: Harness) -> None:
    meta = harness.open()
    meta.create_namespace(Namespace("a", 1 << 20, 1, "local:1"))
    meta.create_namespace(Namespace("b", 1 << 20, 1, "local:1"))
    ids = sorted(bytes([i % 256, i // 256]) * 16 for i in range(2500))  # more than one page
    for cid in ids:
        meta.record_chunk("a", cid, 10, 20)
    meta.record_chunk("b", b"\xff" * 32, 10, 20)
    assert list(meta.iter_chunks("a")) == ids
    assert list(meta.iter_chunks("b")) == [b"\xff" * 32]
    meta.close()


