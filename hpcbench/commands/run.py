"""``hpcbench run``: plan, launch and measure a run on this machine."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from hpcbench.plan.planner import plan_request_options
from hpcbench.runtime.options import spec_options
from hpcbench.topology.sources import topology_source_options


@click.command("run")
@topology_source_options
@plan_request_options
@spec_options
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run directory to create [default: a new folder under ./hpcbench-runs/].",
)
@click.option(
    "--numactl/--no-numactl",
    "use_numactl",
    default=None,
    help="Pin ranks with numactl [default: when installed; else sched_setaffinity].",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress lines while the ranks run.")
def run(out: Path | None, use_numactl: bool | None, quiet: bool, **kwargs: Any) -> None:
    """Run a benchmark on this machine: one pinned process per rank, then the result.

    With no arguments: probe this host, one rank per socket (two on a one-socket machine), the
    torch backend when GPUs and PyTorch are present (else the CPU backend), a 5 s timed phase.
    """
    from hpcbench.runtime.local_run import print_result, run_local

    outcome = run_local(out=out, use_numactl=use_numactl, quiet=quiet, argv=sys.argv, **kwargs)
    print_result(outcome)
