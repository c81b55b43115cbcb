#!/usr/bin/env bash
# The whole test suite from a fresh Debian machine (root): set-up, lint, types, tests.
# Exits non-zero when anything fails, including "no tests collected".
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
HPCBENCH_EXTRAS=test bash scripts/setup.sh
py="$repo/.venv/bin"

echo "== ruff" && "$py/ruff" check hpcbench tests benchmarks && "$py/ruff" format --check hpcbench tests benchmarks
echo "== mypy" && "$py/mypy"
echo "== pytest"
set +e
"$py/python" -m pytest "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
    echo "test.sh: pytest collected no tests: failing" >&2
    exit 1
fi
exit $rc
