"""Listings of large directories kept between hashings, in the server's memory (issue 11: a
snapshot after a few changes in a flat directory of 100k entries costs O(changes), where the
format hashes the directory's whole sorted listing: FORMAT.md §6.1, §6.4 "Hash checkpoints").

Interface:
    ListingCache(max_bytes=MAX_BYTES, min_entries=MIN_ENTRIES)
        .begin(tree_id, epoch) -> Pass    a hashing of `epoch` of live tree `tree_id` starts,
                                          in its write transaction: the tree's listings, taken
                                          out of the cache for it; usable only when the pass
                                          that left them hashed epoch - 1 (none otherwise)
        .commit(p)                        once p's transaction committed: its listings back,
                                          valid for hashing p.epoch + 1 (a pass not finished,
                                          or older than the tree's last, leaves nothing)
        .bytes / .entries / len(cache)    held (estimated bytes, entries, directories)
        .dirs(tree_id) -> [ino]           the directories of the tree held
        .spliced / .made                  directory bodies committed passes made from a
                                          listing held / made listings of (tests count them)
    of(store) -> ListingCache             the cache of a metadata store in this process (the
                                          server's RPC Versions and its hash keeper's share it)
    configure(max_bytes)                  the size of caches made from now on (the server's
                                          --listing-cache-mb; 0 = off)
    Pass (versions._rehash and compute_hashes use it)
        .since                            the highest dentry id at the pass that left the
                                          listings; None: no listing is usable
        .usable(dirs, stored) -> [ino]    those directories whose listing is held and whose
                                          stored node hash is the one the listing gave (others
                                          dropped); they get .forget(ino, names) and .body
        .forget(ino, names)               names gone from the directory (or to be replaced)
        .restart()                        every directory is read whole after all (a full pass)
        .body(ino, kids, child) -> bytes | None   the directory's dir_body: a held listing with
                                          `kids` (name, ino) spliced in, each with child(ino) as
                                          its hash; else, for `min_entries` kids or more, a new
                                          listing of them; else None (the caller encodes)
        .finish(hashes, max_id)           the pass's node hashes are computed: what commit
                                          installs (listings of directories not hashed dropped)
    MAX_BYTES (env AIFS_LISTING_CACHE_MB, default 64; 0 = off), MIN_ENTRIES (env
    AIFS_LISTING_CACHE_MIN, default 512)

A listing is a directory's body in pieces (merkle.dir_entry: the name and the child's node
hash, in name order) and the directory's node hash when it was made. A change splices it
(a bisection per changed name, then one copy of the list by slices), so a pass costs
O(changes) plus joining the pieces and hashing the body (~4 MB at 100k entries: a few ms),
where rereading the listing with its hashes cost ~0.5 s at 100k.

Why it is exact: the listings of tree T are installed valid for hashing epoch E + 1 by the pass
that hashed E (every epoch of a hashed tree ends hashed, FORMAT.md §6.4), and are used only by
a pass hashing E + 1 through this cache: another server's or another path's hashing in between
(a full pass, a branch's first), a pass that failed, or a process restart leave the tree with
nothing (begin drops it). A directory not changed in E keeps its listing: a change of an
entry or of a child's hash makes it dirty (its entry marks it; a child is below it). The changes
of a dirty directory in E are in the rows (versions._rehash reads them): the names of its
`dentries_hist` rows dying at E (gone, or moved: the live row with that id is where it went),
the live rows with a dentry id above the last pass's highest (ids are never reused, SQLite's
AUTOINCREMENT and PostgreSQL's identity; PostgreSQL's freeze lock, taken before either pass
reads, has every insert below that id committed), and the entries naming a dirty node (its
hash is new). As a second check, a listing is used only when the directory's stored node hash
equals the one it gave: equal hashes, equal listings.

Memory: a piece is ~46 bytes for a 12-byte name plus ~41 of object and list slot (`bytes`
counts both), ~9 MB for 100k entries. The default 64 MiB holds about seven such directories,
under what the server holds at rest (~80 MB RSS); a directory read whole at ~4 us an entry
costs under 2 ms below 512 entries, less than keeping it is worth. Least recently hashed
directories go first.
"""

