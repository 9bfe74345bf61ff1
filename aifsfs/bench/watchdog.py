"""A bound on how long `aifs bench` may take to stop after Ctrl-C or SIGTERM.

Interface:
    with interrupt_watchdog(live, grace=30.0):   # live: the targets mounted right now
        ...                                      # the benchmark

Why: a signal is handled by Python only when the main thread runs bytecode again. If the
main thread is blocked in a system call on a FUSE mount (a `write` that the daemon has not
answered), SIGINT does not end that call: the kernel sends the daemon an INTERRUPT request
and keeps waiting for its answer. A daemon that is stuck or slow to answer then holds the
benchmark, and the Ctrl-C cleanup, indefinitely.

How: a thread watches for a stop signal two ways: `signal.set_wakeup_fd` (the C-level
handler ran: the cleanup has begun) and the pending-signal masks in /proc (the main thread is
blocked in the kernel and has not even run the C handler). It gives the cleanup `grace`
seconds from the signal. Past that it forces what the cleanup would have done (a lazy unmount of every
live target's mount after SIGKILL of its processes), which makes the blocked call return, so the
main thread's own cleanup can run. Past a second `grace` it prints every thread's stack to
stderr (what was stuck, for the report) and exits with 130.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

EXIT_INTERRUPTED = 130


class _Stoppable(Protocol):
    @property
    def mnt(self) -> os.PathLike[str]: ...

    def processes(self) -> list[tuple[int, str]]: ...


def _force(targets: Sequence[_Stoppable]) -> None:
    # Kill first: a daemon that does not answer also blocks fusermount3 (it looks at the
    # mount point), while its death ends every request waiting on it at once.
    for t in list(targets):
        for pid, _ in t.processes():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    for t in list(targets):
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(["fusermount3", "-uz", os.fspath(t.mnt)], capture_output=True,
                           timeout=10)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_STOP_MASK = sum(1 << (int(sig) - 1) for sig in _STOP_SIGNALS)


def _stop_signal_pending() -> bool:
    """A stop signal the kernel holds for us undelivered: the main thread, blocked in a FUSE
    request, has not returned to user space to run even the C-level handler."""
    for status in ("/proc/self/status", f"/proc/self/task/{os.getpid()}/status"):
        try:
            for line in Path(status).read_text().splitlines():
                if line.startswith(("ShdPnd:", "SigPnd:")) and \
                        int(line.split()[1], 16) & _STOP_MASK:
                    return True
        except (OSError, ValueError):
            continue
    return False


def _watch(rfd: int, done: threading.Event, live: Sequence[_Stoppable], grace: float) -> None:
    signalled: float | None = None
    while not done.is_set():
        ready, _, _ = select.select([rfd], [], [], 0.5)
        if ready:
            got = os.read(rfd, 64)
            if not got:
                return  # the pipe was closed: the benchmark ended
            if any(b in _STOP_SIGNALS for b in got):
                signalled = signalled or time.monotonic()
        elif signalled is None and _stop_signal_pending():
            signalled = time.monotonic()
        if signalled is not None and time.monotonic() - signalled >= grace:
            break
    else:
        return
    print(f"aifs bench: still stopping {grace:.0f} s after the signal: forcing every mount "
          "off and killing its daemons", file=sys.stderr, flush=True)
    _force(live)
    if done.wait(grace):
        return
    print("aifs bench: the cleanup is stuck; every thread's stack:", file=sys.stderr, flush=True)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    os._exit(EXIT_INTERRUPTED)


@contextlib.contextmanager
def interrupt_watchdog(live: Sequence[_Stoppable], grace: float = 30.0) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # set_wakeup_fd works only in the main thread; nothing to guard elsewhere
        return
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)  # the C handler must never block
    done = threading.Event()
    old = signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
    watcher = threading.Thread(target=_watch, args=(rfd, done, live, grace),
                               name="aifs-bench-watchdog", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        signal.set_wakeup_fd(old)
        os.close(wfd)  # ends the watcher's read
        watcher.join(timeout=5)
        os.close(rfd)
