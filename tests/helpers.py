"""Process helpers for tests: a real `aifs server` subprocess on a short unix socket path.

Interface:
    make_data_dir(path) -> Path                 format an AIFS data dir (real keys, real SQLite)
    short_tmpdir() -> str                       /tmp/aifs-XXXX (unix socket paths <= 107 bytes)
    start_server(data_dir, *, listen=(), args=(), tls=False, wait=20.0) -> ServerProc
        starts `python -m aifs_server.serve --data D --listen unix:<short>/s.sock [--listen ...]`
        and returns once the ready line is printed and the health check answers SERVING.
    ServerProc: .address ("unix:/tmp/aifs-.../s.sock"), .addresses (all, TCP ports resolved),
        .token, .token_file, .data_dir, .proc, .log_path, .stop(), .log()
    stop_server(sp, grace=15.0) -> int | None   SIGTERM, then SIGKILL; removes the temp dir
    open_channel(address, root_cert=None, host_override=None) -> grpc.Channel
    call_md(token, namespace="default", branch="main") -> metadata tuple
    error_info(rpc_error) -> (code, reason, message)    reason from google.rpc.ErrorInfo
    peak_rss_kib(pid) -> int                    VmHWM of a live process
    rpc_methods() -> [MethodDescriptor]         every RPC of the aifs.v1 services, from the
                                                proto descriptors (a new RPC is included)
    tmpfs(mnt, size) -> context of mnt          a real small tmpfs at `mnt` (made if missing),
                                                unmounted on exit even if the test fails;
                                                skips the test where mounting is impossible
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf.descriptor import MethodDescriptor
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from aifs_proto.v1 import (
    admin_pb2,
    assets_pb2,
    data_pb2,
    filesystem_pb2,
    session_pb2,
    versioning_pb2,
)

MSG_LIMIT = 65 << 20
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MSG_LIMIT),
    ("grpc.max_receive_message_length", MSG_LIMIT),
]


def rpc_methods() -> list[MethodDescriptor]:
    return [m for mod in (filesystem_pb2, data_pb2, assets_pb2, admin_pb2, session_pb2,
                          versioning_pb2)
            for svc in mod.DESCRIPTOR.services_by_name.values() for m in svc.methods]


def short_tmpdir() -> str:
    return tempfile.mkdtemp(prefix="aifs-", dir="/tmp")


def make_data_dir(path: str | os.PathLike[str]) -> Path:
    from aifs_server.datadir import format_data_dir

    res = format_data_dir(path)
    assert res.created, res.message
    return Path(path)


def open_channel(address: str, root_cert: bytes | None = None,
                 host_override: str | None = None) -> grpc.Channel:
    if root_cert is not None:
        opts: list[tuple[str, int | str]] = list(CHANNEL_OPTIONS)
        if host_override:
            opts.append(("grpc.ssl_target_name_override", host_override))
        return grpc.secure_channel(address, grpc.ssl_channel_credentials(root_cert), opts)
    return grpc.insecure_channel(address, CHANNEL_OPTIONS)


def call_md(token: str | None, namespace: str = "default", branch: str = "main"
            ) -> tuple[tuple[str, str], ...]:
    md: list[tuple[str, str]] = [("aifs-namespace", namespace), ("aifs-branch", branch)]
    if token is not None:
        md.append(("authorization", f"Bearer {token}"))
    return tuple(md)


def put_asset_requests(*pieces: bytes, header: object = None) -> Iterator[object]:
    """A whole PutAsset stream: the header (a blob by default), the pieces, the end message
    with their byte count (the server stores nothing without it)."""
    from aifs_proto.v1 import assets_pb2

    yield assets_pb2.PutAssetRequest(header=header or assets_pb2.AssetHeader(kind="blob"))
    for p in pieces:
        yield assets_pb2.PutAssetRequest(data=p)
    yield assets_pb2.PutAssetRequest(end=assets_pb2.AssetEnd(size=sum(map(len, pieces))))


def error_info(err: grpc.RpcError) -> tuple[grpc.StatusCode, str, str]:
    """(code, ErrorInfo.reason or "", message) of a failed call."""
    code = err.code()  # type: ignore[attr-defined]
    message = err.details() or ""  # type: ignore[attr-defined]
    reason = ""
    st = rpc_status.from_call(err)  # type: ignore[arg-type]
    if st is not None:
        for d in st.details:
            info = error_details_pb2.ErrorInfo()
            if d.Unpack(info):
                reason = info.reason
    return code, reason, message


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("VmHWM not found")


def wait_healthy(address: str, timeout: float = 20.0, root_cert: bytes | None = None,
                 host_override: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        with open_channel(address, root_cert, host_override) as ch:
            try:
                r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                         timeout=2)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as e:
                last = e
        time.sleep(0.05)
    raise TimeoutError(f"server at {address} not healthy within {timeout}s: {last}")


@dataclass
class ServerProc:
    proc: subprocess.Popen[str]
    data_dir: Path
    tmpdir: str
    address: str
    addresses: list[str]
    token_file: str
    token: str
    log_path: str
    ready_line: str
    _stdout: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return Path(self.log_path).read_text(errors="replace")
        return ""

    def channel(self) -> grpc.Channel:
        return open_channel(self.address)

    def stop(self, grace: float = 15.0) -> int | None:
        return stop_server(self, grace)


def start_server(data_dir: str | os.PathLike[str], *, listen: Sequence[str] = (),
                 args: Sequence[str] = (), wait: float = 30.0,
                 root_cert: bytes | None = None, host_override: str | None = None
                 ) -> ServerProc:
    """Start a real server subprocess; always cleaned up by stop_server (or on failure here)."""
    tmpdir = short_tmpdir()
    sock = os.path.join(tmpdir, "s.sock")
    log_path = os.path.join(tmpdir, "server.log")
    cmd = [sys.executable, "-m", "aifs_server.serve", "--data", os.fspath(data_dir),
           "--listen", f"unix:{sock}", "--format-if-needed"]
    for extra in listen:
        cmd += ["--listen", extra]
    cmd += list(args)
    logf = open(log_path, "w")  # noqa: SIM115 - closed below / by the child's exit
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=logf, text=True,
                            start_new_session=True)
    logf.close()
    lines: list[str] = []
    ready = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("aifs server: listening on"):
                ready.set()
        ready.set()

    threading.Thread(target=reader, daemon=True).start()
    sp = ServerProc(proc=proc, data_dir=Path(data_dir), tmpdir=tmpdir, address=f"unix:{sock}",
                    addresses=[], token_file=sock + ".token", token="", log_path=log_path,
                    ready_line="", _stdout=lines)
    try:
        if not ready.wait(wait) or not any(x.startswith("aifs server: listening on")
                                          for x in lines):
            raise RuntimeError(f"server did not become ready (rc={proc.poll()}); log:\n"
                               f"{sp.log()}\nstdout: {lines}")
        sp.ready_line = next(x for x in lines if x.startswith("aifs server: listening on"))
        addrs = sp.ready_line.split("listening on ", 1)[1].split(" (metrics")[0]
        sp.addresses = [a.strip() for a in addrs.split(",")]
        wait_healthy(sp.address, wait)
        sp.token = Path(sp.token_file).read_text().strip()
    except BaseException:
        stop_server(sp)
        raise
    return sp


def stop_server(sp: ServerProc, grace: float = 15.0) -> int | None:
    """SIGTERM, wait up to `grace`, then SIGKILL. Always removes the temp dir. Returns rc."""
    rc: int | None = None
    try:
        if sp.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                sp.proc.send_signal(signal.SIGTERM)
            try:
                rc = sp.proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    sp.proc.kill()
                sp.proc.wait(10)
                rc = None
        else:
            rc = sp.proc.returncode
    finally:
        if sp.proc.stdout is not None:
            with contextlib.suppress(Exception):
                sp.proc.stdout.close()
        shutil.rmtree(sp.tmpdir, ignore_errors=True)
    return rc


@contextlib.contextmanager
def tmpfs(mnt: Path, size: str) -> Iterator[Path]:
    """A real disk that fills up (ENOSPC tests): a tmpfs of `size` ("512k", "1m")."""
    import pytest

    mnt.mkdir(exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs (a real small disk) needs root and mount(8)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                        os.fspath(mnt)], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", os.fspath(mnt)], capture_output=True,
                          check=False).returncode != 0:
            subprocess.run(["umount", "-l", os.fspath(mnt)], capture_output=True, check=False)
