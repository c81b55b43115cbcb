"""``hpcbench run``: plan, launch and measure a run on this machine."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hpcbench.commands.flags import (
    PlacementFlags,
    SpecFlags,
    plan_request_options,
    spec_options,
    topology_source_options,
)
from hpcbench.topology_source import TopologySource


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
def run(
    source: TopologySource,
    placement: PlacementFlags,
    spec_flags: SpecFlags,
    out: Path | None,
    use_numactl: bool | None,
    quiet: bool,
) -> None:
    """Run a benchmark on this machine: one pinned process per rank, then the result.

    With no arguments: probe this host, one rank per socket (two on a one-socket machine), the
    torch backend when GPUs and PyTorch are present (else the CPU backend), a 5 s timed phase.
    """
    from hpcbench.runtime.local_run import print_result, run_local

    topology, node_type, site = source.load_with_site()
    outcome = run_local(
        topology=topology,
        request=placement.request(node_type),
        spec=spec_flags.choices(),
        site=site,
        node_type=node_type,
        out=out,
        use_numactl=use_numactl,
        quiet=quiet,
        argv=sys.argv,
    )
    print_result(outcome)
