"""Change events for watchers (the RFC's SubscribeEvents, carried by the Session stream:
session.proto `Watch` / `Events`; the SDK's `AIFSClient.watch`).

Interface:
    EventHub(path_of, events_max=EVENTS_MAX)
        path_of(tree, ino) -> bytes | None      the metadata engine's (PosixMeta.path_of)
        .watch(tree, prefix, wake) -> Watcher   events of paths under `prefix` ("/a": "/a"
                                                and below, not "/ab") in `tree` from now on;
                                                wake(watcher) is called (any thread) when its
                                                queue goes from empty to not empty
        .unwatch(w)                             no more events for it (its stream ended)
        .watching(tree) -> bool                 a watcher on the tree (one dict lookup: what
                                                a change pays when nobody watches)
        .entry(tree, kind, parent, name, ino, is_dir)   `name` in directory `parent`
                                                CREATED or REMOVED (the path: the parent's
                                                path now + the name)
        .inode(tree, kind, ino, is_dir)         `ino` CHANGED (its path now)
        .tree_changed(tree)                     the whole tree changed (a branch reset, a merge,
                                                a branch deleted): each watcher's next batch
                                                says overflow (list again), no event per path
        .watchers -> int
      across servers on one PostgreSQL (lease_bus.py sets these):
        .on_watch(tree)                         called when a tree gets its first watcher here
        .forward(tree, kind, path, ino, is_dir) / .forward_lost(tree)
                                                called for each event (a whole-tree change)
                                                of a tree some other server's watcher wants
        .remote_watch(tree, until)              another server watches `tree` until
                                                `until` (monotonic); changes of it are
                                                resolved and forwarded
        .local_trees() -> [tree]                the trees watched here (announced again
                                                every heartbeat)
        .remote_event(tree, kind, path, ino, is_dir)   a peer's event, to the watchers here
        .forward_all() -> bool                  True while which trees the peers watch is not
                                                known here (not joined yet): forward every event
    Watcher.take(n) -> (events, overflow)      up to n queued events, oldest first, and
                                                whether events were dropped before them
    CREATED, CHANGED, REMOVED                   session_pb2.Event.Kind values
    EVENTS_MAX (env AIFS_WATCH_EVENTS_MAX, default 10,000)

Why the changing call resolves the path: it is the one moment the name is certain (a later
rename or unlink would give another path, or none). The cost is an index lookup per level of
the path, paid only while someone watches that tree. A watcher that does not read its stream
cannot hold the server's memory: past events_max queued events the newest are dropped and the
next batch says `overflow` (as inotify's IN_Q_OVERFLOW), so the client lists again.

Servers on one PostgreSQL forward events over the lease bus to the servers that announced a
watcher on the tree; a tree's first watcher here is answered once every peer acked the
announcement (on_watch may block, bounded: lease_bus.py). A change of a whole tree (the
Versioning service's) is one overflow for its watchers: list again.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from aifs_core.types import TreeRef
from aifs_proto.v1 import session_pb2

CREATED = session_pb2.Event.CREATED
CHANGED = session_pb2.Event.CHANGED
REMOVED = session_pb2.Event.REMOVED
EVENTS_MAX = int(os.environ.get("AIFS_WATCH_EVENTS_MAX", "10000"))
ANNOUNCE_WAIT = 60.0    # seconds a watcher waits for its tree's announcement (bounded there)


def normalize_prefix(prefix: str) -> bytes:
    """A Watch prefix as the paths are compared: "/"-rooted, no trailing "/" ("" = all)."""
    p = prefix.encode("utf-8", "surrogateescape").rstrip(b"/")
    return p if not p or p.startswith(b"/") else b"/" + p


def under(path: bytes, prefix: bytes) -> bool:
    return not prefix or path == prefix or path.startswith(prefix + b"/")


class Watcher:
    """One stream's watch: its prefix and its bounded queue of events."""

    def __init__(self, tree: TreeRef, prefix: bytes, wake: Callable[[Watcher], None],
                 events_max: int) -> None:
        self.tree = tree
        self.prefix = prefix
        self._wake = wake
        self._max = events_max
        self._lock = threading.Lock()
        self._queue: deque[Any] = deque()
        self._overflow = False
        # set by the stream once it answered the Watch: events queued before that go out
        # after the answer, never as if they were it (rpc_session.py)
        self.answered = False

    def offer(self, event: Any) -> None:
        with self._lock:
            if len(self._queue) >= self._max:
                self._overflow = True
                return
            self._queue.append(event)
            first = len(self._queue) == 1
        if first:
            self._wake(self)

    def lost(self) -> None:
        """Events the watcher will not get (its tree changed whole): the next batch says
        overflow."""
        with self._lock:
            self._overflow = True
        self._wake(self)

    def take(self, n: int) -> tuple[list[Any], bool]:
        with self._lock:
            out = [self._queue.popleft() for _ in range(min(n, len(self._queue)))]
            overflow, self._overflow = self._overflow, False
        return out, overflow


