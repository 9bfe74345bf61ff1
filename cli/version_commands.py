"""`aifs snapshot|branch|tag|diff|merge`: versions over the Versioning service (a CLI plugin).

Interface:
    register(subparsers)      adds the commands (cli.main.PLUGINS lists this module)

    aifs snapshot create [--branch B] [-m MSG] [--mount MNT] | list [--branch B] | show REF | verify REF |
                  prune (--keep-last N | --keep-daily N | --keep-within DUR) [--dry-run]
    aifs branch create NAME [--from REF] | list | delete NAME | reset NAME REF | log NAME
    aifs tag create NAME REF | list | delete NAME
    aifs diff A B
    aifs merge SRC INTO [-m MSG] [--dry-run]
A REF is a snapshot id, a tag, a branch (its head), "tag:T", "branch:B" or aifs-snap://NS/ID.
`--json` prints the reply as JSON. verify exits 1 when the snapshot does not verify, merge
exits 1 on conflicts (which it lists).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
from typing import Any

from aifs_cli.main import add_common_flags, client_from_args, parse_ttl


def _when(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")


def _print(args: argparse.Namespace, obj: Any, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(obj, default=lambda b: b.hex() if isinstance(b, bytes) else str(b),
                         indent=2))
    else:
        print(text)


def _snap_line(s: dict[str, Any]) -> str:
    tags = f" [{', '.join(s['tags'])}]" if s.get("tags") else ""
    return f"{s['id']}  {_when(s['created_ns'])}  {s['branch']}{tags}  {s['message']}"


def cmd_snapshot(args: argparse.Namespace) -> int:
    with client_from_args(args) as c:
        v = c.versions
        if args.action == "create":
            branch = args.branch or ""
            if args.mount:
                branch = branch or _flush_mount(args.mount)
            s = v.snapshot(branch, args.message)
            _print(args, s, f"snapshot {s['id']} of {s['branch']}  {s['uri']}")
        elif args.action == "list":
            snaps = v.list_snapshots(args.branch or "")
            _print(args, snaps, "\n".join(_snap_line(s) for s in snaps) or "(no snapshots)")
        elif args.action == "show":
            s = v.get_snapshot(args.ref)
            _print(args, s, "\n".join([
                _snap_line(s), f"uri      {s['uri']}", f"root     {s['root_hash'].hex()}",
                f"parents  {' '.join(s['parents']) or '-'}",
                f"signature valid: {_signature_ok(v, s)}"]))
        elif args.action == "verify":
            r = v.verify(args.ref)
            _print(args, r, (f"ok: {r['nodes_checked']} nodes and the signature verify" if
                             r["ok"] else "FAILED:\n  " + "\n  ".join(r["problems"])))
            return 0 if r["ok"] else 1
        elif args.action == "prune":
            within = parse_ttl(args.keep_within) if args.keep_within else 0
            r = v.prune(args.keep_last, args.keep_daily, within, args.dry_run, args.branch or "")
            what = "would remove" if args.dry_run else "removed"
            _print(args, r, f"{what} {len(r['removed'])} snapshots, kept {len(r['kept'])}"
                   + "".join(f"\n  - {i}" for i in r["removed"]))
    return 0


def _flush_mount(mountpoint: str) -> str:
    """Commit what the mount at `mountpoint` buffered; returns the branch it writes to.

    Opening `/.aifs/flush` makes the mount commit every buffered file before open(2)
    returns (an error there is EIO): a request with an answer, unlike a signal."""
    from aifs_core.errors import AIFSError

    path = os.path.join(mountpoint, ".aifs", "flush")
    try:
        with open(path, "rb") as f:
            return f.read().decode().strip()
    except FileNotFoundError:
        raise AIFSError(f"{mountpoint} is not an AIFS mount (no {path})") from None
    except OSError as e:
        raise AIFSError(f"{mountpoint}: could not commit what the mount buffered: "
                        f"{e.strerror}; see the mount's log") from None


def _signature_ok(v: Any, s: dict[str, Any]) -> bool:
    from aifsfs.rpc.versioning import verify_signature
    return verify_signature(s, v.signing_key())


def cmd_branch(args: argparse.Namespace) -> int:
    with client_from_args(args) as c:
        v = c.versions
        if args.action == "create":
            b = v.create_branch(args.name, args.source or "")
            _print(args, b, f"branch {b['name']} at {b['head'] or '(live tree of main)'}")
        elif args.action == "list":
            bs = v.list_branches()
            _print(args, bs, "\n".join(f"{b['name']}  {b['head'] or '-'}" for b in bs))
        elif args.action == "delete":
            v.delete_branch(args.name)
            _print(args, {}, f"deleted branch {args.name}")
        elif args.action == "reset":
            b = v.reset_branch(args.name, args.ref)
            _print(args, b, f"branch {b['name']} reset to {b['head']}")
        elif args.action == "log":
            log = v.branch_log(args.name)
            _print(args, log, "\n".join(f"{e['seq']:>4}  {_when(e['at_ns'])}  {e['snapshot']}  "
                                        f"{e['action']}" for e in log) or "(empty)")
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    with client_from_args(args) as c:
        v = c.versions
        if args.action == "create":
            t = v.create_tag(args.name, args.ref)
            _print(args, t, f"tag {t['name']} -> {t['snapshot']}")
        elif args.action == "list":
            ts = v.list_tags()
            _print(args, ts, "\n".join(f"{t['name']}  {t['snapshot']}" for t in ts))
        elif args.action == "delete":
            v.delete_tag(args.name)
            _print(args, {}, f"deleted tag {args.name}")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    with client_from_args(args) as c:
        d = c.versions.diff(args.a, args.b)
    lines = ([f"+ {p}" for p in d["added"]] + [f"- {p}" for p in d["removed"]]
             + [f"M {p}" for p in d["changed"]])
    _print(args, d, "\n".join(lines) or "(no changes)")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    with client_from_args(args) as c:
        r = c.versions.merge(args.source, args.into, args.message, args.dry_run)
    if r["conflicts"]:
        _print(args, r, "conflicts (nothing written):\n  " + "\n  ".join(r["conflicts"]))
        return 1
    what = "would apply" if args.dry_run else f"merged as {r['snapshot']}, applied"
    _print(args, r, f"{what}: {len(r['applied'])} paths (base {r['base']})"
           + "".join(f"\n  {p}" for p in r["applied"]))
    return 0


def _sub(parent: Any, name: str, help_: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = parent.add_parser(name, help=help_)
    add_common_flags(p, suppress=True)
    p.add_argument("--json", action="store_true", help="print the reply as JSON")
    return p


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("snapshot", help="signed snapshots of a branch")
    sub = p.add_subparsers(dest="action", required=True)
    s = _sub(sub, "create", "freeze the branch's committed state (--branch, default main)")
    s.add_argument("-m", "--message", default="")
    s.add_argument("--mount", default="", metavar="MNT",
                   help="first commit what the mount at MNT buffered; snapshot its branch")
    s = _sub(sub, "list", "snapshots, oldest first")
    s = _sub(sub, "show", "one snapshot and whether its signature verifies")
    s.add_argument("ref")
    s = _sub(sub, "verify", "recompute the Merkle root and check the signature")
    s.add_argument("ref")
    s = _sub(sub, "prune", "remove snapshots by a retention policy (restic's forget)")
    s.add_argument("--keep-last", type=int, default=0, metavar="N")
    s.add_argument("--keep-daily", type=int, default=0, metavar="N")
    s.add_argument("--keep-within", default="", metavar="DUR", help="e.g. 7d, 12h")
    s.add_argument("--dry-run", action="store_true")
    p.set_defaults(func=cmd_snapshot)

    p = subparsers.add_parser("branch", help="branches: create, list, delete, reset, log")
    sub = p.add_subparsers(dest="action", required=True)
    s = _sub(sub, "create", "a new branch from a snapshot, tag or branch (default main)")
    s.add_argument("name")
    s.add_argument("--from", dest="source", default="", metavar="REF")
    _sub(sub, "list", "branches and their heads")
    for action, help_ in (("delete", "delete a branch"), ("log", "a branch's history")):
        _sub(sub, action, help_).add_argument("name")
    s = _sub(sub, "reset", "move a branch to a snapshot (atomic; recorded in its log)")
    s.add_argument("name")
    s.add_argument("ref")
    p.set_defaults(func=cmd_branch)

    p = subparsers.add_parser("tag", help="immutable names for snapshots")
    sub = p.add_subparsers(dest="action", required=True)
    s = _sub(sub, "create", "name a snapshot (a tag never moves)")
    s.add_argument("name")
    s.add_argument("ref")
    _sub(sub, "list", "tags")
    _sub(sub, "delete", "delete a tag (needs the delete verb)").add_argument("name")
    p.set_defaults(func=cmd_tag)

    p = _sub(subparsers, "diff", "paths added, removed and changed between two refs")
    p.add_argument("a")
    p.add_argument("b")
    p.set_defaults(func=cmd_diff)

    p = _sub(subparsers, "merge", "three-way merge of SRC into branch INTO")
    p.add_argument("source")
    p.add_argument("into")
    p.add_argument("-m", "--message", default="")
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(func=cmd_merge)
