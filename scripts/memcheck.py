"""Peak resident memory of the mount and the server while a big file is copied through the mount.

Usage: .venv/bin/python scripts/memcheck.py WORKDIR SIZE_MIB [--env NAME=VALUE ...]
                                            [--limit MIB] [--rand] [-- MOUNT_OPTION ...]

Starts its own server and mount under WORKDIR (removed afterwards; the mount's disk cache is
kept there too), writes SIZE_MIB of random data through the mount with dd (fsync at the end),
reads it back cold (page cache dropped) and warm (with --rand then randomly, as the bench's fio
phases: QD1 and 16 jobs, 10 s each, cold at the start), compares it, and prints MB/s and the peak
RSS (VmHWM) of both processes per phase: the kernel's peak is reset between phases
(/proc/PID/clear_refs, 5), so each figure is that phase's own peak. --env sets a variable
for both processes (e.g. MALLOC_ARENA_MAX=8, to compare malloc settings); options after `--`
go to the mount (e.g. --mem-cache-size 32M). Exit code 1 if a peak passes --limit (default
256 MiB, the issue-10 budget; 0: no check). Always unmounts and stops the server.
DESIGN.md §5: copying a 10 GiB file must not grow either process past a few hundred MiB.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from aifsfs.bench.workloads import fio_randread  # noqa: E402

BUDGET_MIB = 256


def _status_mib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) // 1024
    return 0


def vm_hwm_mib(pid: int) -> int:
    return _status_mib(pid, "VmHWM")


def reset_hwm(pid: int) -> None:
    """Start a new peak: VmHWM becomes the current RSS (Linux >= 4.0; owner or root)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def dd_mb_s(src: str, dst: str, size_mib: int, *extra: str) -> float:
    start = time.monotonic()
    subprocess.run(["dd", f"if={src}", f"of={dst}", "bs=1M", *extra, "status=none"], check=True)
    return size_mib * 1.048576 / (time.monotonic() - start)


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"memcheck: {what} did not come up within {timeout:.0f} s")
        time.sleep(0.1)


def main(work: Path, size_mib: int, env_vars: list[str], limit: int,
         mount_args: list[str], rand: bool = False) -> int:
    py = sys.executable
    env = dict(os.environ)
    for item in env_vars:
        name, _, value = item.partition("=")
        env[name] = value
    shutil.rmtree(work, ignore_errors=True)
    (work / "mnt").mkdir(parents=True)
    sock = f"unix:{work}/s.sock"
    srv = subprocess.Popen([py, "-m", "aifs_server.serve", "--data", str(work / "data"),
                            "--listen", sock, "--format-if-needed"], env=env,
                           stdout=open(work / "server.log", "w"), stderr=subprocess.STDOUT)
    mnt: subprocess.Popen[bytes] | None = None
    mountpoint = work / "mnt"
    worst = 0
    try:
        wait_for(lambda: os.path.exists(f"{work}/s.sock.token"), "the server")
        mnt = subprocess.Popen([py, "-m", "aifsfs.fuse.mounter", sock, str(mountpoint),
                                "--cache-dir", str(work / "cache"), *mount_args], env=env,
                               stdout=open(work / "mount.log", "w"), stderr=subprocess.STDOUT)
        wait_for(lambda: os.path.ismount(mountpoint) or mnt.poll() is not None, "the mount")
        if mnt.poll() is not None:
            raise SystemExit(f"memcheck: the mount exited ({mnt.returncode}): "
                             f"{(work / 'mount.log').read_text()[-2000:]}")
        src = work / "src.bin"
        subprocess.run(["dd", "if=/dev/urandom", f"of={src}", "bs=1M", f"count={size_mib}",
                        "status=none"], check=True)
        pids = {"mount": mnt.pid, "server": srv.pid}
        rest = {role: _status_mib(pid, "VmRSS") for role, pid in pids.items()}
        peaks: dict[str, dict[str, int]] = {}
        speeds: dict[str, float] = {}
        same = False

        def phase(name: str, run: Callable[[], object]) -> None:
            for pid in pids.values():
                reset_hwm(pid)
            result = run()
            if isinstance(result, float):
                speeds[name] = result
            peaks[name] = {role: vm_hwm_mib(pid) for role, pid in pids.items()}

        big = str(mountpoint / "seq.bin")     # the name the bench's fio phase reads
        phase("write", lambda: dd_mb_s(str(src), big, size_mib, "conv=fsync"))
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        phase("cold read", lambda: dd_mb_s(big, "/dev/null", size_mib))
        phase("warm read", lambda: dd_mb_s(big, "/dev/null", size_mib))
        if rand and shutil.which("fio"):
            # the bench's random phases (fio 4 KiB psync, QD1 then 16 jobs, 10 s each, the
            # file's pages dropped first): a random reader of a file that fits the caches
            # makes the mount fetch the rest of it in the background (readahead.fill)
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
            phase("rand QD1", lambda: fio_randread(mountpoint, 1, 10.0))
            phase("rand 16", lambda: fio_randread(mountpoint, 16, 10.0))

        def compare() -> None:
            nonlocal same
            same = subprocess.run(["cmp", str(src), big]).returncode == 0
        phase("cmp", compare)
        print(f"{size_mib} MiB: write {speeds['write']:.0f} MB/s, cold read "
              f"{speeds['cold read']:.0f} MB/s, warm read {speeds['warm read']:.0f} MB/s, "
              f"identical: {same}")
        if "rand QD1" in speeds:
            print(f"  random 4 KiB reads: QD1 {speeds['rand QD1']:,.0f} IOPS, "
                  f"16 jobs {speeds['rand 16']:,.0f} IOPS")
        print(f"  at rest   RSS:      mount {rest['mount']:4d} MiB, server {rest['server']:4d} MiB")
        for name, p in peaks.items():
            print(f"  {name:9s} peak RSS: mount {p['mount']:4d} MiB, server {p['server']:4d} MiB")
        top = {role: max(p[role] for p in peaks.values()) for role in pids}
        worst = max(top.values())
        print(f"peak RSS: mount {top['mount']} MiB, server {top['server']} MiB"
              + (f" (budget {limit} MiB: {'ok' if worst <= limit else 'OVER'})" if limit else ""))
        if not same:
            return 1
    finally:
        if mnt is not None:
            if subprocess.run(["fusermount3", "-u", str(mountpoint)]).returncode != 0:
                subprocess.run(["fusermount3", "-uz", str(mountpoint)])
            mnt.wait(60)
        srv.send_signal(signal.SIGTERM)
        srv.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    return 1 if limit and worst > limit else 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(usage=__doc__)
    p.add_argument("work", type=Path)
    p.add_argument("size_mib", type=int)
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--limit", type=int, default=BUDGET_MIB, metavar="MIB")
    p.add_argument("--rand", action="store_true",
                   help="also the bench's random-read phases (fio), after the warm read")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    a = p.parse_args(argv[:cut])
    sys.exit(main(a.work, a.size_mib, a.env, a.limit, argv[cut + 1:], a.rand))
