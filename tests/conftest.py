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
