"""``hpcbench sweep SPEC.yaml``: a grid of benchmark points as one Slurm job array, or locally."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hpcbench.commands.flags import wait_options
from hpcbench.text import plural


@click.command("sweep")
@click.argument("spec_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--site",
    default=None,
    help="Site config (overrides the spec's 'site'); with --local and no site, this host is "
    "probed, as 'hpcbench run' does.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Sweep directory [default: the spec's 'out', else ./hpcbench-sweeps/NAME].",
)
@click.option(
    "--max-parallel",
    type=click.IntRange(min=1),
    default=None,
    help="Array tasks running at once (sbatch --array=...%N).",
)
@click.option(
    "--local",
    is_flag=True,
    help="Run the points here, one after another, no Slurm; every point is checked first "
    "as 'hpcbench run' checks it (the plan must fit this host).",
)
@wait_options
@click.option(
    "--validity",
    type=click.Choice(["default", "strict"]),
    default=None,
    help="Rules every point is judged by [default: the spec's base.validity, else default].",
)
@click.option(
    "--archive",
    "archive_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Add every point that produced a result to this archive (see 'hpcbench archive').",
)
def sweep(
    spec_file: Path,
    site: str | None,
    out: Path | None,
    max_parallel: int | None,
    local: bool,
    poll_s: float,
    wait_timeout_s: float | None,
    validity: str | None,
    archive_dir: Path | None,
) -> int:
    """Run every point of a sweep spec; points already complete are skipped.

    Prints a table of all points at the end; exits 1 when a point failed.
    """
    from hpcbench.slurm.sweep import format_sweep, load_sweep, run_sweep

    spec = load_sweep(
        spec_file, site=site, out=out, max_parallel=max_parallel, validity=validity, local=local
    )
    points = run_sweep(
        spec,
        local=local,
        argv=sys.argv,
        poll_s=poll_s,
        timeout_s=wait_timeout_s,
        echo=lambda line: click.echo(line, err=True),
    )
    click.echo(format_sweep(spec, points))
    if archive_dir is not None:
        from hpcbench.launch import archive

        # Every point with a summary, failed ones too: the archive keeps them marked
        # incomplete, so they can never pass for a complete result.
        archived = archive([p.outcome for p in points if p.outcome is not None], archive_dir)
        count = sum(1 for outcome in archived if outcome.archive_id is not None)
        click.echo(f"archived {plural(count, 'run')} in {archive_dir}", err=True)
    return 1 if any(p.status == "failed" for p in points) else 0
