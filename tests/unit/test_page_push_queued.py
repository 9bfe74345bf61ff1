"""A read that reaches the mount before the page push of its bytes has landed is served from
the push's bytes (PagePusher.queued, ChunkReader): no fetch. Once the push landed, or was
voided by a fence, the pusher holds nothing more of it. The end-to-end count (a directory
fill racing its readers costs no GetChunks) is in tests/e2e/test_dir_prefetch.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import trio

from aifs_core.types import ChunkRef
from aifsfs.fuse.chunk_cache import ChunkCache
from aifsfs.fuse.page_push import PagePusher
from aifsfs.fuse.readahead import ChunkReader

CHUNK = b"q" * 32
DATA = bytes(range(256)) * 512          # 128 KiB


Held = tuple[PagePusher, threading.Event, list[int]]


@pytest.fixture
def held() -> Iterator[Held]:
    """A pusher whose store waits for `release` (a push stuck on a page a read has locked)."""
    release = threading.Event()
    stored: list[int] = []

    def store(ino: int, pos: int, data: bytes) -> None:
        assert release.wait(20)
        stored.append(ino)

    pages = PagePusher(store=store).start()
    try:
        yield pages, release, stored
    finally:
        release.set()
        pages.close()


def _wait(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert cond(), what


def test_a_read_before_its_push_landed_is_served_from_the_push(held: Held) -> None:
    pages, release, stored = held
    t = pages.target_for(5, 1 << 20, len(DATA))
    assert t is not None
    assert pages.offer_at(t, 0, 0, DATA, CHUNK)
    assert pages.queued(CHUNK, 4096, 100) == DATA[4096:4196]
    assert pages.queued(CHUNK, len(DATA) - 10, 20) is None       # past what was offered
    assert pages.queued(b"x" * 32, 0, 10) is None                # another chunk

    # the reader has no data client: a fetch would fail, so a right answer is one not fetched
    reader = ChunkReader(None, ChunkCache(1 << 20), trio.CapacityLimiter(1))  # type: ignore[arg-type]
    reader.pages = pages
    ref = ChunkRef(0, CHUNK, len(DATA))
    got = trio.run(reader.read, ref, 65536, 8192)
    assert got == DATA[65536:65536 + 8192]
    assert reader.calls == 0 and pages.counters["served"] == 2

    release.set()
    _wait(lambda: stored == [5], "the push lands")
    _wait(lambda: pages.queued(CHUNK, 0, 10) is None, "a landed push is no longer held")


def test_a_voided_push_is_no_longer_held(held: Held) -> None:
    pages, release, stored = held
    first = pages.target_for(6, 1 << 20, len(DATA))
    second = pages.target_for(7, 1 << 20, len(DATA))
    assert first is not None and second is not None
    pages.offer(first, 0, DATA, b"a" * 32)                       # in flight, waiting
    pages.offer(second, 0, DATA, CHUNK)                          # queued behind it
    trio.run(pages.fence, 7)                                     # voids the queued one
    assert pages.queued(CHUNK, 0, 10) == DATA[:10]               # not popped yet
    release.set()
    _wait(lambda: pages.counters["void"] == 1, "the queued push is voided")
    _wait(lambda: pages.queued(CHUNK, 0, 10) is None, "a voided push is no longer held")
    assert stored == [6]


def test_offers_without_a_chunk_id_are_not_held(held: Held) -> None:
    pages, release, _stored = held
    t = pages.target_for(8, 1 << 20, len(DATA))
    assert t is not None
    pages.offer(t, 0, DATA)
    assert pages.queued(CHUNK, 0, 10) is None
