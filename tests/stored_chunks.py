"""The envelopes a LocalChunkStore holds on disk, for tests that look at or damage them.

Interface:
    stored_chunks(chunks_dir) -> set[StoredChunk]   every envelope: chunk files (ab/cd/<name>)
                                     and rows of small.sqlite (envelopes up to SMALL_MAX bytes)
    StoredChunk                      shaped like the Path of a chunk file, so a test reads the
                                     same whichever way the envelope is kept: .name,
                                     .read_bytes(), .write_bytes(data) (the bytes replaced in
                                     place: a damaged disk), .unlink(), .size(), .packed (a row)
                                     Equal and ordered by name.

Reading or writing a row goes through its own SQLite connection, as another process would.
"""

from __future__ import annotations

import contextlib
import sqlite3
from functools import total_ordering
from pathlib import Path

from aifs_server.chunkstore import _NAME, SMALL_FILE


def _db(chunks_dir: Path) -> sqlite3.Connection:
    db = sqlite3.connect(chunks_dir / SMALL_FILE, isolation_level=None, timeout=10)
    db.execute("PRAGMA busy_timeout=10000")
    return db


@total_ordering
class StoredChunk:
    def __init__(self, chunks_dir: Path, name: str, packed: bool) -> None:
        self.chunks_dir = chunks_dir
        self.name = name
        self.packed = packed

    @property
    def path(self) -> Path:
        return self.chunks_dir / self.name[0:2] / self.name[2:4] / self.name

    def read_bytes(self) -> bytes:
        if not self.packed:
            return self.path.read_bytes()
        with contextlib.closing(_db(self.chunks_dir)) as db:
            row = db.execute("SELECT data FROM chunks WHERE name = ?", (self.name,)).fetchone()
        if row is None:
            raise FileNotFoundError(f"no row {self.name} in {self.chunks_dir / SMALL_FILE}")
        return bytes(row[0])

    def write_bytes(self, data: bytes) -> None:
        if not self.packed:
            self.path.write_bytes(data)
            return
        with contextlib.closing(_db(self.chunks_dir)) as db:
            db.execute("UPDATE chunks SET data = ? WHERE name = ?", (data, self.name))

    def unlink(self) -> None:
        if not self.packed:
            self.path.unlink()
            return
        with contextlib.closing(_db(self.chunks_dir)) as db:
            db.execute("DELETE FROM chunks WHERE name = ?", (self.name,))

    def size(self) -> int:
        return len(self.read_bytes()) if self.packed else self.path.stat().st_size

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StoredChunk) and other.name == self.name

    def __lt__(self, other: StoredChunk) -> bool:
        return self.name < other.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"StoredChunk({self.name[:16]}..., {'row' if self.packed else 'file'})"


def stored_chunks(chunks_dir: Path) -> set[StoredChunk]:
    out = {StoredChunk(chunks_dir, p.name, False) for p in chunks_dir.glob("??/??/*")
           if p.is_file() and _NAME.fullmatch(p.name)}
    if (chunks_dir / SMALL_FILE).exists():
        with contextlib.closing(_db(chunks_dir)) as db:
            out.update(StoredChunk(chunks_dir, name, True)
                       for (name,) in db.execute("SELECT name FROM chunks"))
    return out
