"""Change events for watchers (the RFC's SubscribeEvents, carried by the Session stream:
session.proto `Watch` / `Events`; the SDK's `AIFSClient.watch`).

Interface:
    EventHub(path_of, events_max=EVENTS_MAX, resume_events=RESUME_EVENTS,
             resume_seconds=RESUME_SECONDS)
        path_of(tree, ino) -> bytes | None      the metadata engine's (PosixMeta.path_of)
        .watch(tree, prefix, wake, resume="") -> Watcher   events of paths under `prefix`
                                                ("/a": "/a" and below, not "/ab") in `tree`
                                                from now on; wake(watcher) is called (any
                                                thread) when its queue goes from empty to not
                                                empty. resume: a cursor (below) of an earlier
                                                watcher of the tree: the events after it are
                                                queued first, or, when they are not all kept
                                                here, the first batch says overflow
        .unwatch(w)                             no more events for it (its stream ended); the
                                                tree's events are still kept for a resume for
                                                resume_seconds after its last watcher went
        .watching(tree) -> bool                 a watcher on the tree, or its events kept for
                                                a resume (two dict lookups: what a change pays
                                                when nobody watches)
        .cursor(seq) -> str                     a Watcher.take cursor as sent: "<instance>:<seq>"
                                                (instance: random per hub, so a cursor of
                                                another server or an earlier run never matches)
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
    Watcher.take(n) -> (events, overflow, seq)  up to n queued events, oldest first; whether
                                                events were lost just before them (a batch
                                                stops at a loss: the next one says overflow);
                                                the sequence number to resume after (cursor())
    CREATED, CHANGED, REMOVED                   session_pb2.Event.Kind values
    EVENTS_MAX (env AIFS_WATCH_EVENTS_MAX, default 10,000)
    RESUME_EVENTS (env AIFS_WATCH_RESUME_EVENTS, default 10,000): events kept per watched tree
    RESUME_SECONDS (env AIFS_WATCH_RESUME_SECONDS, default 60): how long after its last
                                                watcher went a tree's events are still kept

Why the changing call resolves the path: it is the one moment the name is certain (a later
rename or unlink would give another path, or none). The cost is an index lookup per level of
the path, paid only while someone watches that tree. A watcher that does not read its stream
cannot hold the server's memory: past events_max queued events the newest are dropped and the
next batch says `overflow` (as inotify's IN_Q_OVERFLOW), so the client lists again.

Resuming (docs/LEASES.md "Change events"): every event gets a sequence number of this hub, and
the last RESUME_EVENTS events of each watched tree are kept in a ring (path and event), also
for RESUME_SECONDS after its last watcher went, so that a client whose stream broke (a network
blip, a client restart) watches again from its last batch's cursor and gets exactly the events
it missed, in order. Kept in memory only: a cursor of another server or of a restarted one,
or one older than what the ring holds, gets overflow (list again), never a silent gap.

Servers on one PostgreSQL forward events over the lease bus to the servers that announced a
watcher on the tree; a tree's first watcher here is answered once every peer acked the
announcement (on_watch may block, bounded: lease_bus.py). A change of a whole tree (the
Versioning service's) is one overflow for its watchers: list again.
"""

from __future__ import annotations

import os
import secrets
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
RESUME_EVENTS = int(os.environ.get("AIFS_WATCH_RESUME_EVENTS", "10000"))
RESUME_SECONDS = float(os.environ.get("AIFS_WATCH_RESUME_SECONDS", "60"))
ANNOUNCE_WAIT = 60.0    # seconds a watcher waits for its tree's announcement (bounded there)


def normalize_prefix(prefix: str) -> bytes:
    """A Watch prefix as the paths are compared: "/"-rooted, no trailing "/" ("" = all)."""
    p = prefix.encode("utf-8", "surrogateescape").rstrip(b"/")
    return p if not p or p.startswith(b"/") else b"/" + p


def under(path: bytes, prefix: bytes) -> bool:
    return not prefix or path == prefix or path.startswith(prefix + b"/")


