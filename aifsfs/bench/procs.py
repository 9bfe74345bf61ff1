"""Process and mount helpers for `aifs bench` (no benchmark logic here).

Interface:
- `run(cmd, **kw) -> CompletedProcess`: run a command, capture output, raise `BenchError`
  naming the command and its stderr when it fails.
- `wait_mounted(mountpoint, proc=None, timeout=30)`: poll until `mountpoint` is a mount point;
  raise `BenchError` with the daemon's log if `proc` exits first or the timeout passes.
- `fuse_unmount(mountpoint) -> bool`: `fusermount3 -u`, falling back to a lazy `-uz` (then
  False: a file is still open, e.g. one a Ctrl-C cut off); never raises.
- `stop_process(proc, timeout)`: wait for a daemon to exit after its unmount, then SIGTERM,
  then SIGKILL; never raises.
- `find_pids(needles) -> list[int]`: live pids whose command line contains any needle (used
  for daemons that detach, e.g. the AIFS mount and server started by `aifs up`).
- `peak_rss_kib(pid) -> int | None`: VmHWM (the kernel's peak resident set) of a live pid.
- `cmdline(pid) -> str`.
- `drop_caches() -> bool`: `sync; echo 3 > /proc/sys/vm/drop_caches`; False if not permitted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from aifsfs.fuse.mounter import pid_alive


class BenchError(Exception):
    """A benchmark step failed; the message says what happened and what to do."""


def run(
    cmd: Sequence[str],
    *,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[bytes]:
    try:
        proc = subprocess.run(
            list(cmd), input=input, env=env, cwd=cwd, capture_output=True, timeout=timeout
        )
    except FileNotFoundError as e:
        raise BenchError(f"{cmd[0]}: not found ({e}); install it or drop it from --peers") from e
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"{' '.join(cmd)}: no answer after {timeout:.0f}s") from e
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).decode(errors="replace").strip()[-2000:]
        raise BenchError(f"{' '.join(cmd)} failed (exit {proc.returncode}): {err}")
    return proc


def _log_tail(log: Path | None) -> str:
    if log is None or not log.exists():
        return ""
    return log.read_text(errors="replace").strip()[-2000:]


def wait_mounted(
    mountpoint: Path,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
    timeout: float = 30,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.ismount(mountpoint):
            return
        if proc is not None and proc.poll() is not None:
            raise BenchError(
                f"mount daemon exited with {proc.returncode} before {mountpoint} was mounted: "
                f"{_log_tail(log)}"
            )
        time.sleep(0.05)
    raise BenchError(f"{mountpoint} not mounted after {timeout:.0f}s: {_log_tail(log)}")


def fuse_unmount(mountpoint: Path) -> bool:
    """Unmount; True if a plain unmount worked, False if it had to be lazy (files still open)."""
    if not os.path.ismount(mountpoint):
        return True
    for args in (["-u"], ["-uz"]):
        for _ in range(20):
            try:
                r = subprocess.run(["fusermount3", *args, str(mountpoint)], capture_output=True,
                                   timeout=30)
            except subprocess.TimeoutExpired:
                continue  # fusermount3 itself hung on the mount: the lazy form comes next
            if r.returncode == 0 or not os.path.ismount(mountpoint):
                return args == ["-u"]
            time.sleep(0.1)  # EBUSY: a reader (e.g. a pool worker) is still closing
    return False


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.wait(timeout=timeout)
        return
    except subprocess.TimeoutExpired:
        pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            proc.send_signal(sig)
            proc.wait(timeout=5)
            return
        except (subprocess.TimeoutExpired, ProcessLookupError):
            continue


def kill_pids(pids: Iterable[int]) -> None:
    """SIGTERM, then SIGKILL, the given pids (only ones this run found for its own mount)."""
    live = list(pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in live:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(pid_alive(p) for p in live):
            time.sleep(0.05)
        live = [p for p in live if pid_alive(p)]
        if not live:
            return


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def find_pids(needles: Iterable[str]) -> list[int]:
    wanted = [n for n in needles if n]
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        line = cmdline(int(entry))
        if line and any(n in line for n in wanted) and pid_alive(int(entry)):
            found.append(int(entry))
    return sorted(found)


def peak_rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def drop_caches() -> bool:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False