from __future__ import annotations

import os
import threading
import weakref
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aifs_core import merkle

MAX_BYTES = int(float(os.environ.get("AIFS_LISTING_CACHE_MB", "64")) * (1 << 20))
MIN_ENTRIES = int(os.environ.get("AIFS_LISTING_CACHE_MIN", "512"))
_OVERHEAD = 41   # a bytes object's header (33) and its list slot (8)


class Listing:
    """One directory's dir_body pieces in name order, and its node hash when made."""

    __slots__ = ("pieces", "node", "bytes")

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces
        self.node = b""
        self.bytes = sum(map(len, pieces)) + _OVERHEAD * len(pieces)

    def splice(self, gone: Iterable[bytes], kids: Sequence[tuple[bytes, bytes]]) -> None:
        """Remove the names `gone`, then put (name, child hash) `kids` in (replacing): a
        bisection per changed name, then one copy of the list by slices (O(n) in C: 10 names
        into 100k, ~2 ms; an insert each would move the list's tail each time)."""
        pieces, key = self.pieces, merkle.entry_name
        new = merkle.dir_pieces(kids)
        cut = set()
        for name in {*gone, *(n for n, _ in kids)}:
            i = bisect_left(pieces, name, key=key)
            if i < len(pieces) and key(pieces[i]) == name:
                cut.add(i)
        cuts = sorted(cut)
        out: list[bytes] = []
        prev = c = 0
        # each new piece goes before the old one at its position (a name it replaces is cut)
        for at, piece in [*((bisect_left(pieces, key(p), key=key), p) for p in new),
                          (len(pieces), b"")]:
            while c < len(cuts) and cuts[c] < at:
                out += pieces[prev:cuts[c]]
                prev, c = cuts[c] + 1, c + 1
            out += pieces[prev:at]
            prev = max(prev, at)
            if piece:
                out.append(piece)
        self.bytes += sum(len(p) + _OVERHEAD for p in new)
        self.bytes -= sum(len(pieces[i]) + _OVERHEAD for i in cuts)
        self.pieces = out


@dataclass
class _Tree:
    epoch: int                 # the epoch the pass that left these listings hashed
    since: int                 # the highest dentry id then
    dirs: dict[int, Listing]


@dataclass
class Pass:
    """One hashing of epoch `epoch` of tree `tree_id` (see the module docstring)."""

    tree_id: int
    epoch: int
    since: int | None
    min_entries: int
    held: dict[int, Listing]
    gone: dict[int, set[bytes]] = field(default_factory=dict)
    offered: set[int] = field(default_factory=set)  # usable: to be spliced
    used: set[int] = field(default_factory=set)     # spliced or made by this pass
    max_id: int | None = None                       # set by finish: the pass is complete

    def usable(self, dirs: Iterable[int], stored: Mapping[int, bytes]) -> list[int]:
        for d in dirs:
            got = self.held.get(d)
            if got is None:
                continue
            if stored.get(d) != got.node:   # not the listing the stored hash was made of
                del self.held[d]
                continue
            self.offered.add(d)
        return sorted(self.offered)

    def restart(self) -> None:
        """Every directory is read whole after all (a full pass): nothing held is spliced."""
        self.held.clear()
        self.gone.clear()
        self.offered.clear()
        self.used.clear()

    def forget(self, ino: int, names: Iterable[bytes]) -> None:
        self.gone.setdefault(ino, set()).update(names)

    def body(self, ino: int, kids: Sequence[tuple[bytes, int]],
             child: Callable[[int], bytes]) -> bytes | None:
        got = self.held.get(ino) if ino in self.offered else None
        if got is not None:
            got.splice(self.gone.pop(ino, ()), [(n, child(c)) for n, c in kids])
        elif len(kids) >= self.min_entries:   # `kids` is the whole listing: made anew
            got = self.held[ino] = Listing(merkle.dir_pieces((n, child(c)) for n, c in kids))
        else:
            self.held.pop(ino, None)
            return None
        self.used.add(ino)
        return merkle.dir_body_of(got.pieces)

    def finish(self, hashes: Mapping[int, bytes], max_id: int) -> None:
        """hashes: every node this pass hashed. A listing it spliced or made gets its node
        hash; one it offered and did not hash (removed, no longer linked) goes."""
        for ino in self.offered | self.used:
            if ino in self.used and ino in hashes:
                self.held[ino].node = hashes[ino]
            else:
                self.held.pop(ino, None)
        self.max_id = max_id


