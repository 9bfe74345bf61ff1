"""The dependency rule: `aifs_server` and `aifsfs` meet only in `aifs_core` and `aifs_proto`.

Checked two ways: statically (every import statement in each package's source, including
imports inside functions) and at run time (importing the whole client side in a fresh
interpreter must not load a single `aifs_server` module, nor SQLite or pymacaroons).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"aifs_core": ROOT / "core", "aifsfs": ROOT / "aifsfs",
            "aifs_server": ROOT / "server", "aifs_cli": ROOT / "cli"}
FORBIDDEN = {
    "aifs_core": {"aifs_server", "aifsfs", "aifs_cli"},
    "aifsfs": {"aifs_server", "aifs_cli"},
    "aifs_server": {"aifsfs", "aifs_cli"},
}


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def _violations(package: str) -> list[str]:
    bad = []
    for path in sorted(PACKAGES[package].rglob("*.py")):
        for line, module in _imported_modules(path):
            if module.split(".")[0] in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_the_rule_allows(package: str) -> None:
    assert _violations(package) == []


def test_the_check_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from aifs_server.datadir import open_data_dir\n")
    assert _imported_modules(src) == [(2, "aifs_server.datadir")]


def test_client_side_loads_no_server_module() -> None:
    code = (
        "import sys\n"
        "import aifsfs.client, aifsfs.errors, aifsfs.fuse.ops, aifsfs.fuse.mounter\n"
        "import aifsfs.fuse.write_buffer, aifsfs.fuse.synthetic, aifsfs.bench.cli\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('aifs_server', 'aifs_cli', 'sqlite3', 'pymacaroons'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == ""
