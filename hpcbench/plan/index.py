"""Per-topology lookup tables shared by the planner and the layout checker.

A sweep plans the same node thousands of times, so everything that depends only on the topology
(which core an OS CPU belongs to, which socket or NUMA node a GPU hangs off, which GPUs share a
PCIe switch, the placement domains) is computed once per topology and kept in a small cache.
Cores are numbered here by their position in :attr:`TopologyIndex.cores` ("core ids"), ordered
by package, then NUMA node, then first OS CPU, so a contiguous block of core ids stays inside
one NUMA node whenever it can.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from hpcbench.topology.model import Gpu, Topology

Granularity = Literal["socket", "numa"]
GRANULARITIES: tuple[Granularity, ...] = ("socket", "numa")


@dataclass(frozen=True, slots=True)
class Domain:
    """A placement domain: one socket, or one NUMA node with CPUs (``--numa``).

    ``gpus`` are the GPUs attached to it (by NUMA node or local CPU list), in index order.
    """

    kind: Granularity
    id: int
    packages: frozenset[int]
    numa_nodes: frozenset[int]
    cores: tuple[int, ...]
    gpus: tuple[int, ...]

    @property
    def label(self) -> str:
        """How messages name the domain, e.g. ``socket 1`` or ``NUMA node 3``.

        >>> Domain("numa", 3, frozenset({0}), frozenset({3}), (), ()).label
        'NUMA node 3'
        """
        return f"socket {self.id}" if self.kind == "socket" else f"NUMA node {self.id}"


@dataclass(frozen=True, slots=True)
class CoreSet:
    """What a rank's set of physical cores implies: its CPUs, domains and memory nodes."""

    first_cpus: tuple[int, ...]
    all_cpus: tuple[int, ...]
    domains: frozenset[int]
    numa_nodes: frozenset[int]
    mem_nodes: tuple[int, ...]
    socket: int | None
    numa_node: int | None


@dataclass(frozen=True, slots=True)
class TopologyIndex:
    """Lookup tables for one :class:`Topology` (build with :func:`topology_index`)."""

    topology: Topology
    core_cpus: tuple[tuple[int, ...], ...]
    core_first_cpu: tuple[int, ...]
    core_package: tuple[int, ...]
    core_numa: tuple[int, ...]
    cpu_core: dict[int, int]
    gpu_ids: tuple[int, ...]
    gpu_numa: dict[int, int | None]
    gpu_package: dict[int, int | None]
    gpu_switch: dict[int, str]
    gpu_switch_label: dict[int, str | None]
    # GPUs whose PCIe paths share a bridge (a root port or an upper switch): used only to break
    # ties between switches, so two-level switch trees spread at the top level too.
    gpu_path_neighbours: dict[int, frozenset[int]]
    domains: dict[Granularity, tuple[Domain, ...]]
    core_domain: dict[Granularity, tuple[int, ...]]
    gpu_domain: dict[Granularity, dict[int, int | None]]
    # True when no GPU reports a locality: every GPU counts as local to every rank (VMs).
    gpus_unattached: bool
    # Filled by the planner: (granularity, NUMA nodes, domains, max tier) -> [(gpu, tier)].
    tier_cache: dict[tuple[object, ...], list[tuple[int, int]]] = field(default_factory=dict)
    # Filled by the planner: (granularity, ranks, cores per rank, reserved CPUs) -> core slots.
    slot_cache: dict[tuple[object, ...], tuple[tuple[int, ...], ...]] = field(default_factory=dict)
    core_set_cache: dict[tuple[object, ...], CoreSet] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return self.topology.source

    def cores_of(self, cpus: Iterable[int]) -> tuple[int, ...]:
        """The core ids (sorted, unique) that hold the given OS CPUs (all must exist)."""
        cpu_core = self.cpu_core
        return tuple(sorted({cpu_core[cpu] for cpu in cpus}))

    def core_set(self, cores: tuple[int, ...], granularity: Granularity) -> CoreSet:
        """The (cached) :class:`CoreSet` of sorted core ids."""
        key = (granularity, cores)
        found = self.core_set_cache.get(key)
        if found is None:
            packages = {self.core_package[c] for c in cores}
            numa = frozenset(self.core_numa[c] for c in cores)
            mem_nodes = tuple(sorted(numa))
            found = CoreSet(
                first_cpus=tuple(sorted(self.core_first_cpu[c] for c in cores)),
                all_cpus=tuple(sorted(cpu for c in cores for cpu in self.core_cpus[c])),
                domains=frozenset(self.core_domain[granularity][c] for c in cores),
                numa_nodes=numa,
                mem_nodes=mem_nodes,
                socket=next(iter(packages)) if len(packages) == 1 else None,
                numa_node=mem_nodes[0] if len(mem_nodes) == 1 else None,
            )
            if len(self.core_set_cache) >= 4096:  # bound the memory a long sweep can use
                self.core_set_cache.clear()
            self.core_set_cache[key] = found
        return found

    def domains_of_cores(self, granularity: Granularity, cores: Iterable[int]) -> tuple[int, ...]:
        """Positions (in ``domains[granularity]``) of the domains holding the given cores."""
        table = self.core_domain[granularity]
        return tuple(sorted({table[c] for c in cores}))


