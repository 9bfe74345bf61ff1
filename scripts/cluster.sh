#!/usr/bin/env bash
# Start or stop a local shared AIFS deployment for trying and testing (issue 12):
#   scripts/cluster.sh up [DIR] [N]   PostgreSQL 15 (initdb in DIR, unix socket only), SeaweedFS
#                                     S3 and N `aifs server`s (default 2), all on 127.0.0.1;
#                                     prints the server addresses and the token file, then
#                                     returns (the cluster runs in the background; log in
#                                     DIR/cluster.log)
#   scripts/cluster.sh down [DIR]     stops everything `up` started in DIR and removes DIR
# DIR defaults to /tmp/aifs-cluster (short: unix socket paths). The logic is tests/cluster.py,
# the same code the cluster tests use (services from tests/services.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
cmd="${1:-}"
dir="${2:-/tmp/aifs-cluster}"
case "$cmd" in
  up)
    n="${3:-2}"
    mkdir -p "$dir"
    chmod 700 "$dir"
    if [ -e "$dir/cluster.json" ]; then
      echo "a cluster already runs in $dir (stop it with: $0 down $dir)" >&2
      exit 1
    fi
    nohup "$PY" -m tests.cluster up "$dir" "$n" >"$dir/cluster.log" 2>&1 </dev/null &
    pid=$!
    for _ in $(seq 1 600); do           # at most 120 s
      if [ -e "$dir/cluster.json" ]; then
        sed -n '/^servers:/,$p' "$dir/cluster.log"
        echo "stop with:  $0 down $dir"
        exit 0
      fi
      if ! kill -0 "$pid" 2>/dev/null; then
        echo "the cluster did not start:" >&2
        tail -40 "$dir/cluster.log" >&2
        exit 1
      fi
      sleep 0.2
    done
    echo "the cluster did not start within 120 s (log: $dir/cluster.log); stopping it" >&2
    kill "$pid" 2>/dev/null || true
    exit 1
    ;;
  down)
    exec "$PY" -m tests.cluster down "$dir"
    ;;
  *)
    echo "usage: $0 up [DIR] [N] | down [DIR]" >&2
    exit 2
    ;;
esac
