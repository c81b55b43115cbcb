"""``hpcbench report RUN_DIR...``: a table of runs, and PNG pictures with ``--plot DIR``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


@click.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--plot",
    "plot_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write timeline, throughput and latency PNGs per run into this directory "
    "(needs the 'plot' extra: matplotlib).",
)
@click.option(
    "--dlbs-trim",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="DLBS trim N for runs summarised here (runs with summary.json keep theirs).",
)
def report(run_dirs: tuple[Path, ...], plot_dir: Path | None, dlbs_trim: int) -> int:
    """Compare runs: model, layout, batch, throughput (ours and DLBS's), skew, latency.

    A run that cannot be read is named on one line and left out; the others are still
    reported, and the exit status is then 1.
    """
    from hpcbench.errors import HpcbenchError, MetricsError
    from hpcbench.report import format_report, load_summary

    skipped: list[Path] = []

    def skip(run_dir: Path, error: HpcbenchError) -> None:
        if len(run_dirs) == 1:
            raise error  # nothing else to report: the error is the whole answer
        click.echo(f"hpcbench: skipped {run_dir}: {error}", err=True)
        skipped.append(run_dir)

    readable: dict[int, dict[str, Any]] = {}
    for index, run_dir in enumerate(run_dirs):
        try:
            readable[index] = load_summary(run_dir)
        except HpcbenchError as error:
            skip(run_dir, error)
    if not readable:
        raise MetricsError(f"none of the {len(run_dirs)} runs could be read (see above)")
    click.echo(format_report(list(readable.values())))
    if plot_dir is not None:
        from hpcbench.plots import load_plot_data, require_pyplot, write_plots

        require_pyplot()  # a missing matplotlib stops every run's pictures, not one run's
        dirs = [run_dir.parent if run_dir.is_file() else run_dir for run_dir in run_dirs]
        names = [d.resolve().name for d in dirs]
        for index in readable:
            # Two runs of the same name (a/run, b/run) must not overwrite each other's pictures.
            prefix = names[index] if names.count(names[index]) == 1 else f"{names[index]}-{index}"
            try:
                data = load_plot_data(dirs[index], dlbs_trim=dlbs_trim)
                paths = write_plots(data, plot_dir, prefix=prefix)
            except HpcbenchError as error:
                skip(run_dirs[index], error)
                continue
            for path in paths:
                click.echo(f"wrote {path}")
    return 1 if skipped else 0
