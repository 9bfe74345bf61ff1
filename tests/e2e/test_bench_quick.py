"""Smoke test of `aifs bench --quick`: real mounts of AIFS and every installed peer.

Checks that the command runs, that every target that ran produced every figure it should,
that the AIFS/peer ratios are computed from those figures, that a plot is written, and that
nothing is left mounted or running afterwards (also after Ctrl-C). Not speeds: the figures of
a --quick run are too small to mean anything.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

AIFS = [str(Path(sys.executable).with_name("aifs"))]
PEER_TOOLS = {"bindfs": "bindfs", "gocryptfs": "gocryptfs", "rclone": "rclone", "borg": "borg"}

if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
    pytest.skip("FUSE is not available on this machine", allow_module_level=True)


def _aifs_up_available() -> bool:
    r = subprocess.run([*AIFS, "up", "--help"], capture_output=True)
    return r.returncode == 0


def _mounts_under(d: Path) -> list[str]:
    out = []
    for line in Path("/proc/mounts").read_text().splitlines():
        mp = line.split()[1].replace("\\040", " ")
        if mp.startswith(str(d)):
            out.append(mp)
    return out


def _procs_mentioning(d: Path) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(d) in cmd and "pytest" not in cmd:
            found.append(f"{pid}: {cmd}")
    return found


def _where_stuck(pid: int) -> str:
    """What a hung process and its children are waiting in: Python stacks and kernel wait channels."""
    lines = [subprocess.run(["ps", "-o", "pid,ppid,stat,wchan:32,etime,args", "--forest", "-g",
                             str(os.getpgid(pid))], capture_output=True, text=True).stdout]  # fmt: skip
    if shutil.which("py-spy"):
        r = subprocess.run(["py-spy", "dump", "--pid", str(pid)], capture_output=True, text=True,
                           timeout=60)  # fmt: skip
        lines.append(r.stdout + r.stderr)
    for kstack in (f"/proc/{pid}/stack",):
        try:
            lines.append(Path(kstack).read_text())
        except OSError:
            pass
    return "\n".join(lines)


def _cleanup(d: Path) -> None:
    for mp in _mounts_under(d):
        subprocess.run(["fusermount3", "-u", mp], capture_output=True)
        subprocess.run(["fusermount3", "-uz", mp], capture_output=True)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Short, under /tmp: the AIFS server's unix socket lives below it (108-byte path limit).
    d = Path(tempfile.mkdtemp(prefix="abq-", dir="/tmp"))
    try:
        yield d
    finally:
        _cleanup(d)


@pytest.mark.usefixtures("drops_caches")   # the bench drops the page cache
def test_bench_quick_json_has_every_figure_and_ratio(workdir: Path, tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    out_png = tmp_path / "ratios.png"
    peers = ["aifs", "native", *PEER_TOOLS]
    r = subprocess.run(
        [*AIFS, "bench", "--quick", "--no-progress", "--peers", ",".join(peers),
         "--json", str(out_json), "--plot", str(out_png), "--workdir", str(workdir / "w")],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert r.returncode == 0, f"aifs bench failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    doc = json.loads(out_json.read_text())

    assert doc["schema"] == "aifs-bench/1"
    for key in ("cpu_model", "cores", "memory_gib", "kernel"):
        assert doc["machine"][key], f"machine description lacks {key}"

    must_run = ["native"] + [p for p, tool in PEER_TOOLS.items() if shutil.which(tool)]
    if _aifs_up_available():
        must_run.append("aifs")
    else:
        assert doc["targets"]["aifs"]["status"] == "skipped"
        assert "aifs up" in doc["targets"]["aifs"]["reason"]
    for name in must_run:
        st = doc["targets"][name]
        assert st["status"] == "ran", f"{name} did not run: {st}"
        assert st["expected_figures"], name
        figs = doc["figures"][name]
        missing = [f for f in st["expected_figures"] if f not in figs]
        assert not missing, f"{name} lacks figures {missing}"
        for f in st["expected_figures"]:
            med = figs[f]["median"]
            assert math.isfinite(med) and med > 0, f"{name}.{f} = {med}"
            assert figs[f]["runs"] == [med]  # one repeat: the median is that run
    # A read-only target never reports write figures; memory is per mount process.
    if "borg" in must_run:
        assert "seq_write" not in doc["figures"]["borg"]
    assert "mem_fuse" not in doc["figures"]["native"]
    # Each figure of a target comes out once in the table (the stdout), by label.
    assert "seq read, cold" in r.stdout

    if "aifs" in must_run:
        assert "mem_server" in doc["figures"]["aifs"], "the AIFS server's memory was not measured"
        base = doc["figures"]["aifs"]
        for peer in must_run:
            if peer == "aifs":
                continue
            ratios = doc["ratios"][peer]
            common = set(base) & set(doc["figures"][peer])
            assert set(ratios) == common, f"aifs/{peer} ratios cover {set(ratios) ^ common} wrongly"
            for f, ratio in ratios.items():
                want = base[f]["median"] / doc["figures"][peer][f]["median"]
                assert math.isfinite(ratio) and ratio > 0
                assert ratio == pytest.approx(want), f"aifs/{peer} {f}"
        assert "aifs/native" in r.stdout
        assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert doc["ratios"] == {}

    assert _mounts_under(workdir) == [], "aifs bench left mounts behind"
    assert _procs_mentioning(workdir) == [], "aifs bench left processes behind"
    assert not (workdir / "w").exists() or not any((workdir / "w").iterdir())


@pytest.mark.usefixtures("drops_caches")   # the bench drops the page cache
def test_bench_ctrl_c_unmounts_and_stops_everything(workdir: Path) -> None:
    target = "bindfs" if shutil.which("bindfs") else "aifs"
    if target == "aifs" and not _aifs_up_available():
        pytest.skip("needs bindfs or a working `aifs up` to have a mount to interrupt")
    rc, _, err = _interrupt_bench(workdir, target)
    assert rc == 130, err
    assert "interrupted" in err
    assert _mounts_under(workdir) == []
    assert _procs_mentioning(workdir) == []


def _sigint_default() -> None:
    """In the child before exec: SIGINT handled as in a terminal. A suite started in the
    background of a non-interactive shell (`.ci/run &`) ignores SIGINT, and an ignored
    signal stays ignored across exec: the bench would never see the Ctrl-C under test."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt_bench(workdir: Path, target: str, env: dict[str, str] | None = None,
                     on_mounted: Callable[[], None] | None = None) -> tuple[int, str, str]:
    """Run a long `aifs bench` on `target`, SIGINT it while its mount is live (after
    `on_mounted`), and return its exit code, stdout and stderr."""
    w = workdir / "w"
    proc = subprocess.Popen(
        [*AIFS, "bench", "--peers", target, "--size", "8M", "--files", "200000",
         "--no-progress", "--workdir", str(w)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env=env, preexec_fn=_sigint_default,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        # Interrupt while the mount is live (the small-file phase is long with 200k files).
        while time.monotonic() < deadline and not (w / f"{target}-r0" / "mnt" / "small").exists():
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        assert _mounts_under(workdir), "the benchmark never mounted"
        if on_mounted is not None:
            on_mounted()
        proc.send_signal(signal.SIGINT)
        # a hang guard, not a timing: the interrupted step may be inside os.sync() (cold reads
        # drop caches), which waits for every dirty page of a machine that has just written GBs
        try:
            out, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            pytest.fail(f"aifs bench still running 180 s after SIGINT:\n{_where_stuck(proc.pid)}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err


def test_bench_rejects_unknown_target() -> None:
    r = subprocess.run([*AIFS, "bench", "--peers", "native,zfs"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "zfs" in r.stderr and "choose from" in r.stderr


@pytest.mark.skipif(shutil.which("bindfs") is None, reason="needs bindfs as the daemon to stop")
@pytest.mark.usefixtures("drops_caches")   # the bench drops the page cache
def test_bench_ctrl_c_ends_even_when_a_daemon_stops_answering(workdir: Path) -> None:
    """SIGINT cannot end a write blocked on a FUSE daemon that does not answer (here: stopped
    with SIGSTOP); the bench's watchdog forces the mount off after its grace and exits 130."""
    stopped: list[int] = []

    def stop_the_daemon() -> None:
        daemons = [p for p in _procs_mentioning(workdir) if "bindfs" in p.split(":", 1)[1]
                   and " bench " not in p]  # fmt: skip
        assert len(daemons) == 1, daemons
        stopped.append(int(daemons[0].split(":", 1)[0]))
        os.kill(stopped[0], signal.SIGSTOP)
        time.sleep(0.5)  # the bench's next create now waits on the stopped daemon

    try:
        rc, _, err = _interrupt_bench(workdir, "bindfs", {**os.environ, "AIFS_BENCH_STOP_GRACE": "3"},
                                      stop_the_daemon)  # fmt: skip
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert rc == 130, err
    assert "forcing every mount off" in err, err
    assert _mounts_under(workdir) == []
    assert _procs_mentioning(workdir) == []
