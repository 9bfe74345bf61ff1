"""The `aifs` command: the one place that composes the server and the client side.

Interface:
    main(argv=None) -> int          console script `aifs`
    build_parser() -> ArgumentParser
    add_common_flags(parser)        --server, --token-file, --namespace, --branch, --timeout,
                                    --retry-for (for plugin subcommands that talk to a server)
    client_from_args(args) -> AIFSClient
    default_data_dir(), default_socket(data_dir)   (from aifsfs.client) where `aifs up` lives
    parse_ttl("1h") -> seconds;  parse_methods("get,put") -> list of verbs
    PLUGINS                         modules with `register(subparsers)` adding subcommands

Subcommands: format, server (delegates to aifs_server.serve.main), token create, put, get, ls,
stat, info, health, verify, fsck, gc (these two also offline: --data DIR runs
aifs_server.maintenance on the data dir, no server; --meta URL --store URL on a shared
deployment), migrate (a data dir into PostgreSQL + S3: aifs_server.migrate), master-key create,
plus whatever the PLUGINS register (mount, umount, up,
down, bench). A subcommand sets `func(args) -> int` with `set_defaults`.

Server and token: --server ADDR / $AIFS_SERVER (default: the embedded default socket
unix:<data>/aifs.sock) and --token-file F / $AIFS_TOKEN_FILE (default: the token file the
server writes next to its unix socket). Tokens are never taken from argv.

Errors: one line on stderr, `aifs: error: ...`, exit status 1 (2 for bad usage); no traceback
for expected errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aifs_core.errors import AIFSError
from aifs_core.fileutil import write_file_atomic
from aifs_core.verbs import VERBS, normalise_methods
from aifsfs.client import AIFSClient, default_data_dir, default_socket
from aifsfs.errors import LocalError
from aifsfs.progress import progress

__all__ = [
    "PLUGINS", "add_common_flags", "build_parser", "client_from_args", "default_data_dir",
    "default_socket", "main", "parse_methods", "parse_ttl",
]

PLUGINS: tuple[str, ...] = ("aifs_cli.mount_commands", "aifs_cli.cache_commands", "aifsfs.bench.cli",
                            "aifs_cli.version_commands")
_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class UsageError(LocalError):
    """Bad command-line input: exit status 2."""


# --- small parsers --------------------------------------------------------------------------

def parse_ttl(text: str) -> int:
    """'90', '90s', '15m', '1h', '30d' -> seconds; '0' or 'never' -> 0 (no expiry)."""
    t = text.strip().lower()
    if t in ("0", "never", "none"):
        return 0
    m = re.fullmatch(r"(\d+)\s*([smhd]?)", t)
    if not m or int(m.group(1)) == 0:
        raise UsageError(f"invalid --ttl {text!r}: use a number with a unit s, m, h or d "
                         f"(e.g. 90s, 15m, 1h, 30d), or 'never'")
    return int(m.group(1)) * _TTL_UNITS[m.group(2) or "s"]


def parse_methods(text: str) -> list[str]:
    """--methods as a list of verbs: the same rules mint_token applies (case-insensitive here)."""
    try:
        return normalise_methods(text.lower())
    except ValueError as e:
        raise UsageError(f"--methods: {e}") from None


def _parse_metadata(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise UsageError(f"--metadata is not valid JSON ({e}): give an object, e.g. "
                         f"--metadata '{{\"name\": \"x\"}}'") from e
    if not isinstance(value, dict):
        raise UsageError("--metadata must be a JSON object, e.g. --metadata '{\"name\": \"x\"}'")
    return value


def _fmt_time(ns: int) -> str:
    if not ns:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _jsonable(o: Any) -> Any:
    """JSON for what json cannot encode itself: dataclasses (ChunkRef, ...) and bytes (hex)."""
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if isinstance(o, bytes | bytearray):
        return bytes(o).hex()
    raise TypeError(f"cannot show a {type(o).__name__} as JSON")


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True, default=_jsonable))


# --- common flags and the client ------------------------------------------------------------

def add_common_flags(parser: argparse.ArgumentParser, suppress: bool = False) -> None:
    """Flags of every command that talks to a server. With suppress=True a flag that is not
    given leaves the value from the top-level parser alone (so both positions work)."""
    def d(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    g = parser.add_argument_group("server connection")
    g.add_argument("--server", metavar="ADDR", default=d(None),
                   help="server address unix:PATH or HOST:PORT (env AIFS_SERVER; default the "
                        "embedded socket unix:<data>/aifs.sock)")
    g.add_argument("--token-file", metavar="FILE", default=d(None),
                   help="file holding the capability token (env AIFS_TOKEN_FILE; default the "
                        "token file next to the unix socket)")
    g.add_argument("--namespace", metavar="NS", default=d(None),
                   help="namespace (env AIFS_NAMESPACE; default 'default')")
    g.add_argument("--branch", metavar="NAME", default=d(None),
                   help="branch (env AIFS_BRANCH; default 'main')")
    g.add_argument("--timeout", metavar="S", type=float, default=d(30.0),
                   help="deadline of each call in seconds (default 30)")
    g.add_argument("--retry-for", metavar="S", type=float, default=d(10.0),
                   help="keep retrying an unreachable server this long (default 10 s)")
    g.add_argument("--tls-ca", metavar="FILE", default=d(None),
                   help="CA certificate for a TLS TCP server")


def client_from_args(args: argparse.Namespace) -> AIFSClient:
    token_file = getattr(args, "token_file", None) or os.environ.get("AIFS_TOKEN_FILE")
    if token_file and not Path(token_file).is_file():
        # the SDK waits for a token file to appear (a server writes its own at start); a
        # file named on the command line should exist now
        raise LocalError(f"token file {token_file} does not exist: create one with "
                         f"`aifs token create ... -o {token_file}`")
    data = os.environ.get("AIFS_DATA")
    server = (getattr(args, "server", None) or os.environ.get("AIFS_SERVER")
              or default_socket(Path(data) if data else default_data_dir()))
    return AIFSClient(
        server,
        token_file=getattr(args, "token_file", None),
        namespace=getattr(args, "namespace", None) or os.environ.get("AIFS_NAMESPACE")
        or "default",
        branch=getattr(args, "branch", None) or os.environ.get("AIFS_BRANCH") or "main",
        timeout=getattr(args, "timeout", 30.0),
        retry_for=getattr(args, "retry_for", 10.0),
        tls_ca=getattr(args, "tls_ca", None),
    )


# --- commands -------------------------------------------------------------------------------

def cmd_format(args: argparse.Namespace) -> int:
    from aifs_server.datadir import format_data_dir

    kw: dict[str, Any] = {"dry_run": args.dry_run, "namespace": args.namespace_name}
    if args.chunk_size is not None:
        kw["chunk_size"] = args.chunk_size
    if args.zstd_level is not None:
        kw["zstd_level"] = args.zstd_level
    result = format_data_dir(args.data or default_data_dir(), **kw)
    print(result.message)
    if result.dry_run:
        for action in result.actions:
            print(f"  would {action}")
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    from aifs_server import datadir
    from aifs_server.auth import mint_token

    methods = parse_methods(args.methods)
    ttl = parse_ttl(args.ttl)
    if args.meta:
        from aifs_server.secrets import SecretsDB, load_master_key

        root_key = SecretsDB(args.meta).load(load_master_key(args.master_key_file)).root_key
        return _emit_token(args, mint_token(root_key, args.token_namespace, methods,
                                            ttl or None), methods)
    data = Path(args.data or default_data_dir())
    if not datadir.is_formatted(data):
        raise LocalError(f"{data} is not a formatted AIFS data directory: run "
                         f"`aifs format --data {data}` first, or pass --data DIR")
    try:
        root_key = (data / datadir.MACAROON_KEY).read_bytes()
    except OSError as e:
        raise LocalError(f"cannot read the macaroon key {data / datadir.MACAROON_KEY}: "
                         f"{e.strerror} (run as the user that owns the data directory)") from e
    return _emit_token(args, mint_token(root_key, args.token_namespace, methods, ttl or None),
                       methods)


def _emit_token(args: argparse.Namespace, token: str, methods: list[str]) -> int:
    if args.output:
        write_file_atomic(args.output, (token + "\n").encode())
        print(f"wrote a token for namespace {args.token_namespace!r} "
              f"({','.join(methods)}) to {args.output}", file=sys.stderr)
    else:
        print(token)
    return 0


def _stdin_pieces(size: int = 1 << 20) -> Iterator[bytes]:
    """Standard input in whole pieces read with os.read, for `put -`: gRPC reads an upload's
    pieces in its own daemon thread, and one still inside sys.stdin.buffer.read when the call
    has already failed (a refused kind) holds that reader's lock while the interpreter exits,
    which aborts it ("could not acquire lock for <stdin> at interpreter shutdown"). A raw fd
    read takes no lock."""
    while True:
        piece = bytearray()
        while len(piece) < size:
            got = os.read(sys.stdin.fileno(), size - len(piece))
            if not got:
                break
            piece += got
        if not piece:
            return
        yield bytes(piece)


def cmd_put(args: argparse.Namespace) -> int:
    metadata = _parse_metadata(args.metadata)
    with client_from_args(args) as client:
        if args.file == "-":
            asset_id = client.put_asset(_stdin_pieces(), kind=args.kind, metadata=metadata,
                                        parents=args.parent or None)
        else:
            path = Path(args.file)
            try:
                f = path.open("rb")
            except OSError as e:
                raise LocalError(f"cannot read {path}: {e.strerror}") from e
            with f, progress(os.fstat(f.fileno()).st_size, f"put {path.name}") as bar:
                asset_id = client.put_asset(f, kind=args.kind, metadata=metadata,
                                            parents=args.parent or None,
                                            size_hint=os.fstat(f.fileno()).st_size,
                                            on_progress=bar.update)
    print(asset_id)
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        if args.output in (None, "-"):
            client.download(args.asset_id, sys.stdout.buffer)
            sys.stdout.buffer.flush()
            return 0
        out = Path(args.output)
        if out.is_dir():
            raise LocalError(f"{out} is a directory: give a file name with -o")
        # write next to the target and rename, so an interrupted download leaves no half file
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part",
                                   dir=out.parent if str(out.parent) else ".")
        try:
            with os.fdopen(fd, "wb") as f:
                size = (client.open(args.asset_id).size if args.asset_id.startswith(
                    "aifs-snap://") else int(client.stat_asset(args.asset_id)["size"]))
                with progress(size, f"get {args.asset_id[:12]}") as bar:
                    client.download(args.asset_id, f, on_progress=bar.update)
            os.chmod(tmp, 0o644 & ~_umask())
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return 0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def cmd_ls(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        assets = client.list_assets(kind=args.kind, limit=args.limit)
    if args.json:
        _print_json(assets)
        return 0
    for a in assets:
        print(f"{a['asset_id']}  {a['kind']:<8}  {a['size']:>12}  {_fmt_time(a['created_ns'])}")
    return 0


def cmd_stat(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        info = client.stat_asset(args.asset_id)
    _print_json(info)
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    """Print each change event under the prefix as it comes (one line, or JSON per line),
    until interrupted or --count events came."""
    n = 0
    with client_from_args(args) as client, \
            client.watch(args.prefix, resume_from=args.resume_from) as w:
        print(f"watching {args.prefix}", file=sys.stderr, flush=True)
        for e in w:
            if args.json:
                line = {"kind": e.kind, "path": e.path, "ino": e.ino, "is_dir": e.is_dir}
                if e.cursor:
                    line["cursor"] = e.cursor
                print(json.dumps(line), flush=True)
            else:
                print(f"{e.kind:<8} {e.path}{'/' if e.is_dir else ''}", flush=True)
            n += 1
            if args.count and n >= args.count:
                break
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        info = client.introspect()
        info["server"] = client.address
    _print_json(info)
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        status = client.health(args.service)
    print(status)
    return 0 if status == "SERVING" else 1


def cmd_verify(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        result = client.verify_asset(args.asset_id)
    if result["ok"]:
        print(f"ok {args.asset_id}" + (f" ({result['detail']})" if result["detail"] else ""))
        return 0
    print(f"aifs: error: asset {args.asset_id} does not verify: {result['detail']}",
          file=sys.stderr)
    return 1


def _offline(args: argparse.Namespace) -> Any:
    """The data dir named by --data, or the shared deployment --meta/--store name (its master
    key from --master-key-file or the environment), opened for offline maintenance."""
    from aifs_server.datadir import open_data_dir, open_shared

    if getattr(args, "meta", None):
        from aifs_server.secrets import load_master_key

        if not args.store:
            raise UsageError("--meta and --store go together")
        return open_shared(args.meta, args.store, load_master_key(args.master_key_file),
                           create=False)
    return open_data_dir(Path(args.data).expanduser())


def _add_shared_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--meta", metavar="URL",
                   help="a shared deployment's database (postgresql://...), offline")
    p.add_argument("--store", metavar="URL", help="... and its chunk store (s3://...)")
    p.add_argument("--master-key-file", metavar="FILE",
                   help="its master key (else $AIFS_MASTER_KEY_FILE or $AIFS_MASTER_KEY)")


def cmd_migrate(args: argparse.Namespace) -> int:
    from aifs_server.migrate import migrate
    from aifs_server.secrets import load_master_key

    master = load_master_key(args.master_key_file)
    r = migrate(Path(args.source).expanduser(), args.to_meta, args.to_store, master,
                log=lambda line: print(line, file=sys.stderr, flush=True))
    rows = sum(r.tables.values())
    print(f"migrated {args.source}: {rows} metadata rows in {len(r.tables)} tables, "
          f"{r.chunks_copied} chunks copied ({r.bytes_copied} bytes, sealed as they were), "
          f"{r.chunks_present} already there, {r.namespace_keys} namespace keys; check it with "
          f"`aifs fsck --meta ... --store ...`")
    return 0


def cmd_master_key_create(args: argparse.Namespace) -> int:
    from aifs_server.secrets import write_master_key

    write_master_key(args.file)
    print(f"wrote a new master key to {args.file} (mode 0600): keep a copy; without it the "
          f"deployment's data cannot be read", file=sys.stderr)
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    if args.data or args.meta:
        from aifs_server import maintenance

        with _offline(args) as dd:
            result = dataclasses.asdict(maintenance.fsck(dd, read_data=args.read_data))
    else:
        with client_from_args(args) as client:
            result = client.fsck(read_data=args.read_data)
    for problem in result["problems"]:
        print(f"problem: {problem}")
    print(f"{'ok' if result['ok'] else 'NOT OK'}: {result['chunks_checked']} chunks checked, "
          f"{len(result['problems'])} problems ({result.get('files_checked', 0)} files' chunk "
          f"maps checked)")
    return 0 if result["ok"] else 1


def _seconds(text: str) -> int:
    """--grace: whole seconds >= 0 (an explicit 0 means 0, not the default)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds") from None
    if not 0 <= n < 2**32:
        raise argparse.ArgumentTypeError(f"{n} is outside 0..{2**32 - 1} seconds")
    return n


