"""The mount's side of the inline file (server/inline_file.py): the bytes of a ReadDir page of
small files, or of a GetChunks call's raw pieces, received through /dev/shm, mapped, instead of
in the gRPC messages.

Interface:
    available(addresses) -> bool      every server address is a unix socket and /dev/shm is
                                      there to make files in (else ReadDir works as before);
                                      AIFS_INLINE_FILE=0 in the environment turns it off
    InlineFile()                      a fresh empty file /dev/shm/aifs-rd-<pid>-<random>/
                                      <random>, 0600, in this process's 0700 directory,
                                      opened by us; its .path goes in the request
    InlineFile.make() -> InlineFile | None   the same, None when it cannot be made now
        .view() -> memoryview | None  the file mapped read-only (None: the server wrote
                                      nothing); slices stay valid after .close()
        .view_upto(end) -> memoryview | None   the same, covering at least `end` bytes
                                      (mapped again as a streamed call's file grows)
        .append_all(datas) -> [offset | None]   write the buffers back to back after what is
                                      there (one pwritev); None for each one the file could
                                      not take (/dev/shm full): those go in the messages
        .write_all(datas, at) -> [offset | None]   the same from offset `at` (a reused file)
        .close()                      unlink the name and close our descriptor: the mapping
                                      lives while a slice of it does, then its pages go
    CallFiles(keep_bytes)             PutChunks' and GetChunks' files, reused call after call
                                      (see there)
        .take() -> InlineFile | None  a kept file (its old bytes stay until overwritten) or
                                      a fresh one; None when none can be made
        .give_back(f, reusable)       keep it for the next call (while the kept files hold at
                                      most keep_bytes) or close it
        .close()                      close every kept file
    private_dir(fresh=False) -> str   this process's directory of them (made on first use;
                                      fresh: a new one, the old one having gone)
    sweep()                           remove what mounts that died left (their directories)
    files_of(pid) -> [name]           call files of process `pid` still in /dev/shm (its
                                      directory itself stays while it runs)

Why a private directory: /dev/shm is listed by anyone, and the server writes into any empty
file its own user owns that is named as ours are. Named at the top of /dev/shm, a call's file
could be named by another local user's client (one with a token) while our call is in flight,
and the server would write that client's bytes into our file, where our reply says our bytes
are. In a 0700 directory of ours the names (128 random bits) are seen by our user only, and the
server refuses a file whose directory others may enter.

Why, and what it saves: server/inline_file.py. ReadDir's files are one per call, never
reused: slices of them are handed out and live on, and a server still writing after the call
gave up (a deadline) writes into a file nobody reads. Those slices are memoryviews of the
mapping: the page pusher hands them to the kernel as they are (no copy here), and anything
kept longer (the memory cache) takes bytes of them. PutChunks' and GetChunks' files are reused
after a call that succeeded (CallFiles); GetChunks' bytes are read out (pread), never mapped.
"""

from __future__ import annotations

import atexit
import contextlib
import mmap
import os
import secrets
import shutil
import threading
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
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self.path = f"{private_dir()}/{secrets.token_hex(16)}"
        try:
            self.fd = os.open(self.path, flags, 0o600)
        except FileNotFoundError:       # our directory was removed under us: a new one
            self.path = f"{private_dir(fresh=True)}/{secrets.token_hex(16)}"
            self.fd = os.open(self.path, flags, 0o600)
        self._view: memoryview | None = None

    @classmethod
    def make(cls) -> InlineFile | None:
        """A fresh file, or None when one cannot be made now (/dev/shm full, out of file
        descriptors): then the call carries its bytes in the messages."""
        try:
            return cls()
        except OSError:
            return None

    def append_all(self, datas: Sequence[bytes | bytearray | memoryview]) -> list[int | None]:
        """PutChunks' side: the buffers written back to back at the file's end, one pwritev
        for all (the kernel's one copy of each byte; tmpfs short-writes when it fills up).
        The offset of each buffer written whole, None for the rest."""
        try:
            at = os.fstat(self.fd).st_size
        except OSError:
            return [None] * len(datas)
        return self.write_all(datas, at)

    def write_all(self, datas: Sequence[bytes | bytearray | memoryview], at: int
                  ) -> list[int | None]:
        """append_all from offset `at` (0 in a reused upload file: its pages are written
        over, not allocated again)."""
        views = [memoryview(d).cast("B") for d in datas]
        done = 0
        total = sum(len(v) for v in views)
        try:
            # pwritev takes at most IOV_MAX buffers; a PutChunks call carries a few chunks
            while done < total:
                rest = _after(views, done)
                n = os.pwritev(self.fd, rest[:512], at + done)
                if n <= 0:
                    break
                done += n
        except OSError:
            pass            # ENOSPC: what was written whole is used, the rest goes by message
        out: list[int | None] = []
        pos = 0
        for v in views:
            out.append(at + pos if pos + len(v) <= done else None)
            pos += len(v)
        return out

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


