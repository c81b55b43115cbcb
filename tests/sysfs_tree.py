"""Build synthetic Linux sysfs trees in a temporary folder, the way the kernel lays them out.

Covers what the hwloc snapshots lack: offline CPUs, sparse numbering, several NUMA nodes per
package, CPU-less NUMA nodes, ``numa_node = -1``, missing files, PCIe switches (an upstream-port
bridge with downstream-port bridges below it), NICs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hpcbench.cpulist import format_cpulist


@dataclass
class PciFunction:
    """One PCI function: its address, the bridges above it (root port first) and its files."""

    address: str
    bridges: Sequence[str] = ()
    pci_class: int = 0x030200
    vendor: int = 0x10DE
    device: int = 0x2335
    numa_node: int | None = None  # None → the file holds -1
    local_cpus: Iterable[int] | None = None  # None → no local_cpulist file
    domain_root: str = "pci0000:00"
    netdev: str | None = None
    netdev_type: int = 1  # ARPHRD_ETHER; 32 = InfiniBand
    extra_files: Mapping[str, str] = field(default_factory=dict)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def make_sysfs(
    root: Path,
    cpus: Mapping[int, tuple[int, int, Sequence[int]]],
    numa: Mapping[int, Iterable[int]] | None,
    *,
    online: Iterable[int] | None = None,
    write_online_file: bool = True,
    sibling_lists: bool = True,
    node_memory_kb: Mapping[int, int] | None = None,
    pci: Sequence[PciFunction] = (),
) -> Path:
    """Write a sysfs tree under ``root`` and return ``root``.

    ``cpus`` maps every present CPU to (package, core_id, thread siblings). ``numa`` maps node
    ids to their CPUs (None → no node folder at all). CPUs not in ``online`` are offline: they keep
    their ``cpuN`` folder but have ``online`` = 0 and no ``topology`` folder, as on Linux.
    """
    cpu_dir = root / "sys" / "devices" / "system" / "cpu"
    cpu_dir.mkdir(parents=True, exist_ok=True)
    online_set = set(cpus) if online is None else set(online)
    if write_online_file:
        write(cpu_dir / "online", format_cpulist(online_set) + "\n")
        write(cpu_dir / "possible", format_cpulist(cpus) + "\n")
    for cpu, (package, core_id, siblings) in cpus.items():
        base = cpu_dir / f"cpu{cpu}"
        base.mkdir(parents=True, exist_ok=True)
        if cpu != 0:
            write(base / "online", "1\n" if cpu in online_set else "0\n")
        if cpu not in online_set:
            continue
        topo = base / "topology"
        write(topo / "physical_package_id", f"{package}\n")
        write(topo / "core_id", f"{core_id}\n")
        live = [s for s in siblings if s in online_set]
        if sibling_lists:
            write(topo / "thread_siblings_list", format_cpulist(live) + "\n")
        mask = sum(1 << s for s in live)
        write(topo / "thread_siblings", f"{mask:08x}\n")
    if numa is not None:
        node_dir = root / "sys" / "devices" / "system" / "node"
        node_dir.mkdir(parents=True, exist_ok=True)
        write(node_dir / "online", format_cpulist(numa) + "\n")
        for node_id, node_cpus in numa.items():
            base = node_dir / f"node{node_id}"
            write(base / "cpulist", format_cpulist(c for c in node_cpus if c in online_set) + "\n")
            memory = (node_memory_kb or {}).get(node_id, 16 * 1024 * 1024)
            write(base / "meminfo", f"Node {node_id} MemTotal:       {memory} kB\n")
    for function in pci:
        add_pci(root, function)
    return root


def add_pci(root: Path, function: PciFunction) -> Path:
    """Add a PCI function (and its bridges) the way sysfs shows it; return its real folder."""
    devices = root / "sys" / "devices" / function.domain_root
    real = devices.joinpath(*function.bridges, function.address)
    write(real / "class", f"0x{function.pci_class:06x}\n")
    write(real / "vendor", f"0x{function.vendor:04x}\n")
    write(real / "device", f"0x{function.device:04x}\n")
    write(real / "numa_node", f"{-1 if function.numa_node is None else function.numa_node}\n")
    if function.local_cpus is not None:
        write(real / "local_cpulist", format_cpulist(function.local_cpus) + "\n")
    for name, text in function.extra_files.items():
        write(real / name, text)
    bus = root / "sys" / "bus" / "pci" / "devices"
    bus.mkdir(parents=True, exist_ok=True)
    # Relative links, exactly as the kernel makes them: ../../../devices/pci0000:00/...
    for address, path in [
        *[
            (b, devices.joinpath(*function.bridges[: i + 1]))
            for i, b in enumerate(function.bridges)
        ],
        (function.address, real),
    ]:
        link = bus / address
        if not link.is_symlink():
            os.symlink(os.path.relpath(path, bus), link)
            if address != function.address:
                write(path / "class", "0x060400\n")
                write(path / "vendor", "0x10b5\n")
                write(path / "device", "0x9797\n")
                write(
                    path / "numa_node",
                    f"{-1 if function.numa_node is None else function.numa_node}\n",
                )
    if function.netdev:
        net = root / "sys" / "class" / "net"
        net_real = real / "net" / function.netdev
        write(net_real / "type", f"{function.netdev_type}\n")
        net.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(net_real, net), net / function.netdev)
        os.symlink(os.path.relpath(real, net_real), net_real / "device")
    return real


def add_virtual_netdev(root: Path, name: str) -> None:
    """A netdev without a device link (lo, bridges): the reader must skip it."""
    net = root / "sys" / "class" / "net"
    real = root / "sys" / "devices" / "virtual" / "net" / name
    write(real / "type", "772\n")
    net.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(real, net), net / name)


def smt_cpus(
    packages: int, cores_per_package: int, threads: int = 2
) -> dict[int, tuple[int, int, tuple[int, ...]]]:
    """Linux's usual x86 numbering: first threads of all cores, then the second threads.

    >>> smt_cpus(2, 2)[0], smt_cpus(2, 2)[4]
    ((0, 0, (0, 4)), (0, 0, (0, 4)))
    """
    total = packages * cores_per_package
    out = {}
    for p in range(packages):
        for c in range(cores_per_package):
            first = p * cores_per_package + c
            siblings = tuple(first + t * total for t in range(threads))
            for cpu in siblings:
                out[cpu] = (p, c, siblings)
    return out


def set_port_type(root: Path, address: str, port_type: int) -> None:
    """Give a function a 256-byte config space whose PCIe capability has this port type."""
    space = bytearray(256)
    space[0x06] = 0x10  # status: capability list present
    space[0x34] = 0x50
    space[0x50:0x52] = bytes([0x01, 0x60])  # power management capability first, then ...
    space[0x60:0x64] = bytes([0x10, 0x00, (port_type << 4) | 0x2, 0x00])  # ... PCI Express
    device = (root / "sys" / "bus" / "pci" / "devices" / address).resolve()
    (device / "config").write_bytes(bytes(space))
