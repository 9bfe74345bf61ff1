"""What a listing costs over a real mount of a real server: a cold listing of a directory of
several pages shows every entry once, in order, and costs exactly one ReadDir per page (the
page fetched ahead while the kernel takes the one before is used, never asked again; the
kernel's last READDIR, asked after the last entry to learn the end, is answered by the mount:
it cost one more ReadDir per listing); a reader that stops early costs no more than the whole
listing; a name another mount adds is in the next listing. Calls are counted with the
server's Prometheus metrics.
"""

from __future__ import annotations

import os
import random
import stat
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from aifsfs.client import AIFSClient
from tests.e2e.conftest import Mount
from tests.e2e.test_leases import calls, total
from tests.helpers import ServerProc

pytestmark = pytest.mark.usefixtures("caches_kept")   # counts what dropped caches would add

PAGE = 1000                 # ops.READDIR_PAGE: entries per ReadDir the mount asks
N = 2 * PAGE + 150          # three pages, the last one short


def _readdirs(sp: ServerProc) -> int:
    return calls(sp).get("ReadDir", 0)


def _settled(sp: ServerProc, at_least: int, wait: float = 10.0) -> int:
    """ReadDir calls so far, once a fetch still in flight has been counted (at least
    `at_least`) and the count has stopped moving."""
    until = time.monotonic() + wait
    n = _readdirs(sp)
    while time.monotonic() < until:
        time.sleep(0.3)
        m = _readdirs(sp)
        if m == n and m >= at_least:
            return m
        n = m
    return n


def test_cold_listing_costs_one_call_per_page(
        metered: ServerProc, mount_factory: Callable[..., Mount]) -> None:
    with AIFSClient(metered.address, token=metered.token) as c:
        d = c.fs.mkdir(1, b"big").ino
        for i in range(N):
            c.fs.create(d, f"f{i:05d}".encode())
    a = mount_factory(metered)
    before = _readdirs(metered)
    names = os.listdir(a.path / "big")
    assert names == [f"f{i:05d}" for i in range(N)]      # listing (creation) order, once each
    # one call per page, none twice, none past the end (the kernel's last READDIR asked 4)
    assert _settled(metered, before + 3) - before == 3

    # a reader that stops after one entry: the kernel still fills its buffer (more than a
    # page on recent kernels); never more than the whole listing
    b = mount_factory(metered)
    before = _readdirs(metered)
    with os.scandir(b.path / "big") as it:
        first = next(it).name
    assert first == "f00000"
    assert 1 <= _settled(metered, before + 1) - before <= 3

    # another mount's new name is in A's next listing (its lease on the directory recalled)
    (b.path / "big" / "zz-from-b").write_bytes(b"b")
    again = os.listdir(a.path / "big")
    assert len(again) == N + 1 and again[-1] == "zz-from-b" and len(set(again)) == N + 1


def _listing(path: Path) -> dict[str, tuple[str, int]]:
    """name -> (kind, size) as a listing and the stats after it show them."""
    out = {}
    for e in os.scandir(path):
        st = e.stat(follow_symlinks=False)
        out[e.name] = ("d" if stat.S_ISDIR(st.st_mode) else "f", st.st_size if
                       stat.S_ISREG(st.st_mode) else 0)
    return out


