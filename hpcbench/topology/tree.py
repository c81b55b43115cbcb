"""A readable tree of a topology, for people (``hpcbench topo`` without ``--json``)."""

from __future__ import annotations

from hpcbench.cpulist import format_cpulist
from hpcbench.topology.model import Gpu, Nic, Topology


def _cores_text(topology: Topology, numa_id: int, package_id: int) -> str:
    cores = [c for c in topology.cores if c.numa_node == numa_id and c.package == package_id]
    if not cores:
        return "no CPUs"
    first = format_cpulist(c.cpus[0] for c in cores)
    threads = sorted({len(c.cpus) for c in cores})
    text = f"{len(cores)} cores (CPUs {format_cpulist(cpu for c in cores for cpu in c.cpus)}"
    if threads != [1]:
        text += f"; first threads {first}"
    return text + ")"


def _switch_groups(topology: Topology) -> dict[str, str]:
    """Short labels (A, B, ...) for PCIe switches, in order of first appearance."""
    labels: dict[str, str] = {}
    switches = [g.pcie_switch for g in topology.gpus] + [n.pcie_switch for n in topology.nics]
    for switch in switches:
        if switch is not None and switch not in labels:
            n = len(labels)
            labels[switch] = chr(ord("A") + n) if n < 26 else f"S{n}"
    return labels


def draw_tree(topology: Topology) -> str:
    """The topology as an indented tree: packages → NUMA nodes → cores; GPUs; NICs; notes.

    >>> from hpcbench.topology.model import Core, NumaNode
    >>> t = Topology.build(source="example", cores=[Core(0, 0, (0, 2)), Core(0, 0, (1, 3))],
    ...                    numa_nodes=[NumaNode(0, 0, (0, 1, 2, 3))])
    >>> print(draw_tree(t))
    Node (source: example): 1 package, 1 NUMA node, 2 cores, 4 CPUs, 0 GPUs
      Package 0: CPUs 0-3
        NUMA node 0: 2 cores (CPUs 0-3; first threads 0-1)
    """
    labels = _switch_groups(topology)
    lines = []
    host = f"{topology.hostname} " if topology.hostname else ""
    counts = (
        f"{_n(len(topology.packages), 'package')}, {_n(len(topology.numa_nodes), 'NUMA node')}, "
        f"{_n(len(topology.cores), 'core')}, {_n(len(topology.cpus), 'CPU')}, "
        f"{_n(len(topology.gpus), 'GPU')}"
    )
    lines.append(f"Node {host}(source: {topology.source}): {counts}")
    shown: set[int] = set()
    for package in topology.packages:
        lines.append(f"  Package {package.id}: CPUs {format_cpulist(package.cpus)}")
        for node_id in package.numa_nodes:
            node = topology.numa_node(node_id)
            first = node.id not in shown
            memory = f", {node.memory_mb / 1024:.0f} GiB" if node.memory_mb and first else ""
            cores = _cores_text(topology, node.id, package.id)
            lines.append(f"    NUMA node {node.id}: {cores}{memory}")
            # A NUMA node spanning packages (old front-side-bus machines) shows its memory and
            # devices once.
            if first:
                shown.add(node.id)
                for gpu in topology.gpus:
                    if gpu.numa_node == node.id:
                        lines.append(f"      {_gpu_text(gpu, labels)}")
                for nic in topology.nics:
                    if nic.numa_node == node.id:
                        lines.append(f"      {_nic_text(nic, labels)}")
    for node in topology.numa_nodes:
        if not node.cpus:
            memory = f" ({node.memory_mb / 1024:.0f} GiB)" if node.memory_mb else ""
            lines.append(f"  NUMA node {node.id}: memory only{memory}")
            lines.extend(
                f"    {_gpu_text(g, labels)}" for g in topology.gpus if g.numa_node == node.id
            )
            lines.extend(
                f"    {_nic_text(n, labels)}" for n in topology.nics if n.numa_node == node.id
            )
    unplaced_gpus = [g for g in topology.gpus if g.numa_node is None]
    unplaced_nics = [n for n in topology.nics if n.numa_node is None]
    if unplaced_gpus or unplaced_nics:
        lines.append("  No NUMA locality reported:")
        lines.extend(f"    {_gpu_text(g, labels)}" for g in unplaced_gpus)
        lines.extend(f"    {_nic_text(n, labels)}" for n in unplaced_nics)
    if labels:
        lines.append("  PCIe switches: " + ", ".join(f"{v} = {k}" for k, v in labels.items()))
    for note in topology.notes:
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def _n(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def _gpu_text(gpu: Gpu, labels: dict[str, str]) -> str:
    parts = [f"GPU {gpu.index}: {gpu.model}"]
    if gpu.pci_bus_id:
        parts.append(gpu.pci_bus_id)
    if gpu.memory_mb:
        parts.append(f"{gpu.memory_mb / 1024:.0f} GiB")
    switch = labels.get(gpu.pcie_switch) if gpu.pcie_switch else None
    parts.append(f"switch {switch}" if switch else "no PCIe switch")
    return ", ".join(parts)


def _nic_text(nic: Nic, labels: dict[str, str]) -> str:
    parts = [f"NIC {nic.name}: {nic.kind}"]
    if nic.pci_bus_id:
        parts.append(nic.pci_bus_id)
    switch = labels.get(nic.pcie_switch) if nic.pcie_switch else None
    if switch:
        parts.append(f"switch {switch}")
    return ", ".join(parts)
