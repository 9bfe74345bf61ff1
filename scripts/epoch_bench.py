"""The bench's small-file read and ML epochs alone, with calls and CPU per item (issue 9).

usage: .venv/bin/python scripts/epoch_bench.py WORKDIR [--target aifs|gocryptfs]
           [--tree DIR] [--files N] [--samples N] [--phases read,ml] [--spy PHASE] [--spy-args=FLAGS]
           [--perf PHASE]

aifs: a server with --metrics-port and `aifs up` on a fresh data dir; the bench's samples and
small files are written, then the server is restarted, the mount remounted and the page cache
dropped (as `aifs bench` does between its write and read phases); then `read` (5,000 4 KiB
files read once, the listing timed with them) and the ML epochs 1 (cold) and 2 (warm) of the
bench's LoaderPool, and ml3: epoch 3 after another drop of the page cache, the mount
still up (its leases and maps kept). Printed per phase: items/s, CPU us per item of the server and the mount,
gRPC calls per item (server metrics), and at the end the mount's peak RSS. gocryptfs: the same
phases on the bench's GocryptfsTarget (no calls, CPU of its one process).
--tree DIR runs the server and mount from another checkout (a `git worktree` of an older
commit: old/new runs alternated on the same machine). --spy PHASE records both processes with
py-spy --nonblocking (a blocking py-spy can deadlock the mount) into WORKDIR/spy-*.txt.
Needs root (FUSE, drop_caches). Every mount is unmounted and the server stopped at the end.
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
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from aifsfs.bench import workloads as wl  # noqa: E402

PY = str(REPO / ".venv/bin/python")
AIFS = str(REPO / ".venv/bin/aifs")
PKGS = {"aifs_cli": "cli", "aifs_core": "core", "aifs_proto": "proto/aifs_proto",
        "aifs_server": "server", "aifsfs": "aifsfs"}


def calls(url: str) -> dict[str, int]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("aifs_rpc_total{"):
            m = line.split('method="', 1)[1].split('"', 1)[0]
            out[m] = out.get(m, 0) + int(float(line.split()[-1]))
    return out


def cpu(pid: int) -> float:
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tck = os.sysconf("SC_CLK_TCK")
    return int(f[11]) / tck, int(f[12]) / tck


def switches(pid: int) -> int:
    """Context switches of a process so far, all its threads (each a thread handing work to
    another and waking it: on this VM a switch costs more CPU than most Python lines)."""
    n = 0
    for st in Path(f"/proc/{pid}/task").glob("*/status"):
        with contextlib.suppress(OSError):
            for line in st.read_text().splitlines():
                if "ctxt_switches:" in line:    # voluntary_ and nonvoluntary_
                    n += int(line.split()[1])
    return n


def minflt(pid: int) -> int:
    """Minor page faults of a process so far (fresh memory touched: malloc giving pages back
    to the kernel and taking them again costs one per 4 KiB)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])
    except (OSError, IndexError, ValueError):
        return 0


def peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def idle_ticks() -> tuple[int, int]:
    """(idle + iowait, total) jiffies of the whole machine: how busy the cores were."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return f[3] + f[4], sum(f)


def drop() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


class AifsRig:
    def __init__(self, work: Path, tree: Path | None, up_args: tuple[str, ...] = ()) -> None:
        self.work = work
        self.up_args = up_args          # more `aifs up` flags (--writeback)
        self.data = work / "data"
        self.mnt = work / "mnt"
        self.cache = work / "cache"
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.srv: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.env = dict(os.environ)
        if tree is not None:
            # the older checkout's packages first on the path (the venv's editable finder
            # comes after PYTHONPATH); processes start in `work`, not in a checkout (`-m`
            # puts the working directory first on the path)
            pk = work / "pkgs"
            pk.mkdir(exist_ok=True)
            for name, sub in PKGS.items():
                link = pk / name
                if not link.exists():
                    link.symlink_to(tree / sub)
            self.env["PYTHONPATH"] = str(pk)

    @property
    def root(self) -> Path:
        return self.mnt

    def start_server(self) -> None:
        from aifsfs.client import default_socket
        if not self.data.exists():
            # formatted by the checkout that serves it (a newer one may write a schema the
            # older server refuses)
            subprocess.run([PY, "-c", "import sys; from aifs_server.datadir import "
                            "format_data_dir; format_data_dir(sys.argv[1])", str(self.data)],
                           check=True, env=self.env, cwd=self.work)
        logp = self.work / "server.log"
        start = logp.stat().st_size if logp.exists() else 0
        with open(logp, "ab") as log:
            self.srv = subprocess.Popen(
                [PY, "-m", "aifs_server.serve", "--data", str(self.data), "--listen",
                 default_socket(self.data), "--metrics-port", "0"],
                stdout=log, stderr=log, start_new_session=True, env=self.env,
                cwd=self.work)
        deadline = time.time() + 120
        while time.time() < deadline and not self.url:
            txt = logp.read_bytes()[start:].decode(errors="replace")
            lines = [ln for ln in txt.splitlines() if "metrics on " in ln]
            if lines:
                self.url = lines[-1].split("metrics on ", 1)[1].split(")")[0].strip()
            time.sleep(0.2)
        if not self.url:
            raise SystemExit(f"server did not start: see {logp}")
        time.sleep(0.5)

    def stop_server(self) -> None:
        if self.srv is not None:
            self.srv.send_signal(signal.SIGTERM)
            self.srv.wait(60)
            self.srv = None
            self.url = ""

    def up(self) -> None:
        subprocess.run([AIFS, "up", str(self.mnt), "--data", str(self.data), "--cache-dir",
                        str(self.cache), *self.up_args], check=True, stdout=subprocess.DEVNULL,
                       env=self.env, cwd=self.work)

    def down(self) -> None:
        subprocess.run([AIFS, "down", str(self.mnt)], check=False, stdout=subprocess.DEVNULL,
                       env=self.env)

    def restart(self) -> None:
        self.down()
        self.stop_server()
        self.start_server()
        self.up()

    def mount_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-f", f"mount.*{self.mnt}"], capture_output=True,
                             text=True).stdout.split()
        return [int(p) for p in out if int(p) != os.getpid()]

    def pids(self) -> list[tuple[int, str]]:
        assert self.srv is not None
        return [(self.srv.pid, "server")] + [(p, "mount") for p in self.mount_pids()]

    def calls(self) -> dict[str, int]:
        return calls(self.url)

    def close(self) -> None:
        self.down()
        self.stop_server()


class GocryptfsRig:
    def __init__(self, work: Path) -> None:
        from aifsfs.bench.targets import GocryptfsTarget
        self.t = GocryptfsTarget(work)
        self.t.setup()
        self.t.mount()

    @property
    def root(self) -> Path:
        return self.t.root

    def restart(self) -> None:
        self.t.remount()

    def pids(self) -> list[tuple[int, str]]:
        return self.t.processes()

    def calls(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        self.t.teardown()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("work", type=Path)
    ap.add_argument("--target", default="aifs", choices=["aifs", "gocryptfs"])
    ap.add_argument("--tree", type=Path, default=None)
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--phases", default="read,ml")
    ap.add_argument("--spy", default="")
    ap.add_argument("--spy-args", default="", help="more py-spy record flags (--gil, --idle)")
    ap.add_argument("--perf", default="",
                    help="record this phase of both processes with `perf record -g` into "
                         "WORKDIR/perf-PHASE-ROLE.data (native time: kernel, gRPC core, "
                         "libcrypto, the interpreter)")
    ap.add_argument("--warm-server", action="store_true",
                    help="read the server's data dir into the page cache after the drop "
                         "(what the epoch costs without the server's disk reads)")
    a = ap.parse_args()
    phases = set(a.phases.split(","))
    if a.work.exists():
        shutil.rmtree(a.work)
    a.work.mkdir(parents=True)
    rig: AifsRig | GocryptfsRig
    if a.target == "aifs":
        rig = AifsRig(a.work, a.tree.resolve() if a.tree else None)
        rig.start_server()
        rig.up()
    else:
        rig = GocryptfsRig(a.work)
    try:
        root = rig.root
        if "read" in phases:
            wl.create_small(root, a.files)
        if "ml" in phases:
            wl.write_samples(root, a.samples)
        rig.restart()
        drop()
        if a.warm_server and isinstance(rig, AifsRig):
            subprocess.run(f"find {rig.data} -type f -print0 | xargs -0 cat > /dev/null",
                           shell=True, check=True)
        print(f"{a.target} {a.tree or ''} load {os.getloadavg()[0]:.1f}", flush=True)

        def phase(name: str, fn: Callable[[], float], n: int) -> None:
            spies = []
            if a.spy == name:
                for pid, role in rig.pids():
                    spies.append(subprocess.Popen(
                        [str(REPO / ".venv/bin/py-spy"), "record", "--nonblocking", "-p",
                         str(pid), "-r", "400", "--threads", "-f", "raw", *a.spy_args.split(),
                         "-o", str(a.work / f"spy-{name}-{role}-{pid}.txt")],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                time.sleep(1.5)
            if a.perf == name:
                for pid, role in rig.pids():
                    spies.append(subprocess.Popen(
                        ["perf", "record", "-F", "499", "-g", "-p", str(pid),
                         "-o", str(a.work / f"perf-{name}-{role}.data")],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                time.sleep(1.5)
            before = rig.calls()
            pids = [p for p, _ in rig.pids()]
            for p in pids:      # the peak RSS of this phase alone (VmHWM reset)
                with contextlib.suppress(OSError):
                    Path(f"/proc/{p}/clear_refs").write_text("5")
            c0 = [cpu_split(p) for p in pids]
            f0 = [minflt(p) for p in pids]
            s0 = [switches(p) for p in pids]
            i0 = idle_ticks()
            v = fn()
            i1 = idle_ticks()
            c1 = [cpu_split(p) for p in pids]
            faults = [round((minflt(p) - f) / n, 1) for p, f in zip(pids, f0, strict=True)]
            sw = [round((switches(p) - x) / n, 1) for p, x in zip(pids, s0, strict=True)]
            after = rig.calls()
            for s in spies:
                s.send_signal(signal.SIGINT)
                s.wait(60)
            per = {k: round((x - before.get(k, 0)) / n, 3) for k, x in sorted(after.items())
                   if x - before.get(k, 0) and k != "Open"}
            us = [round(sum(y) - sum(x)) for x, y in zip(
                ((u * 1e6 / n, s * 1e6 / n) for u, s in c0),
                ((u * 1e6 / n, s * 1e6 / n) for u, s in c1), strict=True)]
            sys_us = [round((y[1] - x[1]) / n * 1e6) for x, y in zip(c0, c1, strict=True)]
            idle = 100 * (i1[0] - i0[0]) / max(1, i1[1] - i0[1])
            peaks = [round(peak_mib(p)) for p in pids]
            print(f"{name}: {v:,.0f}/s  cpu us/item {us} (sys {sys_us})  faults/item {faults}  "
                  f"switches/item {sw}  "
                  f"idle {idle:.0f}%  peak RSS MiB {peaks}  calls/item {per}", flush=True)

        if "read" in phases:
            phase("read", lambda: wl.read_small(root), a.files)
            drop()
        if "ml" in phases:
            with wl.LoaderPool() as pool:
                phase("ml1", lambda: pool.epoch(root, seed=0), a.samples)
                phase("ml2", lambda: pool.epoch(root, seed=1), a.samples)
                # the page cache lost (memory pressure, another job's drop_caches) while
                # the mount keeps its leases and maps: what epoch 3 then costs
                drop()
                phase("ml3", lambda: pool.epoch(root, seed=2), a.samples)
        print("peak RSS MiB", {f"{r}:{p}": round(peak_mib(p)) for p, r in rig.pids()},
              flush=True)
        if isinstance(rig, AifsRig):
            from aifsfs.fuse.disk_cache import scan
            time.sleep(1.0)         # the mount publishes its counters when idle (0.5 s)
            for row in scan(str(rig.cache)):
                st = row["stats"]
                print("disk cache", {k: st.get(k) for k in (
                    "entries", "packs", "hits", "misses", "corrupt", "dropped", "evicted",
                    "errors")}, flush=True)
    finally:
        rig.close()


if __name__ == "__main__":
    main()
