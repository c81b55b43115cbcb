"""The ``topology:`` block of a site config: YAML data to a :class:`Topology` and back.

:func:`topology_from_dict` builds a topology from a block that passed the site-config schema
(inline NUMA nodes, cores, GPUs and NICs, or ``hwloc_xml:``), with the checks the schema cannot
make (unique ids, CPUs listed once, localities that exist); every error names the file and the
key path. :func:`topology_to_dict` writes the block that rebuilds a topology (``hpcbench topo
--write``). :mod:`hpcbench.site` reads the rest of a site config around it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hpcbench.configfile import key_path
from hpcbench.cpulist import CpuListError, format_cpulist, parse_cpulist
from hpcbench.errors import ConfigError, HpcbenchError
from hpcbench.topology.model import Core, Gpu, Nic, NumaNode, Topology


def cpu_list(value: Any, where: str, path: Sequence[str | int]) -> tuple[int, ...]:
    """A CPU list of a config (``"0-3,8"`` or ``[0, 1]``): sorted, each CPU once."""
    if isinstance(value, str):
        try:
            return parse_cpulist(value)
        except CpuListError as exc:
            raise ConfigError(f"{where}: {key_path(path)}: {exc}") from None
    cpus = tuple(int(c) for c in value)
    if len(set(cpus)) != len(cpus):
        dup = sorted({c for c in cpus if cpus.count(c) > 1})
        raise ConfigError(f"{where}: {key_path(path)}: CPU {dup[0]} is listed twice")
    return tuple(sorted(cpus))


def _split_cores(
    cpus: tuple[int, ...], threads_per_core: int, numbering: str
) -> list[tuple[int, ...]] | None:
    """Group a NUMA node's CPUs into cores; None when the count does not divide.

    "blocked" is Linux's x86 numbering (the second threads of all cores follow the first ones:
    core 0 = CPUs 0 and 36 on a 36-core node); "adjacent" pairs consecutive ids (0,1), (2,3).

    >>> _split_cores((0, 1, 2, 36, 37, 38), 2, "blocked")
    [(0, 36), (1, 37), (2, 38)]
    >>> _split_cores((0, 1, 2, 3), 2, "adjacent")
    [(0, 1), (2, 3)]
    >>> _split_cores((0, 1, 2), 2, "blocked") is None
    True
    """
    if len(cpus) % threads_per_core:
        return None
    per = len(cpus) // threads_per_core
    if numbering == "adjacent":
        return [cpus[i : i + threads_per_core] for i in range(0, len(cpus), threads_per_core)]
    return [tuple(cpus[k * per + i] for k in range(threads_per_core)) for i in range(per)]


def _claim(
    cpus: Sequence[int], owner: dict[int, int], node_index: int, where: str, path: list[str | int]
) -> None:
    """Record which numa_nodes[] entry lists each CPU; a CPU listed twice is an error."""
    for cpu in cpus:
        if cpu in owner:
            other = (
                "elsewhere in this node"
                if owner[cpu] == node_index
                else (f"in numa_nodes[{owner[cpu]}]")
            )
            raise ConfigError(
                f"{where}: {key_path(path)}: CPU {cpu} is listed twice (also {other})"
            )
        owner[cpu] = node_index


def _claim_id(
    value: int, index: int, seen: dict[int, int], what: str, where: str, path: list[str | int]
) -> None:
    """Record that entry ``index`` of a list holds id ``value``; an id held twice is an error.

    ``path`` is the id's key path, ``[..., list name, index, key]``.
    """
    if value in seen:
        raise ConfigError(
            f"{where}: {key_path(path)}: {what} {value} is also {path[-3]}[{seen[value]}]"
        )
    seen[value] = index


def topology_from_dict(
    raw: Mapping[str, Any],
    *,
    base: Path,
    where: str,
    path: Sequence[str | int] = ("topology",),
    name: str = "",
) -> Topology:
    """Build a Topology from a validated ``topology:`` block (inline, or ``hwloc_xml:``).

    Every error names the file and the key path of the value at fault.
    """
    path = list(path)
    source = f"site:{where}" + (f"#{name}" if name else "")
    if "hwloc_xml" in raw:
        return _hwloc_topology(raw, base=base, where=where, path=path, source=source)
    if "numa_nodes" not in raw:
        raise ConfigError(
            f"{where}: {key_path(path)}: needs numa_nodes (an inline topology) or hwloc_xml"
        )
    cores, numa_nodes = _numa_nodes(raw, where, path)
    gpus = _gpus(raw, numa_nodes, where, path)
    nics = _nics(raw, numa_nodes, where, path)
    try:
        return Topology.build(
            source=source,
            cores=cores,
            numa_nodes=numa_nodes,
            gpus=gpus,
            nics=nics,
            hostname=raw.get("hostname"),
            notes=raw.get("notes", ()),
            where=f"{where}: {key_path(path)}",
        )
    except HpcbenchError as exc:
        raise ConfigError(str(exc)) from None


def _hwloc_topology(
    raw: Mapping[str, Any], *, base: Path, where: str, path: list[str | int], source: str
) -> Topology:
    """A ``topology: {hwloc_xml: FILE}`` block: the file read (relative to the config's
    folder), with the block's hostname and notes."""
    extra = sorted(set(raw) - {"hwloc_xml", "notes", "hostname"})
    if extra:
        raise ConfigError(
            f"{where}: {key_path([*path, extra[0]])}: give the topology either inline or as "
            f"hwloc_xml, not both"
        )
    from hpcbench.topology.hwloc import read_hwloc_xml

    xml_path = base / raw["hwloc_xml"]
    if not xml_path.is_file():
        raise ConfigError(f"{where}: {key_path([*path, 'hwloc_xml'])}: file not found: {xml_path}")
    try:
        topology = read_hwloc_xml(xml_path)
    except HpcbenchError as exc:
        raise ConfigError(f"{where}: {key_path([*path, 'hwloc_xml'])}: {exc}") from None
    return Topology.build(
        source=source,
        cores=topology.cores,
        numa_nodes=topology.numa_nodes,
        gpus=topology.gpus,
        nics=topology.nics,
        hostname=raw.get("hostname", topology.hostname),
        notes=(*topology.notes, *raw.get("notes", ())),
    )


