"""What the mount may answer without a call while its leases hold (docs/LEASES.md).

Interface:
    LeaseCache(session, max_inodes=MAX_INODES)       session: a LeaseSession (or None: off)
        .begin() -> token            before a leasable call (the session epoch)
        .attr(ino) -> Attr | None    a leased inode's attributes
        .chunk_map(ino) -> (attr, chunk_size, refs) | None
        .lookup(parent, name) -> Attr | NEGATIVE | None   NEGATIVE: leased "no such name"
        .readdir(ino, cookie) -> (entries, eof) | None    a leased page
        .put_attr(token, a);  .put_map(token, a, cs, refs);  .put_entry(token, parent, name, a)
        .put_negative(token, parent, name);  .put_page(token, ino, cookie, entries, eof)
                                     each keeps the reply only if this thread's last call was
                                     leased and no recall or reset came since `token`
        .drop(*inos)                 this mount changed them (its own changes are not recalled)
        .recalled(inos);  .reset()   the session's callbacks (any thread)
        .stats -> {"hits": n, "misses": n}

Every entry is covered by the lease on one inode: attributes and chunk map by the inode's,
a name (or its absence) and a readdir page by the directory's. A recall of an inode drops all
of them; a lost session drops everything. Memory: at most max_inodes inodes are kept; dropping
one locally needs no message (the server's recall of it later is acked at once).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

from aifs_core.types import Attr, ChunkRef, DirEntry

MAX_INODES = 100_000
NEGATIVE = object()


class _Entry:
    __slots__ = ("attr", "cs", "refs", "names", "pages")

    def __init__(self) -> None:
        self.attr: Attr | None = None
        self.cs = 0
        self.refs: list[ChunkRef] | None = None
        self.names: dict[bytes, int | None] = {}        # a directory's: name -> ino | absent
        self.pages: dict[int, tuple[list[DirEntry], bool]] = {}


class LeaseCache:
    def __init__(self, session: Any, max_inodes: int = MAX_INODES) -> None:
        self.session = session
        self.max_inodes = max_inodes
        self._lock = threading.Lock()
        self._e: OrderedDict[int, _Entry] = OrderedDict()
        self.stats = {"hits": 0, "misses": 0}

    @property
    def enabled(self) -> bool:
        return self.session is not None

    def _valid(self) -> bool:
        return self.session is not None and time.monotonic() < self.session.valid_until

    def begin(self) -> int:
        return -1 if self.session is None else int(self.session.epoch)

    # --- reads --------------------------------------------------------------------------------
    def _get(self, ino: int) -> _Entry | None:
        if not self._valid():
            return None
        return self._e.get(ino)

    def _count(self, hit: bool) -> None:
        self.stats["hits" if hit else "misses"] += 1

    def attr(self, ino: int) -> Attr | None:
        with self._lock:
            e = self._get(ino)
            a = None if e is None else e.attr
            self._count(a is not None)
            return a

    def chunk_map(self, ino: int) -> tuple[Attr, int, list[ChunkRef]] | None:
        with self._lock:
            e = self._get(ino)
            ok = e is not None and e.attr is not None and e.refs is not None
            self._count(ok)
            if not ok:
                return None
            assert e is not None and e.attr is not None and e.refs is not None
            return e.attr, e.cs, list(e.refs)

    def lookup(self, parent: int, name: bytes) -> Any:
        with self._lock:
            d = self._get(parent)
            if d is None or name not in d.names:
                self._count(False)
                return None
            ino = d.names[name]
            if ino is None:
                self._count(True)
                return NEGATIVE
            e = self._e.get(ino)
            self._count(e is not None and e.attr is not None)
            return None if e is None else e.attr

    def readdir(self, ino: int, cookie: int) -> tuple[list[DirEntry], bool] | None:
        with self._lock:
            d = self._get(ino)
            page = None if d is None else d.pages.get(cookie)
            self._count(page is not None)
            return page

    # --- writes (from leased replies) -----------------------------------------------------------
    def _keep(self, token: int) -> bool:
        s = self.session
        return (s is not None and token >= 0 and s.granted() and s.epoch == token
                and time.monotonic() < s.valid_until)

    def _entry(self, ino: int) -> _Entry:
        e = self._e.get(ino)
        if e is None:
            e = self._e[ino] = _Entry()
            while len(self._e) > self.max_inodes:
                self._e.popitem(last=False)
        else:
            self._e.move_to_end(ino)
        return e

    def put_attr(self, token: int, a: Attr) -> None:
        with self._lock:
            if self._keep(token):
                e = self._entry(a.ino)
                if e.attr is None or e.attr.generation != a.generation:
                    e.refs = None
                e.attr = a

    def put_map(self, token: int, a: Attr, cs: int, refs: list[ChunkRef]) -> None:
        with self._lock:
            if self._keep(token):
                e = self._entry(a.ino)
                e.attr, e.cs, e.refs = a, cs, list(refs)

    def put_entry(self, token: int, parent: int, name: bytes, a: Attr) -> None:
        with self._lock:
            if self._keep(token):
                self._entry(parent).names[name] = a.ino
                e = self._entry(a.ino)
                if e.attr is None or e.attr.generation != a.generation:
                    e.refs = None
                e.attr = a

    def put_negative(self, token: int, parent: int, name: bytes) -> None:
        with self._lock:
            if self._keep(token):
                self._entry(parent).names[name] = None

    def put_page(self, token: int, ino: int, cookie: int, entries: list[DirEntry],
                 eof: bool) -> None:
        with self._lock:
            if not self._keep(token):
                return
            d = self._entry(ino)
            d.pages[cookie] = (list(entries), eof)
            for de in entries:
                d.names[de.name] = de.attr.ino
                e = self._entry(de.attr.ino)
                if e.attr is None or e.attr.generation != de.attr.generation:
                    e.refs = None
                e.attr = de.attr

    # --- invalidation ---------------------------------------------------------------------------
    def drop(self, *inos: int | None) -> None:
        s = self.session
        if s is None:
            return
        with self._lock:
            # a leased reply of ours in flight may predate this change: refuse it too
            s.bump()
            for ino in inos:
                if ino is not None:
                    self._e.pop(ino, None)

    def recalled(self, inos: list[int]) -> None:
        with self._lock:
            for ino in inos:
                self._e.pop(ino, None)

    def reset(self) -> None:
        with self._lock:
            self._e.clear()
