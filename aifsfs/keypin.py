"""Pinned snapshot-signing keys (trust on first use, as ssh's known_hosts).

Interface:
    known_keys_path() -> Path       $AIFS_KNOWN_KEYS, else ${XDG_CONFIG_HOME:-~/.config}/aifs/known_keys
    check_pinned(address, namespace, public_key, path=None) -> bytes
        the first key seen for (server address, namespace) is stored; the same key later is
        returned; a different one raises KeyMismatch (nothing is overwritten)
    KeyMismatch                     an AIFSError (reason "KEY_MISMATCH"): the message names the
                                    file and line to remove if the key change is legitimate

File format: one line per pin, `ADDRESS NAMESPACE HEX(32-byte Ed25519 public key)`; lines
starting with `#` are comments. Written atomically (private file, 0600).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from aifs_core.errors import AIFSError
from aifs_core.fileutil import write_file_atomic


class KeyMismatch(AIFSError):
    reason = "KEY_MISMATCH"


def known_keys_path() -> Path:
    env = os.environ.get("AIFS_KNOWN_KEYS")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "aifs" / "known_keys"


def _read(path: Path) -> list[tuple[str, str, str]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and not line.startswith("#"):
            rows.append((parts[0], parts[1], parts[2].lower()))
    return rows


def check_pinned(address: str, namespace: str, public_key: bytes,
                 path: Path | None = None) -> bytes:
    """Return `public_key` once it is the pinned key of (address, namespace)."""
    p = path or known_keys_path()
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # a lock file next to it: two mounts pinning at once must not lose a line
    with open(p.with_name(p.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = _read(p)
        for i, (addr, ns, key) in enumerate(rows):
            if addr == address and ns == namespace:
                if key != public_key.hex():
                    raise KeyMismatch(
                        f"the signing key of namespace {namespace!r} at {address} changed: "
                        f"pinned {key[:16]}..., the server now gives {public_key.hex()[:16]}... "
                        f"Snapshots are refused. If the change is legitimate (a new data dir), "
                        f"remove line {i + 1} of {p}")
                return public_key
        rows.append((address, namespace, public_key.hex()))
        write_file_atomic(p, "".join(f"{a} {n} {k}\n" for a, n, k in rows).encode())
    return public_key
