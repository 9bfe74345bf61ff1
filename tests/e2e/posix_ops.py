"""A recorder for differential POSIX tests: run one operation sequence under a root directory
and keep a trace of outcomes that must be identical on two conforming filesystems.

Interface:
    Fs(root)                 every method takes paths relative to `root` ("" is root itself)
      .trace                 list of (step, outcome); outcomes are plain data: "ok", an errno
                             name ("EEXIST"), read bytes, normalised stat dicts, time directions
      .open(fd, rel, flags, mode=0o644)   keep the descriptor under the name `fd`
      .close/.write/.pwrite/.read/.pread/.lseek/.ftruncate/.fstat(fd, ...)
      .truncate .mkdir .rmdir .unlink .link .symlink .readlink .rename .renameat2 .chmod
      .chown .utimensat .mkfifo .mknod .bind_socket .setxattr .getxattr .listxattr
      .removexattr .listdir .raw_readdir .stat .statvfs        each records one step
      .snap(key, rel) / .since(key, rel, fields="mc")  record whether atime/mtime/ctime moved
                             forward ('>'), stayed ('='), or went back ('<') since the snap
      .as_user(step, uid, gid, fn)  run fn(root) -> plain data in a forked child with that
                             uid/gid (no supplementary groups); OSError becomes its errno name
      .note(step, value)     record a value computed by the case itself
      .close_all()
    CASES                    name -> case function `(fs: Fs) -> None`

Why outcomes are normalised: descriptor numbers, inode numbers, directory sizes and exact
timestamps legitimately differ between filesystems; types, permission bits, link counts,
file sizes, owners, errno values and the direction in which times move do not.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import json
import os
import socket
import stat
import time
from collections.abc import Callable
from typing import Any

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
# Timestamps of the oracle may be coarse (jiffies): sleep this long before an operation whose
# time effects are checked, so that "changed" is visible on any filesystem.
TICK = 0.012

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                            ctypes.c_uint]
_libc.opendir.restype = ctypes.c_void_p
_libc.opendir.argtypes = [ctypes.c_char_p]
_libc.readdir.restype = ctypes.c_void_p
_libc.readdir.argtypes = [ctypes.c_void_p]
_libc.telldir.restype = ctypes.c_long
_libc.telldir.argtypes = [ctypes.c_void_p]
_libc.seekdir.restype = None
_libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
_libc.closedir.argtypes = [ctypes.c_void_p]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec),
                            ctypes.c_int]


# glibc x86_64/aarch64 struct dirent: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name[256]
_DNAME_OFF = 19


def _err(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, f"errno {e.errno}")


def _libc_check(rc: int) -> None:
    if rc != 0:
        n = ctypes.get_errno()
        raise OSError(n, os.strerror(n))


def norm_stat(st: os.stat_result) -> dict[str, Any]:
    """The fields of a stat that two conforming filesystems must agree on."""
    fmt = stat.S_IFMT(st.st_mode)
    d: dict[str, Any] = {"type": stat.filemode(fmt | 0)[0], "perm": oct(stat.S_IMODE(st.st_mode)),
                         "nlink": st.st_nlink, "uid": st.st_uid, "gid": st.st_gid}
    if not stat.S_ISDIR(st.st_mode):   # directory sizes are filesystem-specific
        d["size"] = st.st_size
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        d["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
    return d


def _data(b: bytes) -> Any:
    """Short data as is; long data as its length and digest (keeps failure reports readable)."""
    if len(b) <= 64:
        return b
    return f"{len(b)} bytes sha256:{hashlib.sha256(b).hexdigest()[:16]}"


def _direction(a: int, b: int) -> str:
    return ">" if b > a else "=" if b == a else "<"


class Fs:
    def __init__(self, root: str) -> None:
        self.root = root
        self.trace: list[tuple[str, Any]] = []
        self.fds: dict[str, int] = {}
        self.snaps: dict[str, tuple[int, int, int]] = {}

    # --- plumbing -------------------------------------------------------------------------
    def p(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def _do(self, step: str, fn: Callable[[], Any], show: Callable[[Any], Any] | None = None
            ) -> Any:
        try:
            r = fn()
        except OSError as e:
            self.trace.append((step, _err(e)))
            return None
        self.trace.append((step, "ok" if show is None else show(r)))
        return r

    def note(self, step: str, value: Any) -> None:
        self.trace.append((step, value))

    def close_all(self) -> None:
        for fd in self.fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()

    # --- descriptors ----------------------------------------------------------------------
    def open(self, fd: str, rel: str, flags: int, mode: int = 0o644) -> bool:
        r = self._do(f"open {rel} {flags:#o}", lambda: os.open(self.p(rel), flags, mode))
        if r is not None:
            self.fds[fd] = r
        return r is not None

    def close(self, fd: str) -> None:
        n = self.fds.pop(fd)
        self._do(f"close {fd}", lambda: os.close(n))

    def write(self, fd: str, data: bytes) -> None:
        self._do(f"write {fd} {len(data)}", lambda: os.write(self.fds[fd], data), lambda r: r)

    def pwrite(self, fd: str, data: bytes, off: int) -> None:
        self._do(f"pwrite {fd} {len(data)}@{off}", lambda: os.pwrite(self.fds[fd], data, off),
                 lambda r: r)

    def read(self, fd: str, n: int) -> None:
        self._do(f"read {fd} {n}", lambda: os.read(self.fds[fd], n), _data)

    def pread(self, fd: str, n: int, off: int) -> None:
        self._do(f"pread {fd} {n}@{off}", lambda: os.pread(self.fds[fd], n, off),
                 _data)

    def lseek(self, fd: str, off: int, how: int) -> None:
        self._do(f"lseek {fd} {off} {how}", lambda: os.lseek(self.fds[fd], off, how),
                 lambda r: r)

    def ftruncate(self, fd: str, size: int) -> None:
        self._do(f"ftruncate {fd} {size}", lambda: os.ftruncate(self.fds[fd], size))

    def fstat(self, fd: str) -> None:
        self._do(f"fstat {fd}", lambda: os.fstat(self.fds[fd]), norm_stat)

    # --- names ----------------------------------------------------------------------------
    def stat(self, rel: str, follow: bool = True) -> None:
        self._do(f"stat {rel} follow={follow}",
                 lambda: os.stat(self.p(rel), follow_symlinks=follow), norm_stat)

    def truncate(self, rel: str, size: int) -> None:
        self._do(f"truncate {rel} {size}", lambda: os.truncate(self.p(rel), size))

    def mkdir(self, rel: str, mode: int = 0o755) -> None:
        self._do(f"mkdir {rel} {mode:#o}", lambda: os.mkdir(self.p(rel), mode))

    def rmdir(self, rel: str) -> None:
        self._do(f"rmdir {rel}", lambda: os.rmdir(self.p(rel)))

    def unlink(self, rel: str) -> None:
        self._do(f"unlink {rel}", lambda: os.unlink(self.p(rel)))

    def link(self, src: str, dst: str, follow: bool = False) -> None:
        self._do(f"link {src} {dst}",
                 lambda: os.link(self.p(src), self.p(dst), follow_symlinks=follow))

    def symlink(self, target: str, rel: str) -> None:
        self._do(f"symlink {target[:40]} {rel}", lambda: os.symlink(target, self.p(rel)))

    def readlink(self, rel: str) -> None:
        self._do(f"readlink {rel}", lambda: os.readlink(self.p(rel)), lambda r: r)

    def rename(self, src: str, dst: str) -> None:
        self._do(f"rename {src} {dst}", lambda: os.rename(self.p(src), self.p(dst)))

    def renameat2(self, src: str, dst: str, flags: int) -> None:
        def go() -> None:
            _libc_check(_libc.renameat2(AT_FDCWD, os.fsencode(self.p(src)), AT_FDCWD,
                                        os.fsencode(self.p(dst)), flags))
        self._do(f"renameat2 {src} {dst} {flags}", go)

    def chmod(self, rel: str, mode: int) -> None:
        self._do(f"chmod {rel} {mode:#o}", lambda: os.chmod(self.p(rel), mode))

    def chown(self, rel: str, uid: int, gid: int, follow: bool = True) -> None:
        self._do(f"chown {rel} {uid} {gid} follow={follow}",
                 lambda: os.chown(self.p(rel), uid, gid, follow_symlinks=follow))

    def utimensat(self, rel: str, atime: tuple[int, int], mtime: tuple[int, int],
                  follow: bool = True) -> None:
        """Times as (sec, nsec); nsec may be UTIME_NOW or UTIME_OMIT."""
        def go() -> None:
            ts = (_Timespec * 2)(_Timespec(*atime), _Timespec(*mtime))
            _libc_check(_libc.utimensat(AT_FDCWD, os.fsencode(self.p(rel)), ts,
                                        0 if follow else AT_SYMLINK_NOFOLLOW))
        self._do(f"utimensat {rel} {atime} {mtime}", go)

    def times(self, rel: str, follow: bool = True) -> None:
        """Record exact atime/mtime (for explicitly set times, which must round-trip)."""
        self._do(f"times {rel}", lambda: os.stat(self.p(rel), follow_symlinks=follow),
                 lambda s: (s.st_atime_ns, s.st_mtime_ns))

    def mkfifo(self, rel: str, mode: int = 0o644) -> None:
        self._do(f"mkfifo {rel}", lambda: os.mkfifo(self.p(rel), mode))

    def mknod(self, rel: str, mode: int, dev: int = 0) -> None:
        self._do(f"mknod {rel} {mode:#o}", lambda: os.mknod(self.p(rel), mode, dev))

    def bind_socket(self, rel: str) -> None:
        def go() -> None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.bind(self.p(rel))
            finally:
                s.close()
        self._do(f"bind {rel}", go)

    def setxattr(self, rel: str, name: str, value: bytes, flags: int = 0) -> None:
        self._do(f"setxattr {rel} {name} {len(value)} {flags}",
                 lambda: os.setxattr(self.p(rel), name, value, flags))

    def getxattr(self, rel: str, name: str) -> None:
        self._do(f"getxattr {rel} {name}", lambda: os.getxattr(self.p(rel), name), _data)

    def listxattr(self, rel: str) -> None:
        # user.aifs.* are AIFS's documented, computed attributes (README: every file has them):
        # an intended addition, so they are left out of the comparison.
        self._do(f"listxattr {rel}", lambda: os.listxattr(self.p(rel)),
                 lambda r: sorted(n for n in r if not n.startswith("user.aifs.")))

    def removexattr(self, rel: str, name: str) -> None:
        self._do(f"removexattr {rel} {name}", lambda: os.removexattr(self.p(rel), name))

    def listdir(self, rel: str) -> list[str]:
        r = self._do(f"listdir {rel}", lambda: os.listdir(self.p(rel)), sorted)
        return list(r or [])

    def raw_readdir(self, rel: str) -> None:
        """readdir(3) including "." and ".." (os.listdir and os.scandir hide those)."""
        self._do(f"readdir(3) {rel}", lambda: readdir_names(self.p(rel)), sorted)

    def statvfs(self, rel: str) -> None:
        def show(s: os.statvfs_result) -> dict[str, Any]:
            return {"namemax": s.f_namemax, "bsize>0": s.f_bsize > 0,
                    "bfree<=blocks": s.f_bfree <= s.f_blocks,
                    "bavail<=bfree": s.f_bavail <= s.f_bfree,
                    "ffree<=files": s.f_ffree <= s.f_files}
        self._do(f"statvfs {rel}", lambda: os.statvfs(self.p(rel)), show)

    # --- times ----------------------------------------------------------------------------
    def snap(self, key: str, rel: str, follow: bool = True) -> None:
        s = os.stat(self.p(rel), follow_symlinks=follow)
        self.snaps[key] = (s.st_atime_ns, s.st_mtime_ns, s.st_ctime_ns)
        time.sleep(TICK)

    def since(self, key: str, rel: str, fields: str = "mc", follow: bool = True) -> None:
        def show(s: os.stat_result) -> dict[str, str]:
            a0, m0, c0 = self.snaps[key]
            now = {"a": (a0, s.st_atime_ns), "m": (m0, s.st_mtime_ns), "c": (c0, s.st_ctime_ns)}
            return {f: _direction(*now[f]) for f in fields}
        self._do(f"times of {rel} since {key}",
                 lambda: os.stat(self.p(rel), follow_symlinks=follow), show)

    # --- other users ----------------------------------------------------------------------
    def as_user(self, step: str, uid: int, gid: int, fn: Callable[[str], Any]) -> None:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: drop privileges, run, report as JSON, exit without cleanup
            os.close(r)
            try:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
                try:
                    out: Any = fn(self.root)
                except OSError as e:
                    out = _err(e)
                data = json.dumps(out).encode()
            except BaseException as e:  # noqa: BLE001 - must reach os._exit
                data = json.dumps(f"child failed: {e!r}").encode()
            os.write(w, data)
            os._exit(0)
        os.close(w)
        chunks = []
        while chunk := os.read(r, 65536):
            chunks.append(chunk)
        os.close(r)
        os.waitpid(pid, 0)
        self.trace.append((f"as {uid}:{gid} {step}", json.loads(b"".join(chunks))))


def readdir_names(path: str, stop_after: int | None = None) -> list[str]:
    d = _libc.opendir(os.fsencode(path))
    if not d:
        n = ctypes.get_errno()
        raise OSError(n, os.strerror(n), path)
    try:
        names: list[str] = []
        while stop_after is None or len(names) < stop_after:
            ent = _libc.readdir(d)
            if not ent:
                break
            names.append(os.fsdecode(ctypes.string_at(ent + _DNAME_OFF)))
        return names
    finally:
        _libc.closedir(d)


def telldir_replay(path: str, first: int) -> tuple[list[str], list[str], list[str]]:
    """Read `first` entries, telldir, read the rest, seekdir back and read the rest again."""
    d = _libc.opendir(os.fsencode(path))
    if not d:
        n = ctypes.get_errno()
        raise OSError(n, os.strerror(n), path)

    def drain(limit: int | None = None) -> list[str]:
        out: list[str] = []
        while limit is None or len(out) < limit:
            ent = _libc.readdir(d)
            if not ent:
                break
            out.append(os.fsdecode(ctypes.string_at(ent + _DNAME_OFF)))
        return out
    try:
        head = drain(first)
        pos = _libc.telldir(d)
        rest = drain()
        _libc.seekdir(d, pos)
        again = drain()
        return head, rest, again
    finally:
        _libc.closedir(d)


# =========================================================================================
# Cases. Each is a short sequence; the trace of the AIFS run must equal the native one.
# =========================================================================================
CASES: dict[str, Callable[[Fs], None]] = {}
NOBODY = 65534


def case(fn: Callable[[Fs], None]) -> Callable[[Fs], None]:
    CASES[fn.__name__.removeprefix("c_")] = fn
    return fn


def _file(fs: Fs, rel: str, data: bytes = b"", mode: int = 0o644) -> None:
    if fs.open("_w", rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode):
        if data:
            fs.write("_w", data)
        fs.close("_w")


# --- open -------------------------------------------------------------------------------
@case
def c_open_excl_existing(fs: Fs) -> None:
    _file(fs, "f", b"x")
    fs.open("a", "f", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    fs.open("b", "f", os.O_CREAT | os.O_WRONLY)      # without O_EXCL: fine
    fs.symlink("f", "l")
    fs.open("c", "l", os.O_CREAT | os.O_EXCL | os.O_WRONLY)   # O_EXCL does not follow
    fs.symlink("nowhere", "dang")
    fs.open("d", "dang", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    fs.stat("f")


@case
def c_open_create_mode_and_parent(fs: Fs) -> None:
    fs.mkdir("d")
    fs.snap("d", "d")
    fs.open("a", "d/f", os.O_CREAT | os.O_WRONLY, 0o640)
    fs.since("d", "d")
    fs.stat("d/f")
    fs.fstat("a")
    fs.open("b", "d/g", os.O_CREAT | os.O_RDWR, 0o4755)
    fs.stat("d/g")


@case
def c_open_errors(fs: Fs) -> None:
    _file(fs, "f", b"abc")
    fs.mkdir("d")
    fs.open("a", "f", os.O_RDONLY | os.O_DIRECTORY)
    fs.open("b", "d", os.O_WRONLY)
    fs.open("c", "d", os.O_RDWR)
    fs.open("e", "d", os.O_RDONLY)
    fs.open("g", "missing/f", os.O_CREAT | os.O_WRONLY)
    fs.open("h", "f/x", os.O_CREAT | os.O_WRONLY)
    fs.open("i", "f/x", os.O_RDONLY)
    fs.open("j", "missing", os.O_RDONLY)
    fs.open("k", "d", os.O_CREAT | os.O_WRONLY)


@case
def c_open_name_length(fs: Fs) -> None:
    fs.open("a", "x" * 255, os.O_CREAT | os.O_WRONLY)
    fs.open("b", "y" * 256, os.O_CREAT | os.O_WRONLY)
    fs.mkdir("z" * 256)
    fs.stat("y" * 256)
    fs.listdir("")


@case
def c_open_trunc(fs: Fs) -> None:
    _file(fs, "f", b"hello world")
    fs.snap("f", "f")
    fs.open("a", "f", os.O_WRONLY | os.O_TRUNC)
    fs.since("f", "f")
    fs.stat("f")
    _file(fs, "g", b"data")
    fs.open("b", "g", os.O_RDONLY | os.O_TRUNC)      # Linux truncates even O_RDONLY
    fs.stat("g")


@case
def c_same_size_truncates_update_mtime(fs: Fs) -> None:
    """open(O_TRUNC) of an empty file, truncate() and ftruncate() to the current size: Linux
    marks mtime and ctime for update (POSIX requires it for O_TRUNC)."""
    _file(fs, "e")
    fs.snap("e", "e")
    fs.open("c", "e", os.O_WRONLY | os.O_TRUNC)
    fs.since("e", "e")
    _file(fs, "f", b"abc")
    fs.snap("f", "f")
    fs.truncate("f", 3)
    fs.since("f", "f")
    fs.open("w", "f", os.O_RDWR)
    fs.snap("g", "f")
    fs.ftruncate("w", 3)
    fs.since("g", "f")


@case
def c_open_append(fs: Fs) -> None:
    _file(fs, "f", b"0123")
    fs.open("a", "f", os.O_WRONLY | os.O_APPEND)
    fs.lseek("a", 0, os.SEEK_SET)
    fs.write("a", b"AB")
    fs.pwrite("a", b"zz", 0)        # Linux: pwrite with O_APPEND appends
    fs.close("a")
    fs.open("r", "f", os.O_RDONLY)
    fs.read("r", 100)


@case
def c_append_two_fds(fs: Fs) -> None:
    _file(fs, "f")
    fs.open("a", "f", os.O_WRONLY | os.O_APPEND)
    fs.open("b", "f", os.O_WRONLY | os.O_APPEND)
    for i in range(4):
        fs.write("a", b"a%d" % i)
        fs.write("b", b"bb%d" % i)
    fs.fstat("a")
    fs.close("a")
    fs.close("b")
    fs.open("r", "f", os.O_RDONLY)
    fs.read("r", 100)


@case
def c_open_creat_through_dangling_symlink(fs: Fs) -> None:
    fs.symlink("target", "l")
    fs.open("a", "l", os.O_CREAT | os.O_WRONLY, 0o600)   # creates the target
    fs.stat("target")
    fs.stat("l", follow=False)
    fs.open("b", "l", os.O_RDONLY | os.O_NOFOLLOW)
    fs.symlink("sub/x", "l2")
    fs.open("c", "l2", os.O_CREAT | os.O_WRONLY)         # missing directory in the target


@case
def c_umask(fs: Fs) -> None:
    old = os.umask(0o027)
    try:
        fs.open("a", "f", os.O_CREAT | os.O_WRONLY, 0o666)
        fs.mkdir("d", 0o777)
        fs.mkfifo("p", 0o666)
        fs.bind_socket("s")
        fs.symlink("f", "l")
    finally:
        os.umask(old)
    for rel in ("f", "d", "p", "s"):
        fs.stat(rel)
    fs.stat("l", follow=False)


@case
def c_holes_and_eof(fs: Fs) -> None:
    fs.open("w", "f", os.O_CREAT | os.O_RDWR)
    fs.pwrite("w", b"end", 10000)
    fs.fstat("w")
    fs.pread("w", 10, 5000)
    fs.pread("w", 10, 9998)
    fs.pread("w", 10, 20000)
    fs.lseek("w", 0, os.SEEK_END)
    fs.close("w")
    fs.open("r", "f", os.O_RDONLY)
    fs.pread("r", 20000, 0)
    fs.fstat("r")


@case
def c_posix_fallocate(fs: Fs) -> None:
    fs.open("w", "f", os.O_CREAT | os.O_RDWR)
    fs.write("w", b"abc")
    fs._do("posix_fallocate 0 10000", lambda: os.posix_fallocate(fs.fds["w"], 0, 10000))
    fs.fstat("w")
    fs.pread("w", 10, 0)
    fs.close("w")
    fs.stat("f")


@case
def c_fd_ops_after_unlink(fs: Fs) -> None:
    _file(fs, "f", b"abc")
    fs.open("w", "f", os.O_RDWR)
    fs.unlink("f")
    fs._do("fchmod 0600", lambda: os.chmod(fs.fds["w"], 0o600))
    fs._do("fchown 5 6", lambda: os.chown(fs.fds["w"], 5, 6))
    fs._do("futimens", lambda: os.utime(fs.fds["w"], ns=(1_000_000_000, 2_000_000_000)))
    fs._do("fsetxattr", lambda: os.setxattr(fs.fds["w"], "user.x", b"1"))
    fs._do("fgetxattr", lambda: os.getxattr(fs.fds["w"], "user.x"), _data)
    fs._do("fstat times", lambda: os.fstat(fs.fds["w"]), lambda s: (s.st_atime_ns, s.st_mtime_ns))
    fs.fstat("w")
    fs._do("fsync", lambda: os.fsync(fs.fds["w"]))


# --- chmod ------------------------------------------------------------------------------
@case
def c_chmod_bits(fs: Fs) -> None:
    _file(fs, "f")
    fs.mkdir("d")
    for mode in (0o0, 0o4755, 0o2755, 0o1755, 0o7777, 0o640):
        fs.chmod("f", mode)
        fs.stat("f")
        fs.chmod("d", mode)
        fs.stat("d")
    fs.snap("f", "f")
    fs.chmod("f", 0o600)
    fs.since("f", "f")
    fs.chmod("missing", 0o600)


@case
def c_chmod_symlink_follows(fs: Fs) -> None:
    _file(fs, "f")
    fs.symlink("f", "l")
    fs.stat("l", follow=False)
    fs.chmod("l", 0o600)
    fs.stat("f")
    fs.stat("l", follow=False)
    fs.symlink("nowhere", "dang")
    fs.chmod("dang", 0o600)


# --- chown ------------------------------------------------------------------------------
@case
def c_chown_root(fs: Fs) -> None:
    _file(fs, "f")
    fs.snap("f", "f")
    fs.chown("f", 1234, 5678)
    fs.stat("f")
    fs.since("f", "f")
    fs.chown("f", -1, 42)
    fs.stat("f")
    fs.chown("f", 77, -1)
    fs.stat("f")


@case
def c_chown_noop_updates_ctime(fs: Fs) -> None:
    _file(fs, "f")
    fs.snap("g", "f")
    fs.chown("f", -1, -1)
    fs.stat("f")
    fs.since("g", "f")


@case
def c_chown_symlink(fs: Fs) -> None:
    _file(fs, "f")
    fs.symlink("f", "l")
    fs.chown("l", 11, 12)                 # follows
    fs.stat("f")
    fs.stat("l", follow=False)
    fs.chown("l", 21, 22, follow=False)   # lchown
    fs.stat("f")
    fs.stat("l", follow=False)


@case
def c_chown_clears_setid(fs: Fs) -> None:
    _file(fs, "f")
    fs.chmod("f", 0o6755)
    fs.chown("f", 100, 100)
    fs.stat("f")
    fs.mkdir("d")
    fs.chmod("d", 0o6755)
    fs.chown("d", 100, 100)
    fs.stat("d")


# --- link -------------------------------------------------------------------------------
@case
def c_link_counts(fs: Fs) -> None:
    _file(fs, "f", b"abc")
    fs.mkdir("d")
    fs.snap("f", "f")
    fs.snap("d", "d")
    fs.link("f", "d/g")
    fs.since("f", "f")
    fs.since("d", "d")
    fs.stat("f")
    fs.stat("d/g")
    fs.link("f", "h")
    fs.stat("h")
    fs.unlink("f")
    fs.stat("h")
    fs.stat("d/g")
    fs.link("h", "d/g")
    fs.link("d", "d2")
    fs.link("missing", "x")
    fs.link("h", "missing/x")
    fs.symlink("h", "l")
    fs.link("l", "l2")                 # linkat without FOLLOW links the symlink itself
    fs.stat("l2", follow=False)
    fs.stat("l", follow=False)
    fs.link("l", "l3", follow=True)
    fs.stat("h")


# --- mkdir ------------------------------------------------------------------------------
@case
def c_mkdir_basics(fs: Fs) -> None:
    fs.snap("root", "")
    fs.stat("")
    fs.mkdir("d", 0o777)
    fs.stat("d")
    fs.stat("")
    fs.since("root", "")
    fs.mkdir("d")
    _file(fs, "f")
    fs.mkdir("f")
    fs.symlink("d", "l")
    fs.mkdir("l")
    fs.mkdir("missing/d")
    fs.mkdir("f/d")
    fs.mkdir("d/e", 0o7777)
    fs.stat("d/e")
    fs.stat("d")


@case
def c_setgid_dir_inheritance(fs: Fs) -> None:
    fs.mkdir("d")
    fs.chown("d", 0, 4321)
    fs.chmod("d", 0o2775)
    fs.stat("d")
    _file(fs, "d/f")
    fs.stat("d/f")
    fs.mkdir("d/sub")
    fs.stat("d/sub")
    fs.mkfifo("d/p")
    fs.stat("d/p")


# --- rmdir ------------------------------------------------------------------------------
@case
def c_rmdir_errors(fs: Fs) -> None:
    fs.mkdir("d")
    fs.mkdir("d/e")
    _file(fs, "f")
    fs.rmdir("d")
    fs.rmdir("f")
    fs.rmdir("missing")
    fs.rmdir("d/e/.")
    fs.rmdir("d/e/..")
    fs.snap("d", "d")
    fs.rmdir("d/e")
    fs.since("d", "d")
    fs.stat("d")
    fs.rmdir("d")
    fs.stat("d")


@case
def c_rmdir_open_dir(fs: Fs) -> None:
    fs.mkdir("d")
    fs.open("d", "d", os.O_RDONLY | os.O_DIRECTORY)
    fs.rmdir("d")
    fs.fstat("d")
    fs.open("x", "d/x", os.O_CREAT | os.O_WRONLY)


# --- rename -----------------------------------------------------------------------------
@case
def c_rename_file_over_file(fs: Fs) -> None:
    _file(fs, "a", b"AAA")
    _file(fs, "b", b"B")
    fs.open("ob", "b", os.O_RDONLY)
    fs.snap("a", "a")
    fs.snap("root", "")
    fs.rename("a", "b")
    fs.since("a", "b")
    fs.since("root", "")
    fs.stat("a")
    fs.stat("b")
    fs.fstat("ob")
    fs.read("ob", 10)       # the replaced file is still readable via its descriptor
    fs.listdir("")


@case
def c_rename_dirs(fs: Fs) -> None:
    fs.mkdir("a")
    _file(fs, "a/f", b"x")
    fs.mkdir("b")
    fs.mkdir("c")
    _file(fs, "c/g")
    fs.mkdir("p")
    fs.rename("a", "b")               # over an empty dir
    fs.stat("b/f")
    fs.stat("a")
    fs.rename("b", "c")               # over a non-empty dir
    fs.stat("")
    fs.snap("p", "p")
    fs.snap("root", "")
    fs.snap("b", "b")
    fs.rename("b", "p/b")             # move between parents
    fs.since("p", "p")
    fs.since("root", "")
    fs.since("b", "p/b")
    fs.stat("p")
    fs.stat("")
    fs.stat("p/b/..")
    fs.rename("p", "p/b/inside")      # into its own subtree
    fs.rename("p", "p/inside")
    fs.rename("p/b", "p/b")           # to itself
    fs.stat("p/b")


@case
def c_rename_type_mismatch(fs: Fs) -> None:
    _file(fs, "f")
    fs.mkdir("d")
    fs.mkdir("e")
    _file(fs, "e/x")
    fs.rename("f", "d")
    fs.rename("d", "f")
    fs.rename("d", "e")
    fs.rename("missing", "g")
    fs.rename("f", "missing/g")
    fs.rename("f", "f/g")
    fs.rename("f", "f")
    fs.stat("f")
    fs.stat("d")


@case
def c_rename_hardlinks(fs: Fs) -> None:
    _file(fs, "a", b"1")
    fs.link("a", "b")
    fs.rename("a", "b")               # same inode: nothing happens
    fs.listdir("")
    fs.stat("a")
    fs.stat("b")


@case
def c_rename_symlink(fs: Fs) -> None:
    _file(fs, "f")
    fs.symlink("f", "l")
    fs.rename("l", "m")
    fs.readlink("m")
    fs.stat("m", follow=False)
    fs.stat("f")


@case
def c_renameat2_noreplace(fs: Fs) -> None:
    _file(fs, "a", b"a")
    _file(fs, "b", b"bb")
    fs.renameat2("a", "b", RENAME_NOREPLACE)
    fs.stat("a")
    fs.stat("b")
    fs.renameat2("a", "c", RENAME_NOREPLACE)
    fs.listdir("")
    fs.renameat2("c", "d", RENAME_NOREPLACE | RENAME_EXCHANGE)


@case
def c_renameat2_exchange(fs: Fs) -> None:
    _file(fs, "a", b"a")
    fs.mkdir("d")
    _file(fs, "d/x")
    fs.mkdir("p")
    fs.snap("a", "a")
    fs.renameat2("a", "d", RENAME_EXCHANGE)
    fs.stat("a")
    fs.stat("d")
    fs.stat("a/x")
    fs.since("a", "d")
    fs.renameat2("a", "p/q", RENAME_EXCHANGE)
    fs.renameat2("a", "p", RENAME_EXCHANGE)   # directories at the same level
    fs.stat("p/x")
    fs.renameat2("d", "p/x", RENAME_EXCHANGE)  # file <-> file in a subdir
    fs.stat("d")
    fs.stat("p/x")
    fs.stat("p")
    fs.stat("a")


@case
def c_renameat2_exchange_across_parents(fs: Fs) -> None:
    fs.mkdir("x")
    fs.mkdir("x/sub")
    fs.mkdir("y")
    _file(fs, "y/f", b"f")
    fs.renameat2("x/sub", "y/f", RENAME_EXCHANGE)
    fs.stat("x")
    fs.stat("y")
    fs.stat("x/sub")
    fs.stat("y/f")
    fs.stat("y/f/..")
    fs.renameat2("x", "x/sub", RENAME_EXCHANGE)   # x/sub lies inside x: EINVAL
    fs.mkdir("y/f/deep")
    fs.renameat2("y", "y/f/deep", RENAME_EXCHANGE)  # into its own subtree: EINVAL
    fs.stat("y")


# --- symlink ----------------------------------------------------------------------------
@case
def c_symlink_targets(fs: Fs) -> None:
    fs.symlink("nowhere", "dang")
    fs.readlink("dang")
    fs.stat("dang")
    fs.stat("dang", follow=False)
    long = "/".join(["a" * 254] * 16)[:4095]
    fs.symlink(long, "long")
    fs.readlink("long")
    fs.stat("long", follow=False)
    fs.symlink(long + "b", "toolong")
    fs.symlink("x", "dang")
    _file(fs, "f")
    fs.readlink("f")
    fs.symlink("loop2", "loop1")
    fs.symlink("loop1", "loop2")
    fs.stat("loop1")
    fs.open("o", "loop1", os.O_RDONLY)
    fs.open("o", "loop1", os.O_RDONLY | os.O_CREAT)
    fs.symlink("x", "y" * 256)
    fs.symlink("f", "rel")
    fs.stat("rel")


@case
def c_symlink_parent_times(fs: Fs) -> None:
    fs.mkdir("d")
    fs.snap("d", "d")
    fs.symlink("t", "d/l")
    fs.since("d", "d")
    fs.stat("d/l", follow=False)


# --- truncate ---------------------------------------------------------------------------
@case
def c_truncate(fs: Fs) -> None:
    _file(fs, "f", b"abcdef")
    fs.snap("f", "f")
    fs.truncate("f", 10)
    fs.since("f", "f")
    fs.stat("f")
    fs.open("r", "f", os.O_RDONLY)
    fs.read("r", 100)
    fs.truncate("f", 3)
    fs.stat("f")
    fs.pread("r", 100, 0)
    fs.mkdir("d")
    fs.truncate("d", 0)
    fs.truncate("f", -1)
    fs.truncate("missing", 0)


@case
def c_ftruncate(fs: Fs) -> None:
    _file(fs, "f", b"abcdef")
    fs.open("w", "f", os.O_RDWR)
    fs.snap("f", "f")
    fs.ftruncate("w", 2)
    fs.since("f", "f")
    fs.fstat("w")
    fs.ftruncate("w", 5)
    fs.pread("w", 100, 0)
    fs.open("r", "f", os.O_RDONLY)
    fs.ftruncate("r", 0)
    fs.open("d", "", os.O_RDONLY)
    fs.ftruncate("d", 0)


# --- unlink -----------------------------------------------------------------------------
@case
def c_unlink(fs: Fs) -> None:
    _file(fs, "f", b"x")
    fs.link("f", "g")
    fs.snap("f", "f")
    fs.snap("root", "")
    fs.unlink("g")
    fs.since("f", "f")
    fs.since("root", "")
    fs.stat("f")
    fs.unlink("g")
    fs.mkdir("d")
    fs.unlink("d")
    fs.unlink("f/x")
    fs.symlink("d", "l")
    fs.unlink("l")
    fs.stat("d")
    fs.mkfifo("p")
    fs.unlink("p")
    fs.listdir("")


@case
def c_unlink_open_file(fs: Fs) -> None:
    _file(fs, "f", b"hello")
    fs.open("w", "f", os.O_RDWR)
    fs.unlink("f")
    fs.fstat("w")
    fs.pwrite("w", b" world", 5)
    fs.pread("w", 100, 0)
    fs.fstat("w")
    fs.ftruncate("w", 3)
    fs.pread("w", 100, 0)
    fs.stat("f")
    fs.listdir("")
    fs.close("w")
    fs.open("n", "f", os.O_CREAT | os.O_RDWR)
    fs.fstat("n")


@case
def c_sticky_dir(fs: Fs) -> None:
    fs.mkdir("t", 0o777)
    fs.chmod("t", 0o1777)
    _file(fs, "t/root_file", mode=0o666)
    fs.mkdir("t/root_dir", 0o777)
    fs.as_user("unlink other's file in sticky dir", NOBODY, NOBODY,
               lambda r: os.unlink(os.path.join(r, "t/root_file")))
    fs.as_user("rename other's file in sticky dir", NOBODY, NOBODY,
               lambda r: os.rename(os.path.join(r, "t/root_file"), os.path.join(r, "t/z")))
    fs.as_user("rmdir other's dir in sticky dir", NOBODY, NOBODY,
               lambda r: os.rmdir(os.path.join(r, "t/root_dir")))

    def own(r: str) -> list[str]:
        p = os.path.join(r, "t/mine")
        os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))
        os.unlink(p)
        return os.listdir(os.path.join(r, "t"))
    fs.as_user("create and unlink own file in sticky dir", NOBODY, NOBODY, lambda r: sorted(own(r)))
    fs.stat("t/root_file")


@case
def c_permissions_nonroot(fs: Fs) -> None:
    _file(fs, "secret", b"s", mode=0o600)
    fs.mkdir("closed", 0o700)
    _file(fs, "closed/f", b"x", mode=0o644)
    fs.as_user("read 0600 root file", NOBODY, NOBODY,
               lambda r: os.open(os.path.join(r, "secret"), os.O_RDONLY) and "opened")
    fs.as_user("traverse 0700 dir", NOBODY, NOBODY,
               lambda r: os.stat(os.path.join(r, "closed/f")).st_size)
    fs.as_user("chmod root file", NOBODY, NOBODY,
               lambda r: os.chmod(os.path.join(r, "secret"), 0o777))
    fs.as_user("chown root file", NOBODY, NOBODY,
               lambda r: os.chown(os.path.join(r, "secret"), NOBODY, NOBODY))
    fs.as_user("create in root's 0755 root dir", NOBODY, NOBODY,
               lambda r: os.mkdir(os.path.join(r, "nope")))


@case
def c_write_clears_setid(fs: Fs) -> None:
    _file(fs, "f", b"x", mode=0o666)
    fs.chmod("f", 0o6777)
    fs.stat("f")

    def write(r: str) -> int:
        fd = os.open(os.path.join(r, "f"), os.O_WRONLY)
        try:
            return os.write(fd, b"y")
        finally:
            os.close(fd)
    fs.as_user("write a setuid file", NOBODY, NOBODY, write)
    fs.stat("f")
    fs.chmod("f", 0o6777)
    fs.as_user("truncate a setuid file", NOBODY, NOBODY,
               lambda r: os.truncate(os.path.join(r, "f"), 0))
    fs.stat("f")


# --- utimensat --------------------------------------------------------------------------
@case
def c_utimensat(fs: Fs) -> None:
    _file(fs, "f", b"x")
    fs.snap("f", "f")
    fs.utimensat("f", (1000, 5), (2000, 123456789))
    fs.times("f")
    fs.since("f", "f", "c")
    fs.utimensat("f", (0, UTIME_OMIT), (3000, 0))
    fs.times("f")
    fs.snap("g", "f")
    fs.utimensat("f", (0, UTIME_NOW), (0, UTIME_OMIT))
    fs.since("g", "f", "amc")
    fs.snap("h", "f")
    fs.utimensat("f", (0, UTIME_OMIT), (0, UTIME_NOW))
    fs.since("h", "f", "amc")
    fs.snap("i", "f")
    fs.utimensat("f", (0, UTIME_OMIT), (0, UTIME_OMIT))
    fs.since("i", "f", "amc")
    fs.utimensat("missing", (0, UTIME_NOW), (0, UTIME_NOW))
    fs.mkdir("d")
    fs.utimensat("d", (7, 0), (8, 0))
    fs.times("d")
    fs.symlink("f", "l")
    fs.snap("j", "f")
    fs.utimensat("l", (11, 0), (12, 0), follow=False)
    fs.times("l", follow=False)
    fs.since("j", "f", "amc")          # the target is untouched
    fs.utimensat("l", (21, 0), (22, 0))
    fs.times("f")


@case
def c_write_times(fs: Fs) -> None:
    _file(fs, "f", b"x")
    fs.open("w", "f", os.O_WRONLY)
    fs.snap("f", "f")
    fs.write("w", b"abc")
    fs.close("w")
    fs.since("f", "f")
    fs.open("r", "f", os.O_RDONLY)
    fs.snap("r", "f")
    fs.read("r", 10)
    fs.close("r")
    fs.since("r", "f", "mc")


@case
def c_read_updates_atime(fs: Fs) -> None:
    _file(fs, "f", b"data")
    fs.utimensat("f", (1000, 0), (2000, 0))    # atime < mtime: relatime updates on read
    fs.open("r", "f", os.O_RDONLY)
    fs.snap("r", "f")
    fs.read("r", 10)
    fs.close("r")
    fs.since("r", "f", "a")


@case
def c_times_with_buffered_writes(fs: Fs) -> None:
    """Explicit times set while written data is still buffered must survive the close."""
    fs.open("w", "f", os.O_CREAT | os.O_RDWR)
    fs.write("w", b"x" * 5000)
    fs._do("futimens 5 6", lambda: os.utime(fs.fds["w"], ns=(5_000_000_000, 6_000_000_000)))
    fs.times("f")
    fs.close("w")
    fs.times("f")
    fs.stat("f")
    fs.open("w2", "f", os.O_RDWR)
    fs.pwrite("w2", b"y", 0)
    fs.utimensat("f", (7, 0), (8, 0))
    fs.close("w2")
    fs.times("f")
    fs.open("r", "f", os.O_RDONLY)
    fs.pread("r", 2, 0)


@case
def c_write_times_before_close(fs: Fs) -> None:
    """write(2) marks mtime/ctime for update at once, not at close."""
    _file(fs, "f", b"x")
    fs.open("w", "f", os.O_WRONLY)
    fs.snap("f", "f")
    fs.write("w", b"abc")
    fs.since("f", "f")
    fs.fstat("w")
    fs._do("fstat times moved", lambda: os.fstat(fs.fds["w"]),
           lambda st: st.st_mtime_ns > fs.snaps["f"][1])
    fs.close("w")
    fs.since("f", "f")


@case
def c_write_through_links(fs: Fs) -> None:
    _file(fs, "a", b"12345")
    fs.link("a", "b")
    fs.open("w", "a", os.O_WRONLY | os.O_APPEND)
    fs.write("w", b"678")
    fs.stat("b")                        # before close: same inode, new size
    fs.close("w")
    fs.open("r", "b", os.O_RDONLY)
    fs.read("r", 100)
    fs.chmod("a", 0o400)
    fs.stat("b")


@case
def c_write_to_replaced_file(fs: Fs) -> None:
    _file(fs, "old", b"old data")
    _file(fs, "new", b"new")
    fs.open("w", "old", os.O_RDWR)
    fs.rename("new", "old")
    fs.pwrite("w", b"OLD", 0)           # goes to the replaced, unlinked inode
    fs.fstat("w")
    fs.pread("w", 100, 0)
    fs.close("w")
    fs.open("r", "old", os.O_RDONLY)
    fs.read("r", 100)
    fs.stat("old")
    fs.listdir("")


@case
def c_open_fd_keeps_access(fs: Fs) -> None:
    _file(fs, "f", b"abc")
    fs.open("w", "f", os.O_RDWR)
    fs.chmod("f", 0o000)
    fs.pwrite("w", b"Z", 0)
    fs.pread("w", 10, 0)
    fs.close("w")
    fs.stat("f")
    fs.open("r", "f", os.O_RDONLY)      # root: DAC override
    fs.read("r", 10)


# --- special files ----------------------------------------------------------------------
@case
def c_fifo(fs: Fs) -> None:
    fs.mkfifo("p", 0o640)
    fs.stat("p")
    fs.mkfifo("p")
    fs.open("r", "p", os.O_RDONLY | os.O_NONBLOCK)
    fs.open("w", "p", os.O_WRONLY | os.O_NONBLOCK)
    fs.write("w", b"through the pipe")
    fs.read("r", 100)
    fs.mknod("q", stat.S_IFIFO | 0o600)
    fs.stat("q")


@case
def c_socket(fs: Fs) -> None:
    fs.bind_socket("s")
    fs.stat("s")
    fs.bind_socket("s")
    fs.unlink("s")
    fs.listdir("")


@case
def c_device_nodes(fs: Fs) -> None:
    fs.mknod("c", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    fs.stat("c")
    fs.mknod("b", stat.S_IFBLK | 0o600, os.makedev(7, 0))
    fs.stat("b")
    fs.mknod("r", stat.S_IFREG | 0o600)
    fs.stat("r")


# --- xattrs -----------------------------------------------------------------------------
@case
def c_xattr_basic(fs: Fs) -> None:
    _file(fs, "f")
    fs.mkdir("d")
    fs.getxattr("f", "user.a")
    fs.snap("f", "f")
    fs.setxattr("f", "user.a", b"1")
    fs.since("f", "f")
    fs.setxattr("f", "user.b", b"")
    fs.setxattr("d", "user.d", b"dir value")
    fs.getxattr("f", "user.a")
    fs.getxattr("f", "user.b")
    fs.getxattr("d", "user.d")
    fs.listxattr("f")
    fs.listxattr("d")
    fs.setxattr("f", "user.a", b"2")
    fs.getxattr("f", "user.a")
    fs.removexattr("f", "user.a")
    fs.removexattr("f", "user.a")
    fs.getxattr("f", "user.a")
    fs.listxattr("f")
    fs.getxattr("missing", "user.a")
    fs.symlink("f", "l")
    fs.setxattr("l", "user.via_link", b"v")     # follows the link
    fs.getxattr("f", "user.via_link")


@case
def c_xattr_flags(fs: Fs) -> None:
    _file(fs, "f")
    fs.setxattr("f", "user.a", b"1", os.XATTR_REPLACE)
    fs.setxattr("f", "user.a", b"1", os.XATTR_CREATE)
    fs.setxattr("f", "user.a", b"2", os.XATTR_CREATE)
    fs.getxattr("f", "user.a")
    fs.setxattr("f", "user.a", b"3", os.XATTR_REPLACE)
    fs.getxattr("f", "user.a")


@case
def c_xattr_large(fs: Fs) -> None:
    """Run against a tmpfs oracle: ext4 keeps all xattrs of an inode in one 4 KiB block."""
    _file(fs, "f")
    big = bytes(range(256)) * 256      # 64 KiB = XATTR_SIZE_MAX
    fs.setxattr("f", "user.big", big)
    fs.getxattr("f", "user.big")
    fs.setxattr("f", "user.big", big + b"!")      # E2BIG from the kernel
    fs.setxattr("f", "user.mid", big[:4000])
    fs.getxattr("f", "user.mid")
    fs.setxattr("f", "user." + "n" * 250, b"v")   # 255-byte name
    fs.getxattr("f", "user." + "n" * 250)
    fs.setxattr("f", "user." + "n" * 251, b"v")   # 256: ERANGE
    fs.listxattr("f")
    fs.removexattr("f", "user.big")
    fs.listxattr("f")


# --- readdir ----------------------------------------------------------------------------
@case
def c_readdir_dots(fs: Fs) -> None:
    fs.mkdir("d")
    _file(fs, "d/f")
    fs.raw_readdir("d")
    fs.raw_readdir("")


@case
def c_readdir_many_interleaved(fs: Fs) -> None:
    """More entries than AIFS's readdir page (1000), so listing crosses server pages."""
    fs.mkdir("d")
    names = [f"n{i:04d}" for i in range(1100)]
    for n in names:
        os.close(os.open(fs.p("d/" + n), os.O_CREAT | os.O_WRONLY, 0o644))
    fs.note("listed", sorted(os.listdir(fs.p("d"))) == names)
    # List while removing and adding: POSIX leaves removed/added names unspecified, but every
    # untouched name must appear exactly once.
    removed = {f"n{k:04d}" for k in [*range(100, 150), *range(990, 1010)]}
    seen: list[str] = []
    with os.scandir(fs.p("d")) as it:
        for i, e in enumerate(it):
            seen.append(e.name)
            if i == 50:
                for n in sorted(removed):
                    os.unlink(fs.p("d/" + n))
                for k in range(20):
                    os.close(os.open(fs.p(f"d/new{k}"), os.O_CREAT | os.O_WRONLY, 0o644))
    fs.note("no duplicates", len(seen) == len(set(seen)))
    fs.note("untouched names missed", sorted(set(names) - removed - set(seen)))
    fs.note("only known names", all(n in names or n.startswith("new") for n in seen))
    final = sorted(os.listdir(fs.p("d")))
    fs.note("final listing", final == sorted(set(names) - removed | {f"new{k}" for k in range(20)}))
    # restart: a fresh scandir sees the final state
    fs.note("scandir restart", sorted(e.name for e in os.scandir(fs.p("d"))) == final)
    head, rest, again = telldir_replay(fs.p("d"), 40)
    fs.note("telldir/seekdir replays the rest", (len(head), rest == again,
                                                 len(set(head + rest)) == len(head + rest)))
    fs.note("telldir covers all",
            sorted(n for n in head + rest if n not in (".", "..")) == final)


@case
def c_readdir_types(fs: Fs) -> None:
    fs.mkdir("d")
    _file(fs, "d/f")
    fs.mkdir("d/s")
    fs.symlink("f", "d/l")
    fs.mkfifo("d/p")
    with os.scandir(fs.p("d")) as it:
        fs.note("d_types", sorted((e.name, e.is_dir(follow_symlinks=False),
                                   e.is_file(follow_symlinks=False),
                                   e.is_symlink()) for e in it))


# --- statvfs ----------------------------------------------------------------------------
@case
def c_statvfs(fs: Fs) -> None:
    fs.statvfs("")
    _file(fs, "f")
    fs.statvfs("f")
    fs.statvfs("missing")
