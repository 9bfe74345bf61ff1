#!/usr/bin/env bash
# Regenerate proto/aifs_proto/v1 from proto/aifs/v1/*.proto (reproducible).
#   --check: regenerate into a temp dir and fail if the checked-in code differs.
# Generated imports `from aifs.v1 import x_pb2` are rewritten to `aifs_proto.v1`, so nothing
# installs a top-level `aifs` or `proto` module.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}; [[ -x .venv/bin/python ]] && PY=.venv/bin/python
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
"$PY" -m grpc_tools.protoc -I proto --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" proto/aifs/v1/*.proto
mkdir -p "$out/final/v1"
for f in "$out"/aifs/v1/*.py "$out"/aifs/v1/*.pyi; do
  sed -e 's/^from aifs\.v1 import/from aifs_proto.v1 import/' "$f" > "$out/final/v1/$(basename "$f")"
done
printf '"""Generated gRPC code for aifs.v1 (scripts/gen_proto.sh). Do not edit."""\n' > "$out/final/__init__.py"
printf '"""Generated gRPC code for aifs.v1 (scripts/gen_proto.sh). Do not edit."""\n' > "$out/final/v1/__init__.py"
if [[ "${1:-}" == "--check" ]]; then
  if ! diff -r "$out/final" proto/aifs_proto >/dev/null; then
    echo "gen_proto: proto/aifs_proto is stale; run scripts/gen_proto.sh" >&2; exit 1
  fi
  echo "gen_proto: generated code is current"
else
  rm -rf proto/aifs_proto; cp -r "$out/final" proto/aifs_proto
  echo "gen_proto: wrote proto/aifs_proto"
fi
