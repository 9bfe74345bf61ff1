"""Peak resident memory of the mount and the server while a big file is copied through the mount.

Usage: .venv/bin/python scripts/memcheck.py WORKDIR SIZE_MIB

Starts its own server and mount under WORKDIR (removed afterwards), writes SIZE_MIB of random
data through the mount with dd (fsync at the end), reads it back cold (page cache dropped) and
warm, and prints MB/s and the VmHWM of both processes. Always unmounts and stops the server.
DESIGN.md §5: copying a 10 GiB file must not grow either process past a few hundred MiB.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path


def vm_hwm_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) // 1024
    return 0


def dd_mb_s(src: str, dst: str, size_mib: int, *extra: str) -> float:
    start = time.monotonic()
    subprocess.run(["dd", f"if={src}", f"of={dst}", "bs=1M", *extra, "status=none"], check=True)
    return size_mib * 1.048576 / (time.monotonic() - start)


def wait_for(check: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"memcheck: {what} did not come up within {timeout:.0f} s")
        time.sleep(0.1)


def main(work: Path, size_mib: int) -> None:
    py = sys.executable
    shutil.rmtree(work, ignore_errors=True)
    (work / "mnt").mkdir(parents=True)
    sock = f"unix:{work}/s.sock"
    srv = subprocess.Popen([py, "-m", "aifs_server.serve", "--data", str(work / "data"),
                            "--listen", sock, "--format-if-needed"],
                           stdout=open(work / "server.log", "w"), stderr=subprocess.STDOUT)
    mnt: subprocess.Popen[bytes] | None = None
    mountpoint = work / "mnt"
    try:
        wait_for(lambda: os.path.exists(f"{work}/s.sock.token"), "the server")
        mnt = subprocess.Popen([py, "-m", "aifsfs.fuse.mounter", sock, str(mountpoint)],
                               stdout=open(work / "mount.log", "w"), stderr=subprocess.STDOUT)
        wait_for(lambda: os.path.ismount(mountpoint), "the mount")
        src = work / "src.bin"
        subprocess.run(["dd", "if=/dev/urandom", f"of={src}", "bs=1M", f"count={size_mib}",
                        "status=none"], check=True)
        write = dd_mb_s(str(src), str(mountpoint / "big"), size_mib, "conv=fsync")
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        cold = dd_mb_s(str(mountpoint / "big"), "/dev/null", size_mib)
        warm = dd_mb_s(str(mountpoint / "big"), "/dev/null", size_mib)
        same = subprocess.run(["cmp", str(src), str(mountpoint / "big")]).returncode == 0
        print(f"{size_mib} MiB: write {write:.0f} MB/s, cold read {cold:.0f} MB/s, "
              f"warm read {warm:.0f} MB/s, identical: {same}")
        print(f"peak RSS: mount {vm_hwm_mib(mnt.pid)} MiB, server {vm_hwm_mib(srv.pid)} MiB")
    finally:
        if mnt is not None:
            if subprocess.run(["fusermount3", "-u", str(mountpoint)]).returncode != 0:
                subprocess.run(["fusermount3", "-uz", str(mountpoint)])
            mnt.wait(60)
        srv.send_signal(signal.SIGTERM)
        srv.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), int(sys.argv[2]))
