"""scripts/cluster.sh up|down (issue 12): one command starts PostgreSQL, SeaweedFS and N
servers on 127.0.0.1; `down` stops every process it started and removes its directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from aifsfs.client import AIFSClient
from tests.helpers import short_tmpdir

ROOT = Path(__file__).resolve().parents[2]


def test_cluster_script_up_serves_and_down_stops_everything() -> None:
    base = Path(short_tmpdir()) / "c"
    script = str(ROOT / "scripts" / "cluster.sh")
    pid = None
    try:
        up = subprocess.run([script, "up", str(base), "2"], capture_output=True, text=True,
                            timeout=180, cwd=ROOT)
        assert up.returncode == 0, up.stdout + up.stderr
        info = json.loads((base / "cluster.json").read_text())
        pid = int(info["pid"])
        addresses = info["servers"]
        assert f"servers:    {addresses}" in up.stdout
        assert all(a.startswith("127.0.0.1:") for a in addresses.split(","))
        with AIFSClient(addresses, token_file=info["token_file"]) as c:
            aid = c.put_asset(b"through the cluster")
        second = addresses.split(",")[1]
        with AIFSClient(second, token_file=info["token_file"]) as c:
            assert c.get_asset(aid)["data"] == b"through the cluster"
        down = subprocess.run([script, "down", str(base)], capture_output=True, text=True,
                              timeout=120, cwd=ROOT)
        assert down.returncode == 0, down.stdout + down.stderr
        assert not base.exists()
        # nothing it started is left: the keeper process and its children are gone
        left = subprocess.run(["pgrep", "-f", str(base)], capture_output=True, text=True)
        assert left.stdout.strip() == "", left.stdout
    finally:
        if pid is not None and base.exists():
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                pass
            subprocess.run([script, "down", str(base)], capture_output=True, timeout=120,
                           cwd=ROOT)
        shutil.rmtree(base.parent, ignore_errors=True)
