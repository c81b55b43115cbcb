"""``hpcbench aggregate RUN_DIR``: merge a run's rank files into result.h5 and summary.json."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("aggregate")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print summary.json instead of text.")
@click.option(
    "--dlbs-trim",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="Iterations N dropped at each end for DLBS 'adjusted' throughput.",
)
@click.option(
    "--allow-partial",
    is_flag=True,
    help="Aggregate the ranks that finished when others are missing (result marked incomplete).",
)
@click.option(
    "--reference",
    type=click.Path(exists=True, path_type=Path),
    help="A single-rank run (directory or summary.json): report efficiency against P × it.",
)
@click.option(
    "--validity",
    type=click.Choice(["default", "strict"]),
    default=None,
    help="Judge the run by these rules [default: the rules it was run with, else default].",
)
def aggregate(
    run_dir: Path,
    as_json: bool,
    dlbs_trim: int,
    allow_partial: bool,
    reference: Path | None,
    validity: str | None,
) -> None:
    """Write RUN_DIR/result.h5 and RUN_DIR/summary.json and print the run's figures."""
    from hpcbench.aggregate import aggregate_run, format_summary
    from hpcbench.aggregate.summary import dumps
    from hpcbench.slurm.submit import put_job_record, refresh_job_record

    # First, so that slurm.json tells how the job ended even when there is nothing to merge.
    record = refresh_job_record(run_dir, echo=lambda line: click.echo(line, err=True))
    summary = aggregate_run(
        run_dir,
        dlbs_trim=dlbs_trim,
        allow_partial=allow_partial,
        reference=reference,
        validity=validity,
    )
    if record is not None:
        summary = put_job_record(run_dir, summary, record)
    click.echo(dumps(summary), nl=False) if as_json else click.echo(format_summary(summary))
