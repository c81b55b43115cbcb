"""A table of runs (``hpcbench report``), read from each run's summary.

One row per run: model, layout, batch, the headline (common-window) throughput, the DLBS
figures, skew and latency, so runs of a sweep can be compared side by side. A run without
``summary.json`` is summarised from its rank files without writing anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcbench.aggregate import read_summary
from hpcbench.aggregate.summary import format_telemetry
from hpcbench.aggregate.validity import format_verdict, verdict_word
from hpcbench.text import format_figure
from hpcbench.units import samples_of


@dataclass(frozen=True, slots=True)
class Column:
    """One column of the table: header, how to get the value, how to show it."""

    header: str
    path: tuple[str, ...]
    kind: str  # "text", "layout", "int", "img_s", "ms", "s"


_LAYOUT_WIDTH = 24

COLUMNS = (
    Column("run", ("_name",), "text"),
    Column("model", ("run", "model"), "text"),
    Column("layout", ("run", "layout"), "layout"),
    Column("batch", ("run", "batch_size"), "int"),
    Column("ranks", ("run", "world_size"), "int"),
    Column("window img/s", ("throughput", "common_window_img_s"), "img_s"),
    Column("sum own", ("throughput", "sum_own_img_s"), "img_s"),
    Column("DLBS adj", ("throughput", "dlbs_adjusted_img_s"), "img_s"),
    Column("DLBS eff", ("throughput", "dlbs_effective_sum_img_s"), "img_s"),
    Column("start skew", ("skew", "start_s"), "s"),
    Column("finish skew", ("skew", "finish_s"), "s"),
    Column("p50 ms", ("latency_ms", "p50"), "ms"),
    Column("p99 ms", ("latency_ms", "p99"), "ms"),
    Column("img/J", ("telemetry", "total", "images_per_j"), "img_j"),
    Column("validity", ("validity",), "verdict"),
)


def load_summary(run_dir: Path) -> dict[str, Any]:
    """A run's summary, with ``_name`` (the directory name) added for the table."""
    summary = dict(read_summary(Path(run_dir)))
    path = Path(run_dir).resolve()  # "." has no name; its resolved path has
    summary["_name"] = path.parent.name if path.is_file() else path.name
    return summary


def load_summaries(run_dirs: Sequence[Path]) -> list[dict[str, Any]]:
    """Each run's summary (see :func:`load_summary`); the first unreadable run raises."""
    return [load_summary(run_dir) for run_dir in run_dirs]


def report_rows(summaries: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """The table's cells as text, one list per run (header not included).

    >>> s = {"_name": "r1", "run": {"model": "resnet50", "layout": "0;1", "batch_size": 64,
    ...      "world_size": 2}, "throughput": {"common_window_img_s": 1234.56,
    ...      "sum_own_img_s": 1300.0, "dlbs_adjusted_img_s": None,
    ...      "dlbs_effective_sum_img_s": 1200.0}, "skew": {"start_s": 2e-5, "finish_s": 0.25},
    ...      "latency_ms": {"p50": 10.0, "p99": 12.5}, "complete": True}
    >>> "|".join(report_rows([s])[0])
    'r1|resnet50|0;1|64|2|1 234.6|1 300.0|-|1 200.0|20 µs|250 ms|10.00|12.50|-|-'
    """
    rows = []
    for summary in summaries:
        cells = [_cell(_get(summary, c.path), c.kind) for c in COLUMNS]
        if not summary.get("complete", True):
            cells[0] += " (partial)"
        rows.append(cells)
    return rows


def format_report(summaries: Sequence[Mapping[str, Any]]) -> str:
    """The table of runs as aligned text, with notes for undefined DLBS figures.

    Throughput is in the models' samples: images, or sequences for a language model. With runs
    of both kinds the headers say "samples" and a note says which model counts what.
    """
    unit, unit_note = samples_of(_get(s, ("run", "model")) for s in summaries)
    header = [_header(c, unit) for c in COLUMNS]
    rows = report_rows(summaries)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    text_columns = {i for i, c in enumerate(COLUMNS) if c.kind in ("text", "layout")}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i in text_columns else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths))
        ).rstrip()

    lines = [line(header), line(["-" * w for w in widths])]
    lines.extend(line(row) for row in rows)
    notes = []
    for summary in summaries:
        reason = summary["throughput"].get("dlbs_adjusted_reason")
        if reason:
            notes.append(f"{summary['_name']}: DLBS adjusted undefined: {reason}")
        reason = summary["throughput"].get("common_window_reason")
        if reason:
            notes.append(f"{summary['_name']}: common window undefined: {reason}")
        notes.extend(f"{summary['_name']}: {line.strip()}" for line in _run_notes(summary))
    if unit_note:
        notes.append(unit_note)
    if notes:
        lines.append("")
        lines.extend(notes)
    return "\n".join(lines)


def _run_notes(summary: Mapping[str, Any]) -> list[str]:
    """The run's telemetry over the window and its verdict, with every failed check."""
    lines = format_telemetry(summary.get("telemetry"))
    lines = [" ".join(line.split()) for line in lines]
    return lines + format_verdict(summary.get("validity"))


def _header(column: Column, unit: str) -> str:
    """A throughput column's header in the runs' unit: ``window seq/s``."""
    return (
        column.header.replace("img/", f"{unit}/")
        if column.kind.startswith("img_")
        else column.header
    )


def _get(data: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = data
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _cell(value: Any, kind: str) -> str:
    if value is None or value == "":
        return "-"
    if kind == "layout":
        # A 64-rank layout is hundreds of characters: keep the table readable.
        text = str(value)
        return text if len(text) <= _LAYOUT_WIDTH else text[: _LAYOUT_WIDTH - 1] + "…"
    if kind == "img_s":
        return format_figure(float(value))
    if kind == "verdict":
        return verdict_word(value)
    if kind == "img_j":
        return f"{float(value):.2f}"
    if kind == "ms":
        return f"{float(value):.2f}"
    if kind == "s":
        seconds = float(value)
        if seconds < 1e-3:
            return f"{seconds * 1e6:.0f} µs"
        if seconds < 1:
            return f"{seconds * 1e3:.0f} ms"
        return f"{seconds:.2f} s"
    return str(value)
