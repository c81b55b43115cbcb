"""``hpcbench render``: write the sbatch script of a run and its run directory; no Slurm call."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hpcbench.commands.flags import PlacementFlags, SpecFlags, all_job_options
from hpcbench.errors import UsageError
from hpcbench.jsonfile import write_atomic
from hpcbench.slurm.inputs import JobSettings


@click.command("render")
@all_job_options
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run directory to create, on a file system all nodes share "
    "[default: ./hpcbench-runs/RUN_ID, a new one for each render].",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the script here instead of printing it.",
)
def render(
    job: JobSettings,
    placement: PlacementFlags,
    spec_flags: SpecFlags,
    out: Path | None,
    output: Path | None,
) -> None:
    """Render the batch script for a site, a placement and a benchmark spec.

    Creates the run directory the script uses (run.json, plan.json, spec.json, topology.json,
    logs/ and job.sbatch, the script itself): that is its one side effect, and what lets a
    plain 'sbatch job.sbatch' run the benchmark end to end and leave summary.json there.
    Never runs sinfo, sbatch or any probe: the same flags give the same script on any host.
    'hpcbench submit' with the same flags submits exactly this script.
    """
    from hpcbench.slurm.inputs import job_inputs
    from hpcbench.slurm.submit import prepare

    inputs = job_inputs(job, placement.request(), spec_flags.choices())
    if output is not None and not output.parent.is_dir():
        # Checked before the run directory is made, so a typo leaves nothing behind.
        raise UsageError(f"--output {output}: folder {output.parent} does not exist")
    run_dir, script = prepare(inputs, out, sys.argv)
    text = script.read_text()
    if output is None:
        click.echo(text, nl=False)
    else:
        write_atomic(output, text, mode=0o700)
        click.echo(f"wrote {output}", err=True)
    click.echo(
        f"run directory {run_dir} (plan.json, spec.json, job.sbatch); submit with: "
        f"sbatch {output if output is not None else script}",
        err=True,
    )
