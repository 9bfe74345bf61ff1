"""Small chunk envelopes packed in one SQLite file of the local chunk store, not a file each.

Interface:
    SMALL_MAX                        envelopes of at most this many bytes go here
    SmallChunks(path)                the table in the SQLite file at `path` (made if absent)
        .put_many(items, skip) -> list[bool]
                items: (name, data) pairs, each at most SMALL_MAX bytes; skip(name) -> True
                when the name is stored elsewhere already (a chunk file). One transaction:
                durable (WAL fsynced) when it returns; False for names already there.
                sqlite3 errors propagate (the caller maps a full disk).
        .get(name) -> bytes | None   the envelope, None if absent
        .present(names) -> set[str]  which of the names are here (durable)
        .size(name) -> int | None
        .delete(name) -> int | None  bytes freed, None if it was not here
        .names() -> Iterator[str]    every name, in the order they were stored
        .stored_bytes() -> int

Why (docs/FORMAT.md "Small chunks", DECISIONS.md "Small chunks in one SQLite file"): a 4 KiB
file's chunk as a file of its own cost the server an inode, a temp name, a link, the file's
fsync and its fan-out directory's (and in a fresh store the directory itself): ~1.2 ms a put
here, against ~0.4 ms for a row committed with the same durability. Reading it back after
the page cache was dropped cost ~300 us (two fan-out directories, the inode, the data: random
reads) against ~15 us for a row: rows are kept in the order they were stored, so the files a
program wrote together are read back from neighbouring pages.

Rows are immutable, like chunk files: a name's bytes never change, a row is only inserted or
deleted. Space: deleted rows' pages are reused, and past VACUUM_PAGES free pages are given back
to the file system (incremental auto-vacuum); the WAL is checkpointed and cut back every
WAL_PAGES pages. Each thread reads through its own connection (WAL: readers never wait for the
writer); writes go through one connection under a lock. busy_timeout bounds the wait for
another process on the same data dir (a second server, `aifs fsck`).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

SMALL_MAX = 64 << 10
BUSY_TIMEOUT_MS = 10_000
WAL_PAGES = 256          # pages of WAL between checkpoints
VACUUM_EVERY = 256       # deletes between looks at the free pages
VACUUM_PAGES = 256       # free pages kept in the file; more are given back to the disk
_IN_MAX = 500            # names per "IN (...)" query (SQLite's variable limit is 32766)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,          -- the order rows were stored in: what lies together
    name TEXT NOT NULL UNIQUE,
    data BLOB NOT NULL
)
"""


class SmallChunks:
    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self._write_lock = threading.Lock()
        # the owner's only, as the chunk files are (SQLite gives its -wal and -shm files the
        # mode of the database file)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        self._writer = self._connect()
        self._writer.execute("PRAGMA auto_vacuum=INCREMENTAL")   # takes effect on a new file
        self._writer.execute("PRAGMA journal_mode=WAL")
        # the WAL is copied back into the file every ~1 MiB and cut back to 1 MiB: its disk
        # use stays small however many puts and deletes go by
        self._writer.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
        self._writer.execute(f"PRAGMA journal_size_limit={WAL_PAGES * 4096}")
        self._writer.execute(_SCHEMA)
        self._deletes = 0

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                             timeout=BUSY_TIMEOUT_MS / 1000)
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA synchronous=FULL")   # a put is durable when it returns
        return db

    def _reader(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect()
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """The writer connection in one transaction (under the lock), committed at the end,
        rolled back on an error."""
        with self._write_lock:
            db = self._writer
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def put_many(self, items: Iterable[tuple[str, bytes | bytearray | memoryview]],
                 skip: Callable[[str], bool]) -> list[bool]:
        out: list[bool] = []
        with self._write() as db:
            for name, data in items:
                if skip(name):
                    out.append(False)
                    continue
                cur = db.execute("INSERT OR IGNORE INTO chunks (name, data) VALUES (?, ?)",
                                 (name, data))
                out.append(cur.rowcount == 1)
        return out

    def get(self, name: str) -> bytes | None:
        row = self._reader().execute("SELECT data FROM chunks WHERE name = ?",
                                     (name,)).fetchone()
        return None if row is None else bytes(row[0])

    def present(self, names: Iterable[str]) -> set[str]:
        todo = list(names)
        found: set[str] = set()
        db = self._reader()
        for i in range(0, len(todo), _IN_MAX):
            part = todo[i:i + _IN_MAX]
            marks = ",".join("?" * len(part))
            found.update(r[0] for r in db.execute(
                f"SELECT name FROM chunks WHERE name IN ({marks})", part))
        return found

    def size(self, name: str) -> int | None:
        row = self._reader().execute("SELECT length(data) FROM chunks WHERE name = ?",
                                     (name,)).fetchone()
        return None if row is None else int(row[0])

    def delete(self, name: str) -> int | None:
        with self._write() as db:
            row = db.execute("SELECT length(data) FROM chunks WHERE name = ?",
                             (name,)).fetchone()
            if row is not None:
                db.execute("DELETE FROM chunks WHERE name = ?", (name,))
            self._deletes += 1   # under the write lock
            vacuum = self._deletes % VACUUM_EVERY == 0
        if vacuum:
            with self._write_lock:
                self._give_back(self._writer)
        return None if row is None else int(row[0])

    @staticmethod
    def _give_back(db: sqlite3.Connection) -> None:
        """Free pages past VACUUM_PAGES go back to the file system (rm gives space back)."""
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        if free > VACUUM_PAGES:
            # executescript steps the pragma to its end: execute() steps it once, which
            # frees one page
            db.executescript(f"PRAGMA incremental_vacuum({free - VACUUM_PAGES});")

    def names(self) -> Iterator[str]:
        last = 0
        db = self._reader()
        while True:   # in pages: a long listing holds no read transaction open
            rows = db.execute("SELECT id, name FROM chunks WHERE id > ? ORDER BY id LIMIT 1000",
                              (last,)).fetchall()
            if not rows:
                return
            for _id, name in rows:
                yield name
            last = rows[-1][0]

    def stored_bytes(self) -> int:
        row = self._reader().execute("SELECT total(length(data)) FROM chunks").fetchone()
        return int(row[0])
