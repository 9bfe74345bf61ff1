"""Mounting and unmounting: the mount process itself, its detached start, and `up`/`down`.

Interface:
    MountOptions(address, mountpoint, namespace="default", branch="main", token_file=None,
                 allow_other=False, assets_for_all=False, read_only=False,
                 mem_cache_size=64 MiB,
                 cache_dir=None (= disk_cache.default_cache_dir()),
                 cache_size=None (= disk_cache.default_cache_size(cache_dir); 0: no disk cache),
                 attr_timeout=1.0, entry_timeout=None (= attr_timeout), retry_for=30.0,
                 timeout=30.0, max_dirty=32 MiB, debug=False, sync_dirops=False,
                 writeback=False)
    parse_size(text) -> int                     "512M", "10G", "1GiB", "1048576" -> bytes
    check_server(opts) -> None                  health check; raises MountError with a clear message
    run_mount(opts) -> int                      the mount, in this process, until unmounted or
                                                SIGTERM/SIGINT (both commit everything first)
    spawn_mount(opts, log_path, wait=30.0) -> int (pid)
                                                start `python -m aifsfs.fuse.mounter` detached (own
                                                session, output to log_path) and return once the
                                                mountpoint answers; MountError with the log tail if not
    wait_mounted(path, proc=None, timeout=30.0) -> None
    unmount(mountpoint, timeout=10.0) -> None   fusermount3 -u, retried, then -uz; MountError if
                                                it is still mounted
    is_mounted(path) -> bool
    main(argv)                                  `python -m aifsfs.fuse.mounter` (the detached child)

As root, the mount raises its kernel read-ahead window to READ_AHEAD_KB (bigger FUSE reads).

The mount process flushes everything it buffered when the kernel unmounts it (pyfuse3.main
returns) and when it gets SIGTERM/SIGINT (then it unmounts itself).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("aifsfs.mount")


class MountError(Exception):
    """Mounting or unmounting failed; the message says why and what to do."""


# The mount's memory is these two budgets plus ~100 MiB of interpreter, gRPC and per-upload
# messages (scripts/memcheck.py: <= 256 MiB peak RSS whatever the file size). Re-reads are the
# disk cache's job now, so the memory cache only needs the read-ahead window and hot frames;
# 32 MiB of dirty data is 32 chunk uploads in flight, more than the server's write pool uses
# (measured, 1 GiB: peak 279 -> 202 MiB from 128/64 MiB, write and cold read not slower).
MEM_CACHE_DEFAULT = 64 << 20
MAX_DIRTY_DEFAULT = 32 << 20


@dataclass
class MountOptions:
    address: str
    mountpoint: str
    namespace: str = "default"
    branch: str = "main"
    token_file: str | None = None
    allow_other: bool = False
    assets_for_all: bool = False    # /.aifs/assets/ readable by every user of the mount
    read_only: bool = False
    mem_cache_size: int = MEM_CACHE_DEFAULT
    cache_dir: str | None = None
    cache_size: int | None = None
    attr_timeout: float = 1.0
    entry_timeout: float | None = None
    retry_for: float = 30.0
    timeout: float = 30.0
    max_dirty: int = MAX_DIRTY_DEFAULT
    debug: bool = False
    sync_dirops: bool = False       # send every unlink before answering (docs/LEASES.md)
    writeback: bool = False         # a small file's close returns before its commit (LEASES.md)

    def to_argv(self) -> list[str]:
        argv = [self.address, self.mountpoint, "--namespace", self.namespace,
                "--branch", self.branch, "--mem-cache-size", str(self.mem_cache_size),
                "--attr-timeout", str(self.attr_timeout), "--retry-for", str(self.retry_for),
                "--timeout", str(self.timeout), "--max-dirty", str(self.max_dirty)]
        if self.entry_timeout is not None:
            argv += ["--entry-timeout", str(self.entry_timeout)]
        if self.cache_dir is not None:
            argv += ["--cache-dir", self.cache_dir]
        if self.cache_size is not None:
            argv += ["--cache-size", str(self.cache_size)]
        if self.token_file:
            argv += ["--token-file", self.token_file]
        if self.allow_other:
            argv.append("--allow-other")
        if self.assets_for_all:
            argv.append("--assets-for-all")
        if self.read_only:
            argv.append("--read-only")
        if self.sync_dirops:
            argv.append("--sync-dirops")
        if self.writeback:
            argv.append("--writeback")
        if self.debug:
            argv.append("--debug")
        return argv


def _client(opts: MountOptions, retry_for: float | None = None) -> Any:
    from aifsfs.client import AIFSClient

    return AIFSClient(opts.address, token_file=opts.token_file, namespace=opts.namespace,
                      branch=opts.branch, timeout=opts.timeout,
                      retry_for=opts.retry_for if retry_for is None else retry_for)


def check_server(opts: MountOptions, retry_for: float = 5.0) -> None:
    """The server must answer before we mount: fail fast with a clear message."""
    from aifs_core.errors import AIFSError

    try:
        client = _client(opts, retry_for)
    except AIFSError as exc:
        raise MountError(f"cannot mount: {exc}") from None
    try:
        status = client.health()
        if status != "SERVING":
            raise MountError(f"the AIFS server at {opts.address} is {status}, not SERVING")
        client.getattr(1)   # the token and namespace are good for this tree
    except AIFSError as exc:
        raise MountError(f"cannot mount {opts.mountpoint}: the AIFS server at {opts.address} "
                         f"did not answer: {exc}") from None
    finally:
        client.close()


def is_mounted(path: str | os.PathLike[str]) -> bool:
    try:
        return os.path.ismount(path)
    except OSError:
        return False


def _check_mountpoint(path: str) -> None:
    p = Path(path)
    if not p.is_dir():
        raise MountError(f"mountpoint {path} is not a directory (create it with mkdir -p)")
    if is_mounted(p):
        raise MountError(f"{path} is already a mount point (unmount it with `aifs umount {path}`)")


# The kernel never sends a FUSE read bigger than the mount's read-ahead window (the bdi's
# read_ahead_kb, 128 KiB by default): a sequential reader then costs one request per 128 KiB
# and has at most one read-ahead request out. 4 MiB lets it send 1 MiB reads (the FUSE
# maximum), several at a time (measured: 1 GiB cold read 143 -> 195 MiB/s). Random readers are
# unaffected: read-ahead only grows on sequential access (and fadvise RANDOM turns it off).
READ_AHEAD_KB = 4096


def set_read_ahead(mountpoint: str, kb: int = READ_AHEAD_KB) -> None:
    """Set a FUSE mount's read_ahead_kb (root only: OSError otherwise). Call it once the mount
    answers: a value written before the kernel's INIT is answered is clamped back by it."""
    st = os.stat(mountpoint)
    path = f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb"
    with open(path, "w") as f:
        f.write(str(kb))


