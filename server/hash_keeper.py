"""Node hashes kept current in the background: a snapshot rehashes only what changed since the
last pass (issue 11: a snapshot of a 100k-file tree in <= 200 ms, O(changes)).

Interface:
    HashKeeper(versions, *, interval=0.25, duty=0.1, max_wait=1.0, quiet=0.2,
               first_max=20_000, on_pass=None)
        .start()                    a daemon thread: a pass every `interval` to `max_wait` s
        .stop(timeout=10.0)         sets the stop flag and joins (a pass in progress ends first)
        .run_pass() -> (branches checkpointed, nodes rehashed)   one pass (tests call it too)
        .next_wait(busy) -> seconds    the wait after a pass that worked `busy` seconds
        .passes                     passes run so far; on_pass(branches, nodes, seconds) after
                                    each that did some work

A pass asks the database which branches' stored hashes are behind their rows
(`trees_to_hash`: index probes of the history tables, one statement for every tree) and runs
`Versions.checkpoint` on each: the tree moves to its next epoch and the hashes of the epoch
that ended are stored (FORMAT.md §6.4 "Hash checkpoints"), in one write transaction that
costs what a snapshot of those changes costs (plus the listing of each changed directory:
~4 us an entry, the format hashes a directory's whole listing; a directory of 512 entries or
more is read whole once, then by its changes: listing_cache.py). When is a pass due:
- after a pause in this server's writes (none asked for in the last `quiet` seconds:
  `PosixMeta.last_change`): at once, so a snapshot taken a moment after a burst of writes
  finds its hashes current;
- while writes go on: once every `max_wait` seconds, so a snapshot taken in the middle of a
  stream of writes finds at most about that long of them to hash (and a pass over a large
  directory that keeps changing, O(its entries), runs once a second, not four times);
- never sooner than `interval` after the last, nor than t * (1 - duty) / duty after a pass
  that worked t seconds (it holds the write lock: a tenth of the time), capped at
  `max_wait` for a pass of up to `cap_busy` seconds: such a pass's cost is mostly the
  changes it found, which grow with the wait, so a keeper waiting in proportion would fall
  further behind a fast writer with each pass, and what it leaves is for the snapshot (which
  must stay O(changes since the last pass)). A longer pass is mostly a large directory's
  listing (the format hashes it whole): then the keeper keeps to its tenth, as the
  snapshot pays that listing whatever the wait.
Writes through another server (PostgreSQL) look like a pause to this one: their trees are
hashed every `interval` within the duty, by whichever server gets there first. A new tree is hashed as soon as it
exists (its first pass is over a few nodes), so no pass ever hashes a large tree whole. A tree
that is already large and has no hashes (written before this server ran, or a branch just
copied from its base) is left to its first snapshot when it has more than `first_max` nodes
(one ~1 s write lock a 100k nodes that nobody asked for; it is looked at again every
minute); from that snapshot on, the passes keep it current.

A full disk (the data dir's space reserve, space_reserve.py): a pass writes (the epoch, the
hashes), so it may take the reserve kept for removals only when its own work frees space,
i.e. when the epoch it hashes holds chunk references in history rows no view sees (an rm or an
overwrite since the last pass: gc_epoch releases them and the collector deletes the chunks).
Taking it for the hashes of new files (a pass during the fill that filled the disk) left the
rm that followed without it, and the space never came back.

Several servers on one PostgreSQL database each run one; a checkpoint locks the tree's row
first and finds the hashes another one stored current.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from aifs_core.errors import AIFSError, NoSpace
from aifs_server.grpc_errors import LogLimiter
from aifs_server.space_reserve import FREES_SPACE
from aifs_server.versions import Versions

log = logging.getLogger("aifs.server")

INTERVAL = 0.25
DUTY = 0.1
MAX_WAIT = 1.0
QUIET = 0.2
CAP_BUSY = 0.2
FIRST_MAX = 20_000
RECHECK = 60.0      # seconds before a tree left to its first snapshot is looked at again


class HashKeeper:
    def __init__(self, versions: Versions, *, interval: float = INTERVAL, duty: float = DUTY,
                 max_wait: float = MAX_WAIT, quiet: float = QUIET, first_max: int = FIRST_MAX,
                 on_pass: Callable[[int, int, float], None] | None = None) -> None:
        if not 0 < duty <= 1:
            raise ValueError(f"duty must be in (0, 1], not {duty}")
        self.versions, self.interval, self.duty = versions, interval, duty
        self.max_wait, self.quiet = max(max_wait, interval), quiet
        self.first_max = first_max
        self._later: dict[tuple[str, str], float] = {}   # too large to hash whole: not before
        self.on_pass = on_pass
        self.passes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._log_limit = LogLimiter()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="aifs-hash-keeper", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        last, wait = 0.0, self.interval
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            if not self.due(now, last, wait):
                continue
            t0 = time.perf_counter()
            try:
                self.run_pass()
            except Exception as e:  # noqa: BLE001 - a database away or busy: next pass
                self._log_limit.pass_failed(log, "background hashing", e, self.interval)
            last, wait = time.monotonic(), self.next_wait(time.perf_counter() - t0)

    def _checkpoint(self, ns: str, branch: str) -> int | None:
        try:
            return self.versions.checkpoint(ns, branch)
        except NoSpace as full:
            if not full.reserve_released:
                raise
            # the disk was full and this pass frees space: it gave back the reserve (only then,
            # FREES_SPACE), and the rolled-back checkpoint runs once more with room, as a
            # removal's call does (grpc_errors.rpc)
            return self.versions.checkpoint(ns, branch)

    def next_wait(self, busy: float) -> float:
        """Seconds to wait at least after a pass that worked `busy` seconds."""
        wait = max(self.interval, busy * (1 - self.duty) / self.duty)
        return min(self.max_wait, wait) if busy <= CAP_BUSY else wait

    def due(self, now: float, last: float, wait: float) -> bool:
        """Whether a pass is due at `now` (monotonic), the last one at `last`, which asked
        for `wait` seconds (next_wait)."""
        if now - last < wait:
            return False
        writing = now - getattr(self.versions.meta, "last_change", 0.0) < self.quiet
        return not writing or now - last >= self.max_wait

    def run_pass(self) -> tuple[int, int]:
        t0 = time.perf_counter()
        trees = nodes = 0
        tx = self.versions.meta.store.single()
        for ns, branch in tx.trees_to_hash():
            if self._stop.is_set():
                break
            got = tx.get_tree(ns, branch)
            if got is not None and not tx.has_hashes(got[0]):   # its first hashing: how big?
                if self._later.get((ns, branch), 0.0) > time.monotonic():
                    continue
                if tx.tree_totals(got[0])[0] > self.first_max:
                    self._later[(ns, branch)] = time.monotonic() + RECHECK
                    continue
            self._later.pop((ns, branch), None)
            token = FREES_SPACE.set(got is not None and tx.epoch_frees_chunks(got[0]))
            try:
                n = self._checkpoint(ns, branch)
            except AIFSError as e:   # the branch went, a namespace deleted, a full disk: the next
                log.debug("background hashing of %s/%s: %s", ns, branch, e)
                continue
            except Exception as e:
                # PostgreSQL aborted it for a conflict (a deadlock with a writer that holds one
                # of the tables its lock waits for: the writer's call re-runs, this one waits
                # for the next pass); anything else goes to the pass's log line
                if type(e).__name__ != "_Again":   # metadata/postgres.py's "run it again"
                    raise
                log.debug("background hashing of %s/%s: %s (next pass)", ns, branch, e)
                continue
            finally:
                FREES_SPACE.reset(token)
            if n is not None:
                trees += 1
                nodes += max(n, 0)
        self.passes += 1
        if trees and self.on_pass is not None:
            self.on_pass(trees, nodes, time.perf_counter() - t0)
        return trees, nodes