class Watcher:
    """One stream's watch: its prefix and its bounded queue of (sequence number, event).

    A loss (the queue full, the tree changed whole, a resume that could not be exact) is a
    mark in the queue at the place it happened, not a flag: the events queued before it go
    out first, then a batch that says overflow. Told earlier, a client would list again and
    then apply older events over the newer listing."""

    def __init__(self, tree: TreeRef, prefix: bytes, wake: Callable[[Watcher], None],
                 events_max: int) -> None:
        self.tree = tree
        self.prefix = prefix
        self._wake = wake
        self._max = events_max
        self._lock = threading.Lock()
        # (seq, event); event None: a loss, everything up to seq (dropped events too)
        self._queue: deque[list[Any]] = deque()
        self._seq = 0           # the last event offered (queued or dropped) or lost
        # set by the stream once it answered the Watch: events queued before that go out
        # after the answer, never as if they were it (rpc_session.py)
        self.answered = False

    def _lose(self, seq: int) -> bool:
        """A loss up to `seq` at the queue's tail (one mark for losses back to back); True
        when the queue was empty. Under the lock."""
        self._seq = max(self._seq, seq)
        if self._queue and self._queue[-1][1] is None:
            self._queue[-1][0] = self._seq
            return False
        self._queue.append([self._seq, None])
        return len(self._queue) == 1

    def offer(self, seq: int, event: Any) -> None:
        with self._lock:
            if len(self._queue) >= self._max:
                first = self._lose(seq)
            else:
                self._seq = seq
                self._queue.append([seq, event])
                first = len(self._queue) == 1
        if first:
            self._wake(self)

    def lost(self, seq: int) -> None:
        """Events the watcher will not get (its tree changed whole, a resume that cannot be
        exact): a batch says overflow at this point of the queue."""
        with self._lock:
            first = self._lose(seq)
        if first:
            self._wake(self)

    def caught_up(self, seq: int) -> None:
        """Every event up to `seq` is queued, dropped or not for this watcher."""
        with self._lock:
            self._seq = max(self._seq, seq)

    def take(self, n: int) -> tuple[list[Any], bool, int]:
        """Up to n events; overflow when a loss comes before them (a batch never holds events
        from both sides of a loss); the seq a resume would start after."""
        with self._lock:
            q = self._queue
            overflow = bool(q) and q[0][1] is None
            last = q.popleft()[0] if overflow else None
            out: list[Any] = []
            while q and len(out) < n and q[0][1] is not None:
                last, event = q.popleft()
                out.append(event)
            seq = last if q and last is not None else self._seq
        return out, overflow, seq


class _Ring:
    """A tree's last events for resuming: every event numbered above `start` is in `items`."""

    __slots__ = ("items", "start", "until")

    def __init__(self, start: int, size: int) -> None:
        self.items: deque[tuple[int, bytes, Any]] = deque(maxlen=size)
        self.start = start
        self.until: float | None = None     # monotonic end of a ring nobody watches

    def add(self, seq: int, path: bytes, event: Any) -> None:
        """event None: the whole tree changed."""
        if len(self.items) == self.items.maxlen:
            self.start = self.items[0][0]
        self.items.append((seq, path, event))