def _gpu_locality(
    gpu: Gpu, cpu_core: dict[int, int], core_numa: tuple[int, ...], all_cpus: int
) -> int | None:
    """The NUMA node (with CPUs) a GPU is attached to, or None when it reports no usable one.

    sysfs gives ``numa_node`` -1 on many VMs and single-socket boards; the local CPU list then
    either lists every CPU (no information) or the CPUs of one node (use that node). A GPU whose
    NUMA node has no CPUs (its own memory exposed as a node, GH200/MI300A style) is placed by
    its local CPU list too.
    """
    if gpu.numa_node is not None and gpu.numa_node in core_numa:
        return gpu.numa_node
    local = [cpu for cpu in gpu.cpus if cpu in cpu_core]
    if not local or len(local) >= all_cpus:
        return None
    nodes = {core_numa[cpu_core[cpu]] for cpu in local}
    return nodes.pop() if len(nodes) == 1 else None


def _build(topology: Topology) -> TopologyIndex:
    cores = sorted(topology.cores, key=lambda c: (c.package, c.numa_node, c.cpus[0]))
    core_cpus = tuple(tuple(sorted(c.cpus)) for c in cores)
    core_package = tuple(c.package for c in cores)
    core_numa = tuple(c.numa_node for c in cores)
    cpu_core = {cpu: i for i, cpus in enumerate(core_cpus) for cpu in cpus}
    numa_package = {n.id: n.package for n in topology.numa_nodes}
    all_cpus = len(cpu_core)

    gpu_numa: dict[int, int | None] = {}
    gpu_package: dict[int, int | None] = {}
    gpu_switch: dict[int, str] = {}
    gpu_switch_label: dict[int, str | None] = {}
    for gpu in topology.gpus:
        node = _gpu_locality(gpu, cpu_core, core_numa, all_cpus)
        gpu_numa[gpu.index] = node
        gpu_package[gpu.index] = None if node is None else numa_package.get(node)
        # A GPU on a root port of its own has its own uplink: give it a key no switch shares.
        gpu_switch[gpu.index] = gpu.pcie_switch or f"(own uplink of GPU {gpu.index})"
        gpu_switch_label[gpu.index] = gpu.pcie_switch
    gpu_ids = tuple(g.index for g in topology.gpus)
    paths = {g.index: set(g.pcie_path) for g in topology.gpus}
    gpu_path_neighbours = {
        a: frozenset(b for b in gpu_ids if b != a and paths[a] & paths[b]) for a in gpu_ids
    }
    unattached = all(gpu_numa[g] is None for g in gpu_ids)

    domains: dict[Granularity, tuple[Domain, ...]] = {}
    core_domain: dict[Granularity, tuple[int, ...]] = {}
    gpu_domain: dict[Granularity, dict[int, int | None]] = {}
    numa_socket = {core_numa[i]: core_package[i] for i in range(len(cores))}
    for kind in GRANULARITIES:
        keys = core_package if kind == "socket" else core_numa
        members: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            members.setdefault(key, []).append(i)
        # NUMA domains in socket order, so a run of consecutive domains stays in one socket.
        ids = (
            sorted(members)
            if kind == "socket"
            else sorted(members, key=lambda d: (numa_socket[d], d))
        )
        position = {d: i for i, d in enumerate(ids)}
        gpu_key = gpu_package if kind == "socket" else gpu_numa
        located: dict[int, int | None] = {}
        for g in gpu_ids:
            home = gpu_key[g]
            located[g] = None if home is None else position.get(home)
        gpu_domain[kind] = located
        domains[kind] = tuple(
            Domain(
                kind=kind,
                id=d,
                packages=frozenset(core_package[i] for i in members[d]),
                numa_nodes=frozenset(core_numa[i] for i in members[d]),
                cores=tuple(members[d]),
                gpus=tuple(g for g in gpu_ids if located[g] == position[d]),
            )
            for d in ids
        )
        core_domain[kind] = tuple(position[k] for k in keys)
    return TopologyIndex(
        topology=topology,
        core_cpus=core_cpus,
        core_first_cpu=tuple(cpus[0] for cpus in core_cpus),
        core_package=core_package,
        core_numa=core_numa,
        cpu_core=cpu_core,
        gpu_ids=gpu_ids,
        gpu_numa=gpu_numa,
        gpu_package=gpu_package,
        gpu_switch=gpu_switch,
        gpu_switch_label=gpu_switch_label,
        gpu_path_neighbours=gpu_path_neighbours,
        domains=domains,
        core_domain=core_domain,
        gpu_domain=gpu_domain,
        gpus_unattached=unattached,
    )


# Keyed by id(); the topology is kept in the value so its id cannot be reused while cached.
_CACHE: dict[int, TopologyIndex] = {}
_CACHE_SIZE = 32


def topology_index(topology: Topology) -> TopologyIndex:
    """The (cached) lookup tables of a topology."""
    cached = _CACHE.get(id(topology))
    if cached is not None and cached.topology is topology:
        return cached
    index = _build(topology)
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[id(topology)] = index
    return index
