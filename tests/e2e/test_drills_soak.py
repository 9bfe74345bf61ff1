"""Fault drill (issue 13): a short soak on one real mount. Eight processes for 10 s create,
rewrite (whole, in place, appends), rename over and unlink files of 0 B to 2.2 MiB in one shared
directory, each in its own names, keeping a model of what each name holds after every call
that returned 0, and reading files back now and then (every byte must equal the model's).
Afterwards every process's names and contents equal its model through the same mount and
through a fresh mount after an unmount; no call may fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.e2e.drills import Rig

REPO = Path(__file__).resolve().parents[2]
PROCS = 8
SECONDS = 10.0     # the soak was 3 minutes; the suite's time is bounded
GUARD = 300.0      # seconds before a process is called hung (a guard, not a speed check)

WORKER = r"""
import hashlib, json, os, random, sys, time
d, k, seconds, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
rng = random.Random(1000 + k)
names = ["p%d-%d" % (k, j) for j in range(6)]
sizes = (0, 1000, 65536, 300_000, 1_200_000, 2_300_000)
model = {}
ops = 0
path = lambda n: os.path.join(d, n)

def check(n):
    with open(path(n), "rb") as f:
        got = f.read()
    assert got == model[n], "%s: %d bytes read, %d in the model" % (n, len(got), len(model[n]))

end = time.monotonic() + seconds
while time.monotonic() < end:
    n = rng.choice(names)
    op = rng.random()
    if n not in model or op < 0.25:                       # create or rewrite whole
        data = rng.randbytes(rng.choice(sizes))
        with open(path(n), "wb") as f:
            f.write(data)
        model[n] = data
    elif op < 0.45:                                       # rewrite in place, maybe past the end
        old = model[n]
        off = rng.randrange(0, len(old) + 1)
        piece = rng.randbytes(rng.choice((1, 4096, 150_000)))
        with open(path(n), "r+b") as f:
            f.seek(off)
            f.write(piece)
        model[n] = old[:off] + piece + old[off + len(piece):]
    elif op < 0.55:                                       # append
        piece = rng.randbytes(rng.choice((10, 70_000)))
        with open(path(n), "ab") as f:
            f.write(piece)
        model[n] = model[n] + piece
    elif op < 0.7:                                        # rename over another own name
        to = rng.choice(names)
        os.rename(path(n), path(to))
        model[to] = model.pop(n)
    elif op < 0.8:
        os.unlink(path(n))
        del model[n]
    else:
        check(n)
    ops += 1
for n in model:
    check(n)
with open(out, "w") as f:
    json.dump({"ops": ops, "files": {n: hashlib.sha256(v).hexdigest()
                                     for n, v in model.items()}}, f)
"""


def _verify(d: Path, models: list[dict[str, str]]) -> None:
    want = {n: h for mdl in models for n, h in mdl.items()}
    assert sorted(os.listdir(d)) == sorted(want)
    for n, h in want.items():
        assert hashlib.sha256((d / n).read_bytes()).hexdigest() == h, n


def test_eight_processes_mixed_ops_then_every_file_is_its_last_closed_version(
        tmp_path: Path) -> None:
    with Rig(tmp_path) as rig:
        sp = rig.serve()
        m = rig.mount(sp)
        d = m.path / "soak"
        d.mkdir()
        procs = []
        try:
            for k in range(PROCS):
                procs.append(subprocess.Popen(
                    [sys.executable, "-c", WORKER, str(d), str(k), str(SECONDS),
                     str(tmp_path / f"model{k}.json")], cwd=REPO,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
            outs = [p.communicate(timeout=GUARD)[0] for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(10)
        failed = [(k, p.returncode, outs[k][-2000:]) for k, p in enumerate(procs)
                  if p.returncode != 0]
        assert not failed, failed
        results = [json.loads((tmp_path / f"model{k}.json").read_text()) for k in range(PROCS)]
        models = [r["files"] for r in results]
        assert sum(r["ops"] for r in results) >= PROCS * 10, results
        _verify(d, models)
        m.unmount()
        m2 = rig.mount(sp)
        _verify(m2.path / "soak", models)