class CallFiles:
    """PutChunks' and GetChunks' files, kept from one call to the next.

    A fresh file per call cost the mount a tmpfs page allocation for every byte moved and its
    freeing at the call's end (and the server its allocation on GetChunks' writes): a sixth of
    the mount's CPU in a sequential write (BENCHMARKS "Upload files reused"), 8 % of the
    server's and 7 % of the mount's in a cold read. A kept file is written over from offset 0,
    its pages reused. A file is kept only after a call that succeeded, which is what makes
    reuse safe both ways: the server only reads an upload file (into bytes of its own, each
    chunk's BLAKE3 checked against its id), and it writes a GetChunks file only before it
    sends the piece that names those bytes and closes it before the call's status goes out,
    so once a call has ended well nobody touches its file; a failed call's file (a deadline:
    the server may still be writing or reading it) is unlinked, never reused. Kept while the
    kept files hold at most `keep_bytes` of /dev/shm: that much RAM stays taken between calls,
    outside any process's RSS."""

    def __init__(self, keep_bytes: int) -> None:
        self.keep_bytes = keep_bytes
        self._free: list[InlineFile] = []
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def _forked(self) -> None:
        """In a forked child the kept files are the parent's: forget them (their descriptors
        closed, their names left to the parent). Under the lock."""
        if self._pid != os.getpid():
            for f in self._free:
                with contextlib.suppress(OSError):
                    os.close(f.fd)
            self._free, self._pid = [], os.getpid()

    def take(self) -> InlineFile | None:
        with self._lock:
            self._forked()
            if self._free:
                return self._free.pop()
        return InlineFile.make()

    def give_back(self, f: InlineFile, reusable: bool) -> None:
        if reusable and f.fd >= 0 and os.path.exists(f.path):   # our directory may be gone
            size = _size(f)
            with self._lock:
                self._forked()
                if sum(_size(k) for k in self._free) + size <= self.keep_bytes:
                    self._free.append(f)
                    return
        f.close()

    def close(self) -> None:
        with self._lock:
            free, self._free = self._free, []
        for f in free:
            f.close()


def _size(f: InlineFile) -> int:
    try:
        return os.fstat(f.fd).st_size
    except OSError:
        return 1 << 62      # unusable: never kept


def _after(views: list[memoryview], skip: int) -> list[memoryview]:
    """The buffers from byte `skip` of their concatenation on (after a short write)."""
    if not skip:
        return views
    out: list[memoryview] = []
    for v in views:
        if skip >= len(v):
            skip -= len(v)
            continue
        out.append(v[skip:] if skip else v)
        skip = 0
    return out


_dir_lock = threading.Lock()
_dir: tuple[int, str] | None = None      # (pid that made it, path): a forked child makes its own


def private_dir(fresh: bool = False) -> str:
    global _dir
    with _dir_lock:
        if fresh or _dir is None or _dir[0] != os.getpid() or not _dir[1].startswith(SHM + "/"):
            path = f"{SHM}/{PREFIX}{os.getpid()}-{secrets.token_hex(16)}"
            os.mkdir(path, 0o700)        # fails if the name exists: never someone else's
            _dir = (os.getpid(), path)
            atexit.register(_remove, path)   # what a call still had in it goes too
        return _dir[1]


def sweep() -> None:
    """Remove the inline files of processes that are gone (a mount killed mid-call leaves
    its directory, and maybe a file in it)."""
    try:
        names = os.listdir(SHM)
    except OSError:
        return
    for name in names:
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not os.path.exists(f"/proc/{pid}"):
            _remove(os.path.join(SHM, name))


def files_of(pid: int) -> list[str]:
    out: list[str] = []
    with contextlib.suppress(OSError):
        for name in os.listdir(SHM):
            path = os.path.join(SHM, name)
            if not name.startswith(f"{PREFIX}{pid}-"):
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                out += [f"{name}/{f}" for f in os.listdir(path)]
            else:
                out.append(name)
    return out


def _remove(path: str) -> None:
    """A directory of ours and what is in it (never through a link), or a lone file."""
    with contextlib.suppress(OSError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
