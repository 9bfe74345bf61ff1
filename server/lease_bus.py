"""Leases across servers on one PostgreSQL database (docs/LEASES.md, "Across servers"): a change
through this server recalls the leases held through every other one before it commits, so every
server may grant leases and close-to-open still holds between mounts on different servers.

Interface:
    LeaseBus(dsn, leases, *, ttl=None, events=None)
                                         attaches itself as `leases.bus` (leases.LeaseManager);
                                         ttl: seconds a registration lives (default one term);
                                         events: the server's events.EventHub, whose watchers
                                         then also get the changes made through the other
                                         servers (watching, event and lost messages)
        .start() / .stop()               the listener thread; stop() expires the registration
        .granting() -> bool              listening, registered and joined: any other server's
                                         change will reach this server before it commits
        .change(tree, inos, deadline)    context manager the LeaseManager enters after its
                                         local recall (inos None: the whole tree): publishes
                                         recall, waits for each live peer's ack (or for its
                                         registration's expiry + one term; never past the
                                         deadline: TimedOut, nothing committed), runs the body,
                                         publishes done
    Messages (NOTIFY on CHANNEL, JSON): recall{o, s, t, i, d}, ack{o, to, s}, done{o, s},
    hello{o, s}, watching{o, s, t}, event{o, s, t, e: [kind, path, ino, is_dir]}, lost{o, s, t}.
    A peer receiving recall marks the inodes changing in its LeaseManager (the
    same `change(..., remote=True)` a local change runs: its holders recalled and waited for),
    acks, and keeps them marked until done (or d + one term). hello is a server joining: each
    peer acks it once its own changes published before it are over. watching: the sender has a
    watcher on tree t (sent when its first comes, acked by every peer before the watch is
    answered; again every heartbeat, s = 0, not acked); a server that heard it forwards each
    event of that tree for WATCH_HEARD terms (event; lost: a whole-tree change, or an event
    too long for one payload).
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from aifs_core.errors import StoreUnavailable, TimedOut
from aifs_core.types import TreeRef
from aifs_server.deadline import MAX_CALL_SECONDS, Deadline

log = logging.getLogger("aifs.lease_bus")

CHANNEL = "aifs_leases"
PAYLOAD_MAX = 7900          # NOTIFY payloads stop at 8000 bytes: a longer inode list is "the tree"
POOL_WAIT = 3.0             # seconds a message waits for a connection of the bus's pool
WATCH_HEARD = 3       # terms a watching message holds (it comes again every term/4)
WATCH_ACK_TERMS = 2   # the most a first watch of a tree waits for the peers' acks
HELLO_WAIT = 120.0          # a peer acks a hello once its changes in flight are over (bounded)
_CONNECT = {"autocommit": True, "connect_timeout": 5}
# (id, seconds to expiry, its LISTEN connection still open: a killed server's backend ends at
# once, and one whose connection broke has stopped granting; see _seconds_left)
_PEERS = ("SELECT p.id, EXTRACT(EPOCH FROM p.expires - now()), EXISTS (SELECT 1 FROM "
          "pg_stat_activity a WHERE a.application_name = 'aifs-lease-' || p.id) FROM "
          "aifs_lease_peers p WHERE NOT (p.id = ANY(%s)) AND p.expires > now() - "
          "make_interval(secs => %s)")



class _Mark:
    """A peer's change this server holds marked: the LeaseManager context, until done."""
    __slots__ = ("cm", "finished", "until")

    def __init__(self) -> None:
        self.cm: Any = None
        self.finished = False
        self.until = float("inf")


