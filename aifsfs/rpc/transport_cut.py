"""Cut this process's connections to one server, so that grpc fails every call on them now.

Interface:
    cut_connections(address) -> int    shut down (both ways) each socket of this process whose
                                       peer is `address` ("unix:PATH" or "HOST:PORT"); returns
                                       how many were cut (0 where /proc/self/fd is not there)

grpc keeps its sockets to itself (no Python handle, no channel option bounds a write), so the
sockets are found by their peer among the process's descriptors. shutdown() acts on the socket
itself, not on our duplicate of its descriptor: grpc's pending write fails, its transport
closes, every call on it completes with the status it already has (DEADLINE_EXCEEDED for one
past its deadline, UNAVAILABLE otherwise) and the channel reconnects for the next call. Other
channels of this process to the same server share the fate of the cut: they are cut only when
a call to that server outlived its deadline, which a working server never lets happen.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat


def _same_path(a: str, b: str) -> bool:
    if a == b:
        return True
    try:   # the server may have bound a relative or another spelling of the same path
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _tcp_peers(address: str) -> set[tuple[str, int]]:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (OSError, ValueError):
        return set()
    return {(_plain_ip(str(info[4][0])), int(info[4][1])) for info in infos}


def _plain_ip(ip: str) -> str:
    # grpc connects to an IPv4 server over an IPv6 socket with a v4-mapped address
    return ip[len("::ffff:"):] if ip.startswith("::ffff:") else ip


def _peer_of(fd: int) -> tuple[int, object] | None:
    """(family, peer name) of descriptor `fd` if it is a connected socket."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return None
        s = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    with s:   # closes our duplicate only
        try:
            return s.family, s.getpeername()
        except OSError:
            return None


def cut_connections(address: str) -> int:
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return 0
    unix_path = address[len("unix:"):] if address.startswith("unix:") else None
    tcp = _tcp_peers(address) if unix_path is None else set()
    cut = 0
    for name in names:
        fd = int(name)
        got = _peer_of(fd)
        if got is None:
            continue
        family, peer = got
        if unix_path is not None:
            hit = (family == socket.AF_UNIX and isinstance(peer, str) and bool(peer)
                   and _same_path(peer, unix_path))
        else:
            hit = (family in (socket.AF_INET, socket.AF_INET6) and isinstance(peer, tuple)
                   and (_plain_ip(str(peer[0])), int(peer[1])) in tcp)
        if not hit:
            continue
        with contextlib.suppress(OSError):
            # a fresh duplicate: the descriptor may have been closed and reused meanwhile,
            # so look once more at what it is connected to before cutting it
            s = socket.socket(fileno=os.dup(fd))
            with s:
                if s.getpeername() == peer:
                    s.shutdown(socket.SHUT_RDWR)
                    cut += 1
    return cut
