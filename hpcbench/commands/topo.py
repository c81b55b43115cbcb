"""``hpcbench topo``: show a node's topology, print it as JSON, or write a site config."""

from __future__ import annotations

import json
from pathlib import Path

import click

from hpcbench.commands.flags import topology_source_options
from hpcbench.errors import UsageError
from hpcbench.jsonfile import write_atomic
from hpcbench.topology.model import Topology
from hpcbench.topology_source import TopologySource


@click.command("topo")
@topology_source_options
@click.option("--json", "as_json", is_flag=True, help="Print the stable JSON form instead.")
@click.option(
    "--write",
    "write_path",
    metavar="FILE",
    default=None,
    help="Write a site config (YAML) for this node to FILE; it validates as written.",
)
@click.option(
    "--name",
    default=None,
    help="Site name for --write (default: the file name without .yaml).",
)
def topo(
    source: TopologySource,
    as_json: bool,
    write_path: str | None,
    name: str | None,
) -> None:
    """Show a node's topology: sockets, NUMA nodes, cores, GPUs and NICs.

    With no source it probes this host (sysfs, plus NVML when an NVIDIA driver is present).
    """
    from hpcbench.topology.tree import draw_tree

    topology, _ = source.load()
    if write_path is not None:
        _write_site_config(topology, Path(write_path), name)
        click.echo(f"wrote {write_path}", err=True)
    if as_json:
        click.echo(json.dumps(topology.to_json(), indent=2))
    elif write_path is None:
        click.echo(draw_tree(topology))


def _write_site_config(topology: Topology, path: Path, name: str | None) -> None:
    from hpcbench.site import load_site, site_config_text

    site_name = name or path.name.removesuffix(".yaml").removesuffix(".yml") or "site"
    text = site_config_text(topology, name=site_name)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise UsageError(f"--write {path}: directory {directory} does not exist")
    # What we write must load back and validate before it replaces anything.
    write_atomic(path, text, check=load_site)
