"""What the mount knows per inode, in one table of small records.

Interface:
    Inode                        one inode's record (fields below; None/0/False = not known)
        .lookups      the kernel's lookup count (our replies that named it, minus its FORGETs)
        .parent       a directory's parent, for readdir's ".." (learnt from lookup/mkdir/readdir)
        .seen_gen     generation of the data the kernel's page cache may hold (keep_cache)
        .kernel_gen   generation of the attributes the kernel holds (a regular file's)
        .fresh        (valid until, Attr) from the reply of one of our own calls
        .state        the FileState while the file is open or dirty here
        .load_lock    one state load at a time (two racing opens must share one FileState)
        .open_dirs    directory handles open on it
        .dead_dir     removed while open here: Forget it at its last releasedir
        .retry_pending  a commit at close failed and is being retried
    InodeTable(attr_timeout)
        .get(ino) -> Inode | None;  .node(ino) -> Inode (made when missing)
        .remember_lookup(ino);  .forget(ino, n) -> bool (the kernel let go of it)
        .saw_in(attr, parent);  .parent_of(ino);  .moved_between(a, b)
        .note_attr(attr, asked_at);  .fresh_attr(ino) -> (attr, seconds left) | None
        .drop_fresh(ino);  .clear_fresh()
        .state(ino);  .set_state(st);  .drop_state(st) -> bool;  .states() -> [FileState]
        .load_lock(ino) -> trio.Lock;  .release_load_lock(ino, lock)
        .seen_gen(ino) / .set_seen_gen(ino, gen) / .drop_seen_gen(ino);  .kernel_gen(ino);
        .kernel_sees(attr)           the kernel was handed these attrs
        .retry_started(ino) -> bool;  .retry_ended(ino)
        .dir_opened(ino);  .dir_closed(ino) -> bool (last handle of a removed directory);
        .dir_open(ino);  .mark_dead_dir(ino);  .dead_dirs();  .clear_dead_dirs()
        .release(ino)                drop the record if nothing refers to it any more
        len(table)

The rule that keeps memory bounded by the kernel's cache: a record lives while the kernel
holds the inode (lookups > 0), or this mount holds something for it (an open or dirty state,
a load in progress, an open directory, a dead directory or a retry), or a fresh attr is still
valid; every method that clears one of those calls `release`. When the kernel forgets an inode
its attributes and pages go with it, so kernel_gen, parent and seen_gen go too. Fresh attrs of
inodes nothing else refers to are swept once more than FRESH_MAX are held.
"""

from __future__ import annotations

import stat
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import trio

from aifs_core.types import ROOT_INO, Attr

if TYPE_CHECKING:
    from aifsfs.fuse.write_buffer import FileState

FRESH_MAX = 4096


class Inode:
    __slots__ = ("lookups", "parent", "seen_gen", "kernel_gen", "fresh", "state", "load_lock",
                 "open_dirs", "dead_dir", "retry_pending")

    def __init__(self) -> None:
        self.lookups = 0
        self.parent: int | None = None
        self.seen_gen: int | None = None
        self.kernel_gen: int | None = None
        self.fresh: tuple[float, Attr] | None = None
        self.state: FileState | None = None
        self.load_lock: trio.Lock | None = None
        self.open_dirs = 0
        self.dead_dir = False
        self.retry_pending = False

    def referenced(self) -> bool:
        return bool(self.lookups or self.state is not None or self.load_lock is not None
                    or self.open_dirs or self.dead_dir or self.retry_pending
                    or self.fresh is not None)


