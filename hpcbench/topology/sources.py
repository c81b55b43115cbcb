"""Pick a topology source: this host's probe, a sysfs snapshot, an hwloc XML file or a site config.

Every command that needs a node's topology (topo, plan, run, render, submit, sweep) takes the same
flags through :func:`topology_source_options` and turns them into a :class:`Topology` (and the
site's :class:`NodeType`, when the topology came from a site config) with
:func:`topology_from_options`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from hpcbench.errors import UsageError
from hpcbench.topology.model import Topology

if TYPE_CHECKING:
    from hpcbench.site import NodeType

F = TypeVar("F", bound=Callable[..., Any])


def load_topology(
    *,
    sysfs_root: str | os.PathLike[str] | None = None,
    hwloc_xml: str | os.PathLike[str] | None = None,
    site: str | os.PathLike[str] | None = None,
    partition: str | None = None,
) -> Topology:
    """The topology from at most one source; none → probe this host (sysfs + NVML)."""
    topology, _ = _load(sysfs_root, hwloc_xml, site, partition)
    return topology


def topology_from_options(
    sysfs_root: str | os.PathLike[str] | None,
    from_hwloc: str | os.PathLike[str] | None,
    site: str | os.PathLike[str] | None,
    partition: str | None,
) -> tuple[Topology, NodeType | None]:
    """Resolve the flags of :func:`topology_source_options` to a topology and node type."""
    return _load(sysfs_root, from_hwloc, site, partition)


def _load(
    sysfs_root: str | os.PathLike[str] | None,
    hwloc_xml: str | os.PathLike[str] | None,
    site: str | os.PathLike[str] | None,
    partition: str | None,
) -> tuple[Topology, NodeType | None]:
    given = [
        flag
        for flag, value in (
            ("--sysfs-root", sysfs_root),
            ("--from-hwloc", hwloc_xml),
            ("--site", site),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise UsageError(f"give one topology source, not {' and '.join(given)}")
    if partition is not None and site is None:
        raise UsageError("--partition needs --site (it picks a node type of a site config)")
    if site is not None:
        from hpcbench.site import load_site

        node_type = load_site(site).node_type(partition)
        return node_type.topology, node_type
    if hwloc_xml is not None:
        from hpcbench.topology.hwloc import read_hwloc_xml

        return read_hwloc_xml(hwloc_xml), None
    if sysfs_root is not None:
        from hpcbench.topology.sysfs import read_sysfs

        root = Path(sysfs_root)
        if not root.is_dir():
            raise UsageError(f"--sysfs-root {root}: not a directory")
        return read_sysfs(root), None
    from hpcbench.topology.nvml import probe_host

    return probe_host(), None


def topology_source_options(command: F) -> F:
    """Add ``--sysfs-root``, ``--from-hwloc``, ``--site`` and ``--partition`` to a click command.

    The command receives them as ``sysfs_root``, ``from_hwloc``, ``site`` and ``partition``
    keyword arguments (strings or None); pass them to :func:`topology_from_options`.
    """
    options = [
        click.option(
            "--sysfs-root",
            metavar="DIR",
            default=None,
            help="Read the topology from a sysfs snapshot rooted at DIR (DIR/sys/...).",
        ),
        click.option(
            "--from-hwloc",
            metavar="FILE",
            default=None,
            help="Read the topology from an hwloc XML file (lstopo --of xml).",
        ),
        click.option(
            "--site",
            metavar="FILE",
            default=None,
            help="Take the topology from a site config (a YAML path or a shipped config's name).",
        ),
        click.option(
            "--partition",
            metavar="NAME",
            default=None,
            help="Node type or Slurm partition of the site config (default: its only/default one).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command
