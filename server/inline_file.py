"""ReadDir's inline bytes written into a file the client made under /dev/shm, not the reply.

Interface:
    InlineSink.open(path, peer, limit=FILE_MAX, reused=False) -> InlineSink | None
        the client's file (ReadDirRequest.inline_file, GetChunksRequest.inline_file) opened
        for writing, or None when it may not be used: not over a unix socket, a name
        inline_file.py's client side would not make, in a directory that is not a real one
        owned by this process's user and closed to everyone else (0700), not a regular file
        with one link owned by this process's user, not empty unless `reused` (GetChunks:
        the client reuses its files, written over from offset 0), or gone
    .place(pieces) -> int | None write the pieces (bytes-like, back to back) at the end of
                                 what was placed: their offset, or None (the file would pass
                                 `limit`, or a write failed, e.g. /dev/shm full: these and
                                 every later bytes go in the reply as before)
    .close()
    InlineSource.open(path, peer) -> InlineSource | None
        the client's file of a PutChunks call (PutChunkRequest.inline_file) opened for
        reading, or None on the same grounds as InlineSink.open, except that it holds the
        chunks the client wrote (not empty)
    .read(offset, n) -> bytes         n bytes at offset, copied out (None: not there)
    .close()

Why (issue 9, epoch 1): a cold epoch's bytes come ~27 samples per ReadDir reply, and gRPC in
Python copies a 4 MiB reply several times on each end (the join and gRPC's slice on the
server; the slices into a bytearray, that into bytes, upb's parse and the field's bytes on the
mount: ~150 us of the mount's CPU per 147 KiB sample). A pwrite here and an mmap there move
the same bytes with one kernel copy; the reply keeps the maps and says where each file's bytes
are (FileMap.inline_offset). Nothing changes in what is leased or checked: the bytes are the
decrypted, tag-checked plaintext the reply would have carried.

Safety: only over a unix socket (the client is on this machine); the file must already exist
(O_NOFOLLOW, no O_CREAT), be empty, regular, singly linked and owned by our own user, so the
server never writes through a link or into a file of someone else's; and it must sit in a
directory of our user's that nobody else may enter: the names of a call's file are then known
to our user only, so another local user's client (a token of its own) cannot name a mount's
in-flight file and have its bytes written where that mount's reply says its bytes are
(/dev/shm itself is listed by anyone). What it writes is what the caller may read anyway. The
client unlinks the name when its call ends, whatever the outcome, or, for GetChunks and
PutChunks after a call that ended well, keeps the file for its next call: GetChunks therefore
takes a file that is not empty (`reused`) and writes it over from offset 0. Emptiness was
never what kept a file safe (the 0700 directory and the owner are); ReadDir still asks for it
because its client never reuses a file.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence

# aifsfs/rpc/inline_file.py's names: the mount's pid and a random suffix
NAME = re.compile(r"(/dev/shm/aifs-rd-[0-9]{1,10}-[0-9a-f]{32})/([0-9a-f]{32})")
# The most one call writes into a client's file (memory: /dev/shm is RAM until the client has
# read it): a ReadDir page is at most 4 MiB, a read-ahead call a few chunks. Past it the bytes
# go in the reply.
FILE_MAX = 32 << 20


def _open_checked(path: str, peer: str, flags: int, empty: bool) -> int | None:
    """The descriptor of the client's call file `path`, or None when it may not be used:
    not a unix peer, a name the client would not make, a directory others may enter or not
    our user's, not a regular file of ours with one link (or not empty when `empty`)."""
    m = NAME.fullmatch(path) if path and peer.startswith("unix:") else None
    if m is None:
        return None
    try:
        dfd = os.open(m.group(1), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        d = os.fstat(dfd)
        if d.st_uid != os.geteuid() or d.st_mode & 0o077:
            return None     # others may enter it: they may know the name
        fd = os.open(m.group(2), flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                     dir_fd=dfd)
    except OSError:
        return None         # gone (the client's call ended) or not ours to open
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    if (not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or (empty and st.st_size != 0)
            or st.st_uid != os.geteuid()):
        os.close(fd)
        return None
    return fd


class InlineSink:
    __slots__ = ("fd", "at", "limit")

    def __init__(self, fd: int, limit: int) -> None:
        self.fd = fd
        self.at = 0
        self.limit = limit

    @classmethod
    def open(cls, path: str, peer: str, limit: int = FILE_MAX, reused: bool = False
             ) -> InlineSink | None:
        fd = _open_checked(path, peer, os.O_WRONLY, empty=not reused)
        return None if fd is None else cls(fd, limit)

    def place(self, pieces: Sequence[bytes | bytearray | memoryview]) -> int | None:
        if self.fd < 0:
            return None
        views = [memoryview(p).cast("B") for p in pieces]
        total = sum(len(v) for v in views)
        if self.at + total > self.limit:
            return None
        at = self.at
        try:
            done = os.pwritev(self.fd, views, at) if total else 0
            if done < total:            # short (tmpfs nearly full): the rest one by one
                rest = memoryview(b"".join(views))[done:]
                while rest:
                    n = os.pwrite(self.fd, rest, at + done)
                    if n <= 0:
                        raise OSError("short write")
                    done += n
                    rest = rest[n:]
        except OSError:
            self.close()        # what was placed stays valid; nothing more goes here
            return None
        self.at = at + total
        return at

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class InlineSource:
    """A PutChunks call's chunks, read from the file the client wrote them into.

    Each chunk is pread into bytes of the server's own (one kernel copy, as gRPC's receive
    made several): the id check and the sealing then see the same bytes, whatever the client
    does to its file meanwhile. A mapping would save that copy but let a client change the
    bytes between the BLAKE3 check and the seal (a chunk stored under an id it does not
    hash to)."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def open(cls, path: str, peer: str) -> InlineSource | None:
        fd = _open_checked(path, peer, os.O_RDONLY, empty=False)
        return None if fd is None else cls(fd)

    def read(self, offset: int, n: int) -> bytes | None:
        if self.fd < 0 or offset < 0 or n < 0:
            return None
        try:
            data = os.pread(self.fd, n, offset)
        except OSError:
            return None
        return data if len(data) == n else None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
