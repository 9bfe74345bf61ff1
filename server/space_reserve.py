"""Space held back on the data dir's disk so that deleting never fails for lack of it.

Interface:
    SpaceReserve(path, size=None)   size: 1/32 of the file system, within 256 KiB..16 MiB
        .restore() -> bool   (re)create the reserve file when the disk has room for it twice
                             over; True if it is held afterwards
        .release() -> bool   give its space back to the file system; True if this call did
                             (the caller may then retry what failed for lack of space);
                             never in a context whose FREES_SPACE is False
        .held -> bool

Why: SQLite writes its WAL before it can delete a row, and the collector records what it
frees before it deletes a chunk. On a disk full to the last byte (the chunk store's own writes
get there, or another program takes the rest), `rm` and the background collection would both
fail with ENOSPC forever: space could never come back without outside help. The server holds
a few MiB in a plain file of its data dir; when the metadata database finds its disk full it
releases that file, and the failed call (rolled back) runs once more with room to finish. The
collector's next passes delete the removed files' chunks; once the disk has room again the
reserve is taken back. Data writes never release it: they get ENOSPC as before, so the space
held back is there for the deletions that make room.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from contextvars import ContextVar
from pathlib import Path

log = logging.getLogger("aifs.server.space")

# Whether the work running in this context frees space: only such work may take the reserve.
# True by default (the collector, offline tools); the gRPC layer sets it per method
# (grpc_errors.rpc): removals yes, creates and data writes no. Without it, a create that found
# the disk full took the reserve for itself and the next rm found none (a mount sends the
# create of a file made under an exclusive directory lease at its close, after the file's data
# filled the disk: the disk-full drill saw the space never come back).
FREES_SPACE: ContextVar[bool] = ContextVar("aifs_frees_space", default=True)

RESERVE_MAX = 16 << 20
RESERVE_MIN = 256 << 10


def reserve_size(directory: str | os.PathLike[str]) -> int:
    """Enough for the WAL pages of a few deletions and a collection pass, small on a small disk."""
    st = os.statvfs(directory)
    return max(RESERVE_MIN, min(RESERVE_MAX, st.f_blocks * st.f_frsize // 32))


class SpaceReserve:
    def __init__(self, path: str | os.PathLike[str], size: int | None = None) -> None:
        self.path = Path(path)
        self.size = size if size is not None else reserve_size(self.path.parent)
        self._lock = threading.Lock()

    @property
    def held(self) -> bool:
        try:
            return self.path.stat().st_size >= self.size
        except OSError:
            return False

    def restore(self) -> bool:
        with self._lock:
            if self.held:
                return True
            try:
                st = os.statvfs(self.path.parent)
                if st.f_bavail * st.f_frsize < 2 * self.size:
                    return False
                tmp = self.path.with_name(self.path.name + ".tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    os.posix_fallocate(fd, 0, self.size)   # real blocks, not a sparse file
                finally:
                    os.close(fd)
                os.replace(tmp, self.path)
            except OSError as e:
                with contextlib.suppress(OSError):
                    self.path.with_name(self.path.name + ".tmp").unlink()
                log.warning("could not set aside %d KiB at %s (%s): a disk that fills up may "
                            "need space freed by hand before rm works", self.size >> 10,
                            self.path, e)
                return False
            log.info("holding %d KiB in %s so that deleting works on a full disk",
                     self.size >> 10, self.path)
            return True

    def release(self) -> bool:
        if not FREES_SPACE.get():
            return False
        with self._lock:
            if not self.held:
                return False
            try:
                self.path.unlink()
            except OSError as e:
                log.warning("could not release the space reserve %s: %s", self.path, e)
                return False
        log.warning("the data dir's disk is full: released the %d KiB reserve (%s) so that "
                    "removals and the collector can free space; it is taken back when there "
                    "is room", self.size >> 10, self.path)
        return True