class LeaseBus:
    def __init__(self, dsn: str, leases: Any, *, ttl: float | None = None,
                 events: Any = None) -> None:
        self.dsn = dsn
        self.leases = leases
        self.events = events
        self.term = float(leases.term)
        self.ttl = float(ttl or leases.term)
        self.id = ""                                     # a new one per join
        # every id this server used ("" before its first registration: a change may come first)
        self._mine: set[str] = {""}
        self._gen = 0                                    # LISTEN connections opened so far
        self._cv = threading.Condition()
        self._seq = 0
        self._acks: dict[int, set[str]] = {}            # my recall/hello seq -> peers that acked
        self._outgoing: dict[int, threading.Event] = {}  # my changes between recall and done
        self._marks: dict[tuple[str, int], _Mark] = {}  # peers' changes held marked here
        self._gone: dict[str, float] = {}               # peer -> when first seen not listening
        self._joined = False
        self._rejoin = ""                               # a join of this id failed
        self._alone = False     # the listener's last read found no other server (kept current
                                # by the same thread that hears hellos: see _refresh)
        self._healthy_until = 0.0                       # monotonic: registration surely live
        self._stop = threading.Event()
        info = psycopg.conninfo.conninfo_to_dict(dsn)
        self.where = repr(f"{info.get('dbname', '')} on {info.get('host', '')}")
        # a short wait: with the database down, a change fails with the reason, not a deadline
        # (connections are not checked when taken, a round trip each: see _retry)
        self._pool = ConnectionPool(dsn, min_size=1, max_size=8, kwargs=_CONNECT, open=False,
                                    timeout=POOL_WAIT, name="aifs-lease-bus")
        self._work = ThreadPoolExecutor(max_workers=8, thread_name_prefix="aifs-lease-bus")
        # done and ack messages go out in order on their own thread: off the caller's path
        self._outq: queue.Queue[tuple[dict[str, Any], threading.Event | None] | None] = \
            queue.Queue()
        self._threads = [threading.Thread(target=self._listen, name="aifs-lease-listen",
                                          daemon=True),
                         threading.Thread(target=self._send, name="aifs-lease-send",
                                          daemon=True),
                         threading.Thread(target=self._watchdog, name="aifs-lease-watch",
                                          daemon=True)]
        leases.bus = self
        if events is not None:
            events.on_watch = self._announce_heard
            events.forward_all = self._joining
            events.forward = self._forward
            events.forward_lost = self._forward_lost

    # --- life -----------------------------------------------------------------------------------
    def start(self) -> None:
        self._pool.open(wait=False)
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        """Stop listening; the registration expires now (peers then wait one term for the
        leases this server's mounts may still trust, not a whole registration)."""
        self._joined = False
        self._stop.set()
        self._outq.put(None)
        for t in self._threads:
            t.join(self.term)
        with contextlib.suppress(Exception):
            self._execute("UPDATE aifs_lease_peers SET expires = now() WHERE id = %s", (self.id,))
        self._work.shutdown(wait=False, cancel_futures=True)
        self._pool.close()

    def granting(self) -> bool:
        return self._joined and time.monotonic() < self._healthy_until

    def _lost(self, why: str) -> None:
        """Other servers' changes may no longer reach this one: no grant, every lease recalled
        (the LeaseManager also refuses any grant whose read began before this)."""
        with self._cv:
            was, self._joined = self._joined, False
            self._alone = False  # a hello may go unheard now: publish every change
            self._healthy_until = 0.0
            self._gen += 1       # a join still waiting for its acks must not conclude
        if was:
            log.warning("leases suspended: %s", why)
        self.leases.forget_all()

    def _watchdog(self) -> None:
        # the listener may be stuck in a call on a cut connection: the registration's end is
        # watched from here too, so the leases go before the peers stop waiting for them
        while not self._stop.wait(self.term / 8):
            if self._joined and time.monotonic() >= self._healthy_until:
                self._lost("no heartbeat answered within the registration's life")

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                new_id = secrets.token_hex(8)   # peers see this connection by its name
                with psycopg.connect(self.dsn, **_CONNECT,  # type: ignore[arg-type]
                                     application_name=f"aifs-lease-{new_id}") as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._register(conn, new_id)
                    self._refresh(conn)
                    self._announce_all()    # a new id: peers hear what is watched here now
                    gen = self._gen
                    self._work.submit(self._join, self.id, gen)
                    beat = time.monotonic() + self.ttl / 4
                    while not self._stop.is_set():
                        for n in conn.notifies(timeout=max(0.0, beat - time.monotonic())):
                            self._on(n.payload)
                        if time.monotonic() >= beat:
                            beat = time.monotonic() + self.ttl / 4
                            self._heartbeat(conn)
                            self._refresh(conn)
                            self._sweep()
                            if self._rejoin == self.id or self._gen != gen:
                                # the join failed, or the watchdog gave this connection up
                                raise StoreUnavailable("the lease bus is joining again")
            except Exception as e:  # a lost connection, the database down, a lapsed row
                if not self._stop.is_set():
                    self._lost(f"{type(e).__name__}: {e}")
            self._stop.wait(min(1.0, self.term / 4))
        self._lost("stopping")

    # --- registration -------------------------------------------------------------------------
    def _register(self, conn: Any, new_id: str) -> None:
        # a new id per LISTEN connection: a peer still waiting on the old one (whose messages
        # this server may have missed) waits for its expiry, never for a renewal of it
        sent = time.monotonic()
        with self._cv:
            self.id = new_id
            self._mine.add(self.id)
            self._gen += 1
            self._cv.notify_all()    # changes waiting for acks publish their recall again
        conn.execute("DELETE FROM aifs_lease_peers WHERE expires < now() - interval '1 hour'")
        conn.execute("INSERT INTO aifs_lease_peers (id, expires) VALUES (%s, now() + "
                     "make_interval(secs => %s))", (self.id, self.ttl))
        self._healthy_until = sent + 0.9 * self.ttl

    def _refresh(self, conn: Any) -> None:
        """On the listener thread, as hellos are heard: a server not read here registered
        after this read, so its hello comes later on this connection and clears `_alone`."""
        with self._cv:
            mine = list(self._mine)
        alone = not conn.execute(_PEERS, (mine, self.term)).fetchall()
        with self._cv:
            self._alone = alone

    def _heartbeat(self, conn: Any) -> None:
        sent = time.monotonic()
        row = conn.execute("UPDATE aifs_lease_peers SET expires = now() + make_interval(secs "
                           "=> %s) WHERE id = %s AND expires > now() RETURNING 1",
                           (self.ttl, self.id)).fetchone()
        if row is None:
            raise StoreUnavailable("this server's lease registration lapsed; joining again")
        self._healthy_until = sent + 0.9 * self.ttl
        self._announce_all()

    # --- change events (events.py) ------------------------------------------------------------
    def _announce_all(self) -> None:
        if self.events is not None:
            for tree in self.events.local_trees():
                self._announce(tree)

    def _announce_heard(self, tree: TreeRef) -> None:
        """A tree's first watcher here: announce it and wait until every live peer heard (its
        ack), so a change through any server after the Watch is answered is forwarded. Bounded
        (WATCH_ACK_TERMS terms): a peer that neither acks nor expires by then (stalled) is
        left to hear the heartbeat's announcement; logged."""
        seq = self._next()
        msg = self._tree_msg("watching", tree, seq)
        try:
            self._wait_acks(seq, self._publish_then_peers(msg),
                            Deadline.after(WATCH_ACK_TERMS * self.term), resend=msg)
        except (TimedOut, StoreUnavailable) as e:
            log.warning("lease bus: a watch of %s/%s is not known to every server yet: %s",
                        tree.namespace, tree.branch, e)
        finally:
            with self._cv:
                self._acks.pop(seq, None)

    def _joining(self) -> bool:
        """Not joined yet: which trees the peers watch is not known here, so every event is
        forwarded (a server that just started, or rejoins after losing the database)."""
        return not self._joined

    def _tree_msg(self, kind: str, tree: TreeRef, seq: int = 0) -> dict[str, Any]:
        """A watching, event or lost message about `tree` (seq 0: nobody acks it)."""
        return {"k": kind, "o": self.id, "s": seq, "t": [tree.namespace, tree.branch]}

    def _announce(self, tree: TreeRef) -> None:
        self._outq.put((self._tree_msg("watching", tree), None))

    def _forward(self, tree: TreeRef, kind: int, path: bytes, ino: int, is_dir: bool) -> None:
        msg = self._tree_msg("event", tree)
        msg["e"] = [kind, path.decode("utf-8", "surrogateescape"), ino, is_dir]
        if len(json.dumps(msg)) > PAYLOAD_MAX:     # a very long path: the watchers list again
            self._forward_lost(tree)
            return
        self._outq.put((msg, None))

    def _forward_lost(self, tree: TreeRef) -> None:
        self._outq.put((self._tree_msg("lost", tree), None))

    def _on_event(self, kind: str, m: dict[str, Any]) -> None:
        ev = self.events
        if ev is None:
            return
        tree = TreeRef(str(m["t"][0]), str(m["t"][1]))
        if kind == "watching":
            ev.remote_watch(tree, time.monotonic() + WATCH_HEARD * self.term)
            if int(m["s"]):         # a first announcement waits for every peer's ack
                self._ack(str(m["o"]), int(m["s"]))
        elif kind == "event":
            k, path, ino, is_dir = m["e"]
            ev.remote_event(tree, int(k), str(path).encode("utf-8", "surrogateescape"),
                            int(ino), bool(is_dir))
        else:
            ev.tree_changed(tree, forward=False)

    def _join(self, me: str, gen: int) -> None:
        """Grant nothing until every live peer acked this hello: a change a peer published
        before this server listened (so never heard here) is over by then."""
        seq = self._next()
        try:
            self._publish({"k": "hello", "o": me, "s": seq})
            self._wait_acks(seq, self._peers(), Deadline.after(HELLO_WAIT))
        except Exception as e:
            log.warning("joining the lease bus failed (%s); joining again", e)
            self._rejoin = me   # the listener reconnects (a new id, a new hello)
            return
        finally:
            with self._cv:
                self._acks.pop(seq, None)
        self.leases.forget_all()    # reads begun before now may have missed a change
        with self._cv:
            if self._gen == gen and not self._stop.is_set():
                self._joined = True
                log.info("lease bus joined as %s", me)

    # --- publishing and peers -----------------------------------------------------------------
    def _execute(self, sql: str, params: Any) -> list[Any]:
        # every statement here may run twice: a repeated message is acted on once
        for attempt in (0, 1):
            try:
                with self._pool.connection() as c:
                    cur = c.execute(sql, params)
                    return cur.fetchall() if cur.description else []
            except psycopg.Error as e:
                self._retry(attempt, e)
        raise AssertionError("unreachable")

    def _publish(self, msg: dict[str, Any]) -> None:
        self._execute("SELECT pg_notify(%s, %s)", (CHANNEL, json.dumps(msg)))

    def _send(self) -> None:
        while (item := self._outq.get()) is not None:
            msg, over = item
            try:
                self._publish(msg)
            except StoreUnavailable as e:  # unacked: the origin waits for our expiry; no done:
                log.warning("lease bus: cannot publish %s: %s", msg["k"], e)  # d + one term
            if over is not None:
                over.set()

    def _publish_then_peers(self, msg: dict[str, Any]) -> dict[str, float]:
        """Publish, then read the peers (in that order, each its own transaction) in one round
        trip: a server registered too late to be read listened too late to hear `msg`."""
        with self._cv:
            mine = list(self._mine)
        for attempt in (0, 1):
            try:
                with self._pool.connection() as c, c.pipeline() as pipe:
                    c.execute("SELECT pg_notify(%s, %s)", (CHANNEL, json.dumps(msg)))
                    pipe.sync()   # commits the NOTIFY before the SELECT begins (else one
                    cur = c.execute(_PEERS, (mine, self.term))  # implicit transaction)
                return self._seconds_left(cur.fetchall())
            except psycopg.Error as e:
                self._retry(attempt, e)
        raise AssertionError("unreachable")

    def _retry(self, attempt: int, e: psycopg.Error) -> None:
        """Raise unless a second attempt may succeed: a lost connection (the database was
        restarted) once; the pool first drops every idle connection that is dead too."""
        if attempt or not isinstance(e, psycopg.OperationalError) or isinstance(e, PoolTimeout):
            raise self._down(e) from e
        with contextlib.suppress(Exception):
            self._pool.check()

    def _down(self, e: Exception) -> StoreUnavailable:
        return StoreUnavailable(f"metadata database {self.where} cannot be reached (lease bus): "
                                f"{type(e).__name__}: {e}")

    def _peers(self, skip_mine: bool = True) -> dict[str, float]:
        """Other servers' registrations that may still stand for leases: id -> seconds until
        expiry (database clock; negative: expired that long ago, its leases lapse a term
        later). This server's own earlier ids are skipped: it recalled their leases before it
        registered again."""
        with self._cv:
            mine = list(self._mine) if skip_mine else []
        return self._seconds_left(self._execute(_PEERS, (mine, self.term)))

    def _seconds_left(self, rows: list[Any]) -> dict[str, float]:
        """A registration whose LISTEN connection is gone counts as expired when this server
        first saw it gone: its server died (its mounts' streams ended with it) or saw the
        connection break and stopped granting and recalled its leases at once (a recall takes
        at most the term the waiter adds)."""
        now = time.monotonic()
        out: dict[str, float] = {}
        with self._cv:
            for pid, rem, listening in rows:
                out[pid] = float(rem)
                if not listening:
                    out[pid] = min(out[pid], self._gone.setdefault(pid, now) - now)
            for pid in [p for p, t in self._gone.items() if t < now - 10 * self.term]:
                del self._gone[pid]   # its row no longer read (expired a term ago)
        return out

    def _next(self) -> int:
        with self._cv:
            self._seq += 1
            self._acks[self._seq] = set()
            return self._seq

    def _wait_acks(self, seq: int, peers: dict[str, float], deadline: Any,
                   resend: dict[str, Any] | None = None) -> None:
        """Until each peer acked `seq`, or its registration was seen expired + one term.
        `resend`: published again when this server's LISTEN connection was replaced (acks
        sent while it was down were never heard; a peer acks a repeated recall again)."""
        gen = self._gen
        now = time.monotonic()
        poll = now + self.term / 8      # a killed peer's connection is seen gone by then
        exp = {p: now + rem for p, rem in peers.items()}    # local estimate of each expiry
        final = {p for p, rem in peers.items() if rem <= 0}
        while True:
            refresh: list[str] = []
            with self._cv:
                acked = self._acks.get(seq, set())
                now = time.monotonic()
                wait = {p: e + self.term if p in final else e for p, e in exp.items()
                        if p not in acked and (p not in final or now < e + self.term)}
                if not wait:
                    return
                left = deadline.remaining() if deadline is not None else None
                if left is not None and left <= 0:
                    raise TimedOut("a server whose mounts may hold leases neither acknowledged "
                                   "a recall nor expired before this call's deadline; nothing "
                                   "was changed")
                again = resend is not None and gen != self._gen
                gen = self._gen
                refresh = [p for p, at in wait.items()
                           if p not in final and (at <= now or poll <= now)]
                if again and resend is not None:
                    self._cv.release()       # publish outside the lock, then look again
                    try:
                        self._publish(resend)
                    finally:
                        self._cv.acquire()
                    continue
                if not refresh:
                    until = min(min(wait.values()), poll) - now
                    self._cv.wait(until if left is None else min(until, left))
                    continue
            # a registration past its estimated expiry: renewed since, or really expired?
            rows = self._peers(skip_mine=False)
            now = time.monotonic()
            poll = now + self.term / 8
            for p in refresh:
                rem = rows.get(p, -self.term)
                exp[p] = now + rem
                if rem <= 0:
                    final.add(p)

    @contextlib.contextmanager
    def change(self, tree: Any, inos: Iterable[int] | None, deadline: Any) -> Iterator[None]:
        seq = self._next()
        over = threading.Event()
        with self._cv:
            self._outgoing[seq] = over   # before the publish: a hello after it waits for us
            alone = self._alone
        me = self.id
        if alone:
            # no other server registered as of the listener's last read, and any that
            # registers since sends a hello that waits for this change: nobody to recall
            try:
                yield
            finally:
                with self._cv:
                    self._acks.pop(seq, None)
                    self._outgoing.pop(seq, None)
                over.set()
            return
        try:
            left = deadline.remaining() if deadline is not None else None
            msg = {"k": "recall", "o": me, "s": seq, "t": [tree.namespace, tree.branch],
                   "i": None if inos is None else sorted(set(inos)),
                   "d": MAX_CALL_SECONDS if left is None else max(0.0, left)}
            if len(json.dumps(msg)) > PAYLOAD_MAX:
                msg["i"] = None          # too long a list for one NOTIFY: the whole tree
            # a server registered too late to be read here listened too late to hear the
            # recall, and its hello waits for this change to be over
            peers = self._publish_then_peers(msg)
            self._wait_acks(seq, peers, deadline, resend=msg)
            yield
        finally:
            with self._cv:
                self._acks.pop(seq, None)
                self._outgoing.pop(seq, None)
            self._outq.put(({"k": "done", "o": me, "s": seq}, over))

    # --- receiving ----------------------------------------------------------------------------
    def _on(self, payload: str) -> None:
        try:
            m = json.loads(payload)
            kind, origin, seq = m["k"], m["o"], int(m["s"])
        except (ValueError, KeyError, TypeError):
            log.warning("lease bus: ignoring a malformed message %r", payload[:200])
            return
        if origin in self._mine:
            return
        if kind == "ack":
            if m.get("to") in self._mine:
                with self._cv:
                    got = self._acks.get(seq)
                    if got is not None:
                        got.add(origin)
                        self._cv.notify_all()
        elif kind == "recall":
            with self._cv:
                mark = self._marks.get((origin, seq))
                new = mark is None
                if mark is None:
                    mark = self._marks[(origin, seq)] = _Mark()
            if new and not self.leases.held(TreeRef(*m["t"]), m.get("i")):
                self._enter(mark, m)    # nothing to wait for: no thread hop before the ack
            elif new:
                self._work.submit(self._enter, mark, m)
            elif mark.cm is not None:   # a repeat (the origin's listener was replaced)
                self._ack(origin, seq)
        elif kind == "done":
            with self._cv:
                found = self._marks.pop((origin, seq), None)
            if found is not None:
                self._finish(found)
        elif kind == "hello":
            with self._cv:
                self._alone = False
                pending = list(self._outgoing.values())
            self._work.submit(self._ack_hello, origin, seq, pending)
        elif kind in ("watching", "event", "lost"):
            try:
                self._on_event(kind, m)
            except (ValueError, KeyError, TypeError, IndexError):
                log.warning("lease bus: ignoring a malformed %s message", kind)

    def _enter(self, mark: _Mark, m: dict[str, Any]) -> None:
        tree = TreeRef(str(m["t"][0]), str(m["t"][1]))
        d = float(m.get("d") or MAX_CALL_SECONDS)
        deadline = Deadline.after(d)
        if m.get("i") is None:
            cm = self.leases.tree_change(tree, deadline, remote=True)
        else:
            cm = self.leases.change(tree, [int(i) for i in m["i"]], None, deadline, remote=True)
        try:
            cm.__enter__()   # this server's holders recalled and acked (or lapsed)
        except TimedOut:
            with self._cv:
                self._marks.pop((m["o"], int(m["s"])), None)
            return           # no ack: the origin times out too, and commits nothing
        with self._cv:
            mark.cm, mark.until = cm, time.monotonic() + d + self.term
            early = mark.finished
        if early:
            self._finish(mark)
        self._ack(m["o"], int(m["s"]))

    def _ack(self, origin: str, seq: int) -> None:
        self._outq.put(({"k": "ack", "o": self.id, "to": origin, "s": seq}, None))

    def _finish(self, mark: _Mark) -> None:
        with self._cv:
            mark.finished = True
            cm, mark.cm = mark.cm, None
        if cm is not None:
            cm.__exit__(None, None, None)

    def _sweep(self) -> None:
        """Unmark the changes whose done never came (their origin died): past d + one term."""
        now = time.monotonic()
        with self._cv:
            late = [k for k, mk in self._marks.items() if mk.until <= now]
            gone = [self._marks.pop(k) for k in late]
        for mk in gone:
            self._finish(mk)

    def _ack_hello(self, origin: str, seq: int, pending: list[threading.Event]) -> None:
        until = time.monotonic() + HELLO_WAIT
        for ev in pending:
            ev.wait(max(0.0, until - time.monotonic()))
        # the trees watched here go out before the ack (one sender thread: in this order), so
        # the new server knows them once joined; until then it forwards every event (_joining)
        self._announce_all()
        self._ack(origin, seq)
