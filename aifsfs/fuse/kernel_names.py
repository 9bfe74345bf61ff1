"""Kernel dentries and attributes handed out under a lease, and their invalidation
(docs/LEASES.md "Kernel caches under a lease").

While the mount holds a lease on a directory (its names) or an inode (its attributes), the
kernel may keep what the mount answered from it for as long as the lease is sure to last, not
just `entry_timeout`/`attr_timeout`: a `stat` after a create, or a lookup of a name already
answered, then costs no FUSE request at all. In exchange every such entry is recorded here and
invalidated in the kernel when the lease goes: a recall (before its ack, so another mount's
change that caused it is seen by the next lookup here: close-to-open), a lost session, a
batch of ours that did not apply.

Interface:
    KernelNames(notify=pyfuse3 functions, max_entries=MAX_ENTRIES)
        .timeout(valid_until, floor) -> float   how long the kernel may keep an entry now:
                                     what is left of the lease, at least `floor` (the
                                     mount's own timeouts, which apply with or without a lease)
        .entry(parent, name, seconds)   the kernel got parent/name (positive or negative) for
                                        `seconds`
        .entries(parent, [(name, ino)], seconds)   a listing's names and their attributes
        .attr(ino, seconds, under=None)  the kernel got ino's attributes for `seconds`; under:
                                     the directory whose exclusive lease covers them (its
                                     recall names only the directory)
        .recalled(inos, wait=WAIT)   forget what the kernel holds of these inodes (names in
                                     them, their attributes), and wait up to `wait` seconds
                                     for the kernel to have done it (a thread that is not a
                                     FUSE request handler: the lease stream's)
        .forget_dir(parent)          the same without waiting (any thread, also a request
                                     handler's worker: the kernel may need the directory's
                                     lock that the waiting request holds)
        .reset()                     everything (the session is gone)
        .stats                       {"entries", "attrs", "timeouts"}

Why waiting is bounded: the kernel takes the directory's lock to drop a dentry; a request in
that directory holding it replies soon (none of them waits for the lease stream), but if one
ever did, a recall must still be acked: after `wait` the invalidation goes on in its thread
and the ack is sent (logged). Entries whose time ran out are dropped from the record (the
kernel dropped them too), so memory is bounded by what was handed out within one lease term.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from typing import Any

import pyfuse3

log = logging.getLogger("aifsfs.kernel_names")

MAX_ENTRIES = 200_000   # above this, expired records are swept (live ones are bounded by a term)
WAIT = 2.0


class KernelNames:
    def __init__(self, notify: Any = pyfuse3, max_entries: int = MAX_ENTRIES) -> None:
        self._n = notify
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._names: dict[int, dict[bytes, float]] = {}     # parent -> {name: expiry}
        self._attrs: dict[int, float] = {}                  # ino -> expiry
        self._kids: dict[int, set[int]] = {}                # directory -> attrs it covers
        self._count = 0
        self.stats = {"entries": 0, "attrs": 0, "timeouts": 0}

    @staticmethod
    def timeout(valid_until: float, floor: float) -> float:
        return max(floor, valid_until - time.monotonic())

    def entry(self, parent: int, name: bytes, seconds: float) -> None:
        with self._lock:
            d = self._names.setdefault(parent, {})
            if name not in d:
                self._count += 1
            d[name] = time.monotonic() + seconds
            if self._count > self.max_entries:
                self._sweep_locked()

    def entries(self, parent: int, given: list[tuple[bytes, int]], seconds: float) -> None:
        """A listing's names (and each one's attributes) given to the kernel for `seconds`."""
        with self._lock:
            d = self._names.setdefault(parent, {})
            until = time.monotonic() + seconds
            for name, ino in given:
                if name not in d:
                    self._count += 1
                d[name] = until
                if ino not in self._attrs:
                    self._count += 1
                self._attrs[ino] = until
            if self._count > self.max_entries:
                self._sweep_locked()

    def attr(self, ino: int, seconds: float, under: int | None = None) -> None:
        with self._lock:
            if ino not in self._attrs:
                self._count += 1
            self._attrs[ino] = time.monotonic() + seconds
            if under is not None:
                self._kids.setdefault(under, set()).add(ino)
            if self._count > self.max_entries:
                self._sweep_locked()

    def _sweep_locked(self) -> None:
        now = time.monotonic()
        for parent in list(self._names):
            d = self._names[parent]
            for name in [n for n, t in d.items() if t <= now]:
                del d[name]
            if not d:
                del self._names[parent]
        self._attrs = {i: t for i, t in self._attrs.items() if t > now}
        self._kids = {d: {i for i in k if i in self._attrs} for d, k in self._kids.items()}
        self._kids = {d: k for d, k in self._kids.items() if k}
        self._count = len(self._attrs) + sum(len(d) for d in self._names.values())

    def _take(self, inos: Any) -> tuple[list[tuple[int, bytes]], list[int]]:
        now = time.monotonic()
        names: list[tuple[int, bytes]] = []
        attrs: list[int] = []
        with self._lock:
            inos = list(inos)
            for d in list(inos):
                inos.extend(self._kids.pop(d, ()))
            for ino in inos:
                d = self._names.pop(ino, None)
                if d:
                    self._count -= len(d)
                    names.extend((ino, n) for n, t in d.items() if t > now)
                t = self._attrs.pop(ino, None)
                if t is not None:
                    self._count -= 1
                    if t > now:
                        attrs.append(ino)
        return names, attrs

    def _invalidate(self, names: list[tuple[int, bytes]], attrs: list[int]) -> None:
        for parent, name in names:
            try:
                self._n.invalidate_entry(parent, name)
                self.stats["entries"] += 1
            except OSError as exc:
                if exc.errno != errno.ENOENT:   # ENOENT: the kernel no longer has it
                    log.debug("invalidate_entry %d/%r: %s", parent, name, exc)
        for ino in attrs:
            try:
                self._n.invalidate_inode(ino, attr_only=True)
                self.stats["attrs"] += 1
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    log.debug("invalidate_inode %d: %s", ino, exc)

    def recalled(self, inos: list[int], wait: float = WAIT) -> None:
        names, attrs = self._take(inos)
        if not names and not attrs:
            return
        t = threading.Thread(target=self._invalidate, args=(names, attrs),
                             name="aifs-kernel-inval", daemon=True)
        t.start()
        t.join(wait)
        if t.is_alive():
            self.stats["timeouts"] += 1
            log.warning("the kernel took over %.1f s to drop %d names and %d attributes of a "
                        "recalled lease; acked anyway (the invalidation goes on)", wait,
                        len(names), len(attrs))

    def forget_dir(self, parent: int) -> None:
        names, attrs = self._take([parent])
        for p, name in names:
            try:
                self._n.invalidate_entry_async(p, name, ignore_enoent=True)
            except Exception as exc:  # noqa: BLE001 - not mounted any more: nothing cached
                log.debug("invalidate_entry_async %d/%r: %s", p, name, exc)
        for ino in attrs:
            threading.Thread(target=self._invalidate, args=([], [ino]), daemon=True).start()

    def reset(self) -> None:
        with self._lock:
            inos = list(self._names) + list(self._attrs)
            self._kids.clear()
        self.recalled(inos)
