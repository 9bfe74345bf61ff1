"""`aifs bench`: AIFS-FS against native, bindfs, gocryptfs, rclone crypt and borg, in one run.

Interface:
- `register(subparsers)`: adds the `bench` subcommand to the `aifs` CLI's argparse
  subparsers; the parsed namespace carries `func`, which returns the exit code.
- `main(argv=None) -> int`: the same command standalone (`python -m aifsfs.bench`).
- `run(args) -> int`: what `aifs bench` does with parsed arguments.

Exit codes: 0 all requested targets that are installed ran; 1 a target failed; 2 bad
arguments; 130 interrupted (mounts are unmounted and daemons stopped in every case).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from .procs import BenchError

MiB = 1 << 20


def _size(text: str) -> int:
    """'1G', '512M', '64k' or bytes -> bytes."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 1 << 10, "M": MiB, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
    num = t[:-1] if t[-1:] in "KMGT" else t
    try:
        value = int(float(num) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size; use e.g. 1G, 256M or 65536"
        ) from None
    if value < MiB:
        raise argparse.ArgumentTypeError(
            f"{text!r} is under 1 MiB; the benchmark writes 1 MiB blocks"
        )
    return value


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .targets import ALL_TARGETS

    p.add_argument(
        "--peers",
        default=",".join(ALL_TARGETS),
        help=f"comma-separated targets to run (default: {','.join(ALL_TARGETS)})",
    )
    p.add_argument(
        "--install-peers", action="store_true", help="apt-get install the missing peers first"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes: a smoke test of the command, not a measurement",
    )
    p.add_argument("--size", type=_size, help="sequential file size (default 1G; --quick 8M)")
    p.add_argument(
        "--files", type=_positive, help="small files to create/stat/read/unlink (default 5000)"
    )
    p.add_argument(
        "--samples", type=_positive, help=".npy samples for the ML loader epochs (default 2000)"
    )
    p.add_argument(
        "--set-size",
        type=_size,
        help="size of each stored-bytes set, text and random (default 128M)",
    )
    p.add_argument("--fio-runtime", type=float, help="seconds per fio random-read run (default 10)")
    p.add_argument(
        "--repeat", type=_positive, default=1,
        help="runs per target, every other one in the reverse order of targets (2 cancels a "
             "drift of the machine's load); the table shows the median"
    )
    p.add_argument(
        "--workdir",
        type=Path,
        help="where mounts and data go (default: a new temp dir, removed after)",
    )
    p.add_argument(
        "--keep", action="store_true", help="keep the work dirs (data, logs) after the run"
    )
    p.add_argument(
        "--json", type=Path, metavar="FILE", help="write every raw figure + the machine description"
    )
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="plot the AIFS/peer ratios")
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bar, only the final table"
    )


def register(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "bench",
        help="benchmark the AIFS mount against native, bindfs, gocryptfs, rclone and borg",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def _install_peers(names: list[str], say: Any) -> None:
    from .targets import target_class

    missing = [
        target_class(n).apt_package
        for n in names
        if target_class(n).tool and shutil.which(target_class(n).tool or "") is None
    ]
    pkgs = [p for p in missing if p]
    if not pkgs:
        return
    cmd = ["apt-get", "install", "-y", *pkgs]
    if os.geteuid() != 0:
        say(f"install-peers: not root; run: sudo {' '.join(cmd)}")
        return
    say(f"install-peers: {' '.join(cmd)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = subprocess.run(cmd, env=env, capture_output=True)
    if r.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        r = subprocess.run(cmd, env=env, capture_output=True)
    if r.returncode != 0:
        say(f"install-peers: apt-get failed: {r.stderr.decode(errors='replace').strip()[-500:]}")


def run(args: argparse.Namespace) -> int:
    from . import report, sysinfo
    from . import workloads as wl  # numpy: only when a bench runs (every `aifs` starts faster)
    from .runner import BenchConfig, run_bench
    from .targets import ALL_TARGETS

    names = [n.strip() for n in args.peers.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_TARGETS]
    if unknown or not names:
        print(
            f"aifs bench: unknown target(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(ALL_TARGETS)}",
            file=sys.stderr,
        )
        return 2
    names = list(dict.fromkeys(names))
    base = wl.Sizes.quick() if args.quick else wl.Sizes()
    sizes = wl.Sizes(
        seq_bytes=args.size or base.seq_bytes,
        files=args.files or base.files,
        samples=args.samples or base.samples,
        set_bytes=args.set_size or base.set_bytes,
        fio_runtime=args.fio_runtime if args.fio_runtime else base.fio_runtime,
        snap_files=base.snap_files,
    )
    if args.workdir is not None and args.workdir.exists() and any(args.workdir.iterdir()):
        print(
            f"aifs bench: --workdir {args.workdir} is not empty; give a new or empty directory",
            file=sys.stderr,
        )
        return 2
    cfg = BenchConfig(
        targets=names, sizes=sizes, repeat=args.repeat, workdir=args.workdir,
        quick=args.quick, keep=args.keep,
    )  # fmt: skip

    # A bar on a terminal; plain result lines when piped (scripts/bench's log stays readable).
    bar = None
    if not args.no_progress and sys.stderr.isatty():
        from tqdm import tqdm

        steps = args.repeat * len(names) * 16
        bar = tqdm(total=steps, unit="step", file=sys.stderr, dynamic_ncols=True, leave=False)

    def progress(msg: str) -> None:
        if args.no_progress:
            return
        if bar is None:
            if not msg.endswith("..."):
                print(msg, file=sys.stderr, flush=True)
        elif msg.endswith("..."):
            bar.set_description_str(msg[:60])
            bar.update(1)
        else:
            bar.write(msg, file=sys.stderr)

    if args.install_peers:
        _install_peers(names, lambda m: print(m, file=sys.stderr))
    try:
        res = run_bench(cfg, progress)
    except BenchError as e:
        print(f"aifs bench: {e}", file=sys.stderr)
        return 1
    finally:
        if bar is not None:
            bar.close()
    doc = report.summarize(res, cfg, sysinfo.machine())
    print(report.render_table(doc))
    if args.json:
        report.write_json(doc, args.json)
        print(f"json: {args.json}")
    if args.plot:
        if report.plot_ratios(doc, args.plot):
            print(f"plot: {args.plot}")
        else:
            print(
                "plot: no ratios to plot (AIFS and at least one peer must both run)",
                file=sys.stderr,
            )
    if res.interrupted:
        print(
            "aifs bench: interrupted; every mount was unmounted and its daemon stopped",
            file=sys.stderr,
        )
        return 130
    return 1 if any(st["status"] == "failed" for st in doc["targets"].values()) else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="aifs bench", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    add_arguments(p)
    args = p.parse_args(argv)
    return run(args)
