"""`aifs mount`, `aifs umount`, `aifs up` and `aifs down`.

Interface:
    register(subparsers)        adds the four subcommands to the `aifs` CLI (aifs_cli.main)
    cmd_mount(args), cmd_umount(args), cmd_up(args), cmd_down(args) -> int
    state_path() -> Path        the small JSON file remembering which server `up` started for
                                which mount ($XDG_STATE_HOME/aifs/mounts.json)

`aifs up [MOUNTPOINT] [--data DIR]` is the embedded default in one command: format DIR if it is
new, start `aifs server` on `default_socket(DIR)` as its own detached process (log and pid file
in DIR) unless one already answers there, wait for its health check, mount (detached unless
--foreground) and say how to stop. `aifs down MOUNTPOINT` unmounts (everything closed is already
committed; the mount process commits whatever is left before it exits) and stops the server
`up` started for it (SIGTERM, wait, SIGKILL) unless another recorded mount still uses it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aifsfs.fuse.mounter import (
    MountError,
    MountOptions,
    add_disk_cache_arguments,
    add_mount_arguments,
    add_writeback_argument,
    check_server,
    is_mounted,
    options_from_args,
    pid_alive,
    run_mount,
    spawn_mount,
    unmount,
    wait_pid_exit,
)
from aifsfs.fuse.version_mount import resolve_version


def _fail(msg: str) -> int:
    print(f"aifs: error: {msg}", file=sys.stderr)
    return 1


# --- state ------------------------------------------------------------------------------------
def state_path() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "aifs" / "mounts.json"


def _load_state() -> dict[str, Any]:
    try:
        data = json.loads(state_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_state(state: dict[str, Any]) -> None:
    p = state_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(tmp, p)


# --- mount / umount -------------------------------------------------------------------------
def cmd_mount(args: argparse.Namespace) -> int:
    opts = options_from_args(args)
    try:
        resolve_version(opts, args.snapshot, args.tag)   # --snapshot/--tag: verify, read-only
        check_server(opts)
        if args.foreground:
            return run_mount(opts)
        log_path = args.log_file or os.path.join(
            os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state"),
            "aifs", "mount-" + opts.mountpoint.strip("/").replace("/", "_") + ".log")
        pid = spawn_mount(opts, log_path)
    except MountError as exc:
        return _fail(str(exc))
    print(f"aifs: mounted {opts.address} on {opts.mountpoint} (pid {pid}, log {log_path}); "
          f"stop with `aifs umount {opts.mountpoint}`")
    return 0


def cmd_umount(args: argparse.Namespace) -> int:
    mp = os.path.abspath(args.mountpoint)
    try:
        unmount(mp)
    except MountError as exc:
        return _fail(str(exc))
    print(f"aifs: unmounted {mp}")
    return 0


# --- up / down --------------------------------------------------------------------------------
def _health(address: str, retry_for: float) -> bool:
    from aifs_core.errors import AIFSError
    from aifsfs.client import AIFSClient

    if address.startswith("unix:") and not os.path.exists(address[len("unix:"):]):
        return False    # nothing listens there yet: no connect retries to wait out
    try:
        with AIFSClient(address, retry_for=retry_for, timeout=5.0) as c:
            return c.health() == "SERVING"
    except AIFSError:
        return False


def _start_server(data: Path, address: str) -> int:
    """Start `aifs server` detached (own session); returns its pid once it is healthy."""
    log_path = data / "server.log"
    cmd = [sys.executable, "-m", "aifs_server.serve", "--data", str(data), "--listen", address]
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                start_new_session=True, close_fds=True)
    (data / "server.pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise MountError(f"the server exited with code {proc.returncode}; "
                             f"log {log_path}:\n{tail}")
        if _health(address, 0.5):
            return proc.pid
        time.sleep(0.05)
    proc.terminate()
    raise MountError(f"the server did not answer within 30 s; see {log_path}")


def _stop_pid(pid: int, grace: float = 15.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not wait_pid_exit(pid, grace):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_pid_exit(pid, 5.0)


def cmd_up(args: argparse.Namespace) -> int:
    from aifs_server.datadir import format_data_dir
    from aifsfs.client import default_data_dir, default_socket

    data = Path(args.data).expanduser().resolve() if args.data else Path(default_data_dir())
    mp = os.path.abspath(os.path.expanduser(args.mountpoint or "~/aifs"))
    address = default_socket(data)
    try:
        res = format_data_dir(data)     # idempotent: a formatted dir is left as it is
        if getattr(res, "created", False):
            print(f"aifs: formatted a new data directory {data}")
        state = _load_state()
        server_pid = 0
        started = False
        pid_file = data / "server.pid"
        if _health(address, 0.5):
            with contextlib.suppress(OSError, ValueError):
                server_pid = int(pid_file.read_text().strip())
            print(f"aifs: using the server already running on {address}")
        else:
            server_pid = _start_server(data, address)
            started = True
            print(f"aifs: started the server on {address} (pid {server_pid}, "
                  f"log {data / 'server.log'})")
        Path(mp).mkdir(parents=True, exist_ok=True)
        if is_mounted(mp):
            return _fail(f"{mp} is already mounted (stop it with `aifs down {mp}`)")
        opts = MountOptions(address=address, mountpoint=mp, allow_other=args.allow_other,
                            assets_for_all=args.assets_for_all,
                            cache_dir=args.cache_dir, cache_size=args.cache_size,
                            writeback=args.writeback)
        check_server(opts)
        entry = {"data": str(data), "address": address, "server_pid": server_pid,
                 "started_server": started or any(
                     s.get("started_server") and s.get("server_pid") == server_pid
                     for s in state.values()),
                 "mount_pid": 0}
        if args.foreground:
            entry["mount_pid"] = os.getpid()
            state[mp] = entry
            _save_state(state)
            print(f"aifs: mounting on {mp}; Ctrl-C unmounts and stops the server")
            try:
                rc = run_mount(opts)
            finally:
                st = _load_state()
                st.pop(mp, None)
                _save_state(st)
                if started and not _other_users(st, server_pid):
                    _stop_pid(server_pid)
            return rc
        entry["mount_pid"] = spawn_mount(opts, data / "mount.log")
        state[mp] = entry
        _save_state(state)
    except MountError as exc:
        return _fail(str(exc))
    print(f"aifs: mounted on {mp}\n      stop with: aifs down {mp}")
    return 0


def _other_users(state: dict[str, Any], server_pid: int) -> bool:
    return any(s.get("server_pid") == server_pid for s in state.values())


def cmd_down(args: argparse.Namespace) -> int:
    mp = os.path.abspath(os.path.expanduser(args.mountpoint or "~/aifs"))
    state = _load_state()
    entry = state.get(mp)
    if is_mounted(mp):
        try:
            unmount(mp)
        except MountError as exc:
            return _fail(str(exc))
    elif entry is None:
        return _fail(f"{mp} is not mounted and `aifs up` has no record of it")
    if entry is not None:
        if entry.get("mount_pid") and entry["mount_pid"] != os.getpid():
            # the mount process commits what it still holds, then exits
            if not wait_pid_exit(int(entry["mount_pid"]), 60.0):
                _stop_pid(int(entry["mount_pid"]))
        state.pop(mp, None)
        _save_state(state)
        pid = int(entry.get("server_pid") or 0)
        if entry.get("started_server") and pid and not _other_users(state, pid):
            if pid_alive(pid):
                _stop_pid(pid)
                print(f"aifs: stopped the server (pid {pid})")
            with contextlib.suppress(OSError):
                (Path(entry["data"]) / "server.pid").unlink()
    print(f"aifs: unmounted {mp}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "mount", help="mount an AIFS server's tree (FUSE)",
        description="Mount one branch of one namespace of an AIFS server. The server must "
                    "answer first. Without --foreground the mount runs detached and this "
                    "command returns once it answers.")
    add_mount_arguments(p)
    p.add_argument("--foreground", action="store_true", help="stay attached (Ctrl-C unmounts)")
    p.add_argument("--log-file", default=None, help="log of the detached mount process")
    p.set_defaults(func=cmd_mount)

    p = subparsers.add_parser("umount", help="unmount an AIFS mount",
                              description="fusermount3 -u, retried, then a lazy unmount.")
    p.add_argument("mountpoint")
    p.set_defaults(func=cmd_umount)

    p = subparsers.add_parser(
        "up", help="start the embedded server and mount it in one command",
        description="Format the data directory if new, start the server on its unix socket "
                    "(or reuse a running one), mount, and print how to stop.")
    p.add_argument("mountpoint", nargs="?", default=None, help="default ~/aifs")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="data directory (default $AIFS_DATA or ~/.local/share/aifs)")
    p.add_argument("--foreground", action="store_true",
                   help="stay attached; Ctrl-C unmounts and stops the server")
    p.add_argument("--allow-other", action="store_true")
    p.add_argument("--assets-for-all", action="store_true",
                   help="with --allow-other: every user may read /.aifs/assets/ (default: "
                        "only you)")
    add_disk_cache_arguments(p)
    add_writeback_argument(p)
    p.set_defaults(func=cmd_up)

    p = subparsers.add_parser("down", help="unmount and stop the server `aifs up` started",
                              description="Unmount (everything closed is committed) and stop "
                                          "the server that `aifs up` started for this mount.")
    p.add_argument("mountpoint", nargs="?", default=None, help="default ~/aifs")
    p.set_defaults(func=cmd_down)
