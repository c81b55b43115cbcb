"""The result archive: runs stored atomically under stable ids, queried, compared and checked.

Library entry points for other commands (``submit``/``sweep --archive ARCHIVE``):
:func:`add_run` and :func:`add_runs`. Layout and concurrency design: :mod:`hpcbench.archive.store`
and docs/archive.md.
"""

from __future__ import annotations

from hpcbench.archive.store import (
    AddResult,
    Archive,
    RebuildReport,
    add_run,
    add_runs,
    entry_from_run_dir,
)

__all__ = [
    "AddResult",
    "Archive",
    "RebuildReport",
    "add_run",
    "add_runs",
    "entry_from_run_dir",
]