class EventHub:
    def __init__(self, path_of: Callable[[TreeRef, int], bytes | None],
                 events_max: int = EVENTS_MAX) -> None:
        self._path_of = path_of
        self._max = events_max
        self._lock = threading.Lock()
        self._by_tree: dict[TreeRef, list[Watcher]] = {}
        self._remote: dict[TreeRef, float] = {}       # tree -> until (monotonic)
        self._announced: dict[TreeRef, threading.Event] = {}   # set once on_watch returned
        self.on_watch: Callable[[TreeRef], None] | None = None
        self.forward: Callable[[TreeRef, int, bytes, int, bool], None] | None = None
        self.forward_lost: Callable[[TreeRef], None] | None = None
        self.forward_all: Callable[[], bool] | None = None

    def watch(self, tree: TreeRef, prefix: str, wake: Callable[[Watcher], None]) -> Watcher:
        """Returns once the tree's watching is announced (on_watch): a second watcher that
        comes while the first one's announcement is out waits for it too."""
        w = Watcher(tree, normalize_prefix(prefix), wake, self._max)
        with self._lock:
            announced = self._announced.get(tree)
            first = announced is None
            if announced is None:
                announced = self._announced[tree] = threading.Event()
            self._by_tree[tree] = [*self._by_tree.get(tree, []), w]
        if not first:
            announced.wait(ANNOUNCE_WAIT)
            return w
        try:
            if self.on_watch is not None:
                self.on_watch(tree)
        finally:
            announced.set()
        return w

    def unwatch(self, w: Watcher) -> None:
        with self._lock:
            left = [x for x in self._by_tree.get(w.tree, []) if x is not w]
            if left:
                self._by_tree[w.tree] = left
            else:
                self._by_tree.pop(w.tree, None)
                self._announced.pop(w.tree, None)

    @property
    def watchers(self) -> int:
        with self._lock:
            return sum(len(ws) for ws in self._by_tree.values())

    def watching(self, tree: TreeRef) -> bool:
        return tree in self._by_tree or self._remote_live(tree)

    def _remote_live(self, tree: TreeRef) -> bool:
        if self.forward_all is not None and self.forward_all():
            return True
        until = self._remote.get(tree)
        if until is None or until > time.monotonic():
            return until is not None
        with self._lock:
            if self._remote.get(tree) == until:
                del self._remote[tree]
        return False

    def remote_watch(self, tree: TreeRef, until: float) -> None:
        with self._lock:
            self._remote[tree] = max(until, self._remote.get(tree, 0.0))

    def local_trees(self) -> list[TreeRef]:
        with self._lock:
            return list(self._by_tree)

    def remote_event(self, tree: TreeRef, kind: int, path: bytes, ino: int,
                     is_dir: bool) -> None:
        self._deliver(tree, kind, path, ino, is_dir)

    def entry(self, tree: TreeRef, kind: int, parent: int, name: bytes, ino: int,
              is_dir: bool) -> None:
        if not self.watching(tree):
            return
        base = self._path_of(tree, parent)
        if base is not None:
            self._publish(tree, kind, base.rstrip(b"/") + b"/" + name, ino, is_dir)

    def inode(self, tree: TreeRef, kind: int, ino: int, is_dir: bool) -> None:
        if not self.watching(tree):
            return
        path = self._path_of(tree, ino)
        if path is not None:     # unnamed now (unlinked while open): nothing to name
            self._publish(tree, kind, path, ino, is_dir)

    def tree_changed(self, tree: TreeRef, forward: bool = True) -> None:
        for w in self._by_tree.get(tree, ()):
            w.lost()
        if forward and self.forward_lost is not None and self._remote_live(tree):
            self.forward_lost(tree)

    def _publish(self, tree: TreeRef, kind: int, path: bytes, ino: int, is_dir: bool) -> None:
        self._deliver(tree, kind, path, ino, is_dir)
        if self.forward is not None and self._remote_live(tree):
            self.forward(tree, kind, path, ino, is_dir)

    def _deliver(self, tree: TreeRef, kind: int, path: bytes, ino: int, is_dir: bool) -> None:
        # list swapped whole on (un)watch: iterate the one read here without the lock
        event = None
        for w in self._by_tree.get(tree, ()):
            if under(path, w.prefix):
                if event is None:
                    event = session_pb2.Event(kind=kind, ino=ino, is_dir=is_dir,
                                              path=path.decode("utf-8", "backslashreplace"))
                w.offer(event)
