"""The bench's small-file phases alone, with calls and CPU per file (issue 9).

usage: .venv/bin/python scripts/smallbench.py WORKDIR [--target aifs|gocryptfs] [--files N]
           [--rounds N] [--spy PHASE] [--tree DIR] [--writers N] [--writeback]

Runs what `aifs bench` times for small files, in its order: `create` (N 4 KiB files, one
process, open O_CREAT|O_EXCL + write + close, then one fsync of the directory) on a fresh mount, then the server
restarted, the mount remounted and the page cache dropped, then `stat` (listing + stat of
each), `read` (listing + open/read/close of each), `unlink`. --rounds repeats the whole
sequence in new directories on the same mount (after the first round the directory is new,
the mount and server are not). --writers N: the create phase runs N threads at once, each
creating every Nth file of the one directory (parallel closes: tar | parallel, DataLoader
workers writing outputs); the other phases are unchanged. Printed per phase: files/s, CPU us per file (user+system) of the
server and the mount, idle % of the machine, gRPC calls per file (server metrics). The rigs (fresh data
dir, server with metrics, `aifs up`; gocryptfs's bench target) are epoch_bench.py's.
Needs root (FUSE, drop_caches). Every mount is unmounted and the server stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from epoch_bench import REPO, AifsRig, GocryptfsRig, cpu_split, drop, idle_ticks  # noqa: E402

from aifsfs.bench import workloads as wl  # noqa: E402


def spy(rig: AifsRig | GocryptfsRig, a: argparse.Namespace,
        name: str) -> list[subprocess.Popen[bytes]]:
    """py-spy on each process of the target for phase `name` if asked (--spy)."""
    if a.spy != name:
        return []
    out = [subprocess.Popen(
        [str(REPO / ".venv/bin/py-spy"), "record", "--nonblocking", "-p", str(pid), "-r",
         "400", "--threads", "-f", "raw", *a.spy_args.split(),
         "-o", str(a.work / f"spy-{name}-{role}-{pid}.txt")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for pid, role in rig.pids()]
    time.sleep(1.5)
    return out


def sample(rig: AifsRig | GocryptfsRig
           ) -> tuple[dict[str, int], list[tuple[float, float]], tuple[int, int]]:
    """(calls per method, (user, system) CPU seconds of each process, machine idle/total
    jiffies) now."""
    return rig.calls(), [cpu_split(p) for p, _ in rig.pids()], idle_ticks()


def phase(rig: AifsRig | GocryptfsRig, a: argparse.Namespace, name: str,
          fn: Callable[[], float]) -> None:
    """Time fn (files/s) with CPU per file of each process, idle %, calls per file."""
    spies = spy(rig, a, name)
    calls0, cpu0, idle0 = sample(rig)
    rate = fn()
    calls1, cpu1, idle1 = sample(rig)
    for s in spies:
        s.send_signal(signal.SIGINT)
        s.wait(60)
    per = {k: round((v - calls0.get(k, 0)) / a.files, 3) for k, v in sorted(calls1.items())
           if v != calls0.get(k, 0) and k != "Open"}
    us = [f"{(y[0] - x[0]) / a.files * 1e6:.0f}+{(y[1] - x[1]) / a.files * 1e6:.0f}"
          for x, y in zip(cpu0, cpu1, strict=True)]
    idle = 100 * (idle1[0] - idle0[0]) / max(1, idle1[1] - idle0[1])
    print(f"{name}: {rate:,.0f}/s  cpu us/file user+sys {us}  idle {idle:.0f}%  calls/file {per}",
          flush=True)


def one_round(rig: AifsRig | GocryptfsRig, sub: Path, a: argparse.Namespace) -> None:
    if a.writers > 1:
        phase(rig, a, f"create x{a.writers}",
              lambda: wl.create_parallel(sub, a.files, a.writers, sub="small"))
    else:
        phase(rig, a, "create", lambda: wl.create_small(sub, a.files))
    if not a.keep_mount:
        rig.restart()
    drop()
    phase(rig, a, "stat", lambda: wl.stat_small(sub))
    phase(rig, a, "read", lambda: wl.read_small(sub))
    phase(rig, a, "unlink", lambda: wl.unlink_small(sub))


def make_rig(a: argparse.Namespace) -> AifsRig | GocryptfsRig:
    if a.target == "gocryptfs":
        return GocryptfsRig(a.work)
    aifs = AifsRig(a.work, a.tree.resolve() if a.tree else None,
                   ("--writeback",) if a.writeback else ())
    aifs.start_server()
    aifs.up()
    return aifs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("work", type=Path, help="emptied first; data dir, mount, logs, profiles")
    ap.add_argument("--files", type=int, default=5000, help="files per phase (bench: 5000)")
    ap.add_argument("--rounds", type=int, default=1, help="the four phases this many times")
    ap.add_argument("--target", default="aifs", choices=["aifs", "gocryptfs"])
    ap.add_argument("--tree", type=Path, default=None,
                    help="run server and mount from this checkout (a worktree of an older "
                         "commit: before/after on one machine)")
    ap.add_argument("--spy", default="", help="py-spy both processes during this phase")
    ap.add_argument("--writers", type=int, default=1, help="threads creating at once")
    ap.add_argument("--writeback", action="store_true", help="mount with `aifs up --writeback`")
    ap.add_argument("--keep-mount", action="store_true",
                    help="no server restart and remount after create, only the page cache "
                         "dropped (as `aifs bench` does)")
    ap.add_argument("--spy-args", default="", help="more py-spy record flags (--idle, --gil)")
    a = ap.parse_args()
    shutil.rmtree(a.work, ignore_errors=True)   # a fresh data dir, mount and cache each run
    a.work.mkdir(parents=True)
    rig = make_rig(a)
    try:
        for r in range(a.rounds):
            sub = rig.root / f"r{r}"
            sub.mkdir()
            print(f"{a.target} {a.tree or ''} round {r} load {os.getloadavg()[0]:.1f}",
                  flush=True)
            one_round(rig, sub, a)
    finally:
        rig.close()


if __name__ == "__main__":
    main()
