"""The server process: health, reflection, metrics, listeners (unix/TCP/TLS), start-up checks
and graceful shutdown."""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import blake3
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from aifs_proto.v1 import assets_pb2, assets_pb2_grpc, common_pb2, filesystem_pb2
from aifs_proto.v1 import filesystem_pb2_grpc as fs_grpc
from aifs_server.metrics import Metrics
from tests.helpers import (
    ServerProc,
    call_md,
    open_channel,
    put_asset_requests,
    short_tmpdir,
    start_server,
    stop_server,
)

MiB = 1 << 20
SERVICES = ["aifs.v1.Filesystem", "aifs.v1.Data", "aifs.v1.Assets", "aifs.v1.Admin"]


def test_health_and_reflection(server_module: ServerProc) -> None:
    with server_module.channel() as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for name in ["", *SERVICES]:
            r = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert r.status == health_pb2.HealthCheckResponse.SERVING, name
        with pytest.raises(grpc.RpcError) as ei:
            health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
        assert ei.value.code() == grpc.StatusCode.NOT_FOUND
        db = ProtoReflectionDescriptorDatabase(ch)
        services = set(db.get_services())
        assert set(SERVICES) <= services
        assert "grpc.health.v1.Health" in services
        fd = db.FindFileContainingSymbol("aifs.v1.Filesystem")
        assert fd.name.endswith("filesystem.proto")


def test_socket_and_token_file_modes(server_module: ServerProc) -> None:
    sock = server_module.address.removeprefix("unix:")
    assert stat.S_ISSOCK(os.stat(sock).st_mode)
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(server_module.token_file).st_mode) == 0o600
    # the token never appears in the server's log or argv
    assert server_module.token not in server_module.log()
    assert server_module.token not in " ".join(server_module.proc.args)  # type: ignore[arg-type]


def test_unformatted_data_dir_exits_with_advice(tmp_path: Path) -> None:
    tmp = short_tmpdir()
    try:
        r = subprocess.run(
            [sys.executable, "-m", "aifs_server.serve", "--data", str(tmp_path / "nope"),
             "--listen", f"unix:{tmp}/s.sock"], capture_output=True, text=True, timeout=60)
    finally:
        os.rmdir(tmp)
    assert r.returncode != 0
    assert "aifs format" in r.stderr and "not a formatted" in r.stderr


