"""The frozen data model of one node.

packages (sockets) -> NUMA nodes -> cores -> hardware threads (OS CPU numbers, online only);
GPUs with their PCIe path; NICs; and where the description came from. Readers build it through
:meth:`Topology.build`, which checks the invariants once, so the rest of hpcbench can trust it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hpcbench.errors import TopologyError


@dataclass(frozen=True, slots=True)
class Core:
    """One physical core: the OS ids of its online hardware threads."""

    package: int
    numa_node: int
    cpus: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class NumaNode:
    """A NUMA node. ``package`` is None for a node without CPUs (HBM, CXL or GPU memory).

    On old front-side-bus machines one NUMA node spans several packages; ``package`` is then the
    lowest of them (the readers add a note), and :class:`Package` lists the node under each.
    """

    id: int
    package: int | None
    cpus: tuple[int, ...]
    memory_mb: int | None = None


@dataclass(frozen=True, slots=True)
class Package:
    """A CPU package (socket)."""

    id: int
    numa_nodes: tuple[int, ...]
    cpus: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Gpu:
    """A GPU as the node sees it.

    ``pcie_path`` lists the PCI addresses of the bridges from the host bridge down to the GPU;
    ``pcie_switch`` is the upstream port of the nearest PCIe switch above it (None when the GPU
    hangs off a root port directly, or when unknown). Two GPUs share a switch uplink exactly when
    their ``pcie_switch`` values are equal and not None.
    """

    index: int
    pci_bus_id: str
    model: str
    numa_node: int | None
    cpus: tuple[int, ...]
    pcie_path: tuple[str, ...] = ()
    pcie_switch: str | None = None
    uuid: str | None = None
    memory_mb: int | None = None


@dataclass(frozen=True, slots=True)
class Nic:
    """A network adapter (``kind`` is "infiniband" or "ethernet")."""

    name: str
    kind: str
    pci_bus_id: str | None
    numa_node: int | None
    pcie_switch: str | None = None


def numa_nodes_from_cores(
    cores: Iterable[Core], memory_mb: Mapping[int, int | None], notes: list[str]
) -> list[NumaNode]:
    """One NumaNode per id of ``memory_mb``, its CPUs and package taken from the cores on it.

    A node without cores has no package (HBM, CXL or GPU memory); a node that spans packages
    (one NUMA node over several sockets) takes the lowest package id, and a note says so.

    >>> cores = [Core(0, 0, (0,)), Core(1, 0, (1,))]
    >>> notes: list[str] = []
    >>> [(n.id, n.package, n.cpus) for n in numa_nodes_from_cores(cores, {0: None, 1: 64}, notes)]
    [(0, 0, (0, 1)), (1, None, ())]
    >>> notes
    ['NUMA node 0 spans packages [0, 1]']
    """
    core_list = list(cores)
    nodes = []
    for node_id, memory in sorted(memory_mb.items()):
        on_node = [core for core in core_list if core.numa_node == node_id]
        packages = sorted({core.package for core in on_node})
        if len(packages) > 1:
            notes.append(f"NUMA node {node_id} spans packages {packages}")
        nodes.append(
            NumaNode(
                id=node_id,
                package=packages[0] if packages else None,
                cpus=tuple(sorted(cpu for core in on_node for cpu in core.cpus)),
                memory_mb=memory,
            )
        )
    return nodes


@dataclass(frozen=True, slots=True)
class Topology:
    """One node. Build it with :meth:`build`, which validates; never mutate it."""

    source: str
    packages: tuple[Package, ...]
    numa_nodes: tuple[NumaNode, ...]
    cores: tuple[Core, ...]
    gpus: tuple[Gpu, ...] = ()
    nics: tuple[Nic, ...] = ()
    hostname: str | None = None
    notes: tuple[str, ...] = field(default=())

    # ----------------------------------------------------------------------------- building
    @classmethod
    def build(
        cls,
        *,
        source: str,
        cores: Iterable[Core],
        numa_nodes: Iterable[NumaNode],
        gpus: Iterable[Gpu] = (),
        nics: Iterable[Nic] = (),
        hostname: str | None = None,
        notes: Iterable[str] = (),
        where: str = "",
    ) -> Topology:
        """Assemble and validate a topology; packages are derived from the cores.

        ``where`` prefixes error messages (e.g. a file name) so a user knows which input is wrong.
        """
        prefix = f"{where}: " if where else ""
        core_list = sorted(cores, key=lambda c: (c.package, c.cpus[0] if c.cpus else -1))
        numa_list = sorted(numa_nodes, key=lambda n: n.id)
        gpu_list = sorted(gpus, key=lambda g: g.index)
        seen: dict[int, str] = {}
        numa_ids = {n.id for n in numa_list}
        if len(numa_ids) != len(numa_list):
            raise TopologyError(f"{prefix}a NUMA node id is listed twice")
        for i, core in enumerate(core_list):
            if not core.cpus:
                raise TopologyError(f"{prefix}core {i} of package {core.package} has no CPUs")
            for cpu in core.cpus:
                if cpu in seen:
                    raise TopologyError(
                        f"{prefix}CPU {cpu} is listed twice ({seen[cpu]} and package "
                        f"{core.package})"
                    )
                seen[cpu] = f"package {core.package}"
            if core.numa_node not in numa_ids:
                raise TopologyError(
                    f"{prefix}CPU {core.cpus[0]} is on NUMA node {core.numa_node}, which does not "
                    f"exist (NUMA nodes: {sorted(numa_ids)})"
                )
        if not core_list:
            raise TopologyError(f"{prefix}the node has no online CPUs")
        for node in numa_list:
            stray = set(node.cpus) - set(seen)
            if stray:
                raise TopologyError(
                    f"{prefix}NUMA node {node.id} lists CPUs {sorted(stray)} that belong to no core"
                )
        indices = [g.index for g in gpu_list]
        if len(set(indices)) != len(indices):
            raise TopologyError(f"{prefix}a GPU index is listed twice: {indices}")
        for gpu in gpu_list:
            if gpu.numa_node is not None and gpu.numa_node not in numa_ids:
                raise TopologyError(
                    f"{prefix}GPU {gpu.index} is on NUMA node {gpu.numa_node}, which does not "
                    f"exist (NUMA nodes: {sorted(numa_ids)})"
                )
            bad = set(gpu.cpus) - set(seen)
            if bad:
                raise TopologyError(
                    f"{prefix}GPU {gpu.index} lists local CPUs {sorted(bad)} that do not exist"
                )
        for nic in nics:
            if nic.numa_node is not None and nic.numa_node not in numa_ids:
                raise TopologyError(
                    f"{prefix}NIC {nic.name} is on NUMA node {nic.numa_node}, which does not exist"
                )
        package_ids = sorted({c.package for c in core_list})
        packages = tuple(
            Package(
                id=p,
                numa_nodes=tuple(sorted({c.numa_node for c in core_list if c.package == p})),
                cpus=tuple(sorted(cpu for c in core_list if c.package == p for cpu in c.cpus)),
            )
            for p in package_ids
        )
        return cls(
            source=source,
            packages=packages,
            numa_nodes=tuple(numa_list),
            cores=tuple(core_list),
            gpus=tuple(gpu_list),
            nics=tuple(nics),
            hostname=hostname,
            notes=tuple(notes),
        )

    # ----------------------------------------------------------------------------- queries
    @property
    def cpus(self) -> tuple[int, ...]:
        """Every online OS CPU id of the node, sorted."""
        return tuple(sorted(cpu for core in self.cores for cpu in core.cpus))

    @property
    def threads_per_core(self) -> int:
        """The largest number of online hardware threads on one core."""
        return max(len(core.cpus) for core in self.cores)

    def package(self, package_id: int) -> Package:
        for package in self.packages:
            if package.id == package_id:
                return package
        raise KeyError(package_id)

    def numa_node(self, node_id: int) -> NumaNode:
        for node in self.numa_nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    def gpu(self, index: int) -> Gpu:
        for gpu in self.gpus:
            if gpu.index == index:
                return gpu
        raise KeyError(index)

    def core_of(self) -> dict[int, Core]:
        """Map every OS CPU id to its core."""
        return {cpu: core for core in self.cores for cpu in core.cpus}

    def package_of_numa(self, node_id: int) -> int | None:
        return self.numa_node(node_id).package

    @property
    def flat(self) -> bool:
        """True when the node has one NUMA node and no GPU reports a locality (e.g. a VM)."""
        return len(self.numa_nodes) <= 1 and all(g.numa_node is None for g in self.gpus)

    # ----------------------------------------------------------------------------- JSON
    def to_json(self) -> dict[str, Any]:
        """The stable ``hpcbench topo --json`` contract, plus ``cores`` for round trips."""
        return {
            "source": self.source,
            "hostname": self.hostname,
            "packages": [
                {"id": p.id, "numa_nodes": list(p.numa_nodes), "cpus": list(p.cpus)}
                for p in self.packages
            ],
            "numa_nodes": [
                {"id": n.id, "package": n.package, "cpus": list(n.cpus), "memory_mb": n.memory_mb}
                for n in self.numa_nodes
            ],
            "cores": [
                {"package": c.package, "numa_node": c.numa_node, "cpus": list(c.cpus)}
                for c in self.cores
            ],
            "gpus": [
                {
                    "index": g.index,
                    "pci_bus_id": g.pci_bus_id,
                    "model": g.model,
                    "numa_node": g.numa_node,
                    "cpus": list(g.cpus),
                    "pcie_switch": g.pcie_switch,
                    "pcie_path": list(g.pcie_path),
                    "uuid": g.uuid,
                    "memory_mb": g.memory_mb,
                }
                for g in self.gpus
            ],
            "nics": [
                {
                    "name": n.name,
                    "kind": n.kind,
                    "pci_bus_id": n.pci_bus_id,
                    "numa_node": n.numa_node,
                    "pcie_switch": n.pcie_switch,
                }
                for n in self.nics
            ],
            "notes": list(self.notes),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "") -> Topology:
        """Rebuild (and re-validate) a topology from :meth:`to_json` output."""
        try:
            numa = [
                NumaNode(
                    id=int(n["id"]),
                    package=None if n.get("package") is None else int(n["package"]),
                    cpus=tuple(int(c) for c in n.get("cpus", ())),
                    memory_mb=n.get("memory_mb"),
                )
                for n in data["numa_nodes"]
            ]
            cores = [
                Core(
                    package=int(c["package"]),
                    numa_node=int(c["numa_node"]),
                    cpus=tuple(int(x) for x in c["cpus"]),
                )
                for c in data["cores"]
            ]
            gpus = [
                Gpu(
                    index=int(g["index"]),
                    pci_bus_id=str(g.get("pci_bus_id") or ""),
                    model=str(g.get("model") or "unknown"),
                    numa_node=None if g.get("numa_node") is None else int(g["numa_node"]),
                    cpus=tuple(int(x) for x in g.get("cpus", ())),
                    pcie_path=tuple(g.get("pcie_path", ())),
                    pcie_switch=g.get("pcie_switch"),
                    uuid=g.get("uuid"),
                    memory_mb=g.get("memory_mb"),
                )
                for g in data.get("gpus", ())
            ]
            nics = [
                Nic(
                    name=str(n["name"]),
                    kind=str(n["kind"]),
                    pci_bus_id=n.get("pci_bus_id"),
                    numa_node=None if n.get("numa_node") is None else int(n["numa_node"]),
                    pcie_switch=n.get("pcie_switch"),
                )
                for n in data.get("nics", ())
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise TopologyError(f"{where or 'topology JSON'}: malformed ({exc!r})") from exc
        return cls.build(
            source=str(data.get("source", "json")),
            cores=cores,
            numa_nodes=numa,
            gpus=gpus,
            nics=nics,
            hostname=data.get("hostname"),
            notes=data.get("notes", ()),
            where=where,
        )
