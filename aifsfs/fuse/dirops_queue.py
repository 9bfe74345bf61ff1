"""Unlinks, creates and attribute changes the mount answers itself under an exclusive
directory lease (docs/LEASES.md "Exclusive directory leases", "Delegated inodes", "Attribute
changes"): unlinks and attribute changes sent in batches, creates sent at the close with the
file's first commit (one call per small file) and the attribute changes made before it.

Interface:
    DirOps(session, on_failed, max_batch=MAX_BATCH, interval=INTERVAL, on_born=None)
        session: the LeaseSession (its .fs sends UnlinkBatch; .valid_until bounds the lease)
        on_failed(parent): a batch (or some of its items) did not apply: what the mount
            believes of `parent` is wrong (any thread)
        on_born(parent, name, attrs, cookie): an unborn file was made on the server, at that
            listing cookie (0: not given); called in order per directory (the sending lock)
        .mark() -> int                    before a change call of ours
        .took(parent, mark)               after it, in the same thread: if the reply leased
                                          `parent` to us exclusively and no recall or reset
                                          came since `mark`, we hold it; inode numbers the
                                          reply delegated join the pool
        .take_ino() -> int | None         a delegated inode number (None: the pool is empty)
        .add_unborn(parent, name, ino, mode, uid, gid, born_ns=0) -> bool
                                          a create answered here (we hold `parent`): the file
                                          exists on the server only once born, with the
                                          times answered here (`born_ns`, sent as its first
                                          setattr), not the time of its CreateFile
        .unborn(ino) -> bool
        .birth(ino, commit=None) -> Attr | None
                                          send an unborn file's CreateFile, with its first
                                          commit ((args, kwargs) of commit_file after the ino)
                                          or empty; None: it was born already
        .queue_birth(ino, commit) -> bool a --writeback close: its CreateFile with its first
                                          commit queued before it is sent (whoever sends
                                          first -- a recall, a call on the file, the close's
                                          own birth -- sends it with its data)
        .sent_behind(ino) -> Attr | None  its attributes once another send took it
        .held(parent) -> bool
        .made(ino) -> (parent, name, Attr) | None
                                          a file this mount created in a directory it still
                                          holds (the lease live), with its attributes as the
                                          server has them once the queue is sent
        .made_in(parent, name) -> Attr | None   the same, by name
        .noted(ino, a, mark)              a reply of ours gave the made file's attributes
        .try_unlink(parent, name, ino) -> int | None
                                          queued (we hold `parent` and the lease is live): the
                                          number queued there now; None: not ours to answer
        .try_setattr(ino, attrs, a) -> int | None
                                          an attribute change of a made file (`attrs`:
                                          setattr's keyword arguments with `fields`, no size;
                                          `a`: its attributes after it): folded into an unborn
                                          file's CreateFile (0) or queued with the directory's
                                          unlinks (the number queued); None: not ours to answer
        .pending(parent, name=None) -> bool   items queued in parent (of that name)
        .pending_unlinks(parent) -> bool  unlinks queued in parent (unborn files aside)
        .victim_dir(ino) -> int | None    the directory of a queued unlink of that inode
        .flush(parent);  .flush_all()     send what is queued (blocking: a worker thread or
                                          the lease stream's); one call per MAX_BATCH unlinks,
                                          one per unborn file (made empty)
        .due() -> [parent]                queues older than `interval` (the mount's timer)
        .recalled(inos)                   the lease stream, before its ack: each directory
                                          named is flushed and no longer held
        .reset()                          the session is gone: nothing is held (what is queued
                                          goes with the next flush)
        .stats                            {"queued", "batches", "failed", "created",
                                           "attrs"}
    OrderedFs(fs, dirops)                 the session's Filesystem client, whose calls first
                                          send the queued unlinks and unborn files they depend
                                          on (a read of the directory, of a victim or of an
                                          unborn file, a create of a queued name, rename and
                                          rmdir: everything), note exclusive grants of
                                          create/unlink replies, and make an unborn file's
                                          first commit its CreateFile

Why a failed batch loses nothing: each item names the inode the mount saw; the server removes
only that (a name re-made since is left alone), and an item that did not apply leaves the file
where it was -- the mount then forgets what it believed of the directory and asks again.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from typing import Any

from aifs_core.types import SET_ATIME, SET_CTIME, SET_MTIME
from aifsfs.rpc.filesystem import new_request_id

log = logging.getLogger("aifsfs.dirops")

MAX_BATCH = 256         # items per UnlinkBatch call (the server takes up to 1024)
MADE_MAX = 20_000       # files made here whose attributes are kept (made()): tar's
#                         changes follow each close closely
# calls that change nothing of the inode they name (the rest forget what made() knew of it)
_READS = frozenset({"getattr", "get_chunk_map", "open_chunk_map", "readlink", "getxattr",
                    "listxattr", "file_info", "forget", "lookup", "readdir", "readdir_maps"})
INOS_LOW = 64           # delegated inode numbers left when the mount asks for more
GROUP_MAX = 64          # closes one CreateFiles carries (the server's CREATE_FILES_MAX)
GROUP_BYTES = 4 << 20   # and their inline bytes (the server's message limit is 8 MiB)
# seconds an unlink waits at most for others to join its batch (the tests set it longer, to
# hold a batch pending)
INTERVAL = float(os.environ.get("AIFS_DIROPS_INTERVAL", "0.05"))


class DirOps:
    def __init__(self, session: Any, on_failed: Callable[[int], None],
                 max_batch: int = MAX_BATCH, interval: float = INTERVAL,
                 on_born: Callable[[int, bytes, Any, int], None] | None = None) -> None:
        self.session = session
        self.on_failed = on_failed
        self.on_born = on_born
        self.max_batch = max_batch
        self.interval = interval
        self._lock = threading.Lock()
        self._held: set[int] = set()
        # parent -> its queued items, in order: (name, ino) an unlink, (name, ino, attrs) an
        # attribute change; _names counts the items per name, _unlinks the unlinks
        self._q: dict[int, list[tuple[Any, ...]]] = {}
        self._names: dict[int, dict[bytes, int]] = {}
        self._unlinks: dict[int, int] = {}
        self._since: dict[int, float] = {}              # parent -> first queued (monotonic)
        self._victims: dict[int, int] = {}              # ino -> parent, queued or in flight
        self._gone: set[int] = set()                    # inodes whose unlink is queued
        # files created here, while their directory is held: ino -> (parent, name, attrs)
        self._made: dict[int, tuple[int, bytes, Any]] = {}
        self._made_names: dict[int, dict[bytes, int]] = {}     # parent -> {name: ino}
        self._unborn_attrs: dict[int, dict[str, int]] = {}     # folded into CreateFile
        self._sending: dict[int, threading.Lock] = {}   # one batch at a time per directory
        # parent -> batches taken from its queue and not yet answered: what depends on the
        # directory waits for them as for queued ones (pending, flush_all), or a call could
        # reach the server before the unlinks it must see (an rmdir: ENOTEMPTY)
        self._flying: dict[int, int] = {}
        self._recalls = 0
        self._inos: list[int] = []                      # delegated, unused (a stack)
        # ino -> create args and the request id of its CreateFile: one id for every attempt,
        # so an attempt after one whose create committed (and whose commit half failed, e.g.
        # a full disk) is answered from the server's request log, not "number used already"
        self._unborn: dict[int, tuple[int, bytes, int, int, int, bytes]] = {}
        self._unborn_in: dict[int, dict[bytes, int]] = {}                # parent -> names
        self._births: dict[int, list[_Birth]] = {}     # parent -> closes waiting to be sent
        self._behind: dict[int, _Birth] = {}           # ino -> queued by a --writeback close
        self.stats = {"queued": 0, "batches": 0, "failed": 0, "created": 0, "attrs": 0,
                      "grouped": 0}
        session.want_inos = True

    # --- grants -----------------------------------------------------------------------------
    def mark(self) -> int:
        with self._lock:
            return self._recalls

    def took(self, parent: int, mark: int) -> None:
        got = self.session.inos_granted()
        if got:
            with self._lock:
                self._inos.extend(reversed(got))
                self.session.want_inos = len(self._inos) < INOS_LOW
        if self.session.excl_granted() != parent:
            return
        with self._lock:
            if self._recalls == mark:
                self._held.add(parent)

    def take_ino(self) -> int | None:
        with self._lock:
            ino = self._inos.pop() if self._inos else None
            if len(self._inos) < INOS_LOW:
                self.session.want_inos = True
            return ino

    def add_unborn(self, parent: int, name: bytes, ino: int, mode: int, uid: int,
                   gid: int, born_ns: int = 0) -> bool:
        if time.monotonic() >= self.session.valid_until:
            return False
        with self._lock:
            if parent not in self._held or name in self._names.get(parent, {}):
                return False
            self._unborn[ino] = (parent, name, mode, uid, gid, new_request_id())
            self._unborn_in.setdefault(parent, {})[name] = ino
            if born_ns:
                # The kernel was told these times at the create; the server would otherwise
                # stamp the file when the CreateFile comes (at the close, or later), and a
                # stat after a chown would show an mtime that moved with no write.
                self._unborn_attrs[ino] = {"fields": SET_ATIME | SET_MTIME | SET_CTIME,
                                           "atime_ns": born_ns, "mtime_ns": born_ns,
                                           "ctime_ns": born_ns}
            return True

    def unborn(self, ino: int) -> bool:
        with self._lock:
            return ino in self._unborn

    def queue_birth(self, ino: int, commit: tuple[Any, dict[str, Any]]) -> bool:
        """Queue an unborn file's CreateFile with its first commit before it is sent (a close
        under --writeback returns once this is done): a recall, an fsync of the directory or
        any call on the file sends it with its commit from here on, never the file empty. The
        close's own birth(ino, commit) sends it, or returns what another send got. False: not
        unborn (nothing queued)."""
        with self._lock:
            u = self._unborn.get(ino)
            if u is None or ino in self._behind:
                return False
            me = _Birth(ino, commit)
            self._behind[ino] = me
            self._births.setdefault(u[0], []).append(me)
            return True

    def sent_behind(self, ino: int) -> Any:
        """A queued close's attributes once another send took it (then its close needs no
        call of its own); None: not sent yet, or born another way (its commit goes as any
        file's)."""
        with self._lock:
            me = self._behind.get(ino)
            if me is None or not me.done or me.attrs is None:
                return None
            del self._behind[ino]
            return me.attrs

    def birth(self, ino: int, commit: tuple[Any, dict[str, Any]] | None = None) -> Any:
        with self._lock:
            me = self._behind.get(ino)
            if me is not None and commit is not None:
                del self._behind[ino]           # the close that queued it: its own send
                if me.done:
                    return me.attrs
            u = self._unborn.get(ino)
            if u is None:
                return None
            parent = u[0]
            lk = self._sending.setdefault(parent, threading.Lock())
            if me is None and commit is None:   # a close's, queued: that one (the data)
                me = next((b for b in self._births.get(parent, ()) if b.ino == ino), None)
            if me is None:
                me = _Birth(ino, commit)
                self._births.setdefault(parent, []).append(me)
        with lk:
            # Group commit: whoever takes the directory's lock sends every close that queued
            # behind the call before it, in one CreateFiles (parallel writers: tar | xargs -P,
            # DataLoader workers writing outputs). A close still returns only once its file is
            # on the server.
            if me.done:
                return me.attrs
            if not me.alone:
                # unlinks first: they free the space a create may need (on a full disk, a
                # create sent first can take the server's space reserve that the unlinks
                # needed); queued attribute changes alone may wait (they name other inodes)
                if self.pending_unlinks(parent):
                    self._send_queued_locked(parent, skip_unborn=True)
                self._send_group_locked(parent, me)
                if me.done:
                    return me.attrs
            with self._lock:        # sent alone: out of the queue a flush sends from
                q = self._births.get(parent)
                if q is not None and me in q:
                    q.remove(me)
            a = self._birth_locked(ino, me.commit)
            me.finish(a)
            return a

    def _send_group_locked(self, parent: int, first: _Birth | None = None) -> list[_Birth]:
        """With the directory's sending lock held: `first` (default: the first close queued
        in `parent`) and the closes queued after it that fit one call go in _births_locked;
        the rest stay queued for the next group. Returns the group ([]: nothing queued)."""
        with self._lock:
            queued = [b for b in self._births.pop(parent, []) if b is not first]
            if first is None:
                if not queued:
                    return []
                first, queued = queued[0], queued[1:]
            take, rest = _group_of(first, queued)
            if rest:                # past the call's limits: the next group's
                self._births.setdefault(parent, [])[:0] = rest
        self._births_locked(parent, take)
        return take

    def _births_locked(self, parent: int, group: list[_Birth]) -> None:
        """With the directory's sending lock held: the unborn files of `group` in one
        CreateFiles. Each member is then done (its attrs, or None: born already, its commit
        goes as any file's) or, when the call failed, marked to be sent alone (its own error
        for its own close; the request ids answer again what the call did)."""
        with self._lock:
            live = [(b, self._unborn[b.ino]) for b in group if b.ino in self._unborn]
            for b in group:
                if b.ino not in self._unborn:
                    b.finish(None)
            if len(live) < 2:
                for b, _u in live:
                    b.alone = True
                return
            attrs = {b.ino: self._unborn_attrs.get(b.ino) for b, _u in live}
            items = [] if self._unlinks.get(parent) else self._pop_locked(parent, True)
        mark = self.mark()
        files = [dict(parent=parent, name=u[1], ino=b.ino, mode=u[2], uid=u[3], gid=u[4],
                      commit=b.commit, request_id=u[5], attrs=attrs[b.ino],
                      items=items if i == 0 else ())
                 for i, (b, u) in enumerate(live)]
        try:
            replies = self.session.fs.create_files(files)
        except Exception as exc:  # noqa: BLE001 - each close sends its own and reports
            log.info("CreateFiles of %d files in %d: %s; sending them one by one",
                     len(files), parent, exc)
            self._requeue(parent, items)
            for b, _u in live:
                b.alone = True
            return
        self._sent(items)
        if items:
            self._check(parent, items, replies[0][1])
        self.stats["grouped"] += len(live)
        self.took(parent, mark)         # once: the reply's grant and delegated numbers
        for (b, u), (a, _results, cookie) in zip(live, replies, strict=True):
            self._born(parent, u[1], b.ino, a, mark, cookie, took=False)
            b.finish(a)

    def _birth_locked(self, ino: int, commit: tuple[Any, dict[str, Any]] | None) -> Any:
        """With the directory's sending lock held: one at a time, in order with the unlinks."""
        with self._lock:
            u = self._unborn.get(ino)
        if u is None:
            return None
        parent, name, mode, uid, gid, request_id = u
        mark = self.mark()
        with self._lock:
            attrs = self._unborn_attrs.get(ino)
            # the directory's queued attribute changes travel with the create (tar: the
            # previous files' chown, chmod and utimens), unless unlinks are queued (they go
            # in an UnlinkBatch first: they free space)
            items = [] if self._unlinks.get(parent) else self._pop_locked(parent, True)
        try:
            a, _pa, results, cookie = self.session.fs.create_file(
                parent, name, ino, mode, uid, gid, commit, request_id=request_id, attrs=attrs,
                items=items)
        except BaseException:
            # one transaction: nothing of it applied, or all of it did and the changes are
            # sent again (absolute values and the ctime we answered: the same result)
            self._requeue(parent, items)
            raise
        self._sent(items)
        if items:
            self._check(parent, items, results)
        self._born(parent, name, ino, a, mark, cookie)
        return a

    def _born(self, parent: int, name: bytes, ino: int, a: Any, mark: int, cookie: int,
              took: bool = True) -> None:
        """An unborn file's CreateFile applied: it is an ordinary file of `parent` now.
        `took`: note the call's grants (once per call: its delegated numbers join the pool)."""
        with self._lock:
            self._unborn.pop(ino, None)
            self._unborn_attrs.pop(ino, None)
            names = self._unborn_in.get(parent)
            if names is not None:
                names.pop(name, None)
                if not names:
                    del self._unborn_in[parent]
        self.stats["created"] += 1
        if took:
            self.took(parent, mark)
        self.remember(parent, name, a, mark)
        if self.on_born is not None:
            self.on_born(parent, name, a, cookie)

    # --- files made here ----------------------------------------------------------------------
    def remember(self, parent: int, name: bytes, a: Any, mark: int) -> None:
        with self._lock:
            if self._recalls != mark or parent not in self._held:
                return
            self._made[a.ino] = (parent, name, a)
            self._made_names.setdefault(parent, {})[name] = a.ino
            while len(self._made) > MADE_MAX:       # the oldest go: asked of the server again
                self._unmake_locked(next(iter(self._made)))

    def _unmake_locked(self, ino: int) -> None:
        m = self._made.pop(ino, None)
        if m is not None:
            names = self._made_names.get(m[0])
            if names is not None and names.get(m[1]) == ino:
                del names[m[1]]
                if not names:
                    del self._made_names[m[0]]

    def unmake(self, ino: int) -> None:
        """What we know of the made file no longer holds (a call of ours changed it)."""
        with self._lock:
            self._unmake_locked(ino)

    def unmake_name(self, parent: int, name: bytes) -> None:
        with self._lock:
            ino = self._made_names.get(parent, {}).get(name)
            if ino is not None:
                self._unmake_locked(ino)

    def _live(self) -> bool:
        return time.monotonic() < self.session.valid_until

    def made(self, ino: int) -> tuple[int, bytes, Any] | None:
        with self._lock:
            m = self._made.get(ino)
            if m is None or m[0] not in self._held:
                return None
        return m if self._live() else None

    def made_in(self, parent: int, name: bytes) -> Any:
        with self._lock:
            ino = self._made_names.get(parent, {}).get(name)
            m = None if ino is None or parent not in self._held else self._made.get(ino)
        return m[2] if m is not None and self._live() else None

    def noted(self, ino: int, a: Any, mark: int) -> None:
        with self._lock:
            m = self._made.get(ino)
            if m is None:
                return
            if self._recalls != mark:
                self._unmake_locked(ino)
            else:
                self._made[ino] = (m[0], m[1], a)

    def try_setattr(self, ino: int, attrs: dict[str, int], a: Any) -> int | None:
        if not self._live():
            return None
        with self._lock:
            if ino in self._unborn:
                u = self._unborn[ino]
                if u[0] not in self._held:
                    return None
                _merge(self._unborn_attrs.setdefault(ino, {}), attrs)
                self.stats["attrs"] += 1
                return 0
            m = self._made.get(ino)
            if m is None or m[0] not in self._held or ino in self._gone:
                return None
            parent, name, _ = m
            self._made[ino] = (parent, name, a)
            q = self._q.get(parent)
            last = q[-1] if q else None
            if last is not None and len(last) > 2 and last[1] == ino:
                _merge(last[2], attrs)      # chown, chmod, utimens of one file: one item
            else:
                self._enqueue_locked(parent, [(name, ino, dict(attrs))])
            self.stats["attrs"] += 1
            return len(self._q[parent])

    def reset_made(self) -> None:
        with self._lock:
            self._made.clear()
            self._made_names.clear()

    def held(self, parent: int) -> bool:
        with self._lock:
            return parent in self._held

    # --- the queue ----------------------------------------------------------------------------
    def try_unlink(self, parent: int, name: bytes, ino: int) -> int | None:
        if time.monotonic() >= self.session.valid_until:
            return None         # the lease may have lapsed on the server: ask it
        with self._lock:
            if parent not in self._held or ino in self._gone:
                return None
            if self._victims.get(ino, parent) != parent:
                return None
            self._enqueue_locked(parent, [(name, ino)])
            self._gone.add(ino)
            self._unmake_locked(ino)
            self.stats["queued"] += 1
            return len(self._q[parent])

    def pending(self, parent: int, name: bytes | None = None) -> bool:
        """Items queued or files unborn in `parent` (under that name), or a batch of it on
        its way (whatever its names)."""
        with self._lock:
            if parent in self._flying:
                return True
            for d in (self._names.get(parent), self._unborn_in.get(parent)):
                if d and (name is None or name in d):
                    return True
            return False

    def pending_unlinks(self, parent: int) -> bool:
        with self._lock:
            return bool(self._unlinks.get(parent)) or parent in self._flying

    def victim_dir(self, ino: int) -> int | None:
        with self._lock:
            return self._victims.get(ino)

    def due(self) -> list[int]:
        now = time.monotonic()
        with self._lock:
            return [p for p, t in self._since.items()
                    if now - t >= self.interval or len(self._q.get(p, ())) >= self.max_batch]

    def queued(self) -> bool:
        with self._lock:
            return bool(self._q)

    def flush_all(self) -> None:
        with self._lock:
            parents = list(dict.fromkeys((*self._q, *self._unborn_in, *self._flying)))
        for p in parents:
            self.flush(p)

    def flush(self, parent: int, full_only: bool = False) -> None:
        """Send what is queued in `parent`; returns when it is applied (or failed). A flush
        already sending there is waited for: whoever returns from here knows every unlink
        queued before it is on the server. full_only: send full batches only (the mount's
        background send while unlinks keep coming: the rest waits for the next full batch,
        the interval or whatever depends on it, not one small call per unlink queued
        meanwhile)."""
        with self._lock:
            lk = self._sending.setdefault(parent, threading.Lock())
        with lk:
            self._send_births_locked(parent)
            with self._lock:       # (but not those a failed send left to their close)
                queued = {b.ino for b in self._births.get(parent, ())}
                unborn = [i for i in self._unborn_in.get(parent, {}).values()
                          if i not in queued]
            for ino in unborn:      # made empty; their close commits as for any file
                try:
                    self._birth_locked(ino, None)
                except Exception as exc:  # noqa: BLE001 - its close reports it
                    log.warning("creating inode %d in directory %d: %s", ino, parent, exc)
            self._send_queued_locked(parent, full_only=full_only)

    def _send_births_locked(self, parent: int) -> None:
        """With the directory's sending lock held: the closes queued in `parent` (waiting
        for the lock, or queued behind a --writeback close) go with their commits, grouped;
        each is then done, or left to its own close to send (a failure is logged)."""
        while True:
            take = self._send_group_locked(parent)
            if not take:
                return
            for b in take:
                if b.done:
                    continue
                try:
                    b.finish(self._birth_locked(b.ino, b.commit))
                except Exception as exc:  # noqa: BLE001 - its close sends it again
                    log.warning("creating inode %d in directory %d: %s", b.ino, parent, exc)
                    with self._lock:
                        self._births.setdefault(parent, []).append(b)
                    return

    def _send_queued_locked(self, parent: int, skip_unborn: bool = False,
                            full_only: bool = False) -> None:
        """With the directory's sending lock held: send its queued unlinks (those of files
        not on the server yet stay queued with `skip_unborn`: a flush births them first)."""
        while True:
            with self._lock:
                if full_only and len(self._q.get(parent, ())) < self.max_batch:
                    return
                items = self._pop_locked(parent, skip_unborn)
                if not items:
                    return
                self._flying[parent] = self._flying.get(parent, 0) + 1
            try:
                self._send(parent, items)
            finally:
                self._sent(items)
                with self._lock:
                    left = self._flying[parent] - 1
                    if left:
                        self._flying[parent] = left
                    else:
                        del self._flying[parent]

    def _pop_locked(self, parent: int, skip_unborn: bool) -> list[tuple[Any, ...]]:
        """Take the next batch of `parent`'s queue (items of unborn files stay with
        `skip_unborn`); [] when there is none."""
        q = self._q.get(parent) or []
        items: list[tuple[Any, ...]] = []
        rest: list[tuple[Any, ...]] = []
        for it in q:
            if len(items) < self.max_batch and not (skip_unborn and it[1] in self._unborn):
                items.append(it)
            else:
                rest.append(it)
        if not items:
            if not q:
                self._q.pop(parent, None)
                self._since.pop(parent, None)
            return []
        names = self._names.get(parent, {})
        for it in items:
            names[it[0]] -= 1
            if not names[it[0]]:
                del names[it[0]]
            if len(it) == 2:
                self._unlinks[parent] -= 1
        if not names:
            self._names.pop(parent, None)
        if not self._unlinks.get(parent, 1):
            del self._unlinks[parent]
        if rest:
            self._q[parent] = rest
        else:
            del self._q[parent]
            self._since.pop(parent, None)
        return items

    def _sent(self, items: list[tuple[Any, ...]]) -> None:
        """Items taken by _pop_locked are on the server (or failed): not victims any more,
        unless queued again."""
        if not items:
            return
        with self._lock:
            queued: set[int] = set()
            for p in {self._victims.get(it[1]) for it in items}:
                queued.update(x[1] for x in self._q.get(p or 0, ()))
            for it in items:
                if it[1] not in queued:
                    self._victims.pop(it[1], None)
                if len(it) == 2:
                    self._gone.discard(it[1])

    def _requeue(self, parent: int, items: list[tuple[Any, ...]]) -> None:
        """Items taken and not sent (the call failed): back to the front of the queue."""
        if not items:
            return
        with self._lock:
            self._enqueue_locked(parent, items, front=True)

    def _enqueue_locked(self, parent: int, items: list[tuple[Any, ...]], front: bool = False
                        ) -> None:
        """Queue `items` in `parent` (at the back, or the front: taken and not sent), with
        the counts _pop_locked takes back: per name, unlinks, the victims' directory."""
        q = self._q.setdefault(parent, [])
        if not q:
            self._since[parent] = time.monotonic()
        if front:
            q[:0] = items
        else:
            q.extend(items)
        names = self._names.setdefault(parent, {})
        for it in items:
            names[it[0]] = names.get(it[0], 0) + 1
            if len(it) == 2:
                self._unlinks[parent] = self._unlinks.get(parent, 0) + 1
            self._victims[it[1]] = parent

    def _send(self, parent: int, items: list[tuple[Any, ...]]) -> None:
        mark = self.mark()
        try:
            results, _pa = self.session.fs.unlink_batch(parent, items, forget=True)
        except Exception as exc:  # noqa: BLE001 - answered already: log, and forget the belief
            self.stats["failed"] += len(items)
            log.warning("%d unlinks and attribute changes in directory %d were answered but "
                        "could not be sent (%s); those files are as they were", len(items),
                        parent, exc)
            self._failed(parent, items)
            return
        self.stats["batches"] += 1
        self.took(parent, mark)
        self._check(parent, items, results)

    def _check(self, parent: int, items: list[tuple[Any, ...]],
               results: list[tuple[int, Any]]) -> None:
        bad = [(it[0], code) for it, (code, _) in zip(items, results, strict=False) if code]
        if bad or len(results) != len(items):
            self.stats["failed"] += len(bad)
            log.info("%d of %d items in directory %d did not apply (e.g. %r: errno %d); "
                     "those names are left as the server has them", len(bad), len(items),
                     parent, bad[0][0] if bad else b"", bad[0][1] if bad else 0)
            self._failed(parent, items)

    def _failed(self, parent: int, items: list[tuple[Any, ...]]) -> None:
        """What we answered of these is not what the server has: forget all of it."""
        inos = [it[1] for it in items if len(it) > 2]
        with self._lock:
            for ino in inos:
                self._unmake_locked(ino)
        self.on_failed(parent)
        for ino in inos:
            self.on_failed(ino)

    # --- the session's callbacks ----------------------------------------------------------------
    def recalled(self, inos: list[int]) -> None:
        with self._lock:
            self._recalls += 1
            dirs = [d for d in inos if d in self._held or d in self._q
                    or d in self._unborn_in or d in self._flying]
            self._held.difference_update(inos)
            for d in inos:
                for ino in list(self._made_names.get(d, {}).values()):
                    self._unmake_locked(ino)
                if d in self._made:     # a made file itself recalled
                    self._unmake_locked(d)
        for d in dirs:
            self.flush(d)

    def reset(self) -> None:
        with self._lock:
            self._recalls += 1
            self._held.clear()
            self._made.clear()
            self._made_names.clear()


def _group_of(me: _Birth, waiting: list[_Birth]) -> tuple[list[_Birth], list[_Birth]]:
    """(the group `me` sends: itself, then the waiting closes in order while the call stays
    within GROUP_MAX files and GROUP_BYTES of inline data; the rest, for the next group)."""
    take, size = [me], me.inline_bytes()
    for i, b in enumerate(waiting):
        size += b.inline_bytes()
        if len(take) == GROUP_MAX or size > GROUP_BYTES:
            return take, waiting[i:]
        take.append(b)
    return take, []


class _Birth:
    """A close waiting for its unborn file's CreateFile (DirOps.birth's group commit)."""
    __slots__ = ("ino", "commit", "done", "alone", "attrs")

    def __init__(self, ino: int, commit: tuple[Any, dict[str, Any]] | None) -> None:
        self.ino, self.commit = ino, commit
        self.done = False       # sent in a group: `attrs` is the reply (None: born already)
        self.alone = False      # its group's call failed: send it on its own
        self.attrs: Any = None

    def finish(self, attrs: Any) -> None:
        self.attrs, self.done = attrs, True

    def inline_bytes(self) -> int:
        return sum(len(d) for _c, d in self.commit[1].get("inline", ())) if self.commit else 0


def _merge(into: dict[str, int], attrs: dict[str, int]) -> None:
    """Later attribute changes of one file over earlier ones (setattr's keyword arguments)."""
    into["fields"] = into.get("fields", 0) | attrs["fields"]
    for k, v in attrs.items():
        if k != "fields":
            into[k] = v


class OrderedFs:
    """See the module docstring. Calls not named here pass through, after the queued unlink
    of their inode (first argument) if there is one."""

    def __init__(self, fs: Any, dirops: DirOps) -> None:
        self._fs = fs
        self._q = dirops

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._fs, name)
        if not callable(fn):
            return fn
        q = self._q

        def call(*args: Any, **kw: Any) -> Any:
            if args and isinstance(args[0], int):
                d = q.victim_dir(args[0])
                if d is not None:
                    q.flush(d)
                q.birth(args[0])
                if name not in _READS:
                    q.unmake(args[0])           # changed by a call: its attrs are the reply's
            return fn(*args, **kw)
        return call

    def commit_file(self, ino: int, *a: Any, **kw: Any) -> Any:
        mark = self._q.mark()
        born = self._q.birth(ino, (a, kw))      # unborn: its create and this commit, one call
        if born is not None:
            return born
        d = self._q.victim_dir(ino)
        if d is not None:
            self._q.flush(d)            # its queued attribute changes came before this data
        r = self._fs.commit_file(ino, *a, **kw)
        self._q.noted(ino, r, mark)
        return r

    def _dir(self, parent: int, name: bytes | None = None) -> None:
        if self._q.pending(parent, name):
            self._q.flush(parent)

    def _dir_before_new(self, parent: int, name: bytes) -> None:
        """Before a new entry in `parent`: its queued unlinks go first, whatever their names,
        since they free the space the new entry may need (see DirOps.birth)."""
        if self._q.pending_unlinks(parent) or self._q.pending(parent, name):
            self._q.flush(parent)

    def lookup(self, parent: int, name: bytes) -> Any:
        self._dir(parent, name)
        return self._fs.lookup(parent, name)

    def readdir(self, ino: int, *a: Any, **kw: Any) -> Any:
        self._dir(ino)
        return self._fs.readdir(ino, *a, **kw)

    def readdir_maps(self, ino: int, *a: Any, **kw: Any) -> Any:
        self._dir(ino)
        return self._fs.readdir_maps(ino, *a, **kw)

    def create_entry(self, parent: int, name: bytes, *a: Any, **kw: Any) -> Any:
        self._dir_before_new(parent, name)
        mark = self._q.mark()
        r = self._fs.create_entry(parent, name, *a, **kw)
        self._q.took(parent, mark)
        if stat.S_ISREG(r[0].mode):
            self._q.remember(parent, name, r[0], mark)     # held now: its attrs are ours
        return r

    def mkdir_entry(self, parent: int, name: bytes, *a: Any, **kw: Any) -> Any:
        self._dir_before_new(parent, name)
        mark = self._q.mark()
        r = self._fs.mkdir_entry(parent, name, *a, **kw)
        self._q.took(r[0].ino, mark)        # the new directory, if the reply leased it alone
        return r

    def symlink_entry(self, parent: int, name: bytes, *a: Any, **kw: Any) -> Any:
        self._dir_before_new(parent, name)
        return self._fs.symlink_entry(parent, name, *a, **kw)

    def link_entry(self, ino: int, new_parent: int, new_name: bytes) -> Any:
        d = self._q.victim_dir(ino)
        if d is not None:
            self._q.flush(d)
        self._q.birth(ino)
        self._q.unmake(ino)             # its nlink and ctime change
        self._dir(new_parent, new_name)
        return self._fs.link_entry(ino, new_parent, new_name)

    def remove(self, parent: int, name: bytes, directory: bool = False, **kw: Any) -> Any:
        if directory:
            self._q.flush_all()     # the directory removed may hold queued unlinks
        else:
            self._dir(parent, name)
        self._q.unmake_name(parent, name)
        mark = self._q.mark()
        r = self._fs.remove(parent, name, directory=directory, **kw)
        if not directory:
            self._q.took(parent, mark)
        return r

    def rename_entry(self, *a: Any, **kw: Any) -> Any:
        self._q.flush_all()         # rare; which queued names it depends on is not worth it
        self._q.reset_made()
        return self._fs.rename_entry(*a, **kw)
