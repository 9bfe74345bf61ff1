"""fsck and GC (aifs_server.maintenance) on a real data dir, with no server."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from blake3 import blake3

from aifs_core.errors import NotFound
from aifs_core.types import ROOT_INO, TreeRef
from aifs_server import maintenance
from aifs_server.datadir import DataDir, format_data_dir, open_data_dir
from aifs_server.deadline import Deadline

PASSED = Deadline.after(-1.0)  # a deadline already behind us


@pytest.fixture
def dd(tmp_path: Path) -> Iterator[DataDir]:
    format_data_dir(tmp_path / "data", chunk_size=65536)
    with open_data_dir(tmp_path / "data") as d:
        yield d


def _chunk(dd: DataDir, text: bytes, ns: str = "default") -> bytes:
    """A chunk stored and recorded, referenced by nothing (what a deleted file leaves)."""
    cid = blake3(text).digest()
    _, stored = dd.chunks.put(ns, cid, text)
    dd.meta.record_chunk(ns, cid, len(text), stored)
    return cid


def _orphan(dd: DataDir, tree: TreeRef, name: bytes) -> int:
    """An inode unlinked while open, never forgotten (what a crashed mount leaves)."""
    ino = dd.meta.create(tree, ROOT_INO, name, stat.S_IFREG | 0o644, 0, 0).ino
    dd.meta.unlink(tree, ROOT_INO, name)
    return ino


def test_gc_collects_orphans_of_every_branch_and_unreferenced_chunks(dd: DataDir) -> None:
    main, other = TreeRef("default", "main"), TreeRef("default", "other")
    dd.meta.ensure_tree(other)
    in_main, in_other = _orphan(dd, main, b"a"), _orphan(dd, other, b"b")
    cid = _chunk(dd, b"unreferenced " * 500)
    stored = dd.chunks.stored_size("default", cid)
    # within the grace nothing goes
    r = maintenance.gc(dd)
    assert (r.chunks_deleted, r.orphans_deleted, r.complete) == (0, 0, True)
    dry = maintenance.gc(dd, grace_seconds=0, dry_run=True)
    assert (dry.chunks_deleted, dry.bytes_freed, dry.orphans_deleted) == (1, 0, 2)
    assert dd.meta.getattr(other, in_other).nlink == 0  # a dry run deletes nothing
    r = maintenance.gc(dd, grace_seconds=0)
    assert (r.chunks_deleted, r.bytes_freed, r.orphans_deleted, r.complete) == \
        (1, stored, 2, True)
    for tree, ino in ((main, in_main), (other, in_other)):
        with pytest.raises(NotFound):
            dd.meta.getattr(tree, ino)
    assert dd.chunks.has("default", [cid]) == [False]
    assert maintenance.gc(dd, grace_seconds=0) == maintenance.GCResult()


def test_gc_covers_only_the_namespaces_it_is_given(dd: DataDir) -> None:
    dd.ensure_namespace("ml")
    keep = _chunk(dd, b"in default " * 100)
    drop = _chunk(dd, b"in ml " * 100, "ml")
    r = maintenance.gc(dd, ["ml"], grace_seconds=0)
    assert r.chunks_deleted == 1
    assert dd.chunks.has("default", [keep]) == [True]
    assert dd.chunks.has("ml", [drop]) == [False]


def test_gc_stops_at_its_deadline_having_done_nothing_more(dd: DataDir) -> None:
    _orphan(dd, TreeRef("default", "main"), b"a")
    cid = _chunk(dd, b"x" * 1000)
    r = maintenance.gc(dd, grace_seconds=0, deadline=PASSED)
    assert not r.complete and (r.chunks_deleted, r.orphans_deleted) == (0, 0)
    assert dd.chunks.has("default", [cid]) == [True]


def test_fsck_finds_missing_and_corrupt_chunks(dd: DataDir) -> None:
    good = _chunk(dd, b"good " * 1000)
    bad = _chunk(dd, b"to be damaged " * 1000)
    gone = _chunk(dd, b"to be lost " * 1000)
    r = maintenance.fsck(dd, read_data=True)
    assert (r.ok, r.problems, r.chunks_checked, r.complete) == (True, [], 3, True)
    path = Path(dd.store.root)
    name = dd.chunks.name_for("default", bad)
    victim = path / name[:2] / name[2:4] / name
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))
    assert dd.store.delete(dd.chunks.name_for("default", gone))
    quick = maintenance.fsck(dd)  # reads no data: sees only the missing one
    assert not quick.ok and quick.chunks_checked == 3
    assert quick.problems == [f"namespace default: chunk {gone.hex()} is recorded but missing "
                              f"from the chunk store"]
    full = maintenance.fsck(dd, read_data=True)
    assert not full.ok and len(full.problems) == 2
    assert any(bad.hex() in p for p in full.problems)
    assert not any(good.hex() in p for p in full.problems)


def test_fsck_stops_at_its_deadline_and_says_so(dd: DataDir) -> None:
    _chunk(dd, b"fine " * 100)
    for read_data in (False, True):
        r = maintenance.fsck(dd, read_data=read_data, deadline=PASSED)
        assert not r.ok and not r.complete and r.chunks_checked == 0
        assert "deadline" in r.problems[-1] and "aifs fsck --data" in r.problems[-1]


def test_fsck_stops_listing_after_max_problems(dd: DataDir,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(maintenance, "MAX_PROBLEMS", 5)
    monkeypatch.setattr(maintenance, "FSCK_BATCH", 3)  # several has_many batches
    for i in range(8):  # recorded, never stored
        dd.meta.record_chunk("default", blake3(b"%d" % i).digest(), 1, 1)
    r = maintenance.fsck(dd)
    assert not r.ok and not r.complete and r.chunks_checked == 5
    assert len(r.problems) == 6 and r.problems[-1] == "more than 5 problems; stopped listing"
