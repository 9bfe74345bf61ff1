"""The mount's side of the inline file (server/inline_file.py): the bytes of a ReadDir page of
small files, or of a GetChunks call's raw pieces, received through /dev/shm, mapped, instead of
in the gRPC messages.

Interface:
    available(addresses) -> bool      every server address is a unix socket and /dev/shm is
                                      there to make files in (else ReadDir works as before);
                                      AIFS_INLINE_FILE=0 in the environment turns it off
    InlineFile()                      a fresh empty file /dev/shm/aifs-rd-<pid>-<random>,
                                      0600, opened by us; its .path goes in the request
    InlineFile.make() -> InlineFile | None   the same, None when it cannot be made now
        .view() -> memoryview | None  the file mapped read-only (None: the server wrote
                                      nothing); slices stay valid after .close()
        .view_upto(end) -> memoryview | None   the same, covering at least `end` bytes
                                      (mapped again as a streamed call's file grows)
        .close()                      unlink the name and close our descriptor: the mapping
                                      lives while a slice of it does, then its pages go
    sweep()                           remove files left by mounts that died mid-call

Why, and what it saves: server/inline_file.py. One file per call, never reused, so a server
still writing after the call gave up (a deadline) writes into a file nobody reads. Slices
handed out are memoryviews of the mapping: the page pusher hands them to the kernel as they
are (no copy here), and anything kept longer (the memory cache) takes bytes of them.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
from collections.abc import Sequence

SHM = "/dev/shm"
PREFIX = "aifs-rd-"


def available(addresses: Sequence[str]) -> bool:
    if os.environ.get("AIFS_INLINE_FILE") == "0":       # off: every byte in the messages
        return False
    return (bool(addresses) and all(a.startswith("unix:") for a in addresses)
            and os.path.isdir(SHM) and os.access(SHM, os.W_OK | os.X_OK))


class InlineFile:
    __slots__ = ("path", "fd", "_view")

    def __init__(self) -> None:
        self.path = f"{SHM}/{PREFIX}{os.getpid()}-{secrets.token_hex(16)}"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                          | os.O_CLOEXEC, 0o600)
        self._view: memoryview | None = None

    @classmethod
    def make(cls) -> InlineFile | None:
        """A fresh file, or None when one cannot be made now (/dev/shm full, out of file
        descriptors): then the call carries its bytes in the messages."""
        try:
            return cls()
        except OSError:
            return None

    def view(self) -> memoryview | None:
        return self.view_upto(1)

    def view_upto(self, end: int) -> memoryview | None:
        """The file mapped, at least its first `end` bytes (None: it holds fewer). A file the
        server is still writing (GetChunks' stream) is mapped again when it has grown; the
        slices of an older mapping stay valid."""
        if self._view is None or len(self._view) < end:
            size = os.fstat(self.fd).st_size
            if size < end or size == 0:
                return None
            # MAP_POPULATE: the pages mapped in one go, not one fault per 4 KiB later
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            self._view = memoryview(mmap.mmap(self.fd, size, flags, mmap.PROT_READ))
        return self._view

    def close(self) -> None:
        self._view = None
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> InlineFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sweep() -> None:
    """Remove inline files of processes that are gone (a mount killed mid-call leaves one)."""
    try:
        names = os.listdir(SHM)
    except OSError:
        return
    for name in names:
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not os.path.exists(f"/proc/{pid}"):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(SHM, name))
