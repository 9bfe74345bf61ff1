"""CPU per entry of a plain ReadDir on both ends (issue 9, the bench's "small stat").

usage: cd CHECKOUT && .venv/bin/python /work/main/scripts/readdir_bench.py [samples]

Starts a real server of the checkout it runs in (tests.helpers), makes a directory of 5,000
empty files, then per sample lists it whole 4 times with GrpcFilesystem.readdir (pages of
1,000: the mount's call) and prints the server's CPU (its idle CPU subtracted) and this
client's CPU per entry, then the medians. Run it from an older worktree and from this one,
back to back, for a before/after on a loaded machine. The server is stopped at the end.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.getcwd())
from aifsfs.client import AIFSClient  # noqa: E402
from tests.helpers import make_data_dir, start_server, stop_server  # noqa: E402

FILES = 5000


def cpu(pid: int) -> float:
    """User + system CPU seconds of a process."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def listing(c: AIFSClient, d: int) -> int:
    n, cookie, eof = 0, 0, False
    while not eof:
        ents, eof = c.fs.readdir(d, cookie, 1000)
        n += len(ents)
        if ents:
            cookie = ents[-1].cookie
    return n


def main() -> None:
    samples = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    sp = start_server(make_data_dir(tempfile.mkdtemp(prefix="rdb-") + "/data"))
    try:
        with AIFSClient(sp.address, token_file=sp.token_file) as c:
            d = c.mkdir(1, b"d").ino
            for i in range(FILES):
                c.create(d, b"f%06d.bin" % i)
            listing(c, d)
            s0 = cpu(sp.proc.pid)
            time.sleep(2)
            idle = (cpu(sp.proc.pid) - s0) / 2
            srv, cli = [], []
            for _ in range(samples):
                s0, c0, w0 = cpu(sp.proc.pid), time.process_time(), time.monotonic()
                n = sum(listing(c, d) for _ in range(4))
                s1, c1, w1 = cpu(sp.proc.pid), time.process_time(), time.monotonic()
                srv.append((s1 - s0 - idle * (w1 - w0)) / n * 1e6)
                cli.append((c1 - c0) / n * 1e6)
                print(f"server {srv[-1]:.1f} us/entry  client {cli[-1]:.1f} us/entry", flush=True)
            print(f"median server {statistics.median(srv):.1f} client "
                  f"{statistics.median(cli):.1f} us/entry (server idle {idle * 100:.1f}%)")
    finally:
        stop_server(sp)


if __name__ == "__main__":
    main()