async def _raise_read_ahead(mountpoint: str, kb: int = READ_AHEAD_KB) -> None:
    """set_read_ahead off the trio thread; without root the kernel default stays."""
    import trio

    try:
        await trio.to_thread.run_sync(set_read_ahead, mountpoint, kb)
    except OSError as exc:  # not root, or no sysfs: slower sequential reads, nothing else
        log.debug("read_ahead_kb of %s left at the default: %s", mountpoint, exc)


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from "1048576", "512M", "10G", "1GiB", "2tb" (binary units)."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = t[-1:] if t[-1:] in _SIZE_UNITS else ""
    try:
        n = float(t[: len(t) - len(unit)] if unit else t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512M, 10G)") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"a size cannot be negative: {text!r}")
    return int(n * _SIZE_UNITS[unit])


def _open_disk_cache(opts: MountOptions) -> Any:
    """The mount's disk cache, or None (size 0, or the directory is unusable: logged, and
    the mount works without it)."""
    from aifsfs.fuse.disk_cache import DiskCache, default_cache_dir, default_cache_size

    root = opts.cache_dir or default_cache_dir()
    size = default_cache_size(root) if opts.cache_size is None else opts.cache_size
    if size <= 0:
        return None
    try:
        disk = DiskCache(root, size).open()
    except OSError as exc:
        log.warning("no disk cache: %s: %s", root, exc)
        return None
    log.info("disk cache %s, %d MiB (sealed under a key held only by this mount)",
             disk.dir, size >> 20)
    return disk


