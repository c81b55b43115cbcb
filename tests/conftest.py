"""Shared fixtures. Topology snapshots live in ``tests/fixtures/`` (vendored: a clone stands
alone)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"


@pytest.fixture(scope="session")
def hwloc_fixtures() -> Path:
    """hwloc's own test topologies (BSD-3-Clause, see tests/fixtures/hwloc/README.md)."""
    return FIXTURES / "hwloc"


def _nvidia_gpu_count() -> int:
    """GPUs that NVML sees (0 without a driver); cheaper than importing torch."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests marked gpu run on the device machine; CI has no GPU and skips them.
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_items and _nvidia_gpu_count() == 0:
        skip = pytest.mark.skip(reason="needs an NVIDIA GPU (none found through NVML)")
        for item in gpu_items:
            item.add_marker(skip)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/golden/ files from the current output instead of comparing",
    )


@pytest.fixture
def golden(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """``golden(name, text)``: compare ``text`` with ``tests/golden/name`` whole.

    A missing golden file fails; ``pytest --update-golden`` (re)writes it on purpose.
    """
    update = request.config.getoption("--update-golden")

    def check(name: str, text: str) -> None:
        path = REPO / "tests" / "golden" / name
        if update:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            return
        if not path.is_file():
            pytest.fail(f"golden file {path} is missing; create it with pytest --update-golden")
        expected = path.read_text()
        assert text == expected, f"output differs from {path} (pytest --update-golden rewrites it)"

    return check


# ------------------------------------------------------------------------------- local Slurm
# scripts/test.sh starts a real local cluster (scripts/slurm-cluster: 2 slurmd on this host,
# slurmdbd) and exports HPCBENCH_SLURM_*. Without one, slurm tests skip locally with the reason
# and fail under CI (CI set), where they must run.
SLURM_LAB = Path("/var/tmp/hpcbench-slurm")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _cluster_problem() -> str | None:
    if shutil.which("sbatch") is None:
        return "sbatch is not installed (start the cluster with scripts/slurm-cluster start)"
    site = os.environ.get("HPCBENCH_SLURM_SITE") or str(SLURM_LAB / "site" / "site.yaml")
    if not Path(site).is_file():
        return f"no local cluster site config at {site} (run scripts/slurm-cluster start)"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"scontrol ping failed: {exc}"
    if ping.returncode != 0 or "UP" not in ping.stdout:
        said = ((ping.stdout + ping.stderr).strip().splitlines() or [f"exit {ping.returncode}"])[0]
        return f"slurmctld does not answer (scontrol ping: {said})"
    return None


@pytest.fixture(scope="session")
def slurm_site() -> Path:
    """The site config of the running local cluster; skip (fail in CI) when there is none."""
    problem = _cluster_problem()
    if problem is not None:
        if _in_ci():
            pytest.fail(f"CI=true but the local Slurm cluster is not usable: {problem}")
        pytest.skip(f"no local Slurm cluster: {problem}")
    return Path(os.environ.get("HPCBENCH_SLURM_SITE") or SLURM_LAB / "site" / "site.yaml")


@pytest.fixture(scope="session")
def slurm_nodes(slurm_site: Path) -> int:
    """How many slurmd nodes the local cluster has."""
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True)
    return len(set(out.stdout.split()))


@pytest.fixture(autouse=True)
def clean_slurm_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Drop SLURM_* variables inherited from an salloc/sbatch shell: they would leak into sbatch
    (e.g. SLURM_NTASKS) and into identity detection."""
    for name in list(os.environ):
        if name.startswith("SLURM_"):
            monkeypatch.delenv(name, raising=False)
    yield
