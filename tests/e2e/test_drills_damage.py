"""Fault drills (issue 13): damage at rest under a real server and a real mount.

- A chunk file corrupted or removed in the store: reading that chunk's range through a fresh
  mount is EIO (never ENOENT, never other bytes), the mount's log names the chunk; every other
  range reads exactly what was written.
- The metadata database altered with sqlite3 while the server is stopped: a chunk-map slot
  naming another chunk id reads as EIO naming the chunk (the mount knows the id came from the
  file's own map: not ENOENT); a flipped bit in an inode's size
  reads extra zeros today (keyed row checksums are not built: strict xfail until they are).

Reads always go through a mount started after the damage, so no page or chunk cache of the
writer can hide it.
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import blake3
import pytest

from tests.e2e.drills import MiB, Rig, chunk_files, content, read_each

SIZE = 3 * MiB + 12345      # four chunk slots, the last one short


def _write(rig: Rig, name: str, seed: int) -> bytes:
    """Write a file through a mount of a fresh server, then unmount (everything committed)."""
    data = content(seed, SIZE)
    sp = rig.servers[-1]
    m = rig.mount(sp)
    (m.path / name).write_bytes(data)
    m.unmount()
    return data


def _slices(data: bytes) -> list[bytes]:
    return [data[i:i + MiB] for i in range(0, len(data), MiB)]


def test_a_corrupt_or_missing_chunk_is_eio_naming_it(tmp_path: Path) -> None:
    with Rig(tmp_path) as rig:
        sp = rig.serve()
        before = chunk_files(rig.data_dir)
        data = _write(rig, "victim", 1)
        new = sorted(chunk_files(rig.data_dir) - before)
        assert len(new) == 4
        ids = [blake3.blake3(s).hexdigest() for s in _slices(data)]
        raw = bytearray(new[0].read_bytes())
        raw[len(raw) // 2] ^= 0x01              # one bit, mid-envelope
        new[0].write_bytes(bytes(raw))
        new[1].unlink()                         # and one lost

        m = rig.mount(sp)
        got = read_each(m.path / "victim", SIZE, MiB)
        want = _slices(data)
        for i, (g, err) in enumerate(got):
            assert want[i].startswith(g), f"slot {i}: wrong bytes"
            assert err in (None, errno.EIO), f"slot {i}: {errno.errorcode.get(err or 0)}"
            assert (err is None) == (g == want[i]), f"slot {i}: short without an error"
        bad = [i for i, (_g, err) in enumerate(got) if err is not None]
        assert len(bad) == 2, [(len(g), err) for g, err in got]
        log = m.log()
        for i in bad:
            assert ids[i] in log, f"the mount's log does not name chunk {ids[i]}:\n{log}"
        # reading the whole file fails too: never a short or patched copy
        with pytest.raises(OSError) as ei:
            (m.path / "victim").read_bytes()
        assert ei.value.errno == errno.EIO


def _alter(db: Path, sql: str, *params: object) -> int:
    with sqlite3.connect(db) as c:
        n = c.execute(sql, params).rowcount
    return n


def _written_then_stopped(rig: Rig, seed: int) -> tuple[bytes, Path, int]:
    """A file "victim" written through a mount, the server stopped: (data, database, ino)."""
    sp = rig.serve()
    data = _write(rig, "victim", seed)
    sp.stop()
    db = rig.data_dir / "meta.db"
    with sqlite3.connect(db) as c:
        (ino,) = c.execute("SELECT ino FROM dentries WHERE name = ?", (b"victim",)).fetchone()
    return data, db, int(ino)


def test_a_flipped_chunk_id_in_the_metadata_is_eio_naming_the_chunk(tmp_path: Path) -> None:
    with Rig(tmp_path) as rig:
        data, db, ino = _written_then_stopped(rig, 2)
        # flip one bit of slot 1's chunk id: it now names a chunk nobody recorded
        with sqlite3.connect(db) as c:
            (cid,) = c.execute("SELECT chunk_id FROM chunk_maps WHERE ino = ? AND idx = 1",
                               (ino,)).fetchone()
            flipped = bytes([cid[0] ^ 0x04]) + cid[1:]      # still a BLOB, as stored
            c.execute("UPDATE chunk_maps SET chunk_id = ? WHERE ino = ? AND idx = 1",
                      (flipped, ino))
        sp = rig.serve()
        m = rig.mount(sp)
        got = read_each(m.path / "victim", SIZE, MiB)
        want = _slices(data)
        for i, (g, err) in enumerate(got):
            assert want[i].startswith(g), f"slot {i}: wrong bytes"
            if i == 1:   # it names a chunk that is not stored: EIO, as a lost chunk
                assert err == errno.EIO, errno.errorcode.get(err or 0)
            else:
                assert err is None and g == want[i], f"slot {i}"
        assert flipped.hex() in m.log(), m.log()


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "metadata at rest has no integrity check yet (issue 13: keyed checksums over size, chunk "
    "map and generation, not built): a flipped size bit reads 131,072 extra zero bytes "
    "silently instead of EIO"))
def test_a_flipped_size_bit_in_the_metadata_is_eio_not_zeros(tmp_path: Path) -> None:
    with Rig(tmp_path) as rig:
        data, db, ino = _written_then_stopped(rig, 3)
        assert _alter(db, "UPDATE inodes SET size = (size | ?1) - (size & ?1) WHERE ino = ?2",
                      1 << 17, ino) == 1
        sp = rig.serve()
        m = rig.mount(sp)
        try:
            got = (m.path / "victim").read_bytes()
        except OSError as e:
            assert e.errno == errno.EIO
            return
        # what it reads must at least never be other bytes than were written
        assert got == data, f"read {len(got)} bytes for a {len(data)}-byte file"
