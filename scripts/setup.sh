#!/usr/bin/env bash
# Set up hpcbench on a fresh Debian machine (as root) or an existing one: system packages, a
# virtual environment in .venv with hpcbench and what the documented workflows need (plots;
# on a node with an NVIDIA GPU, PyTorch with torchvision). Idempotent; sourced by the other
# scripts. Every step says what it is doing on stderr before it starts.
#   HPCBENCH_EXTRAS: more pip extras to install (the test script asks for "test").
#   HPCBENCH_TORCH:  auto (default: PyTorch + torchvision when an NVIDIA GPU is present), 1, 0.
#   HPCBENCH_SETUP_DRY_RUN=1: print the commands that would change something; run none.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${HPCBENCH_VENV:-$repo/.venv}"
dry="${HPCBENCH_SETUP_DRY_RUN:-0}"
started=$SECONDS
exec 3>&2  # the terminal, for lines that must not go through a command's stderr filter

say() { echo "setup: $*" >&3; }
act() {
    # Run a command that changes the machine, or only show it in a dry run.
    if [[ "$dry" == 1 ]]; then
        echo "setup: would run: $*" >&3
    else
        "$@"
    fi
}

apt_install() {
    # Install Debian packages that are missing; never start their services (no policy-rc.d games
    # are needed here: we only ask for libraries and tools).
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        say "installing Debian packages: ${missing[*]} (apt-get, may take a minute)"
        export DEBIAN_FRONTEND=noninteractive
        act apt-get update -qq
        act apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

has_nvidia_gpu() {
    # The driver's files, not the GPUs' PCI class: a GPU without a driver cannot run torch.
    command -v nvidia-smi >/dev/null 2>&1 || [[ -e /proc/driver/nvidia/version ]]
}

if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    say "checking system packages (numactl, python3-venv)"
    pkgs=(numactl)
    # A Python with venv and pip: Debian's, unless a python3 with a working venv is already here.
    python3 -c 'import venv, ensurepip' 2>/dev/null || pkgs+=(python3 python3-venv python3-pip)
    apt_install "${pkgs[@]}"
fi

if [[ ! -x "$venv/bin/python" ]]; then
    say "creating the virtual environment $venv"
    act python3 -m venv "$venv"
fi

# Plots are part of the documented workflow (report --plot); PyTorch only where a GPU can use it:
# on a CPU-only machine an unpinned torch is a multi-GB CUDA build that the CPU backend does
# not need (the test script installs the small CPU build for its tests).
extras="plot${HPCBENCH_EXTRAS:+,$HPCBENCH_EXTRAS}"
case "${HPCBENCH_TORCH:-auto}" in
    1) extras="$extras,torch" ;;
    auto) has_nvidia_gpu && extras="$extras,torch" ;;
    0) ;;
    *) say "HPCBENCH_TORCH must be auto, 1 or 0, not '$HPCBENCH_TORCH'"; exit 2 ;;
esac
if [[ ",$extras," == *,torch,* ]]; then
    say "an NVIDIA GPU is present (or HPCBENCH_TORCH=1): PyTorch and torchvision are included"
fi

say "updating pip in $venv"
act "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
pip_progress() {
    # pip's own lines, shortened to one per package it fetches, so a long install shows life.
    sed -u -n -e 's/^Collecting \([^ ;]*\).*/setup:   fetching \1/p' \
        -e 's/^Installing collected packages: .*/setup:   installing what was fetched/p' >&3
}
say "installing hpcbench with extras [$extras] into $venv (pip; a few minutes the first time)"
act "$venv/bin/python" -m pip install -e "$repo[$extras]" 2> >(grep -v "^WARNING: Location" >&2) |
    pip_progress
say "done in $((SECONDS - started)) s: $venv/bin/hpcbench"