def test_a_listing_of_files_this_mount_just_made_costs_no_call(
        metered: ServerProc, mount_factory: Callable[..., Mount]) -> None:
    """A directory this mount made and filled (it holds it alone) is listed from what the
    mount knows: each create's reply gave the name's place in the listing, so the listing
    after them (three pages), and the stats after it, cost no call, nor do listings after
    unlinks of ours; a name another mount adds then is in the next listing (recalled)."""
    a = mount_factory(metered)
    d = a.path / "made"
    d.mkdir()
    (d / "first").write_bytes(b"1")             # the reply leases the directory to A alone

    def make(i: int) -> None:
        (d / f"f{i:05d}").write_bytes(b"x" * (i % 5000))
    with ThreadPoolExecutor(4) as pool:         # closes together: CreateFiles, each entry's
        list(pool.map(make, range(N)))          # cookie in its reply
    (d / "sub").mkdir()
    want = {"first": ("f", 1), "sub": ("d", 0),
            **{f"f{i:05d}": ("f", i % 5000) for i in range(N)}}
    before = calls(metered)
    names = os.listdir(d)
    assert names[0] == "first" and names[-1] == "sub"      # creation order, once each
    assert sorted(names) == sorted(want) and len(names) == len(want)
    assert _listing(d) == want
    after = calls(metered)
    assert total(after) == total(before), {k: after[k] - before.get(k, 0) for k in after
                                           if after[k] != before.get(k, 0)}

    # names removed here leave the kept listing: still no ReadDir
    gone = ["f00000", f"f{PAGE + 5:05d}", f"f{N - 1:05d}"]
    for name in gone:
        os.unlink(d / name)
        del want[name]
    assert _listing(d) == want
    assert _readdirs(metered) == before.get("ReadDir", 0)

    b = mount_factory(metered)
    (b.path / "made" / "zz-from-b").write_bytes(b"bb")
    assert _listing(d) == {**want, "zz-from-b": ("f", 2)}


@pytest.mark.parametrize("seed", [1, 2])
def test_listings_follow_this_mounts_changes(
        seed: int, metered: ServerProc, mount_factory: Callable[..., Mount]) -> None:
    """Random creates, rewrites, mkdirs, renames and unlinks on one mount, each followed now
    and then by a listing: every listing (names, kinds, sizes) is what the changes made, and
    a second mount lists the same at the end."""
    rnd = random.Random(seed)
    a = mount_factory(metered)
    d = a.path / "r"
    d.mkdir()
    model: dict[str, tuple[str, int]] = {}
    listings, first = 0, _readdirs(metered)
    for step in range(400):
        op = rnd.random()
        name = f"n{rnd.randrange(60):02d}"
        p = d / name
        kind = model.get(name, ("", 0))[0]
        if op < 0.45 and kind != "d":
            size = rnd.randrange(3) * rnd.randrange(1, 70_000)
            p.write_bytes(bytes([step % 251]) * size)
            model[name] = ("f", size)
        elif op < 0.55 and not kind:
            p.mkdir()
            model[name] = ("d", 0)
        elif op < 0.7 and kind:
            other = f"n{rnd.randrange(60):02d}"
            if model.get(other, ("", 0))[0] or other == name:
                continue
            os.rename(p, d / other)
            model[other] = model.pop(name)
        elif op < 0.85 and kind:
            if kind == "d":
                p.rmdir()
            else:
                p.unlink()
            del model[name]
        if rnd.random() < 0.2:
            assert _listing(d) == model, f"step {step}"
            listings += 1
    assert _listing(d) == model
    # some were the mount's own (creates keep the listing; unlinks and renames drop it)
    assert _readdirs(metered) - first < listings
    b = mount_factory(metered)
    assert _listing(b.path / "r") == model


def test_a_tree_untarred_here_is_listed_with_no_call(
        tmp_path: Path, metered: ServerProc, mount_factory: Callable[..., Mount]) -> None:
    """tar sets each file's mode and times after writing it (queued with the directory's
    unlinks, answered by the mount): the listing after it shows them and costs no ReadDir,
    and another mount lists the same once the queue went."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(60):
        f = src / f"f{i:03d}"
        f.write_bytes(b"%d" % i * (i + 1))
        f.chmod(0o600 + (i % 3) * 0o40)
        os.utime(f, (1_600_000_000 + i, 1_500_000_000 + i * 1000))    # tar keeps seconds
    tarball = tmp_path / "t.tar"
    subprocess.run(["tar", "-cf", str(tarball), "-C", str(src), "."], check=True)
    a = mount_factory(metered)
    d = a.path / "x"
    d.mkdir()
    before = _readdirs(metered)
    subprocess.run(["tar", "-xf", str(tarball), "-C", str(d)], check=True)

    def seen(root: Path) -> dict[str, tuple[int, int, int]]:
        return {e.name: (e.stat().st_size, stat.S_IMODE(e.stat().st_mode),
                         e.stat().st_mtime_ns) for e in os.scandir(root)}
    want = seen(src)
    assert seen(d) == want
    assert _readdirs(metered) == before
    b = mount_factory(metered)
    assert seen(b.path / "x") == want
