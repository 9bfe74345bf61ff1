"""fsck and GC (aifs_server.maintenance) on a real data dir, with no server."""

from __future__ import annotations

import os
import stat
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from blake3 import blake3

from aifs_core.errors import NotFound
from aifs_core.types import ROOT_INO, ChunkRef, TreeRef
from aifs_server import maintenance
from aifs_server.datadir import DataDir, format_data_dir, open_data_dir
from aifs_server.deadline import Deadline
from aifs_server.small_chunks import SMALL_MAX
from tests.stored_chunks import StoredChunk, stored_chunks

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


def _stored_path(dd: DataDir, cid: bytes, ns: str = "default") -> StoredChunk:
    """The chunk's envelope where the local store keeps it (a file or a row)."""
    name = dd.chunks.name_for(ns, cid)
    [stored] = [c for c in stored_chunks(Path(dd.store.root)) if c.name == name]
    return stored


def test_fsck_finds_missing_and_corrupt_chunks(dd: DataDir) -> None:
    good = _chunk(dd, b"good " * 1000)
    bad = _chunk(dd, os.urandom(60000))   # incompressible: its middle is frame data
    gone = _chunk(dd, b"to be lost " * 1000)
    r = maintenance.fsck(dd, read_data=True)
    assert (r.ok, r.problems, r.chunks_checked, r.complete) == (True, [], 3, True)
    victim = _stored_path(dd, bad)
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))
    assert dd.store.delete(dd.chunks.name_for("default", gone))
    quick = maintenance.fsck(dd)  # reads no frame data: sees only the missing one
    assert not quick.ok and quick.chunks_checked == 3
    assert quick.problems == [f"namespace default: chunk {gone.hex()} is recorded but missing "
                              f"from the chunk store; no file or asset uses it (gc will "
                              f"collect it)"]
    full = maintenance.fsck(dd, read_data=True)
    assert not full.ok and len(full.problems) == 2
    assert any(bad.hex() in p for p in full.problems)
    assert not any(good.hex() in p for p in full.problems)


def _file(dd: DataDir, tree: TreeRef, parent: int, name: bytes, cids: list[bytes],
          length: int) -> int:
    ino = dd.meta.create(tree, parent, name, stat.S_IFREG | 0o644, 0, 0).ino
    # every slot holds `length` bytes; the file ends with the last one (earlier ones: holes)
    dd.meta.commit_file(tree, ino, [ChunkRef(i, c, length) for i, c in enumerate(cids)],
                        (len(cids) - 1) * 65536 + length, truncated=True)
    return ino


def test_fsck_without_read_data_finds_a_truncated_chunk_and_names_its_files(dd: DataDir
                                                                            ) -> None:
    main, other = TreeRef("default", "main"), TreeRef("default", "exp")
    dd.meta.ensure_tree(other)
    data = os.urandom(60000)
    cid = _chunk(dd, data)
    fine = _chunk(dd, b"fine " * 100)
    sub = dd.meta.mkdir(main, ROOT_INO, b"sub", 0o40755, 0, 0).ino
    _file(dd, main, sub, b"uses-it", [fine, cid], 500)
    _file(dd, other, ROOT_INO, b"also", [cid], 60000)
    gone_file = _file(dd, main, ROOT_INO, b"open-then-unlinked", [cid], 100)
    dd.meta.unlink(main, ROOT_INO, b"open-then-unlinked")   # nlink 0, kept until forget
    _file(dd, main, ROOT_INO, b"clean", [fine], 500)
    assert maintenance.fsck(dd).ok
    # cut the stored chunk short: a torn write, a damaged disk
    victim = _stored_path(dd, cid)
    victim.write_bytes(victim.read_bytes()[:-1000])
    r = maintenance.fsck(dd)
    assert not r.ok and r.complete and r.files_checked == 4
    [problem] = r.problems
    assert problem.startswith(f"namespace default: chunk {cid.hex()} is damaged")
    assert "main:/sub/uses-it" in problem and "exp:/also" in problem
    assert f"main: unlinked inode {gone_file}" in problem
    assert "clean" not in problem and fine.hex() not in problem


def test_fsck_finds_a_slot_naming_an_unrecorded_chunk(dd: DataDir) -> None:
    main = TreeRef("default", "main")
    cid = _chunk(dd, b"soon forgotten " * 10)
    _file(dd, main, ROOT_INO, b"f", [cid], 150)
    # the record goes while a slot still names it (a damaged database, a buggy engine)
    with dd.meta._store.write() as tx:  # type: ignore[attr-defined]
        tx.adjust_refs("default", Counter({cid: -1}), 0)
    assert dd.meta.forget_chunk("default", cid)
    r = maintenance.fsck(dd)
    assert not r.ok
    assert any(f"main:/f: slot 0 names chunk {cid.hex()}, which is not recorded" in p
               for p in r.problems), r.problems


def test_stale_temp_files_are_reported_by_fsck_and_removed_by_gc(dd: DataDir) -> None:
    cid = _chunk(dd, os.urandom(SMALL_MAX + 1000))   # kept as a file: temp files sit by them
    victim = _stored_path(dd, cid).path
    stale = victim.parent / f".tmp-{victim.name}-999999-1"
    fresh = victim.parent / f".tmp-{'ab' * 32}-999999-2"
    for p in (stale, fresh):
        p.write_bytes(b"x" * 1234)
    old = time.time() - maintenance.STALE_TEMP_SECONDS - 60
    os.utime(stale, (old, old))   # left by a crash long ago
    r = maintenance.fsck(dd)
    assert not r.ok and len(r.problems) == 1
    assert "1 temp files" in r.problems[0] and str(stale) in r.problems[0]
    dry = maintenance.gc(dd, dry_run=True)
    assert dry.temp_files_deleted == 1 and stale.exists()
    g = maintenance.gc(dd)   # whatever the grace: a temp file is nobody's chunk
    assert (g.temp_files_deleted, g.bytes_freed, g.chunks_deleted) == (1, 1234, 0)
    assert not stale.exists()
    assert fresh.exists()   # may be a write in progress: kept
    assert dd.chunks.has("default", [cid]) == [True]
    assert maintenance.fsck(dd).ok
    fresh.unlink()


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
