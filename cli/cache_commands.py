"""`aifs cache stats` and `aifs cache clear`: the mounts' local disk caches.

Interface:
    register(subparsers)        adds `cache stats` and `cache clear` to the `aifs` CLI
    cmd_stats(args), cmd_clear(args) -> int

Both work on a cache directory (--cache-dir, default the mounts' default), which holds one
directory per mount. `stats` lists them: live (its mount runs) or left by a mount that died,
bytes on disk, and the live mount's counters (published by its writer every half second).
`clear` removes what dead mounts left and asks each live mount to drop its entries (its next
reads go to the server); entries are unreadable without their mount's in-memory key anyway.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from aifsfs.fuse.disk_cache import clear_dir, default_cache_dir, scan


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def cmd_stats(args: argparse.Namespace) -> int:
    root = args.cache_dir or default_cache_dir()
    rows = scan(root)
    if args.json:
        print(json.dumps({"cache_dir": root, "mounts": rows}, indent=2))
        return 0
    print(f"cache directory {root}: {len(rows)} mount cache(s), "
          f"{_mib(sum(r['disk_bytes'] for r in rows))} on disk")
    for r in rows:
        s = r["stats"]
        state = f"live (pid {s.get('pid', '?')})" if r["live"] else "left by a stopped mount"
        print(f"  {r['dir']}: {state}, {r['files']} chunk files, {_mib(r['disk_bytes'])}")
        if r["live"] and s:
            reads = s["hits"] + s["misses"]
            ratio = f"{100 * s['hits'] / reads:.0f}%" if reads else "-"
            print(f"    size {_mib(s['used_bytes'])} of {_mib(s['capacity'])}, "
                  f"{s['entries']} chunks; hits {s['hits']} ({_mib(s['hit_bytes'])}), "
                  f"misses {s['misses']}, hit ratio {ratio}; written {_mib(s['written_bytes'])}, "
                  f"evicted {s['evicted']}, damaged entries dropped {s['corrupt']}, "
                  f"writes skipped {s['dropped']}")
    return 0


def cmd_clear(args: argparse.Namespace) -> int:
    root = args.cache_dir or default_cache_dir()
    removed, live = clear_dir(root)
    print(f"aifs: cache {root}: removed {removed} stopped mount cache(s), "
          f"cleared {live} live one(s)")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("cache", help="the mounts' local disk caches (stats, clear)",
                              description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = p.add_subparsers(dest="cache_cmd", required=True)
    s = sub.add_parser("stats", help="size, hits and misses of each mount's disk cache")
    s.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="default $XDG_CACHE_HOME/aifs or ~/.cache/aifs")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_stats)
    c = sub.add_parser("clear", help="drop every cached chunk (live mounts refetch)")
    c.add_argument("--cache-dir", default=None, metavar="DIR")
    c.set_defaults(func=cmd_clear)
