"""Is this SQLite error a full disk? Shared by the metadata database and the chunk store's
small.sqlite, so both turn the same errors into NoSpace.

Interface:
    disk_full(path, exc) -> bool     `exc` (a sqlite3.Error on the database at `path`) is SQLite
                                     finding its disk full: SQLITE_FULL (also what ENOSPC
                                     writing the WAL gives), or an I/O error while the file
                                     system holding `path` has less than NEARLY_FULL free
"""

from __future__ import annotations

import os
import sqlite3

_SQLITE_IOERR, _SQLITE_FULL = 10, 13   # primary result codes (the low byte of extended ones)
# An I/O error while the file system has less than this free is taken for a full disk: SQLite
# reports ENOSPC on its shared-memory index or a checkpoint as a generic I/O error.
NEARLY_FULL = 1 << 20


def disk_full(path: str, exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary == _SQLITE_FULL or "database or disk is full" in str(exc):
        return True
    if primary == _SQLITE_IOERR or "disk I/O error" in str(exc):
        try:
            st = os.statvfs(os.path.dirname(os.path.abspath(path)))
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < NEARLY_FULL
    return False
