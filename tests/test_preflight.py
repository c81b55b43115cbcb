"""``hpcbench run`` refuses what its ranks would refuse before it writes or starts anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_fuzz import assert_refused_in_one_line, run_cli


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--backend", "torch", "--model", "resnet5"], "did you mean 'resnet50'?"),
        (["--backend", "torch", "--option", "devise=cpu"], "unknown torch backend option"),
        (["--backend", "cpu", "--model", "resnet50"], "the cpu backend runs mlp"),
    ],
)
def test_a_spec_the_backend_refuses_leaves_no_run_directory(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    out = tmp_path / "run"
    code, _, err = run_cli(["run", "--ranks", "1", *flags, "--out", str(out)])
    assert message in assert_refused_in_one_line(code, err)
    assert not out.exists()


def test_the_torch_check_does_not_import_torch() -> None:
    """The check runs in the launching process, which never needs PyTorch itself."""
    code = (
        "import sys\n"
        "from hpcbench.runtime.local_run import preflight\n"
        "from hpcbench.plan.model import Plan\n"
        "from hpcbench.spec import RunSpec\n"
        "try:\n"
        "    preflight(RunSpec(backend='torch', model='resnet5'), Plan((), (), 't'))\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["ConfigError", "False"], done.stderr


@pytest.mark.parametrize("command", ["render", "submit"])
def test_a_job_the_backend_would_refuse_is_refused_before_its_run_directory(
    tmp_path: Path, command: str
) -> None:
    """On Slurm the ranks would fail on a compute node; say it here, before anything exists."""
    out = tmp_path / "run"
    argv = [command, "--site", "hpe-apollo6500-gen10", "--model", "resnet5", "--out", str(out)]
    code, _, err = run_cli(argv)
    assert "did you mean 'resnet50'?" in assert_refused_in_one_line(code, err)
    assert not out.exists()