class InodeTable:
    def __init__(self, attr_timeout: float) -> None:
        self.attr_timeout = attr_timeout
        self._nodes: dict[int, Inode] = {}
        # indexes of the few records the mount walks (so that no walk is over every inode
        # the kernel holds): those with a fresh attr, and the open or dirty files
        self._fresh: set[int] = set()
        self._states: dict[int, FileState] = {}

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[tuple[int, Inode]]:
        return iter(list(self._nodes.items()))

    def get(self, ino: int) -> Inode | None:
        return self._nodes.get(ino)

    def node(self, ino: int) -> Inode:
        n = self._nodes.get(ino)
        if n is None:
            n = self._nodes[ino] = Inode()
        return n

    def release(self, ino: int) -> None:
        n = self._nodes.get(ino)
        if n is not None and not n.referenced():
            del self._nodes[ino]

    # --- the kernel's references ----------------------------------------------------------------
    def remember_lookup(self, ino: int) -> None:
        self.node(ino).lookups += 1

    def forget(self, ino: int, count: int) -> bool:
        """The kernel dropped `count` lookups; True when it holds none any more."""
        n = self._nodes.get(ino)
        left = (n.lookups if n is not None else 0) - count
        if n is not None and left > 0:
            n.lookups = left
            return False
        if n is not None:
            # its attributes and page cache left the kernel with it
            n.lookups = 0
            n.kernel_gen = n.seen_gen = n.parent = None
            self.release(ino)
        return True

    def kernel_sees(self, a: Attr) -> None:
        """The kernel is handed `a` (a reply): remember a file's attr generation it holds."""
        if stat.S_ISREG(a.mode):
            self.node(a.ino).kernel_gen = a.generation

    # --- ".." -----------------------------------------------------------------------------------
    def saw_in(self, a: Attr, parent: int) -> None:
        """`a` was named in directory `parent`: remember a directory's parent (for "..")."""
        if stat.S_ISDIR(a.mode) and a.ino != ROOT_INO:
            self.node(a.ino).parent = parent

    def parent_of(self, ino: int) -> int:
        """A directory's parent; the directory itself when unknown."""
        if ino == ROOT_INO:
            return ROOT_INO
        n = self._nodes.get(ino)
        return n.parent if n is not None and n.parent is not None else ino

    def moved_between(self, old: int, new: int) -> None:
        """A rename across directories: a directory may have moved (or two swapped), so the
        ".." of every child of either is unknown until a lookup or listing names it again."""
        gone = {old, new}
        for ino, n in self:
            if n.parent in gone:
                n.parent = None
                self.release(ino)

    # --- attrs from our own replies ---------------------------------------------------------------
    def note_attr(self, a: Attr | None, asked_at: float) -> None:
        """Keep an inode's attrs from the reply to a call made at `asked_at` (monotonic),
        valid until asked_at + attr_timeout: what the kernel's own cache would allow had it
        kept them."""
        if a is None or self.attr_timeout <= 0:
            return
        if len(self._fresh) > FRESH_MAX:
            self._sweep_fresh()
        self.node(a.ino).fresh = (asked_at + self.attr_timeout, a)
        self._fresh.add(a.ino)

    def fresh_attr(self, ino: int) -> tuple[Attr, float] | None:
        """The noted attrs and the seconds they stay valid, or None (expired ones go)."""
        n = self._nodes.get(ino)
        if n is None or n.fresh is None:
            return None
        left = n.fresh[0] - time.monotonic()
        if left <= 0:
            self.drop_fresh(ino)
            return None
        return n.fresh[1], left

    def drop_fresh(self, ino: int) -> None:
        n = self._nodes.get(ino)
        if n is not None and n.fresh is not None:
            n.fresh = None
            self._fresh.discard(ino)
            self.release(ino)

    def clear_fresh(self) -> None:
        for ino in list(self._fresh):
            self.drop_fresh(ino)

    def _sweep_fresh(self) -> None:
        now = time.monotonic()
        for ino in list(self._fresh):
            n = self._nodes[ino]
            if n.fresh is not None and n.fresh[0] <= now:
                self.drop_fresh(ino)

    # --- open and dirty files ---------------------------------------------------------------------
    def state(self, ino: int) -> FileState | None:
        n = self._nodes.get(ino)
        return None if n is None else n.state

    def set_state(self, st: FileState) -> None:
        self.node(st.ino).state = st
        self._states[st.ino] = st

    def drop_state(self, st: FileState) -> bool:
        """Forget `st` if it is still the inode's state (True), and the record if unused."""
        n = self._nodes.get(st.ino)
        if n is None or n.state is not st:
            return False
        n.state = None
        del self._states[st.ino]
        self.release(st.ino)
        return True

    def states(self) -> list[FileState]:
        return list(self._states.values())

    def load_lock(self, ino: int) -> trio.Lock:
        n = self.node(ino)
        if n.load_lock is None:
            n.load_lock = trio.Lock()
        return n.load_lock

    def release_load_lock(self, ino: int, lock: trio.Lock) -> None:
        """Drop the inode's load lock once nobody holds or waits for it."""
        n = self._nodes.get(ino)
        if (n is not None and n.load_lock is lock and not lock.locked()
                and not lock.statistics().tasks_waiting):
            n.load_lock = None
            self.release(ino)

    # --- generations --------------------------------------------------------------------------------
    def seen_gen(self, ino: int) -> int | None:
        n = self._nodes.get(ino)
        return None if n is None else n.seen_gen

    def set_seen_gen(self, ino: int, gen: int) -> None:
        self.node(ino).seen_gen = gen

    def drop_seen_gen(self, ino: int) -> None:
        n = self._nodes.get(ino)
        if n is not None:
            n.seen_gen = None

    def retry_started(self, ino: int) -> bool:
        """Mark a commit retry as running; False when one already is."""
        n = self.node(ino)
        if n.retry_pending:
            return False
        n.retry_pending = True
        return True

    def retry_ended(self, ino: int) -> None:
        n = self._nodes.get(ino)
        if n is not None:
            n.retry_pending = False
            self.release(ino)

    def kernel_gen(self, ino: int) -> int | None:
        n = self._nodes.get(ino)
        return None if n is None else n.kernel_gen

    # --- directories ----------------------------------------------------------------------------------
    def dir_opened(self, ino: int) -> None:
        self.node(ino).open_dirs += 1

    def dir_closed(self, ino: int) -> bool:
        """A directory handle closed; True when it was removed and this was its last one."""
        n = self._nodes.get(ino)
        if n is None:
            return False
        n.open_dirs -= 1
        last_of_dead = n.dead_dir and n.open_dirs == 0
        if last_of_dead:
            n.dead_dir = False
        self.release(ino)
        return last_of_dead

    def dir_open(self, ino: int) -> bool:
        n = self._nodes.get(ino)
        return n is not None and n.open_dirs > 0

    def mark_dead_dir(self, ino: int) -> None:
        self.node(ino).dead_dir = True

    def dead_dirs(self) -> list[int]:
        return [ino for ino, n in self if n.dead_dir]

    def clear_dead_dirs(self) -> None:
        for ino, n in self:
            if n.dead_dir:
                n.dead_dir = False
                self.release(ino)
