"""Background collection: the space of removed files comes back within seconds, no `aifs gc`.

Interface:
    Collector(parts, pins, *, precise, interval=2.0, sdk_grace=3600.0, settle=1.0,
              pass_seconds=5.0, batch=2000, on_pass=None)
        .start()                    a daemon thread running one pass every `interval` seconds
        .stop(timeout=10.0)         sets the stop flag and joins: a pass checks the flag before
                                    every chunk, so it stops within one store delete
        .run_pass() -> GCResult     one pass (the thread's unit; tests call it too)
        .passes                     passes run to their end so far (on_pass(result) after each)

What a pass deletes (at most `batch` chunks, never past `pass_seconds`): chunks unreferenced
(refcount 0) since S,
- `precise` (this server sees every upload and every session: the sole server of its SQLite
  data dir) and S after this server started: deleted `settle` seconds after S unless
  `pins` protect it (an upload in flight, or a hold of a live session that has not committed
  it: upload_pins.py);
- otherwise (S before this server started: nobody here knows who uploaded it; or other servers
  take uploads): deleted once S is `sdk_grace` old, what `aifs gc` does by default.
Orphan inodes (unlinked files a crashed mount held open) and crash leftovers in the store stay
to `aifs gc`: their age is the only evidence, and walking the store is not bounded work.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from aifs_server.deadline import Deadline
from aifs_server.grpc_errors import LogLimiter
from aifs_server.maintenance import GCResult, StorageParts, delete_chunk
from aifs_server.upload_pins import UploadPins

log = logging.getLogger("aifs.server")


class Collector:
    def __init__(self, parts: StorageParts, pins: UploadPins, *, precise: bool,
                 interval: float = 2.0, sdk_grace: float = 3600.0, settle: float = 1.0,
                 pass_seconds: float = 5.0, batch: int = 2000,
                 on_pass: Callable[[GCResult], None] | None = None) -> None:
        self.parts, self.pins, self.precise = parts, pins, precise
        self.interval, self.pass_seconds, self.batch = interval, pass_seconds, batch
        self.sdk_grace_ns = int(sdk_grace * 1e9)
        self.settle_ns = int(settle * 1e9)
        self.started_ns = time.time_ns()
        self.passes = 0
        self.on_pass = on_pass
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._log_limit = LogLimiter()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="aifs-collector", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                r = self.run_pass()
            except Exception as e:  # noqa: BLE001 - a store or database away: next pass
                # a full disk or a store away fails every pass: a few lines a minute, counted
                self._log_limit.pass_failed(log, "background collection", e, self.interval)
                continue
            if r.chunks_deleted:
                log.debug("background collection: %d chunks, %d bytes freed",
                          r.chunks_deleted, r.bytes_freed)

    def run_pass(self) -> GCResult:
        result = GCResult()
        deadline = Deadline.after(self.pass_seconds)
        now = time.time_ns()
        late = now - self.sdk_grace_ns          # old enough whoever uploaded it
        ranges = [(0, late)]
        if self.precise:                         # what this server saw uploaded and dropped
            ranges.append((max(late, self.started_ns), now - self.settle_ns))
        meta = self.parts.meta
        for ns in [n.name for n in meta.list_namespaces()]:
            for lo, hi in ranges:
                if not self._range(ns, lo, hi, deadline, result):
                    result.complete = False
                    break
        self.pins.prune()
        self.passes += 1
        if self.on_pass is not None:
            self.on_pass(result)
        return result

    def _range(self, ns: str, lo: int, hi: int, deadline: Deadline, result: GCResult) -> bool:
        """Delete the candidates unreferenced since [lo, hi); False when the pass must end."""
        meta = self.parts.meta
        while lo < hi:
            # paged by time: held chunks a page skips do not hide the newer ones
            page = meta.gc_candidate_times(ns, lo, hi, PAGE)
            for cid, since in page:
                left = deadline.remaining()
                if (self._stop.is_set() or (left is not None and left <= 0)
                        or result.chunks_deleted >= self.batch):
                    return False
                delete_chunk(self.parts, self.pins, ns, cid, since, result)
            if len(page) < PAGE:
                break
            lo = page[-1][1] + 1
        return True


PAGE = 500
