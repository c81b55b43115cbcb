"""``hpcbench report RUN_DIR...``: a table of runs, and PNG pictures with ``--plot DIR``."""

from __future__ import annotations

from pathlib import Path

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
def report(run_dirs: tuple[Path, ...], plot_dir: Path | None, dlbs_trim: int) -> None:
    """Compare runs: model, layout, batch, throughput (ours and DLBS's), skew, latency."""
    from hpcbench.report import format_report, load_summaries

    click.echo(format_report(load_summaries(run_dirs)))
    if plot_dir is not None:
        from hpcbench.plots import load_plot_data, write_plots

        dirs = [run_dir.parent if run_dir.is_file() else run_dir for run_dir in run_dirs]
        names = [d.resolve().name for d in dirs]
        for index, run_dir in enumerate(dirs):
            # Two runs of the same name (a/run, b/run) must not overwrite each other's pictures.
            prefix = names[index] if names.count(names[index]) == 1 else f"{names[index]}-{index}"
            data = load_plot_data(run_dir, dlbs_trim=dlbs_trim)
            for path in write_plots(data, plot_dir, prefix=prefix):
                click.echo(f"wrote {path}")
