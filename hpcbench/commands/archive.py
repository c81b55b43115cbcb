"""``hpcbench archive``: store runs, query, export, compare and report across them."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from hpcbench.errors import ArchiveError, UsageError
from hpcbench.text import format_figure, plural

F = Callable[..., Any]


def _archive_option(func: F) -> F:
    return click.option(
        "-a",
        "--archive",
        "archive_dir",
        required=True,
        envvar="HPCBENCH_ARCHIVE",
        type=click.Path(file_okay=False, path_type=Path),
        help="Archive folder (default: $HPCBENCH_ARCHIVE).",
    )(func)


def _where_option(func: F) -> F:
    return click.option(
        "-w",
        "--where",
        "where",
        multiple=True,
        metavar="KEY=VALUE",
        help="Keep runs whose KEY (dotted, e.g. run.model) equals VALUE; also !=, >, >=, <, <=, "
        "~REGEX. Repeat to combine (all must hold).",
    )(func)


def _selected(archive_dir: Path, where: Sequence[str]) -> list[Any]:
    from hpcbench.archive import Archive
    from hpcbench.archive.query import parse_where, select

    conditions = [parse_where(w) for w in where]
    return select(Archive(archive_dir).entries(), conditions)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


@click.group("archive")
def archive() -> None:
    """Store runs under stable ids; list, show, export, compare and report across them."""


@archive.command("add", short_help="Archive run directories (atomic, idempotent).")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--to",
    "archive_dir",
    required=True,
    envvar="HPCBENCH_ARCHIVE",
    type=click.Path(file_okay=False, path_type=Path),
    help="Archive folder, created when missing (default: $HPCBENCH_ARCHIVE).",
)
@click.option(
    "--replace",
    is_flag=True,
    help="A run archived before with other files (re-aggregated): store this version instead.",
)
def add(run_dirs: tuple[Path, ...], archive_dir: Path, replace: bool) -> None:
    """Archive RUN_DIR(s) atomically; adding a run again is harmless."""
    from hpcbench.archive import Archive

    store = Archive(archive_dir)
    failures = []
    for run_dir in run_dirs:
        try:
            result = store.add(run_dir, replace=replace)
        except ArchiveError as exc:
            click.echo(f"hpcbench: error: {exc}", err=True)
            failures.append(str(run_dir))
            continue
        state = "added" if result.added else "already archived"
        flag = "" if result.complete else f" (INCOMPLETE: {result.incomplete_reason})"
        click.echo(f"{state}: {result.run_id}{flag}")
    if failures:
        raise ArchiveError(f"{len(failures)} of {plural(len(run_dirs), 'run')} not archived")


@archive.command("list", short_help="List runs, filtered and sorted.")
@_archive_option
@_where_option
@click.option("--sort", "sort_key", metavar="KEY", help="Sort by KEY (-KEY: descending).")
@click.option("--json", "as_json", is_flag=True, help="Print the index entries as JSON.")
def list_runs(
    archive_dir: Path, where: tuple[str, ...], sort_key: str | None, as_json: bool
) -> None:
    """List archived runs, optionally filtered and sorted."""
    from hpcbench.aggregate.validity import verdict_word
    from hpcbench.archive.query import HEADLINE, figure, sort_entries
    from hpcbench.text import format_table

    entries = sort_entries(_selected(archive_dir, where), sort_key)
    if as_json:
        _echo_json(entries)
        return
    rows = []
    for e in entries:
        p = e.get("params") or {}
        value = figure(e, HEADLINE)
        rows.append(
            [
                e["run_id"],
                str(e.get("archived_at") or "-"),
                "yes" if e.get("complete") else "NO",
                *(
                    str(p.get(k) if p.get(k) is not None else "-")
                    for k in (
                        "site",
                        "backend",
                        "model",
                        "precision",
                        "batch_size",
                        "world_size",
                        "layout",
                    )
                ),
                format_figure(value),
                verdict_word((e.get("summary") or {}).get("validity")),
            ]
        )
    headers = [
        "run_id",
        "archived_at",
        "complete",
        "site",
        "backend",
        "model",
        "precision",
        "batch",
        "ranks",
        "layout",
        "img/s",
        "validity",
    ]
    click.echo(format_table(headers, rows))
    click.echo(f"{plural(len(entries), 'run')}")


@archive.command("show", short_help="Show one run.")
@_archive_option
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the index entry as JSON.")
def show(archive_dir: Path, run_id: str, as_json: bool) -> None:
    """Show one archived run (RUN_ID or an unambiguous prefix)."""
    from hpcbench.archive import Archive

    store = Archive(archive_dir)
    entry = store.entry(run_id)
    if as_json:
        _echo_json(entry)
        return
    folder = store.runs_dir / entry["run_id"]
    state = "" if entry.get("complete") else f"  (INCOMPLETE: {entry.get('incomplete_reason')})"
    click.echo(f"run {entry['run_id']}{state}")
    click.echo(f"archived {entry.get('archived_at')} from {entry.get('source')}")
    click.echo(f"folder   {folder}")
    click.echo("files    " + ", ".join(sorted(p.name for p in folder.iterdir())))
    params = entry.get("params") or {}
    click.echo("params   " + ", ".join(f"{k}={v}" for k, v in params.items() if v is not None))
    try:
        from hpcbench.aggregate import format_summary

        click.echo(format_summary(entry["summary"]))
    except (ImportError, KeyError, TypeError):
        # A summary from another version may lack a block the formatter expects: show raw.
        _echo_json(entry["summary"])


@archive.command("export", short_help="One row per run as CSV or JSON.")
@_archive_option
@_where_option
@click.option("--csv", "fmt", flag_value="csv", help="Comma-separated values.")
@click.option("--json", "fmt", flag_value="json", help="A JSON list of rows.")
@click.option("--all-params", is_flag=True, help="Also the parameters equal in every run.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file (default: standard output).",
)
def export(
    archive_dir: Path,
    where: tuple[str, ...],
    fmt: str | None,
    all_params: bool,
    output: Path | None,
) -> None:
    """One row per run: id, the parameters that varied, and the figures."""
    from hpcbench.archive.query import sort_entries
    from hpcbench.archive.tables import export_rows

    if fmt is None:
        raise UsageError("archive export: choose --csv or --json")
    entries = sort_entries(_selected(archive_dir, where), None)
    columns, rows = export_rows(entries, all_params=all_params)
    if fmt == "json":
        text = json.dumps(rows, indent=2) + "\n"
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
        text = buffer.getvalue()
    if output is None:
        sys.stdout.write(text)
    else:
        tmp = output.with_name(f".{output.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(output)
        click.echo(f"wrote {plural(len(rows), 'row')} to {output}", err=True)


@archive.command("compare", short_help="Ratios B/A with the run-to-run spread.")
@_archive_option
@click.argument("run_a")
@click.argument("run_b")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def compare(archive_dir: Path, run_a: str, run_b: str, as_json: bool) -> None:
    """Ratios B/A of the figures, with the run-to-run spread of each side's repeats."""
    from hpcbench.archive import Archive
    from hpcbench.archive.compare import compare_runs, format_comparison

    store = Archive(archive_dir)
    a, b = store.entry(run_a), store.entry(run_b)
    rows = compare_runs(store.entries(), a, b)
    if as_json:
        _echo_json({"a": a["run_id"], "b": b["run_id"], "figures": [r.to_json() for r in rows]})
        return
    click.echo(format_comparison(a, b, rows))


