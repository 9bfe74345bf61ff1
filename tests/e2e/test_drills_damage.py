"""Fault drills (issue 13): damage at rest under a real server and a real mount.

- A chunk file corrupted or removed in the store: reading that chunk's range through a fresh
  mount is EIO (never ENOENT, never other bytes), the mount's log names the chunk; every other
  range reads exactly what was written.
- The metadata database altered at rest (SQLite with sqlite3 while the server is stopped;
  PostgreSQL with psycopg under a running shared server): a flipped bit in an inode's size or
  generation, or in a chunk-map slot's chunk id, length or index, fails the row's keyed
  checksum (server/metadata/row_mac.py): the file reads as EIO (never zeros, never other
  bytes), the server logs the row, and `aifs fsck` reports the file's path and inode.

Reads always go through a mount started after the damage, so no page or chunk cache of the
writer can hide it.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import blake3
import pytest

from aifsfs.client import AIFSClient
from tests.cluster import session_cluster
from tests.e2e.conftest import start_mount, teardown_mount
from tests.e2e.drills import MiB, Rig, chunk_files, content, read_each
from tests.services import Postgres, SeaweedFS

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


def _written_then_stopped(rig: Rig, seed: int, names: tuple[str, ...] = ("victim",)
                          ) -> tuple[dict[str, bytes], Path, dict[str, int]]:
    """Files written through a mount, the server stopped: (data, database, ino) by name."""
    sp = rig.serve()
    m = rig.mount(sp)
    data = {name: content(seed + i, SIZE) for i, name in enumerate(names)}
    for name, d in data.items():
        (m.path / name).write_bytes(d)
    m.unmount()
    sp.stop()
    db = rig.data_dir / "meta.db"
    with sqlite3.connect(db) as c:
        inos = {name: int(c.execute("SELECT ino FROM dentries WHERE name = ?",
                                    (name.encode(),)).fetchone()[0]) for name in names}
    return data, db, inos


def _flip_bit(v: int, bit: int) -> int:
    return v ^ (1 << bit)


# A flipped bit in each protected field: (name, table, column, bit, slot or None)
@dataclass(frozen=True)
class Flip:
    file: str
    table: str
    column: str
    bit: int
    slot: int | None = None


FLIPS = (
    Flip("size", "inodes", "size", 17),
    Flip("generation", "inodes", "generation", 0),
    Flip("chunk-id", "chunk_maps", "chunk_id", 2, slot=1),
    Flip("length", "chunk_maps", "length", 3, slot=3),      # the short last slot
    Flip("index", "chunk_maps", "idx", 2, slot=1),          # slot 1 moves to 5: a hole at 1
)


def _apply(execute: Callable[[str, tuple[object, ...]], list[tuple[object, ...]]],
           f: Flip, ino: int) -> None:
    """Flip one bit of one row through `execute(sql with ? placeholders, params) -> rows`,
    reading the value first (no XOR in SQLite's SQL, no bytea bit flip in both)."""
    where = "ino = ?" + ("" if f.slot is None else " AND idx = ?")
    key = (ino,) if f.slot is None else (ino, f.slot)
    rows = execute(f"SELECT {f.column} FROM {f.table} WHERE {where}", key)
    assert len(rows) == 1, (f, rows)   # one tree: nothing was snapshotted
    old = rows[0][0]
    new: object
    if isinstance(old, (bytes, memoryview)):
        b = bytes(old)
        new = bytes([b[0] ^ (1 << f.bit)]) + b[1:]
    else:
        assert isinstance(old, int)
        new = _flip_bit(old, f.bit)
    execute(f"UPDATE {f.table} SET {f.column} = ? WHERE {where}", (new, *key))


def _refused(path: Path) -> int | None:
    """The errno reading the whole file fails with, None when it reads."""
    try:
        path.read_bytes()
    except OSError as e:
        return e.errno
    return None


def _fsck_data(data_dir: Path) -> subprocess.CompletedProcess[str]:
    aifs = str(Path(sys.executable).parent / "aifs")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIFS_")}
    return subprocess.run([aifs, "fsck", "--data", str(data_dir)], capture_output=True,
                          text=True, env=env, timeout=120)


def test_a_flipped_size_bit_in_the_metadata_is_eio_not_zeros(tmp_path: Path) -> None:
    with Rig(tmp_path) as rig:
        data, db, inos = _written_then_stopped(rig, 3)
        ino = inos["victim"]
        assert _alter(db, "UPDATE inodes SET size = (size | ?1) - (size & ?1) WHERE ino = ?2",
                      1 << 17, ino) == 1
        sp = rig.serve()
        m = rig.mount(sp)
        try:
            got = (m.path / "victim").read_bytes()
        except OSError as e:
            assert e.errno == errno.EIO
        else:
            # what it reads must at least never be other bytes than were written
            assert got == data["victim"], f"read {len(got)} bytes for a {SIZE}-byte file"
            raise AssertionError("the altered size was served")
        assert f"inode {ino} fails its checksum" in sp.log(), sp.log()[-3000:]


def test_altered_rows_are_eio_logged_and_named_by_fsck(tmp_path: Path) -> None:
    """One file per protected field, each with one bit flipped in its row; an untouched file
    beside them still reads exactly."""
    names = tuple(f.file for f in FLIPS) + ("intact",)
    with Rig(tmp_path) as rig:
        data, db, inos = _written_then_stopped(rig, 10, names)
        with sqlite3.connect(db) as c:
            def execute(sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
                return c.execute(sql, params).fetchall()
            for f in FLIPS:
                _apply(execute, f, inos[f.file])
        sp = rig.serve()
        m = rig.mount(sp)
        for f in FLIPS:
            assert _refused(m.path / f.file) == errno.EIO, f
        assert (m.path / "intact").read_bytes() == data["intact"]
        log = sp.log()
        for f in FLIPS:
            row = (f"inode {inos[f.file]} fails" if f.slot is None
                   else f"of inode {inos[f.file]} fails")
            assert row in log, (f, log[-3000:])
        m.unmount()
        p = _fsck_data(rig.data_dir)   # offline, beside the running server (SQLite WAL)
        assert p.returncode == 1, p
        for f in FLIPS:
            line = next((ln for ln in p.stdout.splitlines() if f"main:/{f.file} " in ln), "")
            assert f"(inode {inos[f.file]})" in line and "keyed checksum" in line, (f, p.stdout)
            slot = f.slot if f.file != "index" else 5   # the row now says index 5
            assert ("inode row" in line) if f.slot is None else (f"slot {slot}" in line), line
        assert "/intact" not in p.stdout


def test_altered_rows_in_postgresql_are_eio_and_named_by_fsck(
        postgres: Postgres, seaweedfs: SeaweedFS) -> None:
    """The same through a shared server on PostgreSQL: rows altered under the running
    server (it caches no row), read through a fresh mount, fsck through the server."""
    import psycopg

    names = tuple(f.file for f in FLIPS) + ("intact",)
    with session_cluster(postgres, seaweedfs, "damage", n=1) as cl:
        srv = cl.servers[0]
        endpoint = _Endpoint(srv.address, str(cl.token_file))
        data = {name: content(20 + i, SIZE) for i, name in enumerate(names)}
        m = start_mount(endpoint, "--cache-size", "0")  # type: ignore[arg-type]
        try:
            for name, d in data.items():
                (m.path / name).write_bytes(d)
        finally:
            teardown_mount(m)
        with psycopg.connect(cl.meta_url, autocommit=True) as c:
            def execute(sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
                cur = c.execute(sql.replace("?", "%s"), params)
                return cur.fetchall() if cur.description else []
            inos = {n: int(execute("SELECT ino FROM dentries WHERE name = ?",
                                   (n.encode(),))[0][0]) for n in names}
            for f in FLIPS:
                _apply(execute, f, inos[f.file])
        m = start_mount(endpoint, "--cache-size", "0")  # type: ignore[arg-type]
        try:
            for f in FLIPS:
                assert _refused(m.path / f.file) == errno.EIO, f
            assert (m.path / "intact").read_bytes() == data["intact"]
        finally:
            teardown_mount(m)
        with AIFSClient(srv.address, token_file=cl.token_file) as sdk:
            report = sdk.fsck()
        assert not report["ok"]
        for f in FLIPS:
            assert any(f"main:/{f.file} (inode {inos[f.file]})" in p
                       for p in report["problems"]), (f, report["problems"])


@dataclass
class _Endpoint:
    """What start_mount needs of a server: an address and a token file."""
    address: str
    token_file: str
