"""``hpcbench render``: print or write the sbatch script of a run, without calling Slurm."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from hpcbench.slurm.options import all_job_options


@click.command("render")
@all_job_options
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run directory the script uses, shared by all nodes [default: ./hpcbench-runs/JOB_NAME].",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the script here instead of printing it.",
)
def render(out: Path | None, output: Path | None, **kwargs: Any) -> None:
    """Render the batch script for a site, a placement and a benchmark spec.

    Pure: reads the site config, plans the ranks and fills the templates; never runs sinfo,
    sbatch or any probe. 'hpcbench submit' with the same flags submits exactly this script.
    """
    from hpcbench.slurm.options import inputs_from_options
    from hpcbench.slurm.render import render_job

    inputs = inputs_from_options(**kwargs)
    directory = out if out is not None else Path("hpcbench-runs") / inputs.job_name
    text = render_job(inputs.request(directory), inputs.site.templates_dir)
    if output is None:
        click.echo(text, nl=False)
        return
    tmp = output.with_name(output.name + ".part")
    tmp.write_text(text)
    tmp.replace(output)
    click.echo(f"wrote {output}", err=True)
