"""Opens per second and the mount's CPU per open+close of warm files, P processes in parallel:
the FUSE work of a warm epoch alone (OPEN + RELEASE answered from leases, no call), for
measuring pyfuse3's request loop (scripts/pyfuse3.patch).

usage: .venv/bin/python scripts/open_bench.py [PROCESSES] [OPENS_PER_PROCESS]

A server on a fresh data dir and a mount (the tests' helpers); 100 files of 4 KiB; a warm-up
pass, then three timed passes. Needs root (FUSE). Everything is stopped at the end.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.e2e.conftest import start_mount, teardown_mount  # noqa: E402
from tests.helpers import make_data_dir, start_server, stop_server  # noqa: E402


def cpu(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

def worker(args: tuple[str, int, int]) -> int:
    root, n, k = args
    names = [os.path.join(root, f"f{i:03d}") for i in range(100)]
    for j in range(n):
        fd = os.open(names[(j * 7 + k) % 100], os.O_RDONLY)
        os.read(fd, 10)
        os.close(fd)
    return n

def main() -> None:
    P = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    N = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    d = Path(tempfile.mkdtemp(prefix="ob-", dir="/tmp"))
    sp = start_server(make_data_dir(d / "data"))
    m = start_mount(sp)
    try:
        for i in range(100):
            (m.path / f"f{i:03d}").write_bytes(b"x" * 4096)
        with mp.get_context("fork").Pool(P) as pool:
            pool.map(worker, [(str(m.path), 500, k) for k in range(P)])   # warm
            for _ in range(3):
                c0, t0 = cpu(m.proc.pid), time.perf_counter()
                pool.map(worker, [(str(m.path), N, k) for k in range(P)])
                dt, dc = time.perf_counter() - t0, cpu(m.proc.pid) - c0
                print(f"P={P}: {P*N/dt:,.0f} opens/s  mount CPU {1e6*dc/(P*N):.0f} us/open+close")
    finally:
        teardown_mount(m)
        stop_server(sp)


if __name__ == "__main__":
    main()
