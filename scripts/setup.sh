#!/usr/bin/env bash
# Set up hpcbench on a fresh Debian machine (as root) or an existing one: system packages, a
# virtual environment in .venv with hpcbench installed. Idempotent; sourced by the other scripts.
#   HPCBENCH_EXTRAS: pip extras to install (default: none; the test script asks for "test").
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${HPCBENCH_VENV:-$repo/.venv}"
extras="${HPCBENCH_EXTRAS:-}"

apt_install() {
    # Install Debian packages that are missing; never start their services (no policy-rc.d games
    # are needed here: we only ask for libraries and tools).
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        echo "setup: installing ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    pkgs=(numactl)
    # A Python with venv and pip: Debian's, unless a python3 with a working venv is already here.
    python3 -c 'import venv, ensurepip' 2>/dev/null || pkgs+=(python3 python3-venv python3-pip)
    apt_install "${pkgs[@]}"
fi

if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
spec="$repo"
[[ -n "$extras" ]] && spec="$repo[$extras]"
"$venv/bin/python" -m pip install -q -e "$spec" 2> >(grep -v "^WARNING: Location" >&2)
