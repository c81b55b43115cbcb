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


def _stub(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o700)


@pytest.mark.parametrize(
    ("failing", "pytest_rc", "rc", "named"),
    [
        ((), 0, 0, None),
        (("ruff",), 0, 1, "ruff"),
        (("mypy", "lint-imports"), 0, 1, "mypy, import layers"),
        (("ruff",), 3, 3, "ruff"),
        ((), 5, 1, None),  # pytest collected nothing
    ],
)
def test_ci_fails_on_every_failed_check_after_running_them_all(
    tmp_path: Path, failing: tuple[str, ...], pytest_rc: int, rc: int, named: str | None
) -> None:
    """scripts/test.sh (what CI runs) with stand-ins for set-up, the checkers and pytest: each
    check and pytest runs even after one failed, and any failure fails the script."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / "scripts" / "test.sh").write_text((REPO / "scripts" / "test.sh").read_text())
    (repo / "scripts" / "setup.sh").write_text("exit 0\n")
    venv = repo / ".venv" / "bin"
    venv.mkdir(parents=True)
    calls = tmp_path / "calls"
    for tool in ("ruff", "mypy", "lint-imports"):
        # A failing ruff fails its lint ('ruff check'), not its format check.
        fails = f'[ "$1" != format ] && exit {int(tool in failing)}; exit 0'
        _stub(venv / tool, f'echo "{tool} $*" >> {calls}; {fails}')
    # python: 'import torch' succeeds (nothing to install); '-m pytest' exits with pytest_rc.
    _stub(
        venv / "python", f'echo "python $*" >> {calls}; [ "$1" = -m ] && exit {pytest_rc}; exit 0'
    )
    done = subprocess.run(
        ["bash", str(repo / "scripts" / "test.sh"), "-q"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "HPCBENCH_SLURM": "0"},
    )  # fmt: skip
    assert done.returncode == rc, done.stdout + done.stderr
    ran = calls.read_text().splitlines()
    assert [line.split()[0] for line in ran[1:]] == [
        "ruff",
        "ruff",
        "mypy",
        "lint-imports",
        "python",
    ]
    assert ran[-1] == "python -m pytest -q"
    failures = [line for line in done.stderr.splitlines() if line.startswith("test.sh: failed: ")]
    assert failures == ([f"test.sh: failed: {named}"] if named else [])