def cmd_gc(args: argparse.Namespace) -> int:
    if args.data or args.meta:
        from aifs_server import maintenance

        with _offline(args) as dd:
            result = dataclasses.asdict(maintenance.gc(
                dd, grace_seconds=(maintenance.GC_GRACE_DEFAULT if args.grace is None
                                   else args.grace),
                dry_run=args.dry_run))
    else:
        with client_from_args(args) as client:
            result = client.gc(dry_run=args.dry_run, grace_seconds=args.grace)
    what = "would delete" if args.dry_run else "deleted"
    temps = result.get("temp_files_deleted", 0)
    print(f"{what} {result['chunks_deleted']} chunks ({result['bytes_freed']} bytes) and "
          f"{result['orphans_deleted']} orphan inodes"
          + (f", and {temps} stale temp files a crash left" if temps else ""))
    return 0


# --- parser ---------------------------------------------------------------------------------

def load_plugins(subparsers: Any, names: Sequence[str] = PLUGINS) -> list[str]:
    """Import each module and call its `register(subparsers)`. A module that does not exist
    (yet) is skipped; any other import error propagates. Returns the modules registered."""
    loaded: list[str] = []
    for name in names:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            parts = name.split(".")
            missing_self = {".".join(parts[:i]) for i in range(2, len(parts) + 1)}
            if e.name in missing_self:  # the module (or its not-yet-written package) is absent
                continue
            raise
        module.register(subparsers)
        loaded.append(name)
    return loaded