class ListingCache:
    """Listings by (tree, directory), least recently hashed first (see the module docstring)."""

    def __init__(self, max_bytes: int = MAX_BYTES, min_entries: int = MIN_ENTRIES) -> None:
        self.max_bytes, self.min_entries = max_bytes, max(1, min_entries)
        self._lock = threading.Lock()
        self._trees: dict[int, _Tree] = {}
        self._lru: OrderedDict[tuple[int, int], Listing] = OrderedDict()
        self.bytes = self.spliced = self.made = 0

    def __len__(self) -> int:
        return len(self._lru)

    @property
    def entries(self) -> int:
        with self._lock:
            return sum(len(x.pieces) for x in self._lru.values())

    def dirs(self, tree_id: int) -> list[int]:
        """The directories of the tree whose listings are held (tests)."""
        with self._lock:
            t = self._trees.get(tree_id)
            return sorted(t.dirs) if t is not None else []

    def begin(self, tree_id: int, epoch: int) -> Pass:
        with self._lock:
            t = self._take(tree_id)
        if self.max_bytes <= 0:
            return Pass(tree_id, epoch, None, 1 << 62, {})
        if t is None or t.epoch != epoch - 1:
            return Pass(tree_id, epoch, None, self.min_entries, {})
        return Pass(tree_id, epoch, t.since, self.min_entries, t.dirs)

    def commit(self, p: Pass) -> None:
        if p.max_id is None or self.max_bytes <= 0:
            return
        with self._lock:
            cur = self._trees.get(p.tree_id)
            if cur is not None and cur.epoch >= p.epoch:
                return   # a later pass of the tree committed first: its listings stand
            self._take(p.tree_id)
            self._trees[p.tree_id] = _Tree(p.epoch, p.max_id, p.held)
            self.spliced += len(p.used & p.offered)
            self.made += len(p.used - p.offered)
            # the ones this pass did not touch first: they were hashed longer ago
            for ino in sorted(p.held, key=lambda i: i in p.used):
                self._lru[(p.tree_id, ino)] = p.held[ino]
                self.bytes += p.held[ino].bytes
            while self.bytes > self.max_bytes and self._lru:
                (tree, ino), old = self._lru.popitem(last=False)
                self.bytes -= old.bytes
                del self._trees[tree].dirs[ino]

    def _take(self, tree_id: int) -> _Tree | None:
        """The tree's listings out of the cache (under the lock)."""
        t = self._trees.pop(tree_id, None)
        if t is not None:
            for ino in t.dirs:
                self.bytes -= self._lru.pop((tree_id, ino)).bytes
        return t


_BY_STORE: weakref.WeakKeyDictionary[Any, ListingCache] = weakref.WeakKeyDictionary()
_BY_STORE_LOCK = threading.Lock()


_max_bytes = MAX_BYTES     # of caches made from now on (configure)


def configure(max_bytes: int) -> None:
    global _max_bytes
    if max_bytes < 0:
        raise ValueError(f"a listing cache of {max_bytes} bytes: give 0 (off) or more")
    _max_bytes = max_bytes


def of(store: Any) -> ListingCache:
    with _BY_STORE_LOCK:
        got = _BY_STORE.get(store)
        if got is None:
            got = _BY_STORE[store] = ListingCache(_max_bytes)
        return got
