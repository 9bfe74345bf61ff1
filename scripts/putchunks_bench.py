"""CPU per GiB uploaded with PutChunks on both ends, chunk bytes in the messages against
through the call's /dev/shm file (issue 10, seq write; aifsfs/rpc/data.py put_chunks).

usage: cd CHECKOUT && .venv/bin/python /work/main/scripts/putchunks_bench.py [samples] [MiB]

Starts a real server of the checkout it runs in (tests.helpers, a unix socket), then per
sample uploads MiB fresh random 1 MiB chunks (default 128) as the mount does (calls of 8
chunks, 3 calls out at once), once with AIFS_INLINE_FILE=0 (messages) and once with the file,
the order alternating between samples. Prints per sample and way the wall MiB/s, the server's
CPU and this client's CPU per GiB (the data is made and hashed before the clock starts),
then the medians. The server seals and fsyncs every chunk either way: the difference between
the two ways is the transfer. The server is stopped at the end.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import blake3

sys.path.insert(0, os.getcwd())
from aifsfs.client import AIFSClient  # noqa: E402
from tests.helpers import make_data_dir, start_server, stop_server  # noqa: E402

MiB = 1 << 20
PER_CALL = 8
CALLS_OUT = 3


def cpu(pid: int) -> float:
    """User + system CPU seconds of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def chunks(n: int) -> list[list[tuple[bytes, bytes]]]:
    """n fresh random chunks (never stored before: no dedup), in calls of PER_CALL."""
    out = []
    for _ in range(n):
        data = os.urandom(MiB)
        out.append((blake3.blake3(data).digest(), data))
    return [out[i:i + PER_CALL] for i in range(0, n, PER_CALL)]


def one(c: AIFSClient, pid: int, calls: list[list[tuple[bytes, bytes]]]) -> tuple[float, ...]:
    n = sum(len(d) for call in calls for _, d in call)
    s0, c0, w0 = cpu(pid), time.process_time(), time.monotonic()
    with ThreadPoolExecutor(CALLS_OUT) as pool:
        list(pool.map(c.data.put_chunks, calls))
    s1, c1, w1 = cpu(pid), time.process_time(), time.monotonic()
    gib = n / (1 << 30)
    return n / MiB / (w1 - w0), (s1 - s0) / gib, (c1 - c0) / gib


def main() -> None:
    samples = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 128
    sp = start_server(make_data_dir(tempfile.mkdtemp(prefix="pcb-", dir="/var/tmp") + "/data"))
    try:
        os.environ["AIFS_INLINE_FILE"] = "0"
        msgs = AIFSClient(sp.address, token_file=sp.token_file)
        del os.environ["AIFS_INLINE_FILE"]
        via_file = AIFSClient(sp.address, token_file=sp.token_file)
        ways = {"messages": msgs, "file": via_file}
        got: dict[str, list[tuple[float, ...]]] = {k: [] for k in ways}
        one(msgs, sp.proc.pid, chunks(PER_CALL))          # warm both up
        one(via_file, sp.proc.pid, chunks(PER_CALL))
        for i in range(samples):
            order = list(ways) if i % 2 == 0 else list(reversed(ways))
            for way in order:
                r = one(ways[way], sp.proc.pid, chunks(size))
                got[way].append(r)
                print(f"sample {i + 1} {way:8s}: {r[0]:6.0f} MiB/s, CPU s/GiB server "
                      f"{r[1]:.2f} client {r[2]:.2f}", flush=True)
        assert via_file.data.file_puts > 0 and via_file.data.message_puts == 0
        assert msgs.data.file_puts == 0
        for way, rs in got.items():
            med = [statistics.median(x[k] for x in rs) for k in range(3)]
            print(f"median {way:8s}: {med[0]:6.0f} MiB/s, CPU s/GiB server {med[1]:.2f} "
                  f"client {med[2]:.2f} (server {min(x[1] for x in rs):.2f}-"
                  f"{max(x[1] for x in rs):.2f}, client {min(x[2] for x in rs):.2f}-"
                  f"{max(x[2] for x in rs):.2f})")
        msgs.close()
        via_file.close()
    finally:
        stop_server(sp)


if __name__ == "__main__":
    main()
