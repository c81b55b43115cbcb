"""``hpcbench plan``: place ranks on a node's cores, GPUs and NUMA memory, and show the result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from hpcbench.commands.flags import PlacementFlags, plan_request_options, topology_source_options
from hpcbench.errors import UsageError
from hpcbench.jsonfile import read_json
from hpcbench.plan.planner import make_plan
from hpcbench.topology.model import Topology
from hpcbench.topology_source import TopologySource

if TYPE_CHECKING:
    from hpcbench.site import NodeType


@click.command("plan")
@topology_source_options
@click.option(
    "--topology",
    "topology_json",
    metavar="FILE",
    default=None,
    help="Read the topology from JSON (`hpcbench topo --json`, or a run's topology.json).",
)
@plan_request_options
@click.option(
    "--data-root",
    metavar="DIR",
    default=None,
    help="Where per-rank data is staged (default: the site's data_root, else a placeholder).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the plan as JSON (the plan.json form)."
)
def plan(
    source: TopologySource,
    topology_json: str | None,
    placement: PlacementFlags,
    data_root: str | None,
    as_json: bool,
) -> None:
    """Show where each rank runs: cores, GPUs, memory NUMA nodes and data directory.

    With no topology source it probes this host. An explicit layout (--gpus "0,2;4,6",
    --cpus "0-17;18-35") is checked against the placement rules, not rewritten: a broken rule
    is an error unless --accept-warnings.
    """
    from hpcbench.plan.picture import draw_plan

    topology, node_type = _topology(source, topology_json)
    request = placement.request(node_type, data_root=data_root)
    result = make_plan(topology, request)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        click.echo(draw_plan(result, topology, request.reserved_cores))


def _topology(
    source: TopologySource, topology_json: str | None
) -> tuple[Topology, NodeType | None]:
    if topology_json is None:
        return source.load()
    others = source.given()
    if others:
        raise UsageError(f"give one topology source, not --topology and {' and '.join(others)}")
    path = Path(topology_json)
    data = read_json(path, "--topology file")
    return Topology.from_json(data, where=str(path)), None
