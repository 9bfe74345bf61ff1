#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine: system packages, .venv, the project with test extras.
# Usage: scripts/setup.sh [--peers]   (--peers also installs the benchmark peers)
set -euo pipefail
cd "$(dirname "$0")/.."

# util-linux-extra: fincore (a test counts a chunk file's pages in the page cache)
need_pkgs=(fuse3 libfuse3-dev pkg-config patch rsync git attr fio postgresql util-linux-extra)
if [[ "${1:-}" == "--peers" || "${AIFS_SETUP_PEERS:-}" == 1 ]]; then
  need_pkgs+=(bindfs gocryptfs rclone borgbackup)
fi
missing=()
for p in "${need_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if (( ${#missing[@]} )); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
stamp=.venv/.installed-$(cat pyproject.toml scripts/pyfuse3.patch | sha256sum | cut -c1-16)
if [[ ! -f "$stamp" ]]; then
  echo "setup: installing the project into .venv"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  # torch: the CPU build, pinned (an unpinned torch pulls several GB of CUDA packages).
  # The machine image ships that wheel locally (pip's find-links), so this pulls no CUDA packages.
  .venv/bin/pip install -q "torch==2.13.0"
  .venv/bin/pip install -q -e ".[test]"
  # pyfuse3 rebuilt from its sdist with scripts/pyfuse3.patch: FileInfo.noflush (a read-only
  # handle's close costs no FUSE request) and a request loop that takes a queued request
  # without waiting. The mount works without them, so a patch that does not apply only warns.
  # The built wheel is kept in the user's cache (keyed by pyfuse3's version, the patch, the
  # Python and libfuse3 versions): the build is ~45 s of Cython and C, once per machine.
  if ! .venv/bin/python -c "import pyfuse3, sys; sys.exit('fast-loop' not in getattr(pyfuse3, 'aifs_patches', ()))"; then
    ver=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('pyfuse3'))")
    key=$( { echo "$ver"; .venv/bin/python -c 'import sys; print(sys.version)';
             pkg-config --modversion fuse3; cat scripts/pyfuse3.patch; } | sha256sum | cut -c1-16)
    wheels="${XDG_CACHE_HOME:-$HOME/.cache}/aifs/wheels/pyfuse3-$ver-$key"
    if ! ls "$wheels"/pyfuse3-*.whl >/dev/null 2>&1; then
      tmp=$(mktemp -d)
      if .venv/bin/pip download -q --no-deps --no-binary :all: "pyfuse3==$ver" -d "$tmp" &&
         tar xzf "$tmp/pyfuse3-$ver.tar.gz" -C "$tmp" &&
         patch -s -d "$tmp/pyfuse3-$ver" -p1 < scripts/pyfuse3.patch &&
         .venv/bin/pip wheel -q --no-deps -w "$tmp/wheel" "$tmp/pyfuse3-$ver"; then
        mkdir -p "$wheels" && mv "$tmp"/wheel/pyfuse3-*.whl "$wheels"/
      fi
      rm -rf "$tmp"
    fi
    if ls "$wheels"/pyfuse3-*.whl >/dev/null 2>&1; then
      .venv/bin/pip install -q --no-deps --force-reinstall "$wheels"/pyfuse3-*.whl
    else
      echo "setup: WARNING: pyfuse3 $ver not patched: every close costs a FLUSH request and" \
           "each FUSE request a trio task switch"
    fi
  fi
  rm -f .venv/.installed-*; touch "$stamp"
fi
echo "setup: ready (.venv/bin/aifs)"