def _numa_nodes(
    raw: Mapping[str, Any], where: str, path: list[str | int]
) -> tuple[list[Core], list[NumaNode]]:
    """The cores and NUMA nodes of an inline topology; every CPU belongs to one NUMA node."""
    threads_per_core = raw.get("threads_per_core", 1)
    numbering = raw.get("thread_numbering", "blocked")
    owner: dict[int, int] = {}
    cores: list[Core] = []
    numa_nodes: list[NumaNode] = []
    ids_seen: dict[int, int] = {}
    for i, node in enumerate(raw["numa_nodes"]):
        npath = [*path, "numa_nodes", i]
        node_id = node["id"]
        _claim_id(node_id, i, ids_seen, "NUMA node", where, [*npath, "id"])
        if "cores" in node:
            groups = [cpu_list(c, where, [*npath, "cores", j]) for j, c in enumerate(node["cores"])]
            for j, group in enumerate(groups):
                if not group:
                    raise ConfigError(f"{where}: {key_path([*npath, 'cores', j])}: empty core")
            cpus = tuple(sorted(c for g in groups for c in g))
            if "cpus" in node and cpu_list(node["cpus"], where, [*npath, "cpus"]) != cpus:
                raise ConfigError(
                    f"{where}: {key_path([*npath, 'cpus'])}: differs from the CPUs of its cores "
                    f"({format_cpulist(cpus)}); give one of them"
                )
            _claim(cpus, owner, i, where, [*npath, "cores"])
        else:
            cpus = cpu_list(node.get("cpus", ()), where, [*npath, "cpus"])
            _claim(cpus, owner, i, where, [*npath, "cpus"])
            split = _split_cores(cpus, threads_per_core, numbering)
            if split is None:
                raise ConfigError(
                    f"{where}: {key_path([*npath, 'cpus'])}: {len(cpus)} CPUs do not split into "
                    f"cores of threads_per_core={threads_per_core}; list the cores explicitly"
                    f" under 'cores'"
                )
            groups = split
        package = node.get("package")
        if cpus and package is None:
            raise ConfigError(
                f"{where}: {key_path(npath)}: a NUMA node with CPUs needs 'package' (its socket)"
            )
        numa_nodes.append(
            NumaNode(
                id=node_id,
                package=package if cpus else None,
                cpus=cpus,
                memory_mb=node.get("memory_mb"),
            )
        )
        cores.extend(Core(package=package, numa_node=node_id, cpus=g) for g in groups)
    if not cores:
        raise ConfigError(f"{where}: {key_path([*path, 'numa_nodes'])}: no NUMA node has CPUs")
    return cores, numa_nodes


def _known_numa_node(
    numa: int | None, numa_nodes: Sequence[NumaNode], where: str, path: list[str | int]
) -> int | None:
    """``numa`` when it is None or one of the NUMA nodes; else a ConfigError at ``path``."""
    ids = sorted(n.id for n in numa_nodes)
    if numa is not None and numa not in ids:
        raise ConfigError(
            f"{where}: {key_path(path)}: NUMA node {numa} does not exist "
            f"(NUMA nodes: {', '.join(str(n) for n in ids)})"
        )
    return numa