def test_new_socket_dir_is_private_and_stale_socket_is_replaced(data_dir: Path) -> None:
    tmp = short_tmpdir()
    stale = os.path.join(tmp, "old.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(stale)
    s.close()  # a socket file nobody listens on
    newdir = os.path.join(tmp, "sub")
    sp = start_server(data_dir, listen=[f"unix:{stale}", f"unix:{newdir}/n.sock"])
    try:
        assert stat.S_IMODE(os.stat(newdir).st_mode) == 0o700
        for addr in (f"unix:{stale}", f"unix:{newdir}/n.sock"):
            with open_channel(addr) as ch:
                fs = fs_grpc.FilesystemStub(ch)
                assert fs.GetAttr(filesystem_pb2.InodeRequest(ino=1),
                                  metadata=call_md(sp.token), timeout=10).attr.ino == 1
        # a second server on a live socket refuses to start, and says why
        r = subprocess.run(
            [sys.executable, "-m", "aifs_server.serve", "--data", str(data_dir),
             "--listen", f"unix:{stale}"], capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "already listening" in r.stderr
    finally:
        stop_server(sp)
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)


def test_metrics_endpoint(data_dir: Path) -> None:
    sp = start_server(data_dir, args=["--metrics-port", "0"])
    try:
        url = sp.ready_line.split("metrics on ", 1)[1].rstrip(")")
        assert url.startswith("http://127.0.0.1:")
        with sp.channel() as ch:
            fs = fs_grpc.FilesystemStub(ch)
            fs.GetAttr(filesystem_pb2.InodeRequest(ino=1), metadata=call_md(sp.token))
            with pytest.raises(grpc.RpcError):
                fs.GetAttr(filesystem_pb2.InodeRequest(ino=1), metadata=call_md(None))
            assets = assets_pb2_grpc.AssetsStub(ch)
            assets.PutAsset(put_asset_requests(b"metrics " * 10000),
                            metadata=call_md(sp.token))
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        assert 'aifs_rpc_total{code="OK",method="GetAttr"} 1.0' in text
        assert 'aifs_rpc_total{code="UNAUTHENTICATED",method="GetAttr"} 1.0' in text
        assert 'aifs_rpc_seconds_bucket' in text
        assert 'aifs_data_bytes_total{direction="in"} 80000.0' in text
        line = next(x for x in text.splitlines()
                    if x.startswith('aifs_logical_bytes{namespace="default"}'))
        assert float(line.split()[-1]) >= 80000
    finally:
        stop_server(sp)


def test_two_metrics_registries_in_one_process() -> None:
    a, b = Metrics(lambda: {"x": (1, 2)}), Metrics(lambda: {"x": (3, 4)})
    a.observe("GetAttr", "OK", 0.001)
    assert b"aifs_stored_bytes" in a.render() and b'method="GetAttr"' not in b.render()


def _self_signed(tmp: Path) -> tuple[Path, Path, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(pem)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return cert_path, key_path, pem


def _round_trip(ch: grpc.Channel, token: str) -> None:
    stub = assets_pb2_grpc.AssetsStub(ch)
    data = os.urandom(3 * MiB)
    info = stub.PutAsset(put_asset_requests(data), metadata=call_md(token), timeout=60)
    assert info.asset_id == blake3.blake3(data).hexdigest()
    got = b"".join(r.data for r in stub.GetAsset(assets_pb2.GetAssetRequest(
        asset_id=info.asset_id), metadata=call_md(token), timeout=60)
        if r.WhichOneof("part") == "data")
    assert got == data


def test_tls_and_plain_tcp(data_dir: Path, tmp_path: Path) -> None:
    cert, key, pem = _self_signed(tmp_path)
    sp = start_server(data_dir, listen=["127.0.0.1:0"],
                      args=["--tls-cert", str(cert), "--tls-key", str(key)])
    try:
        tcp = next(a for a in sp.addresses if a.startswith("127.0.0.1:"))
        with open_channel(tcp, root_cert=pem) as ch:
            _round_trip(ch, sp.token)
        with open_channel(tcp) as plain:  # a plaintext client cannot talk to the TLS port
            with pytest.raises(grpc.RpcError) as ei:
                fs_grpc.FilesystemStub(plain).GetAttr(filesystem_pb2.InodeRequest(ino=1),
                                                      metadata=call_md(sp.token), timeout=3)
            assert ei.value.code() in (grpc.StatusCode.UNAVAILABLE,
                                       grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        stop_server(sp)
    sp = start_server(data_dir, listen=["127.0.0.1:0"])
    try:
        tcp = next(a for a in sp.addresses if a.startswith("127.0.0.1:"))
        with open_channel(tcp) as ch:
            _round_trip(ch, sp.token)
            # no token over TCP is still refused: the token is checked independently of TLS
            with pytest.raises(grpc.RpcError) as ei:
                fs_grpc.FilesystemStub(ch).GetAttr(filesystem_pb2.InodeRequest(ino=1),
                                                   timeout=10)
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        stop_server(sp)


def _wait_for_log(sp: ServerProc, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in sp.log():
            return
        time.sleep(0.02)
    raise AssertionError(f"{text!r} not in server log:\n{sp.log()}")


def _assets_in(data_dir: Path) -> set[str]:
    from aifs_server.asset_store import AssetStore
    from aifs_server.datadir import open_data_dir

    with open_data_dir(data_dir) as dd:
        return {r.asset_id for r in AssetStore(dd).list_assets("default", limit=1000)}


def _slow_put(sp: ServerProc, release: threading.Event, sent: threading.Event,
              data: bytes) -> grpc.Future:
    ch = sp.channel()

    def reqs() -> Iterator[assets_pb2.PutAssetRequest]:
        yield assets_pb2.PutAssetRequest(header=assets_pb2.AssetHeader(kind="blob"))
        yield assets_pb2.PutAssetRequest(data=data[:MiB])
        sent.set()
        release.wait(60)
        yield assets_pb2.PutAssetRequest(data=data[MiB:])
        yield assets_pb2.PutAssetRequest(end=assets_pb2.AssetEnd(size=len(data)))

    fut = assets_pb2_grpc.AssetsStub(ch).PutAsset.future(reqs(), metadata=call_md(sp.token))
    fut.add_done_callback(lambda _f: ch.close())
    return fut


def test_sigterm_lets_an_in_flight_stream_finish(data_dir: Path) -> None:
    sp = start_server(data_dir)
    try:
        data = os.urandom(2 * MiB + 3)
        release, sent = threading.Event(), threading.Event()
        fut = _slow_put(sp, release, sent, data)
        assert sent.wait(30)
        sock = sp.address.removeprefix("unix:")
        sp.proc.send_signal(signal.SIGTERM)
        _wait_for_log(sp, "received SIGTERM")
        release.set()  # the rest of the stream arrives after the signal
        info = fut.result(timeout=30)
        assert info.asset_id == blake3.blake3(data).hexdigest()
        assert sp.proc.wait(30) == 0
        assert not os.path.exists(sock)
    finally:
        stop_server(sp)
    assert info.asset_id in _assets_in(data_dir)


def test_sigterm_cuts_a_stream_that_outlives_the_grace(data_dir: Path) -> None:
    sp = start_server(data_dir, args=["--grace", "1"])
    release, sent = threading.Event(), threading.Event()
    try:
        before = _assets_in(data_dir)
        fut = _slow_put(sp, release, sent, os.urandom(2 * MiB))
        assert sent.wait(30)
        sp.proc.send_signal(signal.SIGTERM)
        assert sp.proc.wait(30) == 0
        with pytest.raises(grpc.RpcError):
            fut.result(timeout=30)
    finally:
        release.set()
        stop_server(sp)
    assert _assets_in(data_dir) == before


def test_server_stop_is_clean_in_process(data_dir: Path) -> None:
    """build_server + start/stop in-process on a real unix socket (how the CLI can embed it)."""
    from aifs_server.datadir import open_data_dir
    from aifs_server.serve import build_server

    tmp = short_tmpdir()
    dd = open_data_dir(data_dir)
    srv = build_server(dd, [f"unix:{tmp}/s.sock"])
    try:
        srv.start()
        token = Path(srv.token_files[0]).read_text().strip()
        with open_channel(srv.addresses[0]) as ch:
            r = fs_grpc.FilesystemStub(ch).StatFs(common_pb2.Empty(), metadata=call_md(token))
            assert r.block_size == 4096
    finally:
        srv.stop(5)
        dd.close()
        assert not os.path.exists(f"{tmp}/s.sock")
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)


def test_leases_only_for_the_sole_server_of_a_data_dir(data_dir: Path) -> None:
    """A server cannot recall leases for changes another server makes: only the one holding
    the data dir's lock grants them (a second server on it, or PostgreSQL: none)."""
    from aifs_server.datadir import open_data_dir
    from aifs_server.serve import sole_server

    dd = open_data_dir(data_dir)
    try:
        first, fd = sole_server(dd)
        second, fd2 = sole_server(dd)
        assert first and fd is not None
        assert not second and fd2 is None
        os.close(fd)                      # the first server stops: the next one may lease
        third, fd3 = sole_server(dd)
        assert third and fd3 is not None
        os.close(fd3)
    finally:
        dd.close()
