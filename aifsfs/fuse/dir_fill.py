"""Directory fills: the small files of a listed directory fetched ahead of their readers.

Interface:
    plan_batches(listing, inline_max, inline_batch, max_entries) -> [Batch]
        listing: [(cookie before it, DirEntry)] in listing order (LeaseCache.unmapped); cut
        into runs of consecutive entries, each one ReadDir(with_maps) from its first entry's
        preceding cookie: at most max_entries entries and inline_batch bytes of files of at
        most inline_max bytes (the ones whose bytes come inline)
    DirFill(parent, batches, fetch, parallel=2)
        fetch: async (Batch) -> None: the ReadDir call and what is done with its reply; it
        must not wait for anything a FUSE request may be waiting for while Batch.wanted (an
        open waits for the batch: a pushed page locked by a read the mount has not answered
        yet would stall that open)
        await .run()                 fetch every batch, `parallel` calls at a time, wanted
                                     batches first, then in listing order from the start batch
        .start_at(ino)               begin the listing-order walk at the batch holding ino
        await .wait_for(ino) -> bool the batch holding ino landed (True; its map is leased
                                     unless a change came meanwhile), or None of the batches
                                     holds it or its fetch failed (False): ask as usual
        .waiting(ino) -> bool        an open is waiting for ino (its bytes are wanted in the
                                     memory cache, not only in the page cache)
        .done                        every batch fetched or failed

Why (issue 9, docs/LEASES.md "Directory fills"): a DataLoader epoch opens the files of one
directory in a shuffled order, each cold open a GetChunkMap carrying the file's bytes (~3 ms of
CPU per sample on the two processes, 0.2x gocryptfs). A fill fetches the same bytes 4 MiB per
call, and an open that finds its file not yet fetched waits for the batch holding it, which
jumps the queue, instead of fetching the file a second time. What a fill fetches goes to the
kernel's page cache (page_push.py): the reads of the epoch then never reach the mount; and
to the disk cache, queued (best effort), for the pass after the page cache lost it
(dir_prefetch.py reads it back from there ahead of the readers).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

log = logging.getLogger("aifsfs.fuse")


class Batch:
    __slots__ = ("cookie", "inos", "inline_bytes", "started", "wanted", "landed", "ok")

    def __init__(self, cookie: int) -> None:
        self.cookie = cookie          # ReadDir from here: the entry before the first one
        self.inos: list[int] = []
        self.inline_bytes = 0
        self.started = False
        self.wanted = False           # an open waits for it
        self.landed = trio.Event()
        self.ok = False


def plan_batches(listing: list[tuple[int, Any]], inline_max: int, inline_batch: int,
                 max_entries: int) -> list[Batch]:
    batches: list[Batch] = []
    cur: Batch | None = None
    last_cookie: int | None = None
    for before, de in listing:
        size = de.attr.size if 0 < de.attr.size <= inline_max else 0
        if (cur is None or before != last_cookie or len(cur.inos) >= max_entries
                or cur.inline_bytes + size > inline_batch):
            cur = Batch(before)
            batches.append(cur)
        cur.inos.append(de.attr.ino)
        cur.inline_bytes += size
        last_cookie = de.cookie
    return batches


class DirFill:
    def __init__(self, parent: int, batches: list[Batch],
                 fetch: Callable[[Batch], Awaitable[None]], parallel: int = 2) -> None:
        self.parent = parent
        self.batches = batches
        self._fetch = fetch
        self.parallel = parallel
        self._of: dict[int, Batch] = {ino: b for b in batches for ino in b.inos}
        self._next = 0                   # the listing-order walk's next batch index
        self._wanted: list[Batch] = []   # batches an open waits for, first come first
        self._waiters: dict[int, int] = {}
        self.done = False

    def start_at(self, ino: int) -> None:
        b = self._of.get(ino)
        if b is not None:
            self._next = self.batches.index(b)

    def waiting(self, ino: int) -> bool:
        return ino in self._waiters

    async def wait_for(self, ino: int) -> bool:
        b = self._of.get(ino)
        if b is None:
            return False
        if not b.landed.is_set():
            if not b.started and not b.wanted:
                self._wanted.append(b)      # the next free worker takes it
            b.wanted = True
            self._waiters[ino] = self._waiters.get(ino, 0) + 1
            try:
                await b.landed.wait()
            finally:
                n = self._waiters.pop(ino, 1) - 1
                if n:
                    self._waiters[ino] = n
        return b.ok

    def _take(self) -> Batch | None:
        while self._wanted:
            b = self._wanted.pop(0)
            if not b.started:
                return b
        n = len(self.batches)
        for k in range(n):
            b = self.batches[(self._next + k) % n]
            if not b.started:
                self._next = (self._next + k + 1) % n
                return b
        return None

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as workers:
                for _ in range(self.parallel):
                    workers.start_soon(self._worker)
        finally:
            self.done = True
            for b in self.batches:         # a fill cut short lets its waiters ask themselves
                b.landed.set()

    async def _worker(self) -> None:
        while True:
            b = self._take()
            if b is None:
                return
            b.started = True
            try:
                await self._fetch(b)
                b.ok = True
            except Exception as exc:  # noqa: BLE001 - a fill is a hint: opens ask themselves
                log.debug("fill of directory %d from cookie %d: %s", self.parent, b.cookie, exc)
            finally:
                b.landed.set()
