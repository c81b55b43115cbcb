"""Aggregation: one honest number from many ranks, with DLBS-compatible figures.

``aggregate_run(run_dir)`` reads every ``rank-NNNNN.h5`` of a run, computes the figures of
DESIGN.md ("The numbers"; explained in docs/concepts.md), writes ``result.h5`` and
``summary.json`` and returns the summary. ``format_summary(summary)`` renders it for a terminal.
The figures themselves are pure functions in :mod:`hpcbench.aggregate.figures`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hpcbench.aggregate.load import LoadedRun, load_run
from hpcbench.aggregate.result import write_result, write_summary
from hpcbench.aggregate.summary import dumps, format_summary, summarize
from hpcbench.aggregate.validity import rules_named
from hpcbench.errors import MetricsError, UsageError, excerpt
from hpcbench.jsonfile import read_json
from hpcbench.runfiles import RunFiles

__all__ = [
    "LoadedRun",
    "aggregate_run",
    "format_summary",
    "load_run",
    "read_summary",
    "summarize_run",
]


def summarize_run(
    run_dir: Path,
    *,
    dlbs_trim: int = 50,
    allow_partial: bool = False,
    reference: Path | None = None,
    validity: str | None = None,
) -> dict[str, Any]:
    """The summary of ``run_dir`` computed from its rank files, writing nothing."""
    run = load_run(Path(run_dir), allow_partial=allow_partial)
    return summarize(
        run,
        dlbs_trim=dlbs_trim,
        reference=_reference_summary(reference),
        rules=None if validity is None else rules_named(validity),
    )


def aggregate_run(
    run_dir: Path,
    *,
    dlbs_trim: int = 50,
    allow_partial: bool = False,
    reference: Path | None = None,
    validity: str | None = None,
) -> dict[str, Any]:
    """Aggregate a run: write ``result.h5`` and ``summary.json`` in ``run_dir``; return the summary.

    Raises :class:`~hpcbench.errors.MetricsError` naming the file when a rank file is missing
    or unfinished (unless ``allow_partial``: then the finished ranks are aggregated and the
    summary says ``complete: false``) or when a rank file is truncated or corrupt.
    ``reference`` is a single-rank run (its directory or its ``summary.json``) for efficiency.
    ``validity`` names the rules the run is judged by (None: those of its spec, else
    ``default``).
    """
    run_dir = Path(run_dir)
    run = load_run(run_dir, allow_partial=allow_partial)
    summary = summarize(
        run,
        dlbs_trim=dlbs_trim,
        reference=_reference_summary(reference),
        rules=None if validity is None else rules_named(validity),
    )
    text = dumps(summary)
    files = RunFiles(run_dir)
    write_result(files.result, run.ranks, summary, text)
    write_summary(files.summary, summary, text)
    return summary


def read_summary(run_dir: Path) -> dict[str, Any]:
    """A run's ``summary.json`` when present, else its summary computed without writing.

    ``run_dir`` may also name a ``summary.json`` file directly.
    """
    path = Path(run_dir)
    if path.is_file():
        summary_path = path
    else:
        summary_path = RunFiles(path).summary
        if not summary_path.exists():
            return summarize_run(path, allow_partial=True)
    data = read_json(summary_path, "summary", MetricsError)
    if not isinstance(data, dict) or "throughput" not in data:
        raise MetricsError(f"{summary_path}: not an hpcbench summary (no 'throughput' key)")
    return data


def _reference_summary(reference: Path | None) -> dict[str, Any] | None:
    """The single-rank run efficiency is measured against, checked (UsageError otherwise)."""
    if reference is None:
        return None
    summary = read_summary(Path(reference))
    where = f"--reference {reference}"
    run = summary.get("run") if isinstance(summary, dict) else None
    throughput = summary.get("throughput") if isinstance(summary, dict) else None
    if not isinstance(run, dict) or not isinstance(throughput, dict):
        raise UsageError(f"{where}: not an hpcbench summary (no 'run' and 'throughput' objects)")
    world_size = run.get("world_size")
    if world_size != 1:
        raise UsageError(
            f"{where}: a single-rank run is needed for efficiency, "
            f"this one has {excerpt(world_size)} ranks"
        )
    if summary.get("complete", True) is not True:
        raise UsageError(f"{where}: the reference run is incomplete")
    img_s = throughput.get("common_window_img_s")
    if img_s is None:
        raise UsageError(f"{where}: the reference run has no throughput figure")
    if isinstance(img_s, bool) or not isinstance(img_s, (int, float)) or not (0 < img_s < math.inf):
        raise UsageError(
            f"{where}: throughput.common_window_img_s must be a positive number, "
            f"got {excerpt(img_s)}"
        )
    return summary