def run_mount(opts: MountOptions) -> int:
    """Mount in this process and serve until unmounted; returns the exit code."""
    import pyfuse3
    import trio

    from aifs_core.malloc_tuning import tune_malloc
    from aifsfs.fuse.ops import AIFSOperations

    tune_malloc()  # every chunk fetch builds MiB-sized messages: keep them off fresh mmaps
    _check_mountpoint(opts.mountpoint)
    client = _client(opts)
    ops = AIFSOperations(
        client, attr_timeout=opts.attr_timeout,
        entry_timeout=opts.attr_timeout if opts.entry_timeout is None else opts.entry_timeout,
        cache_bytes=opts.mem_cache_size, max_dirty_bytes=opts.max_dirty, read_only=opts.read_only,
        sync_dirops=opts.sync_dirops or None, writeback=opts.writeback)
    ops.synthetic.assets_for_all = opts.assets_for_all
    disk = _open_disk_cache(opts)
    ops.reader.disk = disk
    options = {"fsname=aifs", "subtype=aifs", "default_permissions"}
    if opts.allow_other:
        options.add("allow_other")
    if opts.read_only:
        options.add("ro")
    if opts.debug:
        options.add("debug")
    pyfuse3.init(ops, opts.mountpoint, options)
    # random readers' frames and filled files go to the page cache too (page_push.py);
    # AIFS_PAGE_PUSH=0 turns that off (to compare, or should a kernel misbehave)
    pages = None
    if os.environ.get("AIFS_PAGE_PUSH", "1") != "0":
        from aifsfs.fuse.page_push import PagePusher
        pages = ops.reader.pages = PagePusher().start()
    stopped_by_signal = False

    async def serve() -> None:
        nonlocal stopped_by_signal
        async with trio.open_nursery() as nursery:
            ops.start(nursery)

            async def on_signal() -> None:
                nonlocal stopped_by_signal
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
                    async for signum in sigs:
                        log.info("signal %d: committing buffered data, then unmounting", signum)
                        stopped_by_signal = True
                        await ops.flush_all()
                        pyfuse3.terminate()
                        return

            nursery.start_soon(on_signal)
            nursery.start_soon(_raise_read_ahead, opts.mountpoint)
            await pyfuse3.main(min_tasks=4, max_tasks=64)
            await ops.shutdown()
            nursery.cancel_scope.cancel()

    code = 0
    from aifs_core.gc_tuning import tune_gc

    # set up: freeze what start-up built and collect cycles less often (gc_tuning.py: the
    # collector was a fifth of the mount's CPU per listed entry)
    tune_gc()
    try:
        print(f"aifs: mounted {opts.address} ({opts.namespace}/{opts.branch}) on "
              f"{opts.mountpoint}", flush=True)
        trio.run(serve)
    except BaseException:
        log.exception("the mount stopped with an error")
        code = 1
        raise
    finally:
        if pages is not None:
            pages.close()   # before the session goes: a push after it would use a freed one
        # unmount=True unmounts when we stop on our own (signal); after an external
        # unmount it is a no-op.
        with contextlib.suppress(Exception):
            pyfuse3.close(unmount=True)
        client.close()
        if disk is not None:
            disk.close()   # its entries are unreadable without the key: remove them now
    if stopped_by_signal:
        log.info("unmounted %s", opts.mountpoint)
    return code


def wait_mounted(path: str, proc: subprocess.Popen[bytes] | None = None,
                 timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise MountError(f"the mount process exited with code {proc.returncode}")
        if is_mounted(path):
            with contextlib.suppress(OSError):
                os.stat(path)
                return
        time.sleep(0.05)
    raise MountError(f"{path} did not become a mount within {timeout:.0f} s")


def spawn_mount(opts: MountOptions, log_path: str | os.PathLike[str],
                wait: float = 30.0) -> int:
    """Start the mount as a detached child; return its pid once the mount answers."""
    _check_mountpoint(opts.mountpoint)
    cmd = [sys.executable, "-m", "aifsfs.fuse.mounter", *opts.to_argv()]
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                start_new_session=True, close_fds=True)
    try:
        wait_mounted(opts.mountpoint, proc, wait)
    except MountError as exc:
        if proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        tail = ""
        with contextlib.suppress(OSError):
            tail = Path(log_path).read_text(errors="replace")[-2000:]
        raise MountError(f"{exc}; mount log {log_path}:\n{tail}") from None
    return proc.pid


def unmount(mountpoint: str | os.PathLike[str], timeout: float = 10.0) -> None:
    """fusermount3 -u (retried while busy), then lazy -uz; MountError if still mounted."""
    mp = os.fspath(mountpoint)
    if not is_mounted(mp):
        raise MountError(f"{mp} is not mounted")
    last = ""
    deadline = time.monotonic() + timeout
    while True:
        r = subprocess.run(["fusermount3", "-u", mp], capture_output=True, text=True)
        if r.returncode == 0 or not is_mounted(mp):
            return
        last = r.stderr.strip()
        if time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    r = subprocess.run(["fusermount3", "-uz", mp], capture_output=True, text=True)
    if r.returncode != 0 and is_mounted(mp):
        raise MountError(f"cannot unmount {mp}: {last or r.stderr.strip()} "
                         f"(close the files open there and retry)")


