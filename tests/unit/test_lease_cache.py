"""LeaseCache's kept listings (aifsfs/fuse/leases.py): names this mount made join the end of a
kept listing once their cookie is known (own_listed), pages are split at PAGE_MAX, every page
that ends the listing takes the name, nothing is served while a name waits for its cookie, a
cookie not past the last entry drops the pages, and each entry is served with the attributes
held for its inode now (none held: the page is not served)."""

from __future__ import annotations

import stat
import time

from aifs_core.types import Attr, DirEntry
from aifsfs.fuse.leases import NEGATIVE, PAGE_MAX, LeaseCache


class _Session:
    """What LeaseCache reads of a LeaseSession: a live lease, every reply leased."""

    def __init__(self) -> None:
        self.epoch = 0
        self.valid_until = time.monotonic() + 3600

    def granted(self) -> bool:
        return True

    def bump(self) -> None:
        self.epoch += 1


DIR = 10


def _attr(ino: int, size: int = 0, mode: int = stat.S_IFREG | 0o644) -> Attr:
    return Attr(ino, mode, 1, 0, 0, 0, size, 0, 0, 0, 0, 1)


def _cache() -> LeaseCache:
    c = LeaseCache(_Session())
    c.put_new_dir(c.begin(), _attr(DIR, mode=stat.S_IFDIR | 0o755))
    return c


def _make(c: LeaseCache, name: bytes, ino: int, cookie: int, size: int = 0) -> None:
    """A create of ours, then its birth at `cookie`."""
    c.own_entry(c.recalls(), DIR, name, ino, listed_later=True)
    c.own_listed(DIR, name, _attr(ino, size), cookie)


def _walk(c: LeaseCache) -> list[tuple[bytes, int, int]] | None:
    """The whole listing from cookie 0, page after page: (name, ino, size) each."""
    out: list[tuple[bytes, int, int]] = []
    cookie = 0
    while True:
        page = c.readdir(DIR, cookie)
        if page is None:
            return None
        entries, eof = page
        out.extend((e.name, e.attr.ino, e.attr.size) for e in entries)
        if eof or not entries:
            return out
        cookie = entries[-1].cookie


def test_a_made_directory_lists_what_was_made_in_it_in_pages() -> None:
    c = _cache()
    assert _walk(c) == []                               # made here: empty, complete
    n = 2 * PAGE_MAX + 7
    for i in range(n):
        _make(c, b"f%05d" % i, 100 + i, cookie=1000 + i, size=i)
    assert _walk(c) == [(b"f%05d" % i, 100 + i, i) for i in range(n)]
    first, eof = c.readdir(DIR, 0) or ([], True)
    assert len(first) == PAGE_MAX and not eof           # split at the mount's page size


def test_no_page_is_served_while_a_name_waits_for_its_cookie() -> None:
    c = _cache()
    _make(c, b"a", 100, cookie=5)
    c.own_entry(c.recalls(), DIR, b"b", 101, listed_later=True)    # unborn
    assert c.readdir(DIR, 0) is None
    c.own_listed(DIR, b"b", _attr(101), 6)
    assert _walk(c) == [(b"a", 100, 0), (b"b", 101, 0)]


def test_a_cookie_not_past_the_end_drops_the_pages() -> None:
    c = _cache()
    _make(c, b"a", 100, cookie=5)
    _make(c, b"b", 101, cookie=4)                       # not after "a": its place is unknown
    assert c.readdir(DIR, 0) is None
    assert c.lookup(DIR, b"zz") is NEGATIVE     # the names stay: absent ones still answered


def _unlink(c: LeaseCache, name: bytes) -> None:
    c.own_entry(c.recalls(), DIR, name, None)


def test_a_name_removed_leaves_the_pages_that_show_it() -> None:
    c = _cache()
    n = PAGE_MAX + 3
    for i in range(n):
        _make(c, b"f%05d" % i, 100 + i, cookie=1000 + i)
    for i in (0, 7, PAGE_MAX, n - 1):                   # first, middle, next page, the end
        _unlink(c, b"f%05d" % i)
    left = [i for i in range(n) if i not in (0, 7, PAGE_MAX, n - 1)]
    assert _walk(c) == [(b"f%05d" % i, 100 + i, 0) for i in left]
    # an unborn file removed before its birth: never listed, the pages stay served
    c.own_entry(c.recalls(), DIR, b"u", 9999, listed_later=True)
    _unlink(c, b"u")
    assert _walk(c) == [(b"f%05d" % i, 100 + i, 0) for i in left]


def test_removing_the_last_entry_of_a_page_before_the_end_drops_the_pages() -> None:
    c = _cache()
    for i in range(PAGE_MAX + 1):
        _make(c, b"f%05d" % i, 100 + i, cookie=1000 + i)
    _unlink(c, b"f%05d" % (PAGE_MAX - 1))               # the next page is keyed by its cookie
    assert c.readdir(DIR, 0) is None


def test_every_page_that_ends_the_listing_takes_the_new_name() -> None:
    """Pages read with different sizes overlap: both end with the last entry."""
    c = LeaseCache(_Session())
    a, b, d = (DirEntry(n, _attr(i), k) for n, i, k in ((b"a", 100, 1), (b"b", 101, 2),
                                                           (b"d", 102, 3)))
    c.put_page(c.begin(), DIR, 0, [a, b, d], True)
    c.put_page(c.begin(), DIR, 1, [b, d], True)
    _make(c, b"e", 103, cookie=9)
    assert [e.name for e in (c.readdir(DIR, 0) or ([], True))[0]] == [b"a", b"b", b"d", b"e"]
    assert [e.name for e in (c.readdir(DIR, 1) or ([], True))[0]] == [b"b", b"d", b"e"]


def test_entries_are_served_with_the_attributes_held_now() -> None:
    c = _cache()
    _make(c, b"a", 100, cookie=5, size=10)
    c.put_attr(c.begin(), _attr(100, size=100))         # a later leased getattr
    assert _walk(c) == [(b"a", 100, 100)]
    c.drop(100)                                         # changed here: the page's 10 is old
    assert c.readdir(DIR, 0) is None
    c.own_attr(c.recalls(), _attr(100, size=200))       # the change's reply
    assert _walk(c) == [(b"a", 100, 200)]


def test_a_recall_since_the_mark_keeps_an_own_change_out() -> None:
    c = _cache()
    _make(c, b"a", 100, cookie=5)
    mark = c.recalls()
    c.drop(100)
    c.recalled([999])                                   # some other inode, meanwhile
    c.own_attr(mark, _attr(100, size=1))
    assert c.readdir(DIR, 0) is None


def test_an_attribute_change_of_a_directory_keeps_its_listing() -> None:
    c = _cache()
    _make(c, b"a", 100, cookie=5)
    c.drop_attr(DIR)                                    # chmod or utimens of the directory
    assert c.attr(DIR) is None                          # its attrs are asked again
    assert _walk(c) == [(b"a", 100, 0)]                 # its names and pages stay
    c.drop_attr(100)                                    # a file's: gone, as drop
    assert c.readdir(DIR, 0) is None
