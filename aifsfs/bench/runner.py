"""Runs the workloads on every target, `repeat` times, and collects raw figures.

Interface:
- `BenchConfig(targets, sizes, repeat, workdir, quick, keep)`.
- `run_bench(config, progress) -> Results`: for each repeat and each available target (every
  other repeat in the reverse order of targets, so that a drift of the machine's load cancels
  out in the medians of an even number of repeats): a fresh
  set-up, the write phase, a remount (+ drop_caches where permitted) so reads start cold, the
  read phase, peak memory, teardown. A target that fails is marked failed with the reason and
  the run goes on; a missing one is skipped with one line. Every mount is unmounted and every
  daemon stopped at the end, also on an error, Ctrl-C or SIGTERM (within a bounded time even
  when a daemon stops answering: `watchdog.py`).
- `Results`: `figures[target][figure] -> [value per repeat]`, `status[target]`,
  `processes[target]`, `expected[target]` (the figures that target must produce), notes.

Order within one repeat of one target (the phases share files, so the order matters):
write: seq.bin, small/ (create), small4/ (create by 4 writers, then removed untimed),
ml/*.npy, the text and random sets (stored bytes measured as
the growth of the target's backing dir) -> remount -> read: seq cold, seq warm, fio QD1,
fio 16 jobs, small stat/read/unlink, ML epochs 1, 2 and 3 (after drop_caches) -> peak RSS
-> unmount.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from . import workloads as wl
from .procs import BenchError, drop_caches
from .targets import AifsTarget, Target, make_target
from .watchdog import interrupt_watchdog

Progress = Callable[[str], None]


@dataclass
class BenchConfig:
    targets: list[str]
    sizes: wl.Sizes
    repeat: int = 1
    workdir: Path | None = None
    quick: bool = False
    keep: bool = False


@dataclass
class Results:
    figures: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    status: dict[str, dict[str, str]] = field(default_factory=dict)
    processes: dict[str, list[dict[str, object]]] = field(default_factory=dict)
    expected: dict[str, list[str]] = field(default_factory=dict)
    drop_caches: bool = False
    interrupted: bool = False
    duration_s: float = 0.0

    def add(self, target: str, figure: str, value: float) -> None:
        self.figures.setdefault(target, {}).setdefault(figure, []).append(value)


def expected_figures(t: Target) -> list[str]:
    out = []
    for key in wl.FIGURES:
        if key in wl.WRITE_FIGURES and not t.writable:
            continue
        if key in wl.MEMORY_FIGURES and t.name == "native":
            continue  # no process of its own
        if key in (wl.SERVER_FIGURES | wl.VERSION_FIGURES) and t.name != "aifs":
            continue
        out.append(key)
    return out


class _Terminated(BaseException):
    """SIGTERM/SIGHUP turned into an exception so the finally blocks unmount everything."""


@contextmanager
def _signals_raise() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Terminated(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run_bench(cfg: BenchConfig, progress: Progress) -> Results:
    res = Results()
    base = cfg.workdir or Path(tempfile.mkdtemp(prefix="aifs-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    made_base = cfg.workdir is None
    live: list[Target] = []
    t_start = time.perf_counter()
    res.drop_caches = drop_caches()
    if not res.drop_caches:
        progress(
            "note: cannot write /proc/sys/vm/drop_caches (not root?); cold reads rely on remounts only"
        )

    runnable: list[str] = []
    for name in cfg.targets:
        probe = make_target(name, base / f"{name}-probe", cfg.quick)
        why = probe.unavailable()
        res.expected[name] = expected_figures(probe)
        if why:
            res.status[name] = {"status": "skipped", "reason": why, "label": probe.label}
            progress(f"skip {name}: {why}")
            continue
        res.status[name] = {
            "status": "ran", "reason": "", "label": probe.label,
            "version": probe.version(), "notes": probe.notes,
        }  # fmt: skip
        runnable.append(name)

    # AIFS_BENCH_STOP_GRACE: seconds the cleanup gets after a signal before it is forced (tests)
    with interrupt_watchdog(live, float(os.environ.get("AIFS_BENCH_STOP_GRACE", "30"))):
        _run_targets(cfg, res, base, made_base, runnable, live, progress)
    res.duration_s = time.perf_counter() - t_start
    return res


def _run_targets(cfg: BenchConfig, res: Results, base: Path, made_base: bool,
                 runnable: list[str], live: list[Target], progress: Progress) -> None:
    try:
        with _signals_raise():
            for rep in range(cfg.repeat):
                # every other repeat in the reverse order (A B C, C B A): a machine whose
                # load drifts during the run then biases no target (the targets run one
                # after the other, ~2 minutes each at default sizes)
                for name in runnable if rep % 2 == 0 else runnable[::-1]:
                    if res.status[name]["status"] != "ran":
                        continue  # failed in an earlier repeat
                    t = make_target(name, base / f"{name}-r{rep}", cfg.quick)
                    live.append(t)
                    try:
                        _run_target(t, cfg, res, rep, progress)
                    except (BenchError, OSError, ValueError) as e:
                        res.status[name].update(status="failed", reason=f"repeat {rep + 1}: {e}")
                        progress(f"FAILED {name}: {e}")
                    finally:
                        t.teardown()
                        live.remove(t)
                        _record_processes(t, res)
                        if not cfg.keep:
                            shutil.rmtree(t.workdir, ignore_errors=True)
    except (KeyboardInterrupt, _Terminated):
        res.interrupted = True
        progress("interrupted: unmounting and stopping everything")
    finally:
        for t in live:
            t.teardown()
        if made_base and not cfg.keep:
            shutil.rmtree(base, ignore_errors=True)


def _record_processes(t: Target, res: Results) -> None:
    entries = res.processes.setdefault(t.name, [])
    for role, kib in sorted(t.peaks.items()):
        entries.append({"role": role, "peak_rss_kib": kib})
    cmds = sorted(set(t.pid_cmds.values()))
    if cmds:
        entries.append({"role": "commands", "cmdlines": cmds})


def _cold(t: Target, quick: bool) -> None:
    """Make the next reads cold: a fresh mount (empties the daemon's own caches) + drop_caches.

    --quick checks the command, not speed: it skips the remount where drop_caches works
    (remounting AIFS, server included, costs seconds that a smoke test does not need).
    """
    if quick and drop_caches():
        return
    t.remount()
    drop_caches()


def _run_target(t: Target, cfg: BenchConfig, res: Results, rep: int, progress: Progress) -> None:
    sz = cfg.sizes
    tag = f"[{t.name} {rep + 1}/{cfg.repeat}]"

    def step(label: str, fig: str | None, fn: Callable[[], float]) -> float:
        progress(f"{tag} {label} ...")
        v = fn()
        if fig is not None:
            res.add(t.name, fig, v)
            info = wl.FIGURES[fig]
            progress(f"{tag} {info.label}: {v:,.3g} {info.unit}")
        return v

    t.setup()
    if t.writable:
        t.mount()
        root = t.root
        step("seq write", "seq_write", lambda: wl.write_seq(root, sz.seq_bytes))
        step("small files create", "small_create", lambda: wl.create_small(root, sz.files))
        step("small files create, 4 writers", "small_create_4w",
             lambda: wl.create_parallel(root, sz.files))
        shutil.rmtree(root / "small4")      # untimed: later phases see the same tree
        progress(f"{tag} writing {sz.samples} .npy samples")
        wl.write_samples(root, sz.samples)
        _stored(
            t,
            res,
            lambda d: wl.write_text_set(d, sz.set_bytes),
            "stored_text",
            root / "sb_text",
            progress,
            tag,
        )
        _stored(
            t,
            res,
            lambda d: wl.write_random_set(d, sz.set_bytes),
            "stored_random",
            root / "sb_random",
            progress,
            tag,
        )
        _cold(t, cfg.quick)
    else:
        # Read-only target: write the same data natively, store it with the target's own
        # tool (stored bytes measured per set), then mount the archive: a fresh mount is cold.
        stage = t.workdir / "stage"
        for sub in ("data", "sb_text", "sb_random"):
            (stage / sub).mkdir(parents=True, exist_ok=True)
        progress(f"{tag} building the read data set natively")
        wl.write_seq(stage / "data", sz.seq_bytes)
        wl.create_small(stage / "data", sz.files)
        wl.write_samples(stage / "data", sz.samples)
        for fig, sub, writer in (
            ("stored_text", "sb_text", wl.write_text_set),
            ("stored_random", "sb_random", wl.write_random_set),
        ):
            logical = writer(stage / sub, sz.set_bytes)
            assert t.backing is not None
            before = wl.tree_bytes(t.backing)
            t.ingest(stage / sub, sub)
            res.add(t.name, fig, (wl.tree_bytes(t.backing) - before) / logical)
        t.ingest(stage / "data", "data")
        shutil.rmtree(stage, ignore_errors=True)
        t.mount()
        drop_caches()
        root = t.root

    step("seq read cold", "seq_read_cold", lambda: wl.read_seq(root))
    step("seq read warm", "seq_read_warm", lambda: wl.read_seq(root))
    drop_caches()
    step("fio randread QD1", "rand_read_qd1", lambda: wl.fio_randread(root, 1, sz.fio_runtime))
    drop_caches()
    step("fio randread 16 jobs", "rand_read_16j", lambda: wl.fio_randread(root, 16, sz.fio_runtime))
    drop_caches()
    step("small files stat", "small_stat", lambda: wl.stat_small(root))
    step("small files read", "small_read", lambda: wl.read_small(root))
    if t.writable:
        step("small files unlink", "small_unlink", lambda: wl.unlink_small(root))
    drop_caches()
    with wl.LoaderPool() as pool:
        step("ML epoch 1", "ml_epoch1", lambda: pool.epoch(root, seed=rep * 2))
        step("ML epoch 2", "ml_epoch2", lambda: pool.epoch(root, seed=rep * 2 + 1))
        drop_caches()
        step("ML epoch 3 (page cache dropped)", "ml_epoch_dropped",
             lambda: pool.epoch(root, seed=rep * 2 + 2))
    # the version figures: on the AIFS target (not its --writeback twin: one is enough)
    if isinstance(t, AifsTarget) and t.name == "aifs":
        from aifsfs.rpc.channel import default_socket

        address = default_socket(t.data)
        progress(f"{tag} building {sz.snap_files} files for the snapshot")
        snap_ms, branch_ms, first_ms, next_ms = wl.snapshot_and_branch(address, sz.snap_files)
        res.add(t.name, "snapshot_files", snap_ms)
        res.add(t.name, "branch_create", branch_ms)
        res.add(t.name, "branch_first_write", first_ms)
        res.add(t.name, "snapshot_changed", next_ms)
        progress(f"{tag} snapshot of {sz.snap_files} files: {snap_ms:,.4g} ms, "
                 f"branch create: {branch_ms:,.4g} ms, its first write: {first_ms:,.4g} ms, "
                 f"snapshot after 10 changes: {next_ms:,.4g} ms")
    t.unmount()  # records the peak RSS of this mount's processes first
    if t.name != "native":
        if not t.peaks:
            raise BenchError(f"no process found for the {t.name} mount: cannot measure its memory")
        fuse = sum(k for r, k in t.peaks.items() if r == "fuse")
        res.add(t.name, "mem_fuse", fuse / 1024)
        res.add(t.name, "mem_total", sum(t.peaks.values()) / 1024)
        for role, kib in t.peaks.items():
            if role != "fuse":
                res.add(t.name, f"mem_{role}", kib / 1024)


def _stored(
    t: Target,
    res: Results,
    writer: Callable[[Path], int],
    fig: str,
    d: Path,
    progress: Progress,
    tag: str,
) -> None:
    progress(f"{tag} stored bytes: {d.name}")
    backing = t.backing
    if backing is None:
        raise BenchError(f"{t.name} has no backing directory to measure")
    os.sync()
    before = wl.tree_bytes(backing)
    logical = writer(d)
    os.sync()
    stored = wl.tree_bytes(backing) - before
    res.add(t.name, fig, stored / logical)
    progress(f"{tag} {wl.FIGURES[fig].label}: {stored / logical:.3f}")