def pid_alive(pid: int) -> bool:
    """True while `pid` runs. A zombie counts as gone: a detached server or mount is reaped by
    init, which may take seconds (this machine's init reaps every ~2 s; `aifs down` waited that
    long after the server had exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


def wait_pid_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            done, _ = os.waitpid(pid, os.WNOHANG)   # our own child: reap it
            if done:
                return True
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


def add_mount_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("address", help="server address: unix:PATH or HOST:PORT, or several "
                                   "separated by commas (A,B,C: servers of one shared "
                                   "deployment; the mount fails over to the next when one "
                                   "stops answering)")
    p.add_argument("mountpoint", help="an empty directory to mount on")
    p.add_argument("--namespace", default="default")
    p.add_argument("--branch", default="main")
    from aifsfs.fuse.version_mount import add_version_arguments
    add_version_arguments(p)
    p.add_argument("--token-file", default=None,
                   help="file holding the capability token (default: next to a unix socket)")
    p.add_argument("--allow-other", action="store_true",
                   help="let other users use the mount (needs user_allow_other for non-root)")
    p.add_argument("--assets-for-all", action="store_true",
                   help="with --allow-other: let every user read /.aifs/assets/<id> (by "
                        "default only the mount's owner may: an asset is read by id, past "
                        "the permissions of the files holding it)")
    p.add_argument("--read-only", action="store_true")
    p.add_argument("--mem-cache-size", type=parse_size, default=MEM_CACHE_DEFAULT,
                   help="in-memory chunk cache (default 64M)")
    add_disk_cache_arguments(p)
    p.add_argument("--attr-timeout", type=float, default=1.0,
                   help="seconds the kernel may cache attributes and entries (default 1)")
    p.add_argument("--entry-timeout", type=float, default=None)
    p.add_argument("--retry-for", type=float, default=30.0,
                   help="seconds to retry an unreachable server before EIO (default 30)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-call deadline, seconds")
    p.add_argument("--max-dirty", type=parse_size, default=MAX_DIRTY_DEFAULT,
                   help="unwritten data the mount may buffer, e.g. 64M (default 32M)")
    p.add_argument("--sync-dirops", action="store_true",
                   help="send each unlink to the server before answering it, instead of in "
                        "batches under an exclusive directory lease (docs/LEASES.md: batched "
                        "unlinks not yet sent are lost if the mount dies)")
    add_writeback_argument(p)
    p.add_argument("--debug", action="store_true")


def add_writeback_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--writeback", action="store_true",
                   help="the close of a small file created here returns before the server "
                        "has it (sent within milliseconds, grouped; another client still sees "
                        "it at once). A file closed in the last moments before the mount dies "
                        "is lost; fsync waits for it (docs/LEASES.md)")


def add_disk_cache_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="local disk cache of decrypted chunks, sealed under a key only the "
                        "mount holds (default $XDG_CACHE_HOME/aifs or ~/.cache/aifs)")
    p.add_argument("--cache-size", type=parse_size, default=None, metavar="SIZE",
                   help="disk cache size, e.g. 20G (default: min(10G, 20%% of the free space "
                        "there); 0 disables it)")


def options_from_args(a: argparse.Namespace) -> MountOptions:
    return MountOptions(
        address=a.address, mountpoint=os.path.abspath(a.mountpoint), namespace=a.namespace,
        branch=a.branch, token_file=a.token_file, allow_other=a.allow_other,
        assets_for_all=a.assets_for_all,
        read_only=a.read_only, mem_cache_size=a.mem_cache_size, cache_dir=a.cache_dir,
        cache_size=a.cache_size, attr_timeout=a.attr_timeout,
        entry_timeout=a.entry_timeout, retry_for=a.retry_for, timeout=a.timeout,
        max_dirty=a.max_dirty, debug=a.debug, sync_dirops=a.sync_dirops,
        writeback=a.writeback)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m aifsfs.fuse.mounter",
                                description="the AIFS mount process (foreground)")
    add_mount_arguments(p)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.debug else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    opts = options_from_args(a)
    try:
        from aifsfs.fuse.version_mount import resolve_version
        resolve_version(opts, a.snapshot, a.tag)
        check_server(opts)
        return run_mount(opts)
    except MountError as exc:
        print(f"aifs mount: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