class EventHub:
    def __init__(self, path_of: Callable[[TreeRef, int], bytes | None],
                 events_max: int = EVENTS_MAX, resume_events: int = RESUME_EVENTS,
                 resume_seconds: float = RESUME_SECONDS) -> None:
        self._path_of = path_of
        self._max = events_max
        self._resume_events = max(1, resume_events)
        self._resume_seconds = resume_seconds
        self.instance = secrets.token_hex(6)
        self._seq = 0
        self._lock = threading.Lock()
        self._by_tree: dict[TreeRef, list[Watcher]] = {}
        self._rings: dict[TreeRef, _Ring] = {}
        self._remote: dict[TreeRef, float] = {}       # tree -> until (monotonic)
        self._announced: dict[TreeRef, threading.Event] = {}   # set once on_watch returned
        self.on_watch: Callable[[TreeRef], None] | None = None
        self.forward: Callable[[TreeRef, int, bytes, int, bool], None] | None = None
        self.forward_lost: Callable[[TreeRef], None] | None = None
        self.forward_all: Callable[[], bool] | None = None

    def watch(self, tree: TreeRef, prefix: str, wake: Callable[[Watcher], None],
              resume: str = "") -> Watcher:
        """Returns once the tree's watching is announced (on_watch): a second watcher that
        comes while the first one's announcement is out waits for it too."""
        w = Watcher(tree, normalize_prefix(prefix), wake, self._max)
        with self._lock:
            # under the lock that numbers events: nothing falls between the replay and the
            # live events, nor comes twice
            ring = self._ring_locked(tree)
            if ring is None:
                # a number of its own: the tree's changes before it were not all numbered
                # (nobody watched), so a cursor from before can never resume here
                self._seq += 1
                ring = self._rings[tree] = _Ring(self._seq, self._resume_events)
            ring.until = None
            if resume:
                self._replay_locked(w, ring, resume)
            w.caught_up(self._seq)
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

    def _replay_locked(self, w: Watcher, ring: _Ring, resume: str) -> None:
        """Queue for `w` the ring's events after cursor `resume`, or mark it overflow when
        the ring does not hold them all (another server's or an older cursor)."""
        instance, _, number = resume.partition(":")
        after = int(number) if number.isdigit() else -1
        if instance != self.instance or not ring.start <= after <= self._seq:
            w.lost(self._seq)
            return
        for seq, path, event in ring.items:
            if seq <= after:
                continue
            if event is None:
                w.lost(seq)
            elif under(path, w.prefix):
                w.offer(seq, event)

    def _ring_locked(self, tree: TreeRef) -> _Ring | None:
        """The tree's ring, None (and dropped) once kept past resume_seconds unwatched."""
        ring = self._rings.get(tree)
        if ring is not None and ring.until is not None and ring.until <= time.monotonic():
            del self._rings[tree]
            if tree not in self._by_tree:
                self._announced.pop(tree, None)
            return None
        return ring

    def cursor(self, seq: int) -> str:
        return f"{self.instance}:{seq}"

    def unwatch(self, w: Watcher) -> None:
        with self._lock:
            left = [x for x in self._by_tree.get(w.tree, []) if x is not w]
            if left:
                self._by_tree[w.tree] = left
            elif self._by_tree.pop(w.tree, None) is not None:
                ring = self._rings.get(w.tree)
                if ring is not None and self._resume_seconds > 0:
                    # still recorded (and announced to the peers) for a resume
                    ring.until = time.monotonic() + self._resume_seconds
                else:
                    self._rings.pop(w.tree, None)
                    self._announced.pop(w.tree, None)

    @property
    def watchers(self) -> int:
        with self._lock:
            return sum(len(ws) for ws in self._by_tree.values())

    def watching(self, tree: TreeRef) -> bool:
        if tree in self._by_tree:
            return True
        if tree in self._rings:
            with self._lock:
                if self._ring_locked(tree) is not None:
                    return True
        return self._remote_live(tree)

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
        """Watched here, or kept for a resume (the peers go on forwarding their events):
        the trees with a live ring (watch() gives every watched tree one)."""
        with self._lock:
            return [t for t in list(self._rings) if self._ring_locked(t) is not None]

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
        with self._lock:
            self._seq += 1
            ring = self._rings.get(tree)
            if ring is not None:
                ring.add(self._seq, b"", None)
            for w in self._by_tree.get(tree, ()):
                w.lost(self._seq)
        if forward and self.forward_lost is not None and self._remote_live(tree):
            self.forward_lost(tree)

    def _publish(self, tree: TreeRef, kind: int, path: bytes, ino: int, is_dir: bool) -> None:
        self._deliver(tree, kind, path, ino, is_dir)
        if self.forward is not None and self._remote_live(tree):
            self.forward(tree, kind, path, ino, is_dir)

    def _deliver(self, tree: TreeRef, kind: int, path: bytes, ino: int, is_dir: bool) -> None:
        with self._lock:
            ring = self._rings.get(tree)
            watchers = self._by_tree.get(tree, ())
            if ring is None and not watchers:
                return      # only forwarded (a peer watches): nothing here to number
            self._seq += 1
            event = session_pb2.Event(kind=kind, ino=ino, is_dir=is_dir,
                                      path=path.decode("utf-8", "backslashreplace"))
            if ring is not None:
                ring.add(self._seq, path, event)
            for w in watchers:
                if under(path, w.prefix):
                    w.offer(self._seq, event)
