"""The floor under a small-file create: a pyfuse3 file system that does no work (issue 9).

usage: .venv/bin/python scripts/fuse_floor.py WORKDIR [--files N]

Mounts, at WORKDIR/mnt, a file system that keeps names and bytes in dicts and answers each
request at once (one short method per op, like pyfuse3's examples/tmpfs.py), on the same
patched pyfuse3 and trio as the AIFS mount; then times the bench's `create_small` (N 4 KiB
files, open O_CREAT|O_EXCL + write + close, one fsync of the directory) on it and prints
files/s, the FUSE process's CPU per file and the requests the kernel sent per file. What
AIFS's mount spends above this is its own (BENCHMARKS.md "The floor under a small-file
create"). The mount is unmounted and its process stopped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def serve(mountpoint: str, counts_path: str) -> None:
    import pyfuse3
    import trio

    counts: collections.Counter[str] = collections.Counter()

    class Floor(pyfuse3.Operations):
        def __init__(self) -> None:
            super().__init__()
            self.next_ino = pyfuse3.ROOT_INODE + 1
            self.modes: dict[int, int] = {pyfuse3.ROOT_INODE: stat.S_IFDIR | 0o755}
            self.names: dict[tuple[int, bytes], int] = {}
            self.data: dict[int, bytes] = {}

        def _attr(self, ino: int) -> Any:
            e = pyfuse3.EntryAttributes()
            e.st_ino, e.st_mode, e.st_nlink = ino, self.modes[ino], 1
            e.st_size = len(self.data.get(ino, b""))
            e.st_uid, e.st_gid = os.getuid(), os.getgid()
            e.attr_timeout = e.entry_timeout = 300
            e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = time.time_ns()
            return e

        def _new(self, parent: int, name: bytes, mode: int) -> int:
            ino, self.next_ino = self.next_ino, self.next_ino + 1
            self.modes[ino] = mode
            self.names[(parent, name)] = ino
            return ino

        async def getattr(self, ino: Any, ctx: Any = None) -> Any:
            counts["getattr"] += 1
            return self._attr(ino)

        async def lookup(self, parent: Any, name: bytes, ctx: Any = None) -> Any:
            counts["lookup"] += 1
            ino = self.names.get((parent, name))
            if ino is None:
                e = pyfuse3.EntryAttributes()
                e.st_ino, e.entry_timeout = 0, 300     # a cached negative entry
                return e
            return self._attr(ino)

        async def mkdir(self, parent: Any, name: bytes, mode: int, ctx: Any) -> Any:
            counts["mkdir"] += 1
            return self._attr(self._new(parent, name, stat.S_IFDIR | mode))

        async def create(self, parent: Any, name: bytes, mode: int, flags: int,
                         ctx: Any) -> Any:
            counts["create"] += 1
            ino = self._new(parent, name, stat.S_IFREG | (mode & 0o7777))
            self.data[ino] = b""
            return pyfuse3.FileInfo(fh=ino), self._attr(ino)

        async def write(self, fh: Any, off: int, buf: bytes) -> int:
            counts["write"] += 1
            d = self.data[fh]
            self.data[fh] = d[:off] + buf + d[off + len(buf):]
            return len(buf)

        async def flush(self, fh: Any) -> None:
            counts["flush"] += 1

        async def release(self, fh: Any) -> None:
            counts["release"] += 1

        async def getxattr(self, ino: Any, name: bytes, ctx: Any) -> bytes:
            counts["getxattr"] += 1
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

        async def opendir(self, ino: Any, ctx: Any) -> Any:
            counts["opendir"] += 1
            return ino

        async def releasedir(self, fh: Any) -> None:
            counts["releasedir"] += 1

        async def fsyncdir(self, fh: Any, datasync: bool) -> None:
            counts["fsyncdir"] += 1

    pyfuse3.init(Floor(), mountpoint, set(pyfuse3.default_options) | {"fsname=fuse-floor"})
    signal.signal(signal.SIGTERM, lambda *_: pyfuse3.terminate())
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)
        Path(counts_path).write_text(json.dumps(counts))


def cpu_seconds(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("work", type=Path)
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--serve", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    mnt, counts_path = a.work / "mnt", a.work / "counts.json"
    if a.serve:
        serve(a.serve, str(counts_path))
        return
    sys.path.insert(0, str(REPO))
    from aifsfs.bench import workloads as wl

    mnt.mkdir(parents=True, exist_ok=True)
    counts_path.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, __file__, str(a.work), "--serve", str(mnt)])
    try:
        for _ in range(100):
            if os.path.ismount(mnt):
                break
            time.sleep(0.05)
        else:
            raise SystemExit("the floor file system did not mount")
        c0 = cpu_seconds(proc.pid)
        rate = wl.create_small(mnt, a.files)
        used = cpu_seconds(proc.pid) - c0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
            subprocess.run(["fusermount3", "-uz", str(mnt)], check=False)
    counts = json.loads(counts_path.read_text()) if counts_path.exists() else {}
    per = {k: round(v / a.files, 2) for k, v in sorted(counts.items()) if v >= a.files // 2}
    print(f"create: {rate:,.0f} files/s  FUSE process CPU {used / a.files * 1e6:.0f} us/file  "
          f"requests/file {per}")


if __name__ == "__main__":
    main()
