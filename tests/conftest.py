"""Shared fixtures. ``shared/`` (topology snapshots) sits beside the checkout, as in CI."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def hwloc_fixtures() -> Path:
    path = SHARED / "fixtures" / "hwloc"
    if not path.is_dir():
        pytest.fail(f"topology fixtures not found at {path} (shared/ must sit beside the repo)")
    return path


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
