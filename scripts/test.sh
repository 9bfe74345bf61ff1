#!/usr/bin/env bash
# The whole suite: set-up (idempotent), generated code current, ruff, mypy, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
scripts/gen_proto.sh --check
ruff check .
mypy core aifsfs server cli
# two workers, each test file whole on one of them (module-scoped servers and mounts stay
# shared; file order kept); AIFS_TEST_WORKERS=0 runs it in this process (docs/DECISIONS.md).
# The 15 slowest tests are listed at the end: the suite must stay under 15 minutes.
pytest -q -p no:cacheprovider -n "${AIFS_TEST_WORKERS:-2}" --dist loadfile --durations=15 "$@"