def build_parser(plugins: Sequence[str] = PLUGINS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aifs",
        description="AIFS-FS: an encrypted, compressed, content-addressed store and the "
                    "FUSE filesystem over it.",
        epilog="Run `aifs COMMAND --help` for the flags of one command.")
    add_common_flags(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def client_cmd(name: str, help_: str, func: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        add_common_flags(p, suppress=True)
        p.set_defaults(func=func)
        return p

    p = sub.add_parser("format", help="create (idempotently) an AIFS data directory",
                       description="Create an AIFS data directory: keys, metadata database, "
                                   "chunk store and the default namespace. Running it again "
                                   "on a formatted directory changes nothing.")
    p.add_argument("--data", metavar="DIR",
                   help="data directory (default $AIFS_DATA or ~/.local/share/aifs)")
    p.add_argument("--dry-run", action="store_true",
                   help="check that the directory can be formatted and say what would be done")
    p.add_argument("--chunk-size", type=int, metavar="BYTES",
                   help="chunk size, a power of two from 4096 to 64 MiB (default 1 MiB)")
    p.add_argument("--zstd-level", type=int, metavar="N", help="zstd level 1-22 (default 1)")
    p.add_argument("--namespace", dest="namespace_name", default="default", metavar="NS",
                   help="name of the first namespace (default 'default')")
    p.set_defaults(func=cmd_format)

    # listed for --help only: main() hands `aifs [flags] server ...` to the server untouched
    sub.add_parser("server", add_help=False,
                   help="run the AIFS server (`aifs server --help` for its flags)")

    p = sub.add_parser("token", help="capability tokens (macaroons)",
                       description="Capability tokens (macaroons).")
    tsub = p.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    t = tsub.add_parser(
        "create", help="mint a token for a namespace, method verbs and a lifetime",
        description="Mint a capability token and print it on stdout (save it to a file with "
                    "mode 0600 and pass it with --token-file). Method verbs: get (read data), "
                    "put (write data and metadata), list, stat (read metadata), delete, "
                    "snapshot, admin (format, fsck, gc, introspect), or all.")
    t.add_argument("--data", metavar="DIR",
                   help="data directory holding the root key (default $AIFS_DATA or "
                        "~/.local/share/aifs)")
    t.add_argument("--namespace", dest="token_namespace", default="default", metavar="NS",
                   help="namespace the token is for; '*' = every namespace (default 'default')")
    t.add_argument("--methods", required=True, metavar="VERBS",
                   help=f"comma-separated verbs: {', '.join(VERBS)}, all")
    t.add_argument("--ttl", default="30d", metavar="TTL",
                   help="lifetime with unit s/m/h/d, e.g. 1h (default 30d; 'never' = no expiry)")
    t.add_argument("-o", "--output", metavar="FILE",
                   help="write the token to FILE (mode 0600) instead of stdout")
    t.add_argument("--meta", metavar="URL",
                   help="mint from a shared deployment's root key (postgresql://...) instead")
    t.add_argument("--master-key-file", metavar="FILE",
                   help="with --meta: its master key (else $AIFS_MASTER_KEY_FILE)")
    t.set_defaults(func=cmd_token_create)

    p = sub.add_parser(
        "migrate", help="move a data dir to a shared deployment (PostgreSQL + S3)",
        description="Copy an embedded deployment (a data dir, its server stopped) into an "
                    "empty PostgreSQL database and a chunk store: secrets re-wrapped under the "
                    "master key into the database, metadata rows copied, sealed chunks copied "
                    "as they are (nothing is decrypted). Then start servers with --meta and "
                    "--store, and check with `aifs fsck --meta URL --store URL`.")
    p.add_argument("--from", dest="source", required=True, metavar="DATA_DIR")
    p.add_argument("--to-meta", required=True, metavar="URL", help="postgresql://...")
    p.add_argument("--to-store", required=True, metavar="URL",
                   help="s3://BUCKET[/PREFIX]?endpoint=URL&region=R (credentials from AWS_*)")
    p.add_argument("--master-key-file", metavar="FILE",
                   help="the new deployment's master key (else $AIFS_MASTER_KEY_FILE or "
                        "$AIFS_MASTER_KEY; `aifs master-key create FILE` makes one)")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("master-key", help="the master key of a shared deployment",
                       description="The master key seals a shared deployment's secrets in "
                                   "its database; every server reads it from a file.")
    msub = p.add_subparsers(dest="master_key_command", metavar="ACTION", required=True)
    m = msub.add_parser("create", help="write a new random master key file (0600)")
    m.add_argument("file", metavar="FILE")
    m.set_defaults(func=cmd_master_key_create)

    p = client_cmd("put", "store a file as an asset and print its id", cmd_put)
    p.add_argument("file", metavar="FILE", help="file to store ('-' = stdin)")
    p.add_argument("--kind", default="blob",
                   help="asset kind: blob, tensor, embed, artifact (default blob)")
    p.add_argument("--metadata", metavar="JSON", help="user metadata, a JSON object")
    p.add_argument("--parent", action="append", metavar="ID",
                   help="parent asset id (lineage); may be repeated")

    p = client_cmd("get", "write an asset's bytes to a file", cmd_get)
    p.add_argument("asset_id", metavar="ID", help="asset id (64 hex digits), or "
                   "aifs-snap://NS/SNAPSHOT/path for a file of a snapshot")
    p.add_argument("-o", "--output", metavar="FILE", help="output file ('-' or none = stdout)")

    p = client_cmd("ls", "list assets", cmd_ls)
    p.add_argument("--kind", help="only assets of this kind")
    p.add_argument("--limit", type=int, help="at most this many")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = client_cmd("stat", "print an asset's info as JSON", cmd_stat)
    p.add_argument("asset_id", metavar="ID", help="asset id")

    client_cmd("info", "print the server's version, features, config and namespaces", cmd_info)

    p = client_cmd("watch", "print change events (created, changed, removed, overflow) of the "
                            "paths under PREFIX as they happen", cmd_watch)
    p.add_argument("prefix", metavar="PREFIX", nargs="?", default="/",
                   help="a path in the tree (default /: everything)")
    p.add_argument("--count", type=int, default=0, help="stop after this many events")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per line (with the cursor on a batch's last event)")
    p.add_argument("--from", dest="resume_from", default="", metavar="CURSOR",
                   help="resume after this cursor (from --json's output): the events since "
                        "then first, or an overflow event when the server no longer has them")

    p = client_cmd("health", "check the server's health (exit 0 when SERVING)", cmd_health)
    p.add_argument("--service", default="", help="service name (default: the whole server)")

    p = client_cmd("verify", "re-read an asset and check every chunk (exit 1 if it does "
                             "not verify)", cmd_verify)
    p.add_argument("asset_id", metavar="ID", help="asset id")

    offline_help = ("work on this data directory directly, without a server (every "
                    "namespace)")
    p = client_cmd("fsck", "check the store's consistency (exit 1 on problems)", cmd_fsck)
    p.add_argument("--read-data", action="store_true",
                   help="also decrypt and check every chunk (slow)")
    p.add_argument("--data", metavar="DIR", help=offline_help)
    _add_shared_flags(p)

    p = client_cmd("gc", "delete unreferenced chunks and orphan inodes", cmd_gc)
    p.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    p.add_argument("--grace", type=_seconds, default=None, metavar="S",
                   help="keep chunks unreferenced for less than S seconds; 0 frees them now "
                        "(default: the server's, 1 hour)")
    p.add_argument("--data", metavar="DIR", help=offline_help)
    _add_shared_flags(p)

    load_plugins(sub, plugins)
    return parser


# --- entry ----------------------------------------------------------------------------------

def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _command_index(argv: list[str]) -> int | None:
    """Index of the subcommand, skipping the global flags (all of which take a value)."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        if argv[i] in ("-h", "--help"):
            return None
        i += 1 if "=" in argv[i] else 2
    return i if i < len(argv) else None


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        at = _command_index(args_list)
        if at is not None and args_list[at] == "server":
            # the server owns its flags (even --help): hand the rest over untouched
            from aifs_server import serve
            return int(serve.main(args_list[at + 1:]) or 0)
        parser = build_parser()
        args = parser.parse_args(args_list)
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"aifs: error: {_one_line(e.message)}", file=sys.stderr)
        return 2
    except AIFSError as e:
        print(f"aifs: error: {_one_line(e.message)}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `aifs get ID | head`: the reader left; not an error worth a traceback
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        except OSError:
            pass
        return 1
    except KeyboardInterrupt:
        print("aifs: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        print(f"aifs: error:{where} {e.strerror or e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
