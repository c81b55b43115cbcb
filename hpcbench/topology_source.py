"""Pick a topology source: this host's probe, a sysfs snapshot, an hwloc XML file or a site config.

Every command that needs a node's topology (topo, plan, run) describes where it comes from with
one :class:`TopologySource` and loads it with :meth:`TopologySource.load`, which also gives the
site's :class:`NodeType` when the topology came from a site config. It sits above both
``hpcbench.topology`` and ``hpcbench.site`` (a site config holds topologies), so that neither
imports the other in a circle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hpcbench.errors import UsageError
from hpcbench.topology.model import Topology

if TYPE_CHECKING:
    from hpcbench.site import NodeType, SiteConfig

PathLike = str | os.PathLike[str]


@dataclass(frozen=True, slots=True)
class TopologySource:
    """At most one topology source; none means: probe this host (sysfs + NVML).

    ``partition`` picks a node type of the ``site`` config (its only or default one when None).
    """

    sysfs_root: PathLike | None = None
    hwloc_xml: PathLike | None = None
    site: PathLike | None = None
    partition: str | None = None

    def given(self) -> list[str]:
        """The flags of the sources given, e.g. ``["--site"]``."""
        return [
            flag
            for flag, value in (
                ("--sysfs-root", self.sysfs_root),
                ("--from-hwloc", self.hwloc_xml),
                ("--site", self.site),
            )
            if value is not None
        ]

    def load(self) -> tuple[Topology, NodeType | None]:
        """The topology, and the site's node type when it came from a site config."""
        topology, node_type, _ = self.load_with_site()
        return topology, node_type

    def load_with_site(self) -> tuple[Topology, NodeType | None, SiteConfig | None]:
        """:meth:`load`, and the site config the topology came from (None for other sources)."""
        given = self.given()
        if len(given) > 1:
            raise UsageError(f"give one topology source, not {' and '.join(given)}")
        if self.partition is not None and self.site is None:
            raise UsageError("--partition needs --site (it picks a node type of a site config)")
        if self.site is not None:
            from hpcbench.site import load_site

            site = load_site(self.site)
            node_type = site.node_type(self.partition)
            return node_type.topology, node_type, site
        if self.hwloc_xml is not None:
            from hpcbench.topology.hwloc import read_hwloc_xml

            return read_hwloc_xml(self.hwloc_xml), None, None
        if self.sysfs_root is not None:
            from hpcbench.topology.sysfs import read_sysfs

            root = Path(self.sysfs_root)
            if not root.is_dir():
                raise UsageError(f"--sysfs-root {root}: not a directory")
            return read_sysfs(root), None, None
        from hpcbench.topology.nvml import probe_host

        return probe_host(), None, None


def load_topology(
    *,
    sysfs_root: PathLike | None = None,
    hwloc_xml: PathLike | None = None,
    site: PathLike | None = None,
    partition: str | None = None,
) -> Topology:
    """The topology from at most one source; none → probe this host (sysfs + NVML)."""
    return TopologySource(sysfs_root, hwloc_xml, site, partition).load()[0]