@archive.command("report", short_help="Exploration and scaling tables, plots.")
@_archive_option
@_where_option
@click.option(
    "--plot",
    "plot_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write PNG plots of throughput against GPUs and ranks here.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the tables' numbers as JSON.")
def report(archive_dir: Path, where: tuple[str, ...], plot_dir: Path | None, as_json: bool) -> None:
    """Exploration, weak/strong scaling and multi- vs single-process tables across runs."""
    from hpcbench.archive.tables import plot_scaling, report_tables

    entries = _selected(archive_dir, where)
    tables = report_tables(entries)
    if as_json:
        _echo_json({t.title: list(t.data) for t in tables})
    else:
        blocks = [t.format() if t.rows else f"{t.title}\n(no runs to compare)" for t in tables]
        click.echo("\n\n".join(blocks))
    if plot_dir is not None:
        for path in plot_scaling(entries, plot_dir):
            click.echo(f"wrote {path}", err=True)


@archive.command("rebuild-index", short_help="Regenerate the index from the runs.")
@_archive_option
def rebuild_index(archive_dir: Path) -> None:
    """Regenerate the index from the archived runs (drops orphans and stale staging folders)."""
    from hpcbench.archive import Archive

    result = Archive(archive_dir).rebuild_index()
    for problem in result.skipped:
        click.echo(f"hpcbench: warning: not indexed, left as it is: {problem}", err=True)
    click.echo(
        f"index: {plural(result.runs, 'run')}, "
        f"{plural(result.rewritten, 'entry', 'entries')} rewritten, "
        f"{plural(len(result.orphans), 'orphan')} removed, "
        f"{plural(len(result.stale), 'stale staging folder')} removed"
    )
