"""Sequential write and cold read only (issue 10's two figures), with `aifs bench`'s own targets
and workloads, AIFS next to its peers in one run, plus the CPU each AIFS process spent.

Usage: .venv/bin/python scripts/seqbench.py [--size BYTES] [--repeat N] [--peers aifs,gocryptfs]

Per repeat and target: fresh set-up and mount, write_seq (1 MiB blocks + fsync), a fresh mount
and drop_caches, read_seq cold, read_seq warm, unmount (peak RSS per process). For AIFS also
CPU seconds per GiB of the server and the mount during the write and the cold read (from
/proc: on a machine others load, MiB/s swing by 2x between runs, CPU per GiB far less).
Ratios are AIFS / first peer, within one repeat.

Before/after on one machine: run this script from the tree under test; to run older code,
unpack it (`git archive REV | tar -x -C DIR`), make a directory of links named as the
packages (aifs_cli -> DIR/cli, aifs_core -> DIR/core, aifs_proto -> DIR/proto/aifs_proto,
aifs_server -> DIR/server, aifsfs -> DIR/aifsfs) and put it first in PYTHONPATH: `aifs up`
and the processes it starts inherit it. Alternate old and new runs; `aifs up` reuses a server
already listening on the data dir, so never leave one running between runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from aifsfs.bench import workloads as wl
from aifsfs.bench.procs import drop_caches
from aifsfs.bench.targets import Target, make_target


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu(t: Target) -> dict[str, float]:
    out: dict[str, float] = {}
    for pid, role in t.processes():
        try:
            out[role] = out.get(role, 0.0) + _cpu_s(pid)
        except OSError:
            pass
    return out


def _per_gib(before: dict[str, float], after: dict[str, float], size: int) -> str:
    return " ".join(f"{r} {(after[r] - before.get(r, 0.0)) * (1 << 30) / size:.2f}"
                    for r in sorted(after))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1 << 30, help="bytes written and read")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--peers", default="aifs,gocryptfs", help="targets, comma separated")
    a = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="seqbench-", dir="/var/tmp"))
    try:
        for rep in range(a.repeat):
            res: dict[str, tuple[float, float, float]] = {}
            for name in a.peers.split(","):
                t = make_target(name, base / f"{name}-{rep}")
                t.setup()
                try:
                    t.mount()
                    c0 = _cpu(t)
                    w = wl.write_seq(t.root, a.size)
                    cpu_w = _per_gib(c0, _cpu(t), a.size) if c0 else ""
                    t.remount()
                    drop_caches()
                    c0 = _cpu(t)
                    cold = wl.read_seq(t.root)
                    cpu_r = _per_gib(c0, _cpu(t), a.size) if c0 else ""
                    warm = wl.read_seq(t.root)
                    t.unmount()
                    res[name] = (w, cold, warm)
                    rss = {k: v // 1024 for k, v in t.peaks.items()}
                    cpu = f"; CPU s/GiB write: {cpu_w}; cold read: {cpu_r}" if cpu_w else ""
                    print(f"rep {rep + 1} {name}: write {w:.0f}, cold {cold:.0f}, warm "
                          f"{warm:.0f} MiB/s; peak RSS MiB {rss}{cpu}; load "
                          f"{os.getloadavg()[0]:.1f}", flush=True)
                finally:
                    t.teardown()
            names = list(res)
            if "aifs" in res and len(names) > 1:
                peer = next(n for n in names if n != "aifs")
                a_, p_ = res["aifs"], res[peer]
                print(f"rep {rep + 1} aifs/{peer}: write {a_[0] / p_[0]:.2f}x, cold "
                      f"{a_[1] / p_[1]:.2f}x, warm {a_[2] / p_[2]:.2f}x", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
