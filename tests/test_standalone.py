"""The repository stands alone: a user's clone has nothing beside it.

No tracked file may read or name a folder beside the checkout (such as the developers' shared
folder): tests that pass there fail on every user's clone. Two ways out are looked for:
- the shared folder by name, as a relative path or as ``….parent / "shared"``;
- ``Path(__file__)`` climbing more parents than the file is deep, or ``../`` in a Markdown link
  that climbs above the repository root.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

_SIBLING = "sha" + "red"  # spelt apart so that this file does not name it itself
_BY_NAME = re.compile(
    r"\.\./+(?:\.\./+)*" + _SIBLING + r"\b"
    r"|\.parent\s*/\s*[\"']" + _SIBLING + r"[\"']"
    r"|\bREPO\.parent\b"
)
_FILE_PARENTS = re.compile(r"Path\(__file__\)(?:\.resolve\(\))?((?:\.parent)+)")
_FILE_PARENTS_INDEX = re.compile(r"Path\(__file__\)(?:\.resolve\(\))?\.parents\[(\d+)\]")
_MD_LINK = re.compile(r"\]\(((?:\.\./)+)")


def outside_references(name: str, text: str) -> list[str]:
    """The places in tracked file ``name`` (relative to the root) that leave the repository."""
    depth = len(Path(name).parts) - 1  # folders between the root and the file
    found = [m.group(0) for m in _BY_NAME.finditer(text)]
    for m in _FILE_PARENTS.finditer(text):
        # .parent of __file__ is the file's folder; each further one climbs a level.
        if m.group(1).count(".parent") - 1 > depth:
            found.append(m.group(0))
    for m in _FILE_PARENTS_INDEX.finditer(text):
        if int(m.group(1)) > depth:
            found.append(m.group(0))
    if name.endswith(".md"):
        found += [m.group(0) for m in _MD_LINK.finditer(text) if m.group(1).count("../") > depth]
    return found


@pytest.mark.parametrize(
    ("name", "text", "leaves"),
    [
        ("scripts/x", "see ../" + _SIBLING + "/slurm/NOTES.md", True),
        ("tests/conftest.py", "S = REPO.parent / '" + _SIBLING + "'", True),
        ("tests/conftest.py", 'S = Path(x).parent / "' + _SIBLING + '"', True),
        ("tests/conftest.py", "R = Path(__file__).resolve().parent.parent.parent", True),
        ("tests/conftest.py", "R = Path(__file__).resolve().parents[2]", True),
        ("tests/conftest.py", "R = Path(__file__).resolve().parent.parent", False),
        ("hpcbench/resources.py", "R = Path(__file__).parents[1]", False),
        ("docs/a.md", "[readme](../README.md)", False),
        ("docs/a.md", "[notes](../../notes.md)", True),
        ("docs/a.md", "/" + _SIBLING + "/bench-archive on the cluster", False),  # a site path
        ("tests/sysfs_tree.py", "link ../../../devices/pci0000:00", False),  # a symlink target
    ],
)
def test_the_checks_find_ways_out(name: str, text: str, leaves: bool) -> None:
    assert bool(outside_references(name, text)) is leaves


def test_no_tracked_file_names_a_folder_beside_the_repository() -> None:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=30
        )
    except (OSError, subprocess.CalledProcessError) as exc:  # an unpacked tarball, not a clone
        pytest.skip(f"not a git checkout: {exc}")
    offenders = []
    for name in filter(None, listed.stdout.decode().split("\0")):
        if name == "tests/test_standalone.py":
            continue  # its examples
        try:
            text = (REPO / name).read_text(encoding="utf-8")
        except (UnicodeDecodeError, IsADirectoryError, FileNotFoundError):
            continue  # binary fixtures (tar.bz2), removed but not yet committed
        offenders += [f"{name}: {ref!r}" for ref in outside_references(name, text)]
    assert not offenders, "tracked files reach outside the repository:\n" + "\n".join(offenders)
