"""Locate the packaged ``templates/`` and ``site_configs/`` folders.

In a wheel they are package data (``hpcbench/templates``); in a source checkout (editable
install or running from the tree) they sit at the repository's top level, beside the package.
"""

from __future__ import annotations

import shlex
import sys
from importlib import resources
from pathlib import Path


def _packaged_dir(name: str) -> Path:
    packaged = Path(str(resources.files("hpcbench"))) / name
    if packaged.is_dir():
        return packaged
    in_tree = Path(__file__).resolve().parent.parent / name
    if in_tree.is_dir():
        return in_tree
    raise FileNotFoundError(
        f"hpcbench is installed without its {name}/ folder (looked in {packaged})"
    )


def templates_dir() -> Path:
    """The folder of packaged Jinja templates."""
    return _packaged_dir("templates")


def site_configs_dir() -> Path:
    """The folder of shipped site configs."""
    return _packaged_dir("site_configs")


def checkout_root() -> Path | None:
    """The source checkout this hpcbench runs from (an editable install), else None."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None


def install_hint(extra: str) -> str:
    """The command that adds an optional part (``plot``, ``torch``) to this installation.

    It installs from the checkout, never by name from the package index, where an unrelated
    project is called hpcbench; and with this interpreter, so it lands in the right venv.
    """
    root = checkout_root()
    target = f"{root if root is not None else 'HPCBENCH_CHECKOUT'}[{extra}]"
    return f"{shlex.quote(sys.executable)} -m pip install -e {shlex.quote(target)}"
