"""Hardening of a real FUSE mount (issue 13): `/.aifs/assets/` on an `--allow-other` mount is
the mount owner's only unless `--assets-for-all`. Another user is uid 65534 (a real process
switched to it), so these need root.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

import pytest

from aifsfs.client import AIFSClient
from tests.e2e.conftest import Mount
from tests.helpers import ServerProc

NOBODY = 65534

def _probe(fn: Callable[[], object]) -> str:
    try:
        got = fn()
    except OSError as e:
        return errno.errorcode[e.errno or 0]
    return f"ok {len(got)}"  # type: ignore[arg-type]


def _as_nobody(mount: Mount, asset_id: str) -> list[str]:
    """What uid 65534 gets listing the assets and reading one: "ok <n>" or the errno name.
    A forked child switched to that uid (the venv's interpreter is not theirs to run)."""
    assets = mount.path / ".aifs" / "assets"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: never returns into pytest
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            out = [_probe(lambda: os.listdir(assets)),
                   _probe(lambda: (assets / asset_id).read_bytes())]
            os.write(w, "\n".join(out).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        text = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return text.split("\n")


@pytest.fixture
def asset(server: ServerProc) -> tuple[str, bytes]:
    data = os.urandom(50_000)
    with AIFSClient(server.address, token_file=server.token_file) as c:
        return c.put_asset(data), data


def _open_to_others(mount: Mount) -> None:
    # the mount lives in a 0700 temp dir: let uid 65534 reach the mountpoint
    os.chmod(mount.tmpdir, 0o755)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")
def test_assets_are_the_owners_only_on_allow_other(
        mount_factory: Callable[..., Mount], asset: tuple[str, bytes]) -> None:
    aid, data = asset
    m = mount_factory(None, "--allow-other")
    _open_to_others(m)
    assert os.stat(m.path).st_mode & 0o005          # the mount itself is open to others
    st = os.stat(m.path / ".aifs" / "assets")
    assert (st.st_mode & 0o777, st.st_uid) == (0o500, os.getuid())
    # the owner still reads the asset
    assert (m.path / ".aifs" / "assets" / aid).read_bytes() == data
    assert _as_nobody(m, aid) == ["EACCES", "EACCES"]


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")
def test_assets_for_all_opens_them(mount_factory: Callable[..., Mount],
                                   asset: tuple[str, bytes]) -> None:
    aid, data = asset
    m = mount_factory(None, "--allow-other", "--assets-for-all")
    _open_to_others(m)
    assert _as_nobody(m, aid) == ["ok 1", f"ok {len(data)}"]
