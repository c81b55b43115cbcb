#!/usr/bin/env bash
# The main job on the embedded default, from a fresh Debian machine (root): set up, then run
# `hpcbench run` (probe this host, one pinned rank per socket, a short measurement, the result).
# Extra arguments go to `hpcbench run`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup.sh"
cd "$repo"
echo "quickstart: hpcbench run $* (probe this host, plan, run the pinned ranks, print the result)" >&2
exec "$repo/.venv/bin/hpcbench" run "$@"
