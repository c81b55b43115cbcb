"""``hpcbench submit``: render, submit through Slurm, follow the job, print the result."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hpcbench.commands.flags import PlacementFlags, SpecFlags, all_job_options, wait_options
from hpcbench.errors import UsageError
from hpcbench.slurm.inputs import JobSettings


@click.command("submit")
@all_job_options
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run directory, on a file system all nodes share [default: ./hpcbench-runs/RUN_ID].",
)
@click.option("--dry-run", is_flag=True, help="Print the script that would be submitted; no files.")
@click.option("--no-wait", is_flag=True, help="Submit and return; aggregate later.")
@wait_options
@click.option("--json", "as_json", is_flag=True, help="Print summary.json instead of text.")
@click.option(
    "--archive",
    "archive_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Add the finished run to this archive (see 'hpcbench archive').",
)
def submit(
    job: JobSettings,
    placement: PlacementFlags,
    spec_flags: SpecFlags,
    out: Path | None,
    dry_run: bool,
    no_wait: bool,
    poll_s: float,
    wait_timeout_s: float | None,
    as_json: bool,
    archive_dir: Path | None,
) -> None:
    """Submit one run as a Slurm job and wait for its result.

    The run directory gets run.json, plan.json, spec.json, topology.json and job.sbatch, the
    script 'hpcbench render' shows for the same flags; that file is what sbatch runs.
    """
    from hpcbench.slurm.inputs import job_inputs
    from hpcbench.slurm.submit import SlurmJobLaunch

    inputs = job_inputs(job, placement.request(), spec_flags.choices())
    if archive_dir is not None and no_wait:
        raise UsageError("--archive needs the result: it cannot be combined with --no-wait")
    echo = lambda line: click.echo(line, err=True)  # noqa: E731 - progress goes to stderr
    launch = SlurmJobLaunch(
        inputs, out, sys.argv, poll_s=poll_s, timeout_s=wait_timeout_s, echo=echo
    )
    if dry_run:
        # Exactly what prepare() would write and sbatch run, for the run directory it makes.
        ((_, script),) = launch.prepare(dry_run=True).sent
        click.echo(script, nl=False)
        return

    from hpcbench.aggregate import format_summary
    from hpcbench.aggregate.summary import dumps
    from hpcbench.launch import archive, execute

    (outcome,) = execute(launch, wait=not no_wait)
    outcome.raise_if_failed()
    if outcome.summary is None:
        click.echo(f"run directory: {outcome.run_dir}")
        return
    if as_json:
        click.echo(dumps(outcome.summary), nl=False)
    else:
        click.echo(format_summary(outcome.summary))
        click.echo(f"run directory: {outcome.run_dir}")
    if archive_dir is not None:
        (archived,) = archive([outcome], archive_dir)
        click.echo(f"archived as {archived.archive_id} in {archive_dir}", err=True)
