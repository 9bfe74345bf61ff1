"""Readdir pages fetched one ahead of the kernel (issue 9: the time of a cold listing).

Interface:
    PageAhead()                      one per open directory handle
        .start(nursery, cookie, fetch)   fetch: async () -> (entries, eof), the page after
                                     `cookie`; run in the background. One at a time: a new
                                     start forgets an older one (its result is dropped)
        .pending(cookie) -> bool     a fetch from `cookie` was started and not taken yet
        await .take(cookie) -> (entries, eof) | None
                                     the page fetched ahead from `cookie` (waits for it); None
                                     when none was started from there or its fetch failed:
                                     the caller asks itself

Why: a cold listing of a large directory was one ReadDir of 1,000 entries, then the mount
turning them into readdirplus replies while the server idled, then the next ReadDir while the
mount idled: the two processes' CPU (about the same per entry) added up. Fetching the next page
while the kernel takes the current one overlaps them on two cores. The cost of a reader that
stops early (`ls | head`) is one page the server read for nothing. A page fetched ahead is
the same call made a little earlier: its lease is kept or refused by the same rules (the
session epoch taken when the call starts), and a listing is not atomic anyway (readdir(3)
may or may not show entries changed while it runs).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

log = logging.getLogger("aifsfs.fuse")

Page = tuple[list[Any], bool]


class PageAhead:
    __slots__ = ("_cookie", "_done", "_result")

    def __init__(self) -> None:
        self._cookie: int | None = None
        self._done: trio.Event | None = None
        self._result: Page | None = None

    def pending(self, cookie: int) -> bool:
        return self._done is not None and self._cookie == cookie

    def start(self, nursery: trio.Nursery, cookie: int,
              fetch: Callable[[], Awaitable[Page]]) -> None:
        done = trio.Event()
        self._cookie, self._done, self._result = cookie, done, None

        async def run() -> None:
            res: Page | None = None
            try:
                res = await fetch()
            except Exception as exc:  # noqa: BLE001 - a hint: the reader asks itself
                log.debug("readdir ahead from cookie %d: %s", cookie, exc)
            if self._done is done:
                self._result = res
            done.set()

        nursery.start_soon(run)

    async def take(self, cookie: int) -> Page | None:
        done = self._done
        if done is None or self._cookie != cookie:
            return None
        await done.wait()
        if self._done is not done:      # replaced meanwhile (cannot happen: one reader)
            return None
        res = self._result
        self._cookie = self._done = self._result = None
        return res