def _gpus(
    raw: Mapping[str, Any], numa_nodes: Sequence[NumaNode], where: str, path: list[str | int]
) -> list[Gpu]:
    """The GPUs of an inline topology, with their local CPUs (given, else their NUMA node's)."""
    node_cpus = {n.id: n.cpus for n in numa_nodes}
    all_cpus = {c for n in numa_nodes for c in n.cpus}
    gpus: list[Gpu] = []
    index_seen: dict[int, int] = {}
    for i, gpu in enumerate(raw.get("gpus", ())):
        gpath = [*path, "gpus", i]
        index = gpu["index"]
        _claim_id(index, i, index_seen, "GPU index", where, [*gpath, "index"])
        numa = _known_numa_node(gpu.get("numa_node"), numa_nodes, where, [*gpath, "numa_node"])
        if "cpus" in gpu:
            gpu_cpus = cpu_list(gpu["cpus"], where, [*gpath, "cpus"])
            missing = sorted(set(gpu_cpus) - all_cpus)
            if missing:
                raise ConfigError(
                    f"{where}: {key_path([*gpath, 'cpus'])}: CPU {missing[0]} does not exist "
                    f"(CPUs: {format_cpulist(all_cpus)})"
                )
        else:
            # Local CPUs default to the GPU's NUMA node; no NUMA node → no locality (flat VM).
            gpu_cpus = node_cpus[numa] if numa is not None else ()
        gpus.append(
            Gpu(
                index=index,
                pci_bus_id=gpu.get("pci_bus_id") or "",
                model=gpu.get("model", "unknown"),
                numa_node=numa,
                cpus=gpu_cpus,
                pcie_path=tuple(gpu.get("pcie_path", ())),
                pcie_switch=gpu.get("pcie_switch"),
                uuid=gpu.get("uuid"),
                memory_mb=gpu.get("memory_mb"),
            )
        )
    return gpus


def _nics(
    raw: Mapping[str, Any], numa_nodes: Sequence[NumaNode], where: str, path: list[str | int]
) -> list[Nic]:
    """The network interfaces of an inline topology."""
    return [
        Nic(
            name=nic["name"],
            kind=nic["kind"],
            pci_bus_id=nic.get("pci_bus_id"),
            numa_node=_known_numa_node(
                nic.get("numa_node"), numa_nodes, where, [*path, "nics", i, "numa_node"]
            ),
            pcie_switch=nic.get("pcie_switch"),
        )
        for i, nic in enumerate(raw.get("nics", ()))
    ]


def _numbering_of(topology: Topology) -> tuple[int, str] | None:
    """(threads_per_core, numbering) that regenerates the topology's cores, or None."""
    tpc = topology.threads_per_core
    if any(len(c.cpus) != tpc for c in topology.cores):
        return None
    want = {c.cpus for c in topology.cores}
    for numbering in ("blocked", "adjacent"):
        got: set[tuple[int, ...]] = set()
        for node in topology.numa_nodes:
            split = _split_cores(node.cpus, tpc, numbering)
            if split is None:
                break
            got.update(split)
        else:
            if got == want:
                return tpc, numbering
        if tpc == 1:
            break
    return None


def topology_to_dict(topology: Topology) -> dict[str, Any]:
    """The inline ``topology:`` block of a site config that rebuilds ``topology``."""
    numbering = _numbering_of(topology)
    out: dict[str, Any] = {}
    if numbering is not None:
        out["threads_per_core"], out["thread_numbering"] = numbering
    nodes = []
    for node in topology.numa_nodes:
        entry: dict[str, Any] = {"id": node.id}
        if node.cpus:
            entry["package"] = node.package
        if numbering is None:
            entry["cores"] = [
                format_cpulist(c.cpus) for c in topology.cores if c.numa_node == node.id
            ]
        else:
            entry["cpus"] = format_cpulist(node.cpus)
        if node.memory_mb is not None:
            entry["memory_mb"] = node.memory_mb
        nodes.append(entry)
    out["numa_nodes"] = nodes
    gpus = []
    for gpu in topology.gpus:
        entry = {"index": gpu.index, "model": gpu.model, "numa_node": gpu.numa_node}
        if gpu.pci_bus_id:
            entry["pci_bus_id"] = gpu.pci_bus_id
        entry["pcie_switch"] = gpu.pcie_switch
        if gpu.pcie_path:
            entry["pcie_path"] = list(gpu.pcie_path)
        default_cpus = topology.numa_node(gpu.numa_node).cpus if gpu.numa_node is not None else ()
        if gpu.cpus != default_cpus:
            entry["cpus"] = format_cpulist(gpu.cpus)
        if gpu.uuid:
            entry["uuid"] = gpu.uuid
        if gpu.memory_mb is not None:
            entry["memory_mb"] = gpu.memory_mb
        gpus.append(entry)
    if gpus:
        out["gpus"] = gpus
    if topology.nics:
        out["nics"] = [
            {
                "name": n.name,
                "kind": n.kind,
                "pci_bus_id": n.pci_bus_id,
                "numa_node": n.numa_node,
                "pcie_switch": n.pcie_switch,
            }
            for n in topology.nics
        ]
    if topology.hostname:
        out["hostname"] = topology.hostname
    if topology.notes:
        out["notes"] = list(topology.notes)
    return out
