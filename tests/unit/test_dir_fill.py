"""dir_fill.py: how a directory's listing is cut into ReadDir runs, and that an open waiting
for a file's batch gets it before the listing-order walk reaches it."""

from __future__ import annotations

import trio

from aifs_core.types import Attr, DirEntry
from aifsfs.fuse.dir_fill import Batch, DirFill, plan_batches


def _entry(ino: int, size: int) -> DirEntry:
    a = Attr(ino=ino, mode=0o100644, nlink=1, uid=0, gid=0, rdev=0, size=size, blocks=0,
             atime_ns=0, mtime_ns=0, ctime_ns=0, generation=1)
    return DirEntry(name=b"f%d" % ino, attr=a, cookie=ino * 10)


def _listing(sizes: dict[int, int]) -> list[tuple[int, DirEntry]]:
    out, before = [], 0
    for ino, size in sizes.items():
        e = _entry(ino, size)
        out.append((before, e))
        before = e.cookie
    return out


def test_runs_are_cut_by_bytes_entries_and_gaps() -> None:
    listing = _listing({i: 100 for i in range(1, 11)})
    del listing[4]                          # ino 5 already mapped: a gap in the listing
    batches = plan_batches(listing, inline_max=1000, inline_batch=250, max_entries=3)
    assert [b.inos for b in batches] == [[1, 2], [3, 4], [6, 7], [8, 9], [10]]
    assert batches[2].cookie == 50          # ReadDir from the entry before ino 6
    # a file too large to come inline costs no inline budget
    big = plan_batches(_listing({1: 100, 2: 5000, 3: 100}), 1000, 250, 10)
    assert [b.inos for b in big] == [[1, 2, 3]]


def test_a_waited_for_batch_goes_before_the_walk_reaches_it() -> None:
    order: list[int] = []

    async def fetch(b: Batch) -> None:
        order.append(b.inos[0])
        await trio.sleep(0.01)

    async def main() -> None:
        batches = plan_batches(_listing({i: 10 for i in range(1, 21)}), 100, 10, 1)
        fill = DirFill(7, batches, fetch, parallel=1)
        fill.start_at(3)
        async with trio.open_nursery() as n:
            n.start_soon(fill.run)
            await trio.sleep(0)
            assert await fill.wait_for(15)
            assert not await fill.wait_for(99)      # not in the fill: ask as usual
        assert fill.done and sorted(order) == list(range(1, 21))
        assert order.index(15) <= 1         # next after at most the batch already out

    trio.run(main)
