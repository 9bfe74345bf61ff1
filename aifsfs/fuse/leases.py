"""What the mount may answer without a call while its leases hold (docs/LEASES.md).

Interface:
    LeaseCache(session, max_inodes=MAX_INODES)       session: a LeaseSession (or None: off)
        .begin() -> token            before a leasable call (the session epoch)
        .attr(ino) -> Attr | None    a leased inode's attributes
        .chunk_map(ino) -> (attr, chunk_size, refs) | None
        .lookup(parent, name) -> Attr | NEGATIVE | None   NEGATIVE: leased "no such name"
        .readdir(ino, cookie) -> (entries, eof) | None    a leased page, each entry with
                                     the attrs held now (None if one is not held)
        .put_attr(token, a);  .put_map(token, a, cs, refs);  .put_entry(token, parent, name, a)
        .put_negative(token, parent, name);  .put_page(token, ino, cookie, entries, eof)
                                     each keeps the reply only if this thread's last call was
                                     leased and no recall or reset came since `token`
        .put_new_dir(token, a)       a directory this mount just made, leased to it: empty and
                                     complete (every lookup in it answered here)
        .dir_bytes(ino) -> int | None    sum of the sizes a complete leased listing shows
        .unmapped(ino) -> [(cookie before it, DirEntry)] | None
                                     a complete leased listing's entries, in listing order,
                                     whose chunk maps this cache does not hold (what a fill of
                                     the directory fetches: dir_fill.py)
        .mapped(ino) -> [(attr, chunk size, refs)] | None
                                     a complete leased listing's entries whose chunk maps
                                     this cache holds, in listing order (what a directory
                                     prefetch fetches: dir_prefetch.py)
        .has_map(ino, generation=None) -> bool
                                     a leased chunk map (of that generation) is held (no hit
                                     or miss counted)
        .position(ino) -> (parent, cookie before it, its cookie) | None
                                     where a leased listing last showed the inode (a hint for
                                     batched opens of the next files of a directory)
        .drop(*inos)                 this mount changed them (its own changes are not recalled)
        .drop_attr(ino)              ... only its attributes: a directory keeps its listing
        .recalls() -> mark;  .own_entry(mark, parent, name, ino | None, parent_attr=None,
                                        listed_later=False)
                                     this mount added (ino) or removed (None) `name` in
                                     `parent`: a leased directory is updated instead of dropped,
                                     unless a recall or reset came since `mark` (taken before
                                     the call): then it is dropped. A name removed leaves
                                     its pages; one added drops them, unless listed_later:
                                     they wait for the name's cookie
        .own_listed(parent, name, attr, cookie)
                                     ... which the server gave: the name joins the listing's end
        .own_attr(mark, attr)        this mount's change of a file it made in a directory it
                                     holds alone gave these attrs (kept: listings stay local)
        .recalled(inos);  .reset()   the session's callbacks (any thread)
        .take_changed(ino) -> bool   whether a recall named the inode since the last ask: a
                                     file this mount holds open was changed by another client
                                     (close-to-open: the next open takes the new map)
        .held_mark() -> int | None   taken when a held file's state was read under a lease;
                                     the state may answer a later open only while the mark
                                     is the same (no reset since) and not None
        .stats -> {"hits": n, "misses": n}

Every entry is covered by the lease on one inode: attributes and chunk map by the inode's,
a name (or its absence) and a readdir page by the directory's. A directory is *complete* when
its names are all of its entries (every page from cookie 0 to eof read under the lease, or made
empty by this mount): any other name is then absent without a call, so a create in it needs no
negative Lookup. This mount's own creates and removals keep a complete directory complete (the
server does not recall the caller's own leases, and any other client's change of it would have
been recalled first: a recall since the call began makes the update a drop). A recall of an inode drops all
of them; a lost session drops everything. Memory: at most max_inodes inodes are kept; dropping
one locally needs no message (the server's recall of it later is acked at once).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import OrderedDict
from typing import Any

from aifs_core.types import Attr, ChunkRef, DirEntry

MAX_INODES = 100_000
PAGE_MAX = 1000          # entries a page this cache extends may hold (the mount's ReadDir page)
NEGATIVE = object()


class _Entry:
    __slots__ = ("attr", "cs", "refs", "names", "pages", "complete", "total", "unlisted")

    def __init__(self) -> None:
        self.attr: Attr | None = None
        self.cs = 0
        self.refs: list[ChunkRef] | None = None
        self.names: dict[bytes, int | None] = {}        # a directory's: name -> ino | absent
        self.pages: dict[int, tuple[list[DirEntry], bool]] = {}
        self.complete = False                           # names holds every entry
        self.total: int | None = None                   # dir_bytes, kept while pages are
        # names this mount added while keeping the pages, whose cookie is not known yet:
        # until each is listed (own_listed), no page is served
        self.unlisted: dict[bytes, int] = {}


def _cookie(e: DirEntry) -> int:
    return e.cookie


def _chain(d: _Entry) -> list[tuple[int, DirEntry]] | None:
    """The entries of the pages from cookie 0 to eof, in order, each with the cookie that
    precedes it; None when the chain is broken."""
    out: list[tuple[int, DirEntry]] = []
    cookie = 0
    for _ in range(len(d.pages)):
        page = d.pages.get(cookie)
        if page is None:
            return None
        entries, eof = page
        for e in entries:
            out.append((cookie, e))
            cookie = e.cookie
        if eof:
            return out
        if not entries:
            return None
    return None


def _chain_complete(d: _Entry) -> bool:
    """Whether the pages from cookie 0 run unbroken to eof."""
    return _chain(d) is not None


class LeaseCache:
    def __init__(self, session: Any, max_inodes: int = MAX_INODES) -> None:
        self.session = session
        self.max_inodes = max_inodes
        self._lock = threading.Lock()
        self._e: OrderedDict[int, _Entry] = OrderedDict()
        self._recalls = 0         # recalls and resets so far (own_entry's check)
        self._pos: dict[int, tuple[int, int, int]] = {}     # position hints (put_page)
        self._changed: set[int] = set()                      # recalled since take_changed
        self._resets = 0          # session resets so far (held_mark)
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
            if d is None or (name not in d.names and not d.complete):
                self._count(False)
                return None
            ino = d.names.get(name)
            if ino is None:
                self._count(True)
                return NEGATIVE
            e = self._e.get(ino)
            self._count(e is not None and e.attr is not None)
            return None if e is None else e.attr

    def readdir(self, ino: int, cookie: int) -> tuple[list[DirEntry], bool] | None:
        with self._lock:
            d = self._get(ino)
            page = None if d is None or d.unlisted else d.pages.get(cookie)
            if page is not None:
                page = self._current(page)
            self._count(page is not None)
            return page

    def _current(self, page: tuple[list[DirEntry], bool]) -> tuple[list[DirEntry], bool] | None:
        """A kept page with each entry's attributes as this cache holds them now; None when
        one of its inodes is no longer held. A page's attrs are those of when it was listed:
        a change since (this mount's own write drops the inode, another client's is recalled)
        leaves the directory's lease, and so the page, in place, and readdirplus hands the
        kernel what the page says, setting a rewritten file's size back (under the lock)."""
        entries, eof = page
        out = entries
        for i, de in enumerate(entries):
            e = self._e.get(de.attr.ino)
            if e is None or e.attr is None:
                return None
            if e.attr is not de.attr:
                if out is entries:
                    out = list(entries)
                out[i] = DirEntry(de.name, e.attr, de.cookie)
        return out, eof

    def dir_bytes(self, ino: int) -> int | None:
        """The total size of a complete leased directory's entries as listed (None: not
        known complete, or its pages were dropped since). Kept until the pages change: a
        cold open asks it each time (a sum over 2,000 entries per open cost a fifth of the
        mount's time in a cold ML epoch)."""
        with self._lock:
            d = self._get(ino)
            if d is None or not d.complete:
                return None
            if d.total is None:
                if not _chain_complete(d):
                    return None
                d.total = sum(e.attr.size for entries, _ in d.pages.values() for e in entries)
            return d.total

    def _listing(self, ino: int) -> list[tuple[int, DirEntry, _Entry | None]] | None:
        """A complete leased directory's entries in listing order, each with the cookie
        before it and what this cache holds of it (under the lock)."""
        d = self._get(ino)
        listing = None if d is None or not d.complete else _chain(d)
        if listing is None:
            return None
        return [(before, de, self._e.get(de.attr.ino)) for before, de in listing]

    def unmapped(self, ino: int) -> list[tuple[int, DirEntry]] | None:
        with self._lock:
            listing = self._listing(ino)
            return None if listing is None else [
                (before, de) for before, de, e in listing if e is None or e.refs is None]

    def mapped(self, ino: int) -> list[tuple[Attr, int, list[ChunkRef]]] | None:
        """A complete leased listing's entries whose chunk maps this cache holds, in listing
        order, each as (attr, chunk size, refs): what a directory prefetch fetches
        (dir_prefetch.py)."""
        with self._lock:
            listing = self._listing(ino)
            return None if listing is None else [
                (e.attr, e.cs, list(e.refs)) for _b, _de, e in listing
                if e is not None and e.attr is not None and e.refs is not None]

    def has_map(self, ino: int, generation: int | None = None) -> bool:
        with self._lock:
            e = self._get(ino)
            return (e is not None and e.attr is not None and e.refs is not None
                    and (generation is None or e.attr.generation == generation))

    def position(self, ino: int) -> tuple[int, int, int] | None:
        with self._lock:
            return self._pos.get(ino)

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
                self._set_attr(a)

    def put_map(self, token: int, a: Attr, cs: int, refs: list[ChunkRef]) -> None:
        with self._lock:
            if self._keep(token):
                e = self._entry(a.ino)
                e.attr, e.cs, e.refs = a, cs, list(refs)

    def put_entry(self, token: int, parent: int, name: bytes, a: Attr) -> None:
        with self._lock:
            if self._keep(token):
                self._entry(parent).names[name] = a.ino
                self._set_attr(a)

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
            d.total = None
            if len(self._pos) > self.max_inodes:
                self._pos.clear()
            before = cookie
            for de in entries:
                self._pos[de.attr.ino] = (ino, before, de.cookie)
                before = de.cookie
                d.names[de.name] = de.attr.ino
                d.unlisted.pop(de.name, None)       # listed now: it waits for no cookie
                self._set_attr(de.attr)
            if not d.complete and _chain_complete(d):
                # negatives learnt before are right (same lease); anything else is absent
                d.names = {n: i for n, i in d.names.items() if i is not None}
                d.complete = True

    def put_new_dir(self, token: int, a: Attr) -> None:
        with self._lock:
            if self._keep(token):
                d = self._entry(a.ino)
                d.attr, d.names, d.complete, d.total = a, {}, True, None
                d.pages, d.unlisted = {0: ([], True)}, {}     # its listing: empty

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

    def drop_attr(self, ino: int) -> None:
        """This mount changed the inode's attributes only (chmod, chown, utimens): as drop,
        but a directory keeps its names and pages (they do not change with its attrs)."""
        s = self.session
        if s is None:
            return
        with self._lock:
            s.bump()
            e = self._e.get(ino)
            if e is not None and (e.names or e.pages or e.complete):
                e.attr = None
            else:
                self._e.pop(ino, None)

    def recalls(self) -> tuple[int, int]:
        with self._lock:
            return self._recalls, -1 if self.session is None else int(self.session.epoch)

    def own_entry(self, mark: tuple[int, int], parent: int, name: bytes, ino: int | None,
                  parent_attr: Attr | None = None, listed_later: bool = False) -> None:
        s = self.session
        if s is None:
            return
        with self._lock:
            quiet = s.epoch == mark[1]       # nothing else of ours or theirs since the call
            s.bump()
            d = self._e.get(parent)
            if d is None:
                return
            if self._recalls != mark[0]:
                # another client's change may have come between ours and now
                self._e.pop(parent, None)
                return
            # its times changed: the reply's attrs are the ones after our change, unless
            # another change of ours ran meanwhile (then which is later is unknown)
            d.attr = parent_attr if quiet and parent_attr is not None else None
            d.total = None
            if ino is not None and listed_later and d.pages:
                d.unlisted[name] = ino          # the pages wait for its cookie (own_listed)
            elif ino is None and d.pages:
                self._unlist(parent, d, name)
            else:
                d.pages, d.unlisted = {}, {}
            if ino is None:
                if d.complete:
                    d.names.pop(name, None)
                else:
                    d.names[name] = None
            else:
                d.names[name] = ino

    def _unlist(self, parent: int, d: _Entry, name: bytes) -> None:
        """`name` left `parent`: it leaves every kept page that shows it, or the pages go (and
        the names waiting for them) when that cannot be done. Under the lock."""
        if d.unlisted.pop(name, None) is not None:
            return                              # never listed: an unborn file
        if not self._cut_from_pages(parent, d, name):
            d.pages, d.unlisted = {}, {}

    def _cut_from_pages(self, parent: int, d: _Entry, name: bytes) -> bool:
        """Take `name` out of the kept pages that show it (found by the cookie its listing
        gave it: entries are in cookie order). False when that is not known, or would break
        the pages' chain (the last entry of a page before the end: the next page is keyed by
        its cookie)."""
        ino = d.names.get(name)
        pos = None if ino is None else self._pos.get(ino)
        if pos is None or pos[0] != parent:
            return False
        cookie, found = pos[2], False
        for k, (entries, eof) in list(d.pages.items()):
            i = bisect.bisect_left(entries, cookie, key=_cookie)
            if i == len(entries) or entries[i].cookie != cookie:
                continue
            if entries[i].name != name or (i == len(entries) - 1 and not eof):
                return False
            d.pages[k] = (entries[:i] + entries[i + 1:], eof)
            found = True
        return found

    def own_listed(self, parent: int, name: bytes, a: Attr, cookie: int) -> None:
        """The server made `name` (own_entry(listed_later=True)) at listing cookie `cookie`
        (0: unknown) with attrs `a`: it joins the end of the kept listing, which is served
        again once no name waits. At the end because the directory is leased to us alone
        (no other client adds to it without recalling it first) and cookies are dentry ids,
        in creation order; a cookie not past the last entry's drops the pages instead."""
        with self._lock:
            d = self._get(parent)
            if d is None or d.unlisted.get(name) != a.ino:
                return              # listed by a page since, or the pages were dropped
            del d.unlisted[name]
            ends = [k for k, (_entries, eof) in d.pages.items() if eof]
            last = [(d.pages[k][0][-1].cookie if d.pages[k][0] else k) for k in ends]
            if not cookie or not ends or any(cookie <= c for c in last):
                d.pages, d.unlisted = {}, {}
                return
            # every page that ends the listing ends it with the same entry (pages read with
            # different sizes overlap): each takes the new one, or is closed by a new page
            de = DirEntry(name, a, cookie)
            for k, c in zip(ends, last, strict=True):
                entries = d.pages[k][0]
                if len(entries) < PAGE_MAX:
                    d.pages[k] = ([*entries, de], True)
                else:
                    d.pages[k] = (entries, False)
                    d.pages[c] = ([de], True)
            d.total = None
            self._pos[a.ino] = (parent, last[0], cookie)
            self._set_attr(a)

    def own_attr(self, mark: tuple[int, int], a: Attr) -> None:
        """This mount's change of a file it made in a directory leased to it alone gave the
        file's attrs `a` (after the change dropped them): kept, so that listings of the
        directory stay local, unless a recall or reset came since `mark` (taken before)."""
        with self._lock:
            if self._recalls == mark[0] and self._valid():
                self._set_attr(a)

    def _set_attr(self, a: Attr) -> None:
        """Keep `a` as its inode's attrs; a map of another generation goes (under the lock)."""
        e = self._entry(a.ino)
        if e.attr is None or e.attr.generation != a.generation:
            e.refs = None
        e.attr = a

    def held_mark(self) -> int | None:
        """A mark for a file's state read under a lease: equal to a later held_mark() only if
        no reset came between and the session still holds (None: it does not now). After a
        reset the server recalls nothing of what it dropped, so take_changed() cannot tell."""
        with self._lock:
            return self._resets if self._valid() else None

    def take_changed(self, ino: int) -> bool:
        with self._lock:
            if ino in self._changed:
                self._changed.discard(ino)
                return True
            return False

    def recalled(self, inos: list[int]) -> None:
        with self._lock:
            self._recalls += 1
            if len(self._changed) > self.max_inodes:
                self._changed.clear()
            self._changed.update(inos)
            for ino in inos:
                self._e.pop(ino, None)

    def reset(self) -> None:
        with self._lock:
            self._recalls += 1
            self._resets += 1
            self._e.clear()
