#!/usr/bin/env bash
# The whole suite: set-up (idempotent), generated code current, ruff, mypy, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
scripts/gen_proto.sh --check
ruff check .
mypy core aifsfs server cli
pytest -q -p no:cacheprovider "$@"
