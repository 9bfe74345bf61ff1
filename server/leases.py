"""Read leases with recall (docs/LEASES.md): what lets a mount answer stat/open/lookup from
memory and still see every change another client made before that change was answered.

Interface:
    LeaseManager(term=LEASE_TERM, max_per_session=MAX_LEASES, grants=True)
        grants=False: sessions open and changes run as usual, but no read is ever leased
        (what a server must do when other servers change the same metadata: it would not
        hear of their changes, so it must not promise a mount that nothing changed)
        .open_session(tree) -> Session          a mount's stream opened (Session.id: 128 random
                                                bits, the capability the calls carry)
        .close_session(sid)                     its stream ended: its leases go at once
        .close_all()                            server stopping: end every session's stream
        .renew(sid) -> Session | None          every lease of the session lives one more term
        .ack(sid, seq);  .release(sid, inos)
        .session(sid, tree) -> Session | None   a live session of that tree, else None
        .mark() -> int                          call before reading what a grant will cover
        .grant(sess, tree, inos, since) -> bool leases on `inos` for `sess`, unless a change of
                                                one of them started after mark() `since` (or is
                                                running): then none, and the reply is not leased
        .change(tree, inos, origin, deadline)   context manager around a change: recalls every
                                                other session's lease on `inos` and waits for
                                                each ack, or for the holder's term to run out,
                                                before the body commits; grants on `inos` are
                                                refused until the body has returned
        .recall(tree, inos, origin, deadline)   recall now (a victim learnt only from the
                                                change itself), before answering
        .tree_change(tree, deadline)            context manager around a change of a whole
                                                tree by another service (branch reset, merge,
                                                delete): recalls every lease on the tree first
        .bus                                    None, or a lease_bus.LeaseBus: then change,
                                                recall and tree_change also recall the leases
                                                held through other servers (remote=True: a
                                                peer's change, only marked and recalled here),
                                                and grants wait for bus.granting()
        .held(tree, inos) -> bool               a lease on one of them (None: the tree) is held
        .forget_all()                           the bus lost touch: recall every lease, refuse
                                                grants of reads begun before now
      exclusive directory leases (docs/LEASES.md "Exclusive directory leases"):
        .holds_excl(sess, tree, d) -> bool      `sess` holds d exclusively
        .may_excl(sess, tree, d) -> bool        cheap check before listing d for grant_excl
        .grant_excl(sess, tree, d, children, since) -> bool
                                                d and its listed children (read after mark()
                                                `since`) leased to `sess` alone, when nobody
                                                else holds a lease on any of them and no change
                                                of them started since; False otherwise
        .cover(sess, tree, d, ino)              a child `sess` made in d it holds exclusively
        .read_excl(tree, inos, origin, deadline) -> bool
                                                before a read of `inos`: recall every other
                                                session's exclusive lease covering one of them
                                                (the holder sends its pending changes, then
                                                acks); True if it recalled any
        .excl_other(tree, inos, origin) -> bool whether another session covers one of them
        .read_excl_tree(tree, deadline)         before a read of the whole tree (a snapshot):
                                                recall every exclusive lease on it
    Session: .id .tree .outbox (queue of ("recall", seq, inos) | ("renew_ok", stamp) | None)
             .excl {directory ino: the inodes its exclusive lease covers}

Term: AIFS_LEASE_TERM_SECONDS (default 10). A holder that keeps its stream open renews every
term/4; one that dies closes the stream (the kernel closes its socket) and loses its leases at
once; one that hangs with the stream open costs a writer at most one term. A recall waits no
longer than the call's deadline either: past it the change fails with TimedOut, uncommitted.
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

from aifs_core.errors import TimedOut

LEASE_TERM = float(os.environ.get("AIFS_LEASE_TERM_SECONDS", "10"))
MAX_LEASES = 200_000            # per session: beyond, grants are refused (memory bound)
_STARTS_MAX = 100_000           # change-start sequence numbers remembered per inode

Key = tuple[Any, int]           # (TreeRef, ino)


class Session:
    __slots__ = ("id", "tree", "expires", "outbox", "held", "acked", "alive", "excl")

    def __init__(self, tree: Any, term: float) -> None:
        self.id = secrets.token_hex(16)
        self.tree = tree
        self.expires = time.monotonic() + term
        self.outbox: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
        self.held: set[int] = set()
        self.acked = 0            # highest recall seq acked (acks come in order)
        self.alive = True
        self.excl: dict[int, set[int]] = {}   # exclusive leases: directory -> covered inodes


class LeaseManager:
    def __init__(self, term: float = LEASE_TERM, max_per_session: int = MAX_LEASES,
                 grants: bool = True) -> None:
        self.term = term
        self.max_per_session = max_per_session
        self.grants = grants
        self._cv = threading.Condition()
        self._sessions: dict[str, Session] = {}
        self._holders: dict[Key, set[str]] = {}
        self._seq = 0                                   # change starts and recalls
        self._changing: dict[Key, int] = {}             # changes running per inode
        self._started: OrderedDict[Key, int] = OrderedDict()   # last change start per inode
        self._floor = 0                                 # starts forgotten are all <= floor
        self._tree_changing: dict[Any, int] = {}        # whole-tree changes running
        self._tree_started: dict[Any, int] = {}         # last whole-tree change per tree
        self.bus: Any = None                            # lease_bus.LeaseBus (other servers)
        # exclusive directory leases: covered inode -> (holding session id, its directories
        # covering it). One session per inode, but several of its directories: a directory
        # held inside another is covered by both (the outer one's recall leaves it held)
        self._excl: dict[Key, tuple[str, set[int]]] = {}
        # directories whose exclusive grant was refused for a child another session caches:
        # not listed again for a term (each try lists the directory on a caller's path)
        self._excl_refused: OrderedDict[Key, float] = OrderedDict()

    # --- sessions -------------------------------------------------------------------------------
    def open_session(self, tree: Any) -> Session:
        s = Session(tree, self.term)
        with self._cv:
            self._sessions[s.id] = s
        return s

    def close_session(self, sid: str) -> None:
        with self._cv:
            s = self._sessions.pop(sid, None)
            if s is None:
                return
            s.alive = False
            for ino in s.held:
                self._unhold((s.tree, ino), sid)
            s.held.clear()
            for covered in s.excl.values():      # its pending changes are lost with it
                for ino in covered:
                    self._excl.pop((s.tree, ino), None)
            s.excl.clear()
            self._cv.notify_all()
        s.outbox.put(None)

    def close_all(self) -> None:
        """Server shutdown: end every stream now (they would hold the grace period)."""
        with self._cv:
            sids = list(self._sessions)
        for sid in sids:
            self.close_session(sid)

    def renew(self, sid: str) -> Session | None:
        with self._cv:
            s = self._sessions.get(sid)
            if s is not None:
                s.expires = time.monotonic() + self.term
            return s

    def ack(self, sid: str, seq: int) -> None:
        with self._cv:
            s = self._sessions.get(sid)
            if s is not None and seq > s.acked:
                s.acked = seq
                self._cv.notify_all()

    def release(self, sid: str, inos: Iterable[int]) -> None:
        with self._cv:
            s = self._sessions.get(sid)
            if s is None:
                return
            for ino in inos:
                if ino in s.held:
                    s.held.discard(ino)
                    self._unhold((s.tree, ino), sid)

    def session(self, sid: str | None, tree: Any) -> Session | None:
        if not sid:
            return None
        with self._cv:
            s = self._sessions.get(sid)
        return s if s is not None and s.tree == tree else None

    def _unhold(self, key: Key, sid: str) -> None:
        h = self._holders.get(key)
        if h is not None:
            h.discard(sid)
            if not h:
                del self._holders[key]

    # --- grants ---------------------------------------------------------------------------------
    def mark(self) -> int:
        with self._cv:
            return self._seq

    def grant(self, sess: Session | None, tree: Any, inos: Iterable[int], since: int) -> bool:
        if sess is None or not self.grants:
            return False
        keys = [(tree, ino) for ino in inos]
        with self._cv:
            if not sess.alive or len(sess.held) + len(keys) > self.max_per_session:
                return False
            if self.bus is not None and not self.bus.granting():
                return False     # another server's change might not reach this one now
            if self._floor > since:
                return False     # a change start we no longer remember may be after `since`
            if self._tree_changing.get(tree) or self._tree_started.get(tree, 0) > since:
                return False     # the whole tree was replaced (reset, merge) meanwhile
            for k in keys:
                if self._changing.get(k) or self._started.get(k, 0) > since:
                    return False     # what was read may predate a change: no lease on it
                ex = self._excl.get(k)
                if ex is not None and ex[0] != sess.id:
                    return False     # another session may have changes of it pending
            for k in keys:
                self._holders.setdefault(k, set()).add(sess.id)
                sess.held.add(k[1])
            return True

    # --- changes --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def change(self, tree: Any, inos: Iterable[int], origin: Session | None,
               deadline: Any, remote: bool = False) -> Iterator[None]:
        keys = list({(tree, ino) for ino in inos})
        with self._cv:
            self._seq += 1
            for k in keys:
                self._changing[k] = self._changing.get(k, 0) + 1
                self._started[k] = self._seq
                self._started.move_to_end(k)
            while len(self._started) > _STARTS_MAX:
                _, old = self._started.popitem(last=False)
                self._floor = max(self._floor, old)
        try:
            self._recall_keys(keys, origin, deadline)
            with self._across(tree, [k[1] for k in keys], deadline, remote):
                yield
        finally:
            with self._cv:
                # a grant racing the body would lease what it read before the commit: the
                # start number set above refuses it even after the change is over
                self._seq += 1
                for k in keys:
                    self._started[k] = self._seq
                    self._started.move_to_end(k)
                    n = self._changing.get(k, 0) - 1
                    if n > 0:
                        self._changing[k] = n
                    else:
                        self._changing.pop(k, None)

    @contextlib.contextmanager
    def tree_change(self, tree: Any, deadline: Any, remote: bool = False) -> Iterator[None]:
        """Around a change of a whole tree made outside the Filesystem calls (a branch reset,
        a merge applied, a branch deleted): every lease on the tree is recalled first, and no
        grant on it is made until the body has returned."""
        with self._cv:
            self._seq += 1
            self._tree_changing[tree] = self._tree_changing.get(tree, 0) + 1
            self._tree_started[tree] = self._seq
            keys = [k for k in self._holders if k[0] == tree]
            keys += [k for k in self._excl if k[0] == tree]
        try:
            self._recall_keys(keys, None, deadline)
            with self._across(tree, None, deadline, remote):
                yield
        finally:
            with self._cv:
                self._seq += 1
                self._tree_started[tree] = self._seq
                n = self._tree_changing.get(tree, 0) - 1
                if n > 0:
                    self._tree_changing[tree] = n
                else:
                    self._tree_changing.pop(tree, None)

    def recall(self, tree: Any, inos: Iterable[int], origin: Session | None,
               deadline: Any) -> None:
        keys = list({(tree, ino) for ino in inos})
        with self._cv:
            self._seq += 1
            for k in keys:
                self._started[k] = self._seq
                self._started.move_to_end(k)
        self._recall_keys(keys, origin, deadline)
        with self._across(tree, [k[1] for k in keys], deadline, False):
            pass

    def _across(self, tree: Any, inos: list[int] | None, deadline: Any,
                remote: bool) -> contextlib.AbstractContextManager[None]:
        """Other servers' leases (lease_bus.py): recalled before the body, marked until after."""
        if self.bus is None or remote:
            return contextlib.nullcontext()
        return self.bus.change(tree, inos, deadline)  # type: ignore[no-any-return]

    def held(self, tree: Any, inos: Iterable[int] | None) -> bool:
        """Whether any session holds a lease on one of `inos` (None: on the tree)."""
        with self._cv:
            if inos is None:
                return any(k[0] == tree for k in self._holders)
            return any((tree, ino) in self._holders or (tree, ino) in self._excl
                       for ino in inos)

    def forget_all(self) -> None:
        with self._cv:
            self._seq += 1
            self._floor = self._seq   # a read begun before now may have missed a change
            keys = list(self._holders) + list(self._excl)
        self._recall_keys(keys, None, None)

    def _recall_keys(self, keys: list[Key], origin: Session | None, deadline: Any,
                     reads: bool = True) -> None:
        """Send one Recall per holding session and wait until each acked it, or died, or its
        term ran out. The origin's own leases are not recalled: its client drops them itself.
        An exclusive lease covering a key is recalled whole (the Recall names its directory:
        the holder sends its pending changes there before it acks). reads=False: only those
        (a read recalls no read lease)."""
        waits: list[tuple[Session, int, float]] = []
        with self._cv:
            per: dict[str, list[int]] = {}
            for k in keys:
                ex = self._excl.get(k)
                if ex is not None and (origin is None or ex[0] != origin.id):
                    for d in list(ex[1]):
                        self._drop_excl(k[0], ex[0], d)
                        per.setdefault(ex[0], []).append(d)
                if not reads:
                    continue
                for sid in list(self._holders.get(k, ())):
                    if origin is not None and sid == origin.id:
                        continue
                    per.setdefault(sid, []).append(k[1])
                    self._unhold(k, sid)
                    s = self._sessions.get(sid)
                    if s is not None:
                        s.held.discard(k[1])
            for sid, inos in per.items():
                s = self._sessions.get(sid)
                if s is None:
                    continue
                self._seq += 1
                s.outbox.put(("recall", self._seq, sorted(set(inos))))
                # a lease is good until the holder's expiry as of now: renewals that come
                # after the recall do not extend leases the holder was told to drop
                waits.append((s, self._seq, s.expires))
            while waits:
                now = time.monotonic()
                waits = [(s, seq, exp) for s, seq, exp in waits
                         if s.alive and s.acked < seq and now < exp]
                if not waits:
                    break
                left = deadline.remaining() if deadline is not None else None
                if left is not None and left <= 0:
                    raise TimedOut("a lease holder neither acknowledged a recall nor expired "
                                   "before this call's deadline; nothing was changed")
                until = min(exp for _, _, exp in waits) - now
                self._cv.wait(min(until, left) if left is not None else until)

    def _drop_excl(self, tree: Any, sid: str, d: int) -> None:
        s = self._sessions.get(sid)
        covered = s.excl.pop(d, set()) if s is not None else set()
        for ino in covered | {d}:
            ex = self._excl.get((tree, ino))
            if ex is not None and ex[0] == sid:
                ex[1].discard(d)
                if not ex[1]:
                    del self._excl[(tree, ino)]

    # --- exclusive directory leases -------------------------------------------------------------
    def _excl_ok(self, sess: Session | None) -> bool:
        # On several servers a read through another one would not recall it: not granted
        # there (docs/DECISIONS.md "Exclusive directory leases")
        return sess is not None and sess.alive and self.grants and self.bus is None

    def holds_excl(self, sess: Session | None, tree: Any, d: int) -> bool:
        if sess is None:
            return False
        with self._cv:
            ex = self._excl.get((tree, d))
            return d in sess.excl and ex is not None and ex[0] == sess.id and d in ex[1]

    def may_excl(self, sess: Session | None, tree: Any, d: int) -> bool:
        if not self._excl_ok(sess):
            return False
        assert sess is not None
        with self._cv:
            k = (tree, d)
            until = self._excl_refused.get(k)
            if until is not None:
                if time.monotonic() < until:
                    return False
                del self._excl_refused[k]
            return (len(self._holders.get(k, set()) - {sess.id}) == 0
                    and self._excl.get(k, (sess.id,))[0] == sess.id
                    and not self._changing.get(k))

    def grant_excl(self, sess: Session | None, tree: Any, d: int, children: Iterable[int],
                   since: int) -> bool:
        if not self._excl_ok(sess):
            return False
        assert sess is not None
        keys = [(tree, d)] + [(tree, c) for c in children]
        with self._cv:
            if not sess.alive or len(sess.held) + len(keys) > self.max_per_session:
                return False
            if (self._floor > since or self._tree_changing.get(tree)
                    or self._tree_started.get(tree, 0) > since):
                return False
            for k in keys:
                if self._changing.get(k) or self._started.get(k, 0) > since:
                    return False     # changed since the listing: what it covers is unknown
                if self._holders.get(k, set()) - {sess.id}:
                    # another session caches it: it would not see ours
                    self._excl_refused[(tree, d)] = time.monotonic() + self.term
                    while len(self._excl_refused) > _STARTS_MAX:
                        self._excl_refused.popitem(last=False)
                    return False
                ex = self._excl.get(k)
                if ex is not None and ex[0] != sess.id:
                    return False
            for k in keys:
                self._excl.setdefault(k, (sess.id, set()))[1].add(d)
            sess.excl[d] = {k[1] for k in keys}
            return True

    def cover(self, sess: Session | None, tree: Any, d: int, ino: int) -> None:
        if sess is None:
            return
        with self._cv:
            covered = sess.excl.get(d)
            ex = self._excl.get((tree, ino))
            if covered is not None and (ex is None or ex[0] == sess.id):
                covered.add(ino)
                self._excl.setdefault((tree, ino), (sess.id, set()))[1].add(d)

    def excl_other(self, tree: Any, inos: Iterable[int], origin: Session | None) -> bool:
        if not self._excl:
            return False
        with self._cv:
            for ino in inos:
                ex = self._excl.get((tree, ino))
                if ex is not None and (origin is None or ex[0] != origin.id):
                    return True
            return False

    def read_excl(self, tree: Any, inos: Iterable[int], origin: Session | None,
                  deadline: Any) -> bool:
        if not self._excl:          # the common case: nothing held exclusively, no lock
            return False
        inos = list(inos)
        keys = [(tree, ino) for ino in inos]
        if not self.excl_other(tree, inos, origin):
            return False
        self._recall_keys(keys, origin, deadline, reads=False)
        return True

    def read_excl_tree(self, tree: Any, deadline: Any) -> None:
        if not self._excl:
            return
        with self._cv:
            keys = [k for k in self._excl if k[0] == tree]
        if keys:
            self._recall_keys(keys, None, deadline, reads=False)

    # --- introspection (tests, metrics) ---------------------------------------------------------
    def stats(self) -> dict[str, int]:
        with self._cv:
            return {"sessions": len(self._sessions), "leases": sum(map(len, self._holders.values())),
                    "exclusive": sum(len(s.excl) for s in self._sessions.values())}
