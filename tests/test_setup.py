"""The set-up and every install hint: what a new user types works from their checkout.

The package index's ``hpcbench`` is an unrelated project, so no hint may install hpcbench by
name; the README's set-up (scripts/setup.sh, run by scripts/quickstart.sh) installs what the
documented workflows need: matplotlib everywhere, PyTorch with torchvision where a GPU is.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from hpcbench.resources import install_hint

REPO = Path(__file__).resolve().parent.parent
# "hpcbench[" after "pip install" (quoted or not): the index's package, whatever the extra.
_BY_NAME = re.compile(r"pip3?\s+install\s+(?:-\S+\s+)*['\"]?" + "hpc" + r"bench\[")


def _tracked_files() -> list[str]:
    try:
        listed = subprocess.run(
            ["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [name for name in listed.stdout.splitlines() if (REPO / name).is_file()]


def test_no_hint_installs_hpcbench_from_the_package_index() -> None:
    offenders = []
    for name in _tracked_files():
        try:
            text = (REPO / name).read_text()
        except (UnicodeDecodeError, OSError):
            continue
        offenders += [f"{name}: {m.group(0)}" for m in _BY_NAME.finditer(text)]
    assert offenders == []


def test_install_hint_is_a_command_for_this_checkout_and_interpreter() -> None:
    words = shlex.split(install_hint("plot"))
    assert words == [sys.executable, "-m", "pip", "install", "-e", f"{REPO}[plot]"]


def _dry_setup(tmp_path: Path, path: str, **env: str) -> str:
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "setup.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PATH": path, "HPCBENCH_SETUP_DRY_RUN": "1",
             "HPCBENCH_VENV": str(tmp_path / "venv"), **env},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stderr


def _pip_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if "would run:" in line and " -e " in line]
    assert len(lines) == 1, stderr
    return lines[0]


def test_setup_installs_plots_and_torch_only_where_a_gpu_is(tmp_path: Path) -> None:
    """Dry runs of scripts/setup.sh: every step is announced; matplotlib always, and
    torch with torchvision when nvidia-smi is there (a stand-in on PATH here)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
    (fake / "nvidia-smi").chmod(0o700)
    gpu = _dry_setup(tmp_path, f"{fake}:{os.environ['PATH']}")
    assert _pip_line(gpu).endswith(f"pip install -e {REPO}[plot,torch]")
    assert "setup: an NVIDIA GPU is present" in gpu
    for step in ("creating the virtual environment", "installing hpcbench with extras", "done in"):
        assert f"setup: {step}" in gpu
    forced_off = _dry_setup(tmp_path, f"{fake}:{os.environ['PATH']}", HPCBENCH_TORCH="0")
    assert _pip_line(forced_off).endswith(f"pip install -e {REPO}[plot]")
    extras = _dry_setup(tmp_path, os.environ["PATH"], HPCBENCH_EXTRAS="test", HPCBENCH_TORCH="1")
    assert _pip_line(extras).endswith(f"pip install -e {REPO}[plot,test,torch]")


def test_setup_leaves_torch_out_on_a_cpu_only_machine(tmp_path: Path) -> None:
    """No NVIDIA driver: no multi-GB CUDA torch (the CPU backend runs without it)."""
    has_driver = Path("/proc/driver/nvidia/version").exists()
    if has_driver or any(
        (Path(d) / "nvidia-smi").exists() for d in os.environ["PATH"].split(os.pathsep)
    ):
        pytest.skip("this machine has an NVIDIA driver")
    cpu = _dry_setup(tmp_path, os.environ["PATH"])
    assert _pip_line(cpu).endswith(f"pip install -e {REPO}[plot]")
    assert "NVIDIA" not in cpu
