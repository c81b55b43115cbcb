"""``hpcbench check``: compare a run or an archive with reference figures (acceptance test)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from hpcbench.errors import UsageError
from hpcbench.runfiles import RunFiles
from hpcbench.text import plural


@click.command("check")
@click.argument(
    "target",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    metavar="RUN_OR_ARCHIVE",
)
@click.option(
    "-r",
    "--references",
    "references_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML file of expected figures (see docs/archive.md).",
)
@click.option(
    "-w",
    "--where",
    multiple=True,
    metavar="KEY=VALUE",
    help="With an archive: check only the runs matching (as in 'archive list').",
)
@click.option("--json", "as_json", is_flag=True, help="Print the outcomes as JSON.")
def check(target: Path, references_file: Path, where: tuple[str, ...], as_json: bool) -> int:
    """Pass/fail per figure; exit 1 on a regression, a missing figure or an incomplete run."""
    from hpcbench.archive import Archive, entry_from_run_dir
    from hpcbench.archive.query import parse_where, select
    from hpcbench.archive.references import (
        check_entries,
        explain_no_match,
        format_outcomes,
        load_references,
    )
    from hpcbench.archive.store import MARKER

    references = load_references(references_file)
    conditions = [parse_where(w) for w in where]
    unreadable: list[tuple[str, str]] = []
    if (target / MARKER).is_file():
        store = Archive(target)
        entries = select(store.entries(), conditions)
        # A run that cannot be read cannot be checked: never a silent pass.
        unreadable = store.skipped
    elif RunFiles(target).summary.is_file():
        if conditions:
            raise UsageError("check: --where applies to an archive, not to one run directory")
        entries = [entry_from_run_dir(target)]
    else:
        raise UsageError(
            f"{target}: neither a run directory (no summary.json) nor an archive (no {MARKER})"
        )
    outcomes = check_entries(entries, references)
    failed = [o for o in outcomes if not o.ok]
    if unreadable:
        shown = ", ".join(run_id for run_id, _ in unreadable[:5])
        more = f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else ""
        click.echo(
            f"check: FAILED: {plural(len(unreadable), 'run')} of the archive could not be read, so "
            f"not checked: {shown}{more} (see the warnings above)",
            err=True,
        )
    if as_json:
        click.echo(json.dumps([o.to_json() for o in outcomes], indent=2))
    elif outcomes:
        click.echo(format_outcomes(outcomes))
        _explain_invalid(entries, outcomes)
    if not outcomes:
        click.echo(
            f"check: FAILED: no reference in {references_file} matches "
            f"any of {plural(len(entries), 'run')}:",
            err=True,
        )
        for line in explain_no_match(entries, references):
            click.echo(line, err=True)
        return 1
    runs = len({o.run_id for o in outcomes})
    verdict = "FAILED" if failed or unreadable else "passed"
    click.echo(
        f"check: {verdict}: {len(outcomes) - len(failed)} of "
        f"{plural(len(outcomes), 'figure')} passed over {plural(runs, 'run')}",
        # With --json, stdout holds the JSON document alone.
        err=bool(failed) or as_json,
    )
    return 1 if failed or unreadable else 0


def _explain_invalid(entries: Sequence[Mapping[str, Any]], outcomes: Sequence[Any]) -> None:
    """Why each run that failed as invalid is: its verdict and failed checks."""
    from hpcbench.aggregate.validity import format_verdict

    invalid = {o.run_id for o in outcomes if o.status == "invalid"}
    for entry in entries:
        if str(entry.get("run_id")) in invalid:
            for line in format_verdict((entry.get("summary") or {}).get("validity")):
                click.echo(f"{entry.get('run_id')}: {line.strip()}")
