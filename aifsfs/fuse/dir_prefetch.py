"""Directory prefetch: a listed directory's small files whose maps the mount holds but whose
bytes it does not, fetched in batched GetChunks calls once reads show a pass over it.

Interface:
    DirPrefetch(reader, leases, push, *, misses=MISSES, parallel=PARALLEL)
        reader: the mount's ChunkReader (readahead.py); leases: its LeaseCache (leases.py);
        push(attr, chunk_size, data, chunk_id): offer a whole small file's bytes to the kernel's page
        cache (AIFSOperations._push_whole: only for a file not open here whose map is still
        leased at that generation)
        .opened(ino)                 a file was opened for reading (counted only in a
                                     directory that has had a cold read lately)
        .cold_read(nursery, ino, st)   a read at offset 0 of file state `st` is about to be
            made: when the file is small (one chunk, at most FILE_MAX) and clean and its chunk
            is neither in the memory cache nor in flight, it counts as a cold read of its
            directory (where the leased listing showed it); one the disk cache holds counts
            too: the page cache lost it, and a run reads it ahead of the readers. A directory is prefetched (one
            run at a time per directory, RUNS_MAX at once) when it has had `misses` cold
            reads and at least half of the opens in it since its first cold read were
            followed by one: the page cache has lost it. A few cold reads among many opens
            (files whose pages a fill could not push, the rest still in the page cache) start
            nothing: a prefetch would fetch again what the kernel holds; after WINDOW such
            opens the count starts over.
        await .wait_planned(chunk_id)   a read of a chunk a running prefetch plans and has not
            started: the chunk jumps the queue and this returns once its call is out (the
            read then waits for that call in ChunkReader instead of fetching it again)
        .budget() -> int             bytes one prefetch may fetch: half the disk cache, or a
                                     quarter of the memory cache when there is no disk cache
        .stats                       runs, calls, chunks, bytes, skipped (changed meanwhile),
                                     largest_plan (bytes one run planned: at most budget())
        .stop()                      drop every prefetch in progress (unmount, lost session)

What it fetches: the directory's files as its complete leased listing shows them
(LeaseCache.mapped), one chunk each, whole, not in memory or in flight, in listing order (a
read's chunk first), up to the budget; GROUP_CHUNKS chunks or GROUP_BYTES per group,
`parallel` groups out (ChunkReader.fetch_many: the chunks the disk cache holds read from it,
the others in one GetChunks call). A fetched chunk lands in the disk cache (queued; the
prefetch waits for the disk writer rather than have writes dropped); every chunk lands in
the memory cache only when the whole plan fits a quarter of it, and in the page cache for
the files not open here (`push`). Reading disk entries ahead is what makes an epoch after
the page cache was dropped cheap: a directory fill (dir_fill.py) also queues its bytes for
the disk cache, so the next pass finds them there, and the run moves them from disk to the
page cache ahead of the readers, several at a time, instead of one synchronous disk read per
sample in the read path. Nothing is ever served stale:
chunks are content-addressed (a prefetched chunk is right for every map that names it), the
read path takes its chunk ids from the file's own map, which close-to-open keeps fresh, and
before each call a file whose map is no longer leased at the planned generation (another
client changed it: the lease was recalled) is left out; a directory no longer complete (its
lease recalled, a name added or removed) ends the run.

Why (issue 9 item 3, docs/LEASES.md "Directory prefetch"): a directory fill (dir_fill.py)
fetches the maps and bytes of a directory whose maps the mount lacks; once it holds the maps,
nothing fetched the bytes again when they left the caches (the page cache dropped or short of
memory, a directory larger than the memory cache): every file of the next epoch cost its own
GetChunks call, ~1 ms of CPU on the two processes.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import trio

from aifs_core.types import Attr, ChunkRef

log = logging.getLogger("aifsfs.fuse")

FILE_MAX = 1 << 20          # small files: the ones whose bytes a directory pass reads whole
MISSES = 4                  # cold reads in one directory before it is prefetched
WINDOW = 32                 # opens after a first cold read within which the count is made
GROUP_CHUNKS = 32           # chunks per GetChunks call
GROUP_BYTES = 4 << 20       # and bytes: a call's answer held at once, PARALLEL times over
# groups out at once per prefetch: 4 rather than 2 (the server's cores) because a group the
# disk cache holds is disk reads, not a call, and 4 overlap them: epoch 3 (page cache
# dropped) 1,339-1,568 -> 1,518-2,148 samples/s in 4 alternated pairs, epoch 1 unchanged,
# the mount's peak 104 -> 117 MiB (4 answers of up to GROUP_BYTES held at once)
PARALLEL = 4
RUNS_MAX = 2                # directories prefetched at once
_DIRS_MAX = 1024            # directories whose cold reads are counted before the table resets


class _Item:
    __slots__ = ("attr", "cs", "ref", "started")

    def __init__(self, attr: Attr, cs: int, ref: ChunkRef) -> None:
        self.attr = attr
        self.cs = cs
        self.ref = ref
        self.started = trio.Event()


class _Run:
    def __init__(self, parent: int, items: list[_Item], keep: bool) -> None:
        self.parent = parent
        self.todo: OrderedDict[bytes, _Item] = OrderedDict((i.ref.chunk_id, i) for i in items)
        self.wanted: list[bytes] = []
        self.keep = keep
        self.cancel = trio.CancelScope()


class DirPrefetch:
    def __init__(self, reader: Any, leases: Any, push: Callable[[Attr, int, bytes, bytes], None],
                 *, misses: int = MISSES, parallel: int = PARALLEL) -> None:
        self.reader = reader
        self.leases = leases
        self.push = push
        self.misses = misses
        self.parallel = parallel
        # directory -> [opens, cold reads] since its first cold read (lately)
        self._cold: dict[int, list[int]] = {}
        self._runs: dict[int, _Run] = {}
        self._planned: dict[bytes, _Run] = {}    # chunk id -> the run that plans it
        self.stats = {"runs": 0, "calls": 0, "chunks": 0, "bytes": 0, "skipped": 0,
                      "largest_plan": 0}

    def budget(self) -> int:
        disk = self.reader.disk
        return disk.capacity // 2 if disk is not None else self.reader.cache.capacity // 4

    def opened(self, ino: int) -> None:
        if not self._cold:
            return
        pos = self.leases.position(ino)
        c = None if pos is None else self._cold.get(pos[0])
        if c is not None:
            c[0] += 1
            if c[0] >= WINDOW and 2 * c[1] < c[0]:
                del self._cold[pos[0]]       # the page cache serves most of it

    def cold_read(self, nursery: trio.Nursery, ino: int, st: Any) -> None:
        if st.size > FILE_MAX or len(st.refs) != 1 or st.is_dirty():
            return
        ref = st.refs.get(0)
        if ref is None or not ref.chunk_id or self.reader.holds_in_memory(ref.chunk_id,
                                                                          ref.length):
            return
        pos = self.leases.position(ino)
        if pos is None:
            return
        parent = pos[0]
        if parent in self._runs:
            return
        c = self._cold.get(parent)
        if c is None:
            if len(self._cold) >= _DIRS_MAX:
                self._cold.clear()
            c = self._cold[parent] = [1, 0]      # this read's open
        c[1] += 1
        if c[1] >= self.misses and 2 * c[1] >= c[0] and len(self._runs) < RUNS_MAX:
            self._start(nursery, parent)

    def _start(self, nursery: trio.Nursery, parent: int) -> None:
        listing = self.leases.mapped(parent)
        if not listing:
            return
        self._cold.pop(parent, None)
        budget = self.budget()
        items: list[_Item] = []
        total = 0
        seen: set[bytes] = set()
        for a, cs, refs in listing:
            if not (0 < a.size <= FILE_MAX and len(refs) == 1 and refs[0].index == 0
                    and refs[0].chunk_id):
                continue
            ref = refs[0]
            if ref.chunk_id in seen or self.reader.holds_in_memory(ref.chunk_id, ref.length):
                continue
            if total + ref.length > budget:
                break
            seen.add(ref.chunk_id)
            total += ref.length
            items.append(_Item(a, cs, ref))
        if not items:
            return
        # the memory cache keeps a prefetch only when it fits a quarter of it: a larger one
        # would evict the readers' working set (it goes to the disk and page caches)
        run = _Run(parent, items, keep=total <= self.reader.cache.capacity // 4)
        self._runs[parent] = run
        for cid in run.todo:
            self._planned[cid] = run
        self.stats["runs"] += 1
        self.stats["largest_plan"] = max(self.stats["largest_plan"], total)
        nursery.start_soon(self._run, run)

    async def wait_planned(self, chunk_id: bytes) -> None:
        run = self._planned.get(chunk_id)
        if run is None:
            return
        item = run.todo.get(chunk_id)
        if item is None or item.started.is_set():
            return
        run.wanted.append(chunk_id)
        await item.started.wait()

    def stop(self) -> None:
        for run in list(self._runs.values()):
            run.cancel.cancel()

    async def _run(self, run: _Run) -> None:
        try:
            with run.cancel:
                async with trio.open_nursery() as workers:
                    for _ in range(self.parallel):
                        workers.start_soon(self._worker, run)
        finally:
            for cid, item in run.todo.items():
                item.started.set()             # a read still waiting asks for itself
                if self._planned.get(cid) is run:
                    del self._planned[cid]
            run.todo.clear()
            if self._runs.get(run.parent) is run:
                del self._runs[run.parent]

    def _take(self, run: _Run) -> list[_Item]:
        """The next call's chunks: wanted ones first, then in listing order."""
        group: list[_Item] = []
        size = 0

        def add(cid: bytes) -> bool:
            nonlocal size
            item = run.todo.get(cid)
            if item is None:
                return True
            if group and (len(group) >= GROUP_CHUNKS or size + item.ref.length > GROUP_BYTES):
                return False
            del run.todo[cid]
            if self._planned.get(cid) is run:
                del self._planned[cid]
            group.append(item)
            size += item.ref.length
            return True

        while run.wanted:
            if not add(run.wanted[0]):
                return group
            run.wanted.pop(0)
        while run.todo and add(next(iter(run.todo))):
            pass
        return group

    async def _worker(self, run: _Run) -> None:
        reader, leases = self.reader, self.leases
        while True:
            if leases.dir_bytes(run.parent) is None:
                return    # no longer a complete leased listing: changed, recalled or lost
            disk = reader.disk
            # never outrun the disk writer (a dropped write is a wasted fetch) -- unless a
            # read waits for a chunk of ours
            while disk is not None and disk.pending_bytes > disk.max_pending // 2 \
                    and not run.wanted:
                await trio.sleep(0.005)
            group = self._take(run)
            if not group:
                return
            live = [i for i in group if leases.has_map(i.attr.ino, i.attr.generation)]
            self.stats["skipped"] += len(group) - len(live)
            try:
                # registered in flight before fetch_many first awaits: a read woken by
                # `started` finds the fetch and waits for it
                call = reader.fetch_many([i.ref for i in live], run.keep)
                for item in group:
                    item.started.set()
                datas = await call
            except Exception as exc:  # noqa: BLE001 - a hint: the reads fetch for themselves
                log.debug("prefetch of directory %d: %s", run.parent, exc)
                return
            got = [(i, d) for i, d in zip(live, datas, strict=True) if d is not None]
            if got:
                self.stats["calls"] += 1
            for item, data in got:
                self.stats["chunks"] += 1
                self.stats["bytes"] += len(data)
                if item.attr.size == len(data):
                    self.push(item.attr, item.cs, data, item.ref.chunk_id)
