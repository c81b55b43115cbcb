#!/usr/bin/env bash
# The whole test suite from a fresh Debian machine (root): set-up, lint, types, tests.
# Exits non-zero when anything fails, including "no tests collected".
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
echo "== set-up (scripts/setup.sh with the test extras)"
HPCBENCH_EXTRAS=test bash scripts/setup.sh
py="$repo/.venv/bin"
# The torch backend's CPU tests need PyTorch: the CPU build that lies on the CI machines (an
# unpinned torch would pull a multi-GB CUDA build). torchvision from PyPI does not import beside
# it, so the image-model tests run on the GPU machine (tests/test_torch_gpu.py).
if ! "$py/python" -c 'import torch' 2>/dev/null; then
    echo "test.sh: installing PyTorch 2.13.0 (CPU build) for the torch backend's tests (pip)" >&2
    "$py/python" -m pip install -q torch==2.13.0 2> >(grep -v "^WARNING: Location" >&2)
fi

# Every check runs, even after one failed (one CI run shows every problem); any failure fails
# the script at the end. (A check must not sit inside an '&&' list: 'set -e' ignores a failure
# there, which once let a ruff error through CI.)
failed=()
check() {
    local name=$1
    shift
    echo "== $name"
    "$@" || failed+=("$name")
}
check "ruff" "$py/ruff" check hpcbench tests benchmarks
check "ruff format" "$py/ruff" format --check hpcbench tests benchmarks
check "mypy" "$py/mypy"
check "import layers" "$py/lint-imports"
# The Slurm tests run against a real local cluster (2 slurmd on this host, slurmdbd for sacct).
# A cluster that is already up with those settings is reused and left running; one started here
# is stopped on exit. If it cannot start, the slurm tests skip locally and fail under CI=true.
echo "== slurm"
slurm_ready() {
    bash scripts/slurm-cluster status >/dev/null 2>&1 &&
        (eval "$(bash scripts/slurm-cluster env)" && ((HPCBENCH_SLURM_NODES >= 2 && HPCBENCH_SLURM_DBD)))
}
if [[ "${HPCBENCH_SLURM:-1}" != 0 ]]; then
    if slurm_ready; then
        echo "reusing the running local Slurm cluster"
    elif bash scripts/slurm-cluster start --nodes 2 --dbd; then
        trap 'bash scripts/slurm-cluster stop' EXIT
        trap 'exit 130' INT  # so that Ctrl-C and a CI timeout still stop the cluster
        trap 'exit 143' TERM
    else
        echo "test.sh: the local Slurm cluster did not start; slurm tests will skip (fail in CI)" >&2
    fi
    if bash scripts/slurm-cluster status >/dev/null 2>&1; then
        eval "$(bash scripts/slurm-cluster env)"
    fi
fi
echo "== pytest (several minutes: real ranks, a real Slurm cluster)"
set +e
"$py/python" -m pytest "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
    echo "test.sh: pytest collected no tests: failing" >&2
    rc=1
fi
if ((${#failed[@]})); then
    names=$(printf '%s, ' "${failed[@]}")
    echo "test.sh: failed: ${names%, }" >&2
    ((rc != 0)) || rc=1
fi
exit $rc
