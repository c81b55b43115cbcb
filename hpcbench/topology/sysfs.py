"""Read a node's topology from Linux sysfs, under any root directory.

Everything is read below ``root`` (``/`` on a live node, the top folder of an unpacked snapshot in
tests), so the same code handles this host and the hwloc test-suite snapshots:

- CPUs: ``sys/devices/system/cpu`` — online CPUs from ``cpu/online`` (or each ``cpuN/online``),
  package from ``topology/physical_package_id``, hardware-thread siblings from
  ``topology/thread_siblings_list`` (or the ``thread_siblings`` mask of older kernels).
- NUMA nodes: ``sys/devices/system/node/nodeN`` (``cpulist``, ``cpumap`` or ``cpuN`` entries;
  ``meminfo``). A kernel without NUMA support has no ``node`` folder: one node 0 then.
- PCI: ``sys/bus/pci/devices/*`` (``class``, ``vendor``, ``numa_node``, ``local_cpulist``); the
  link target (``../../../devices/pci0000:00/0000:00:03.0/0000:04:00.0/...``) gives the bridge
  chain above a device.
- NICs: ``sys/class/net/*`` (``type`` 32 = InfiniBand) and ``sys/class/infiniband/*``.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from hpcbench.cpulist import CpuListError, parse_cpulist, parse_sysfs_mask
from hpcbench.errors import TopologyError
from hpcbench.topology.model import Core, Gpu, Nic, NumaNode, Topology, numa_nodes_from_cores

PCI_ADDRESS = re.compile(r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")

VENDOR_NVIDIA = 0x10DE
VENDOR_AMD = 0x1002
VENDOR_INTEL = 0x8086
SYSFS_GPU_NOTE = "GPU indices in PCI bus order and models as PCI ids (sysfs has no GPU names)"
# PCI Express Capabilities register, "Device/Port Type" field (PCIe base spec 7.5.3.2).
PCIE_ROOT_PORT = 4
PCIE_UPSTREAM_PORT = 5
PCIE_DOWNSTREAM_PORT = 6
# ARPHRD_INFINIBAND in <linux/if_arp.h>: what /sys/class/net/*/type holds for an IPoIB interface.
ARPHRD_INFINIBAND = 32


@dataclass(frozen=True, slots=True)
class PciDevice:
    """One PCI function as sysfs shows it."""

    address: str
    pci_class: int
    vendor: int
    device: int
    numa_node: int | None
    local_cpus: tuple[int, ...]
    bridges: tuple[str, ...]
    port_type: int | None = None
    switch: str | None = None


def is_gpu(pci_class: int, vendor: int) -> bool:
    """Whether a PCI function of this class (24-bit) and vendor is a compute GPU.

    Every NVIDIA display controller (class 0x03xx) counts. AMD and Intel count only with the
    classes of their data-centre parts (0x0302 3D controller, 0x0380 other display controller):
    their VGA-class (0x0300) chips are mostly integrated or server-board graphics (Intel iGPUs,
    ATI ES1000), which must not shift GPU indices. BMC chips (ASPEED, Matrox) never count.

    >>> is_gpu(0x030200, 0x10DE)   # NVIDIA 3D controller (A100, H100)
    True
    >>> is_gpu(0x038000, 0x1002)   # AMD Instinct
    True
    >>> is_gpu(0x030000, 0x1002)   # ATI ES1000 server-board VGA
    False
    >>> is_gpu(0x030000, 0x1A03)   # ASPEED BMC VGA
    False
    >>> is_gpu(0x020000, 0x10DE)   # not a display class
    False
    """
    base_class = pci_class >> 16
    sub_class = (pci_class >> 8) & 0xFF
    if base_class != 0x03:
        return False
    if vendor == VENDOR_NVIDIA:
        return True
    return vendor in (VENDOR_AMD, VENDOR_INTEL) and sub_class in (0x02, 0x80)


def nearest_switch(
    bridges: tuple[str, ...], port_types: Mapping[str, int | None] | None = None
) -> str | None:
    """The upstream port of the nearest PCIe switch above a device, from its bridge chain.

    The chain starts at the root port. Each PCIe switch appears as an upstream-port bridge with a
    downstream-port bridge below it, so a device under ``root port → usp → dsp`` hangs off the
    switch whose upstream port is the second-to-last bridge. Two GPUs behind different downstream
    ports of one switch share its upstream port (and its uplink bandwidth).

    >>> nearest_switch(("0000:00:01.0",))  # directly on a root port
    >>> nearest_switch(("0000:00:01.0", "0000:01:00.0", "0000:02:08.0"))
    '0000:01:00.0'
    >>> nearest_switch(("0000:00:01.0", "0000:01:00.0", "0000:02:08.0", "0000:03:00.0",
    ...                 "0000:04:10.0"))
    '0000:03:00.0'

    When the PCIe port type of every bridge is known (``port_types``, read from config space,
    which only root can read past its first 64 bytes), the nearest upstream port is taken
    directly; this also covers a hidden root port (VMs) and a PCIe-to-PCI bridge in the chain.

    >>> nearest_switch(("0000:01:00.0", "0000:02:00.0"), {"0000:01:00.0": 5, "0000:02:00.0": 6})
    '0000:01:00.0'
    """
    if port_types is not None and bridges and all(port_types.get(b) is not None for b in bridges):
        upstream = [b for b in bridges if port_types[b] == PCIE_UPSTREAM_PORT]
        return upstream[-1] if upstream else None
    if len(bridges) >= 3:
        return bridges[-2]
    return None


def pcie_port_type(config: bytes) -> int | None:
    """The PCIe Device/Port Type of a function from its config space, or None when unreadable.

    Walks the capability list (status bit 4, pointer at 0x34) to the PCI Express capability
    (id 0x10) and returns bits 7:4 of its capabilities register. Unprivileged reads of sysfs
    ``config`` stop at 64 bytes, before any capability, so this needs root.

    >>> space = bytearray(256); space[0x06] = 0x10; space[0x34] = 0x40
    >>> space[0x40:0x44] = bytes([0x10, 0x00, 0x52, 0x00])   # PCIe cap v2, type 5
    >>> pcie_port_type(bytes(space))
    5
    >>> pcie_port_type(bytes(64)) is None
    True
    """
    if len(config) < 0x40 or not config[0x06] & 0x10:
        return None
    pointer = config[0x34] & 0xFC
    for _ in range(48):  # the list is short; the bound guards against loops in bad data
        if pointer < 0x40 or pointer + 4 > len(config):
            return None
        if config[pointer] == 0x10:
            return (config[pointer + 2] >> 4) & 0xF
        pointer = config[pointer + 1] & 0xFC
    return None


def normalize_bus_id(bus_id: str) -> str:
    """The sysfs spelling of a PCI bus id: lower case, 4-digit domain.

    NVML reports ``00000000:3B:00.0``; sysfs and hwloc use ``0000:3b:00.0``.

    >>> normalize_bus_id("00000000:3B:00.0")
    '0000:3b:00.0'
    >>> normalize_bus_id("3b:00.0")
    '0000:3b:00.0'
    """
    text = bus_id.strip().lower()
    parts = text.split(":")
    if len(parts) == 2:
        parts.insert(0, "0000")
    domain = parts[0][-4:] if len(parts[0]) > 4 and parts[0].startswith("0000") else parts[0]
    return ":".join([domain.zfill(4), *parts[1:]])


# --------------------------------------------------------------------------------- file helpers
def _read(path: Path) -> str | None:
    try:
        # Snapshots (and some drivers) pad sysfs files with NUL bytes.
        return path.read_text(errors="replace").replace("\x00", "").strip()
    except OSError:
        return None


def _read_int(path: Path, base: int = 10) -> int | None:
    text = _read(path)
    if text is None or text == "":
        return None
    try:
        return int(text, base)
    except ValueError:
        return None


def _cpus_from(list_file: Path, mask_file: Path) -> tuple[int, ...] | None:
    """A CPU set from a ``*_list`` file, else from its mask twin; None when neither exists."""
    try:
        text = _read(list_file)
        if text is not None:
            return parse_cpulist(text)
        text = _read(mask_file)
        if text is not None:
            return parse_sysfs_mask(text)
    except CpuListError as exc:
        raise TopologyError(f"{list_file.parent}: {exc}") from exc
    return None


def _resolve_link(root: Path, path: Path) -> Path:
    """Follow ``path`` if it is a symlink, keeping absolute targets inside ``root``."""
    try:
        target = os.readlink(path)
    except OSError:
        return path
    if os.path.isabs(target):
        return root / target.lstrip("/")
    return Path(os.path.normpath(path.parent / target))


# --------------------------------------------------------------------------------- CPUs
def _online_cpus(cpu_dir: Path) -> tuple[int, ...]:
    listed = sorted(int(p.name[3:]) for p in _iterdir(cpu_dir) if re.fullmatch(r"cpu\d+", p.name))
    online_text = _read(cpu_dir / "online")
    if online_text is not None:
        try:
            online = set(parse_cpulist(online_text))
        except CpuListError as exc:
            raise TopologyError(f"{cpu_dir / 'online'}: {exc}") from exc
        return tuple(c for c in listed if c in online)
    # Older kernels (and some snapshots) lack cpu/online: each cpuN/online says "0" when
    # offline; cpu0 usually has no such file because it cannot be taken offline.
    return tuple(c for c in listed if _read(cpu_dir / f"cpu{c}" / "online") != "0")


def _iterdir(path: Path) -> list[Path]:
    try:
        return sorted(path.iterdir())
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []


@dataclass(frozen=True, slots=True)
class _CpuInfo:
    cpu: int
    package: int | None
    die: int | None
    core_id: int | None
    siblings: tuple[int, ...] | None


def _cpu_info(cpu_dir: Path, cpu: int) -> _CpuInfo:
    topo = cpu_dir / f"cpu{cpu}" / "topology"
    return _CpuInfo(
        cpu=cpu,
        package=_read_int(topo / "physical_package_id"),
        die=_read_int(topo / "die_id"),
        core_id=_read_int(topo / "core_id"),
        siblings=_cpus_from(topo / "thread_siblings_list", topo / "thread_siblings"),
    )


def _group_cores(infos: list[_CpuInfo], online: set[int]) -> list[tuple[int, tuple[int, ...]]]:
    """Group online CPUs into cores: (package, threads). Siblings first, then core ids."""
    cores: dict[tuple[object, ...], list[int]] = {}
    for info in infos:
        package = info.package if info.package is not None and info.package >= 0 else 0
        if info.siblings:
            key: tuple[object, ...] = ("siblings", tuple(c for c in info.siblings if c in online))
        elif info.core_id is not None:
            key = ("core_id", package, info.die, info.core_id)
        else:
            key = ("alone", info.cpu)
        cores.setdefault(key, []).append(info.cpu)
    package_of = {
        i.cpu: (i.package if i.package is not None and i.package >= 0 else 0) for i in infos
    }
    return [(package_of[cpus[0]], tuple(sorted(cpus))) for cpus in cores.values()]


# --------------------------------------------------------------------------------- NUMA
def _numa_nodes(
    node_dir: Path, online: set[int]
) -> list[tuple[int, tuple[int, ...], int | None]] | None:
    """(id, online CPUs, memory MB) per NUMA node, or None when the kernel has no NUMA folder."""
    entries = [p for p in _iterdir(node_dir) if re.fullmatch(r"node\d+", p.name)]
    if not entries:
        return None
    online_nodes_text = _read(node_dir / "online")
    online_nodes: set[int] | None = None
    if online_nodes_text is not None:
        try:
            online_nodes = set(parse_cpulist(online_nodes_text))
        except CpuListError as exc:
            raise TopologyError(f"{node_dir / 'online'}: {exc}") from exc
    nodes = []
    for entry in entries:
        node_id = int(entry.name[4:])
        if online_nodes is not None and node_id not in online_nodes:
            continue
        cpus = _cpus_from(entry / "cpulist", entry / "cpumap")
        if cpus is None:
            # Very old kernels only have cpuN links inside the node folder.
            cpus = tuple(
                sorted(int(p.name[3:]) for p in _iterdir(entry) if re.fullmatch(r"cpu\d+", p.name))
            )
        nodes.append(
            (node_id, tuple(c for c in cpus if c in online), _node_memory_mb(entry / "meminfo"))
        )
    return nodes


def _node_memory_mb(meminfo: Path) -> int | None:
    text = _read(meminfo)
    if not text:
        return None
    match = re.search(r"MemTotal:\s+(\d+)\s*kB", text)
    return int(match.group(1)) // 1024 if match else None


# --------------------------------------------------------------------------------- PCI
def read_pci_devices(root: str | os.PathLike[str] = "/") -> list[PciDevice]:
    """Every PCI function under ``root``/sys/bus/pci/devices, sorted by address."""
    root_path = Path(root)
    devices_dir = root_path / "sys" / "bus" / "pci" / "devices"
    devices = []
    for entry in _iterdir(devices_dir):
        address = entry.name.lower()
        if not PCI_ADDRESS.match(address):
            continue
        real = _resolve_link(root_path, entry)
        parts = [p.lower() for p in real.parts]
        chain: tuple[str, ...] = ()
        if address in parts:
            above = parts[: parts.index(address)]
            chain = tuple(p for p in above if PCI_ADDRESS.match(p))
        numa = _read_int(entry / "numa_node")
        local = _cpus_from(entry / "local_cpulist", entry / "local_cpus") or ()
        devices.append(
            PciDevice(
                address=address,
                pci_class=_read_int(entry / "class", 16) or 0,
                vendor=_read_int(entry / "vendor", 16) or 0,
                device=_read_int(entry / "device", 16) or 0,
                numa_node=numa if numa is not None and numa >= 0 else None,
                local_cpus=local,
                bridges=chain,
                port_type=_port_type_of(entry),
            )
        )
    port_types = {d.address: d.port_type for d in devices}
    return sorted(
        (replace(d, switch=nearest_switch(d.bridges, port_types)) for d in devices),
        key=lambda d: d.address,
    )


def _port_type_of(entry: Path) -> int | None:
    try:
        with (entry / "config").open("rb") as handle:
            return pcie_port_type(handle.read(4096))
    except OSError:
        return None


def gpu_devices(devices: Iterable[PciDevice]) -> list[PciDevice]:
    """The GPUs among ``devices``, NVIDIA first, each vendor in PCI bus order.

    NVIDIA GPUs come first because CUDA and NVML number only them (``CUDA_DEVICE_ORDER=
    PCI_BUS_ID`` and nvidia-smi use PCI bus order), so their indices match what a rank sees.
    """
    gpus = [d for d in devices if is_gpu(d.pci_class, d.vendor)]
    return sorted(gpus, key=lambda d: (d.vendor != VENDOR_NVIDIA, d.address))


def _gpu_locality(
    device: PciDevice, nodes: list[NumaNode], online: set[int], notes: list[str], label: str
) -> tuple[int | None, tuple[int, ...]]:
    cpus = tuple(c for c in device.local_cpus if c in online)
    numa = device.numa_node
    if numa is not None and numa not in {n.id for n in nodes}:
        notes.append(f"{label} reports NUMA node {numa}, which has no folder; treated as unknown")
        numa = None
    if numa is None and len(nodes) > 1 and cpus and set(cpus) != online:
        # Firmware without a proximity domain for the slot still fills local_cpulist; when it
        # lies inside one NUMA node, that node is the GPU's.
        homes = [n.id for n in nodes if n.cpus and set(cpus) <= set(n.cpus)]
        if len(homes) == 1:
            numa = homes[0]
            notes.append(f"{label} reports no NUMA node; NUMA node {numa} from its local CPUs")
    return numa, cpus


def _pci_address_of(device: Path) -> str | None:
    """The PCI function a device folder belongs to (a virtio NIC's "device" is virtioN under it).

    >>> _pci_address_of(Path("/sys/devices/pci0000:00/0000:00:03.0/virtio2"))
    '0000:00:03.0'
    >>> _pci_address_of(Path("/sys/devices/platform/foo")) is None
    True
    """
    for part in reversed(device.parts):
        if PCI_ADDRESS.match(part.lower()):
            return part.lower()
    return None


def _nics(root: Path, by_address: dict[str, PciDevice]) -> list[Nic]:
    nics: list[Nic] = []
    seen: set[str] = set()
    for entry in _iterdir(root / "sys" / "class" / "net"):
        # Class entries are links into the device tree; follow them first so the relative
        # "device" link inside resolves against the real folder.
        real = _resolve_link(root, entry)
        device_link = real / "device"
        if not device_link.is_symlink():
            continue  # virtual interface (lo, bridges, veth)
        address = _pci_address_of(_resolve_link(root, device_link))
        pci = by_address.get(address) if address else None
        if pci is None or address is None:
            continue
        kind = "infiniband" if _read_int(real / "type") == ARPHRD_INFINIBAND else "ethernet"
        nics.append(
            Nic(
                name=entry.name,
                kind=kind,
                pci_bus_id=address,
                numa_node=pci.numa_node,
                pcie_switch=pci.switch,
            )
        )
        seen.add(address)
    for entry in _iterdir(root / "sys" / "class" / "infiniband"):
        entry = _resolve_link(root, entry)
        address = _pci_address_of(_resolve_link(root, entry / "device"))
        pci = by_address.get(address) if address else None
        if pci is None or address is None or address in seen:
            continue
        layers = {_read(port / "link_layer") for port in _iterdir(entry / "ports") if port.is_dir()}
        nics.append(
            Nic(
                name=entry.name,
                kind="ethernet" if layers == {"Ethernet"} else "infiniband",
                pci_bus_id=address,
                numa_node=pci.numa_node,
                pcie_switch=pci.switch,
            )
        )
    return nics


# --------------------------------------------------------------------------------- reader
def read_sysfs(root: str | os.PathLike[str] = "/") -> Topology:
    """Read the topology of the node whose file system is rooted at ``root``.

    GPUs are numbered NVIDIA first, in PCI bus order (see :func:`gpu_devices`); the NVML reader
    replaces these indices with the driver's when a driver is present.
    """
    root_path = Path(root)
    where = f"sysfs root {root_path}"
    cpu_dir = root_path / "sys" / "devices" / "system" / "cpu"
    if not cpu_dir.is_dir():
        raise TopologyError(f"{where}: no sys/devices/system/cpu folder (is this a Linux /sys?)")
    online_list = _online_cpus(cpu_dir)
    if not online_list:
        raise TopologyError(f"{where}: no online CPUs under {cpu_dir}")
    online = set(online_list)
    notes: list[str] = []
    infos = [_cpu_info(cpu_dir, cpu) for cpu in online_list]
    if any(i.package is None or i.package < 0 for i in infos):
        notes.append("some CPUs report no physical package id; counted in package 0")
    grouped = _group_cores(infos, online)

    raw_nodes = _numa_nodes(root_path / "sys" / "devices" / "system" / "node", online)
    if raw_nodes is None:
        raw_nodes = [(0, tuple(sorted(online)), None)]
        notes.append("no sys/devices/system/node: one NUMA node assumed")
    numa_of: dict[int, int] = {}
    for node_id, cpus, _ in raw_nodes:
        for cpu in cpus:
            if cpu in numa_of:
                raise TopologyError(
                    f"{where}: CPU {cpu} is in NUMA nodes {numa_of[cpu]} and {node_id}"
                )
            numa_of[cpu] = node_id
    package_of = {cpu: package for package, cpus in grouped for cpu in cpus}
    for cpu in sorted(online - set(numa_of)):
        homes = {numa_of[c] for c in numa_of if package_of.get(c) == package_of[cpu]}
        if len(homes) != 1:
            raise TopologyError(
                f"{where}: online CPU {cpu} is in no NUMA node's cpulist and its package spans "
                f"NUMA nodes {sorted(homes)}"
            )
        numa_of[cpu] = homes.pop()
        notes.append(f"CPU {cpu} is in no NUMA node's cpulist; placed in node {numa_of[cpu]}")

    cores = []
    for package, cpus in grouped:
        nodes_of_core = {numa_of[c] for c in cpus}
        if len(nodes_of_core) != 1:
            raise TopologyError(
                f"{where}: the hardware threads {list(cpus)} of one core lie in NUMA nodes "
                f"{sorted(nodes_of_core)}"
            )
        cores.append(Core(package=package, numa_node=nodes_of_core.pop(), cpus=cpus))

    numa_nodes = numa_nodes_from_cores(
        cores, {node_id: memory_mb for node_id, _, memory_mb in raw_nodes}, notes
    )

    devices = read_pci_devices(root_path)
    gpus = []
    for index, device in enumerate(gpu_devices(devices)):
        numa, cpus = _gpu_locality(device, numa_nodes, online, notes, f"GPU {device.address}")
        gpus.append(
            Gpu(
                index=index,
                pci_bus_id=device.address,
                model=pci_model_name(device),
                numa_node=numa,
                cpus=cpus,
                pcie_path=device.bridges,
                pcie_switch=device.switch,
            )
        )
    if gpus:
        notes.append(SYSFS_GPU_NOTE)
    by_address = {d.address: d for d in devices}
    nics = _nics(root_path, by_address)
    return Topology.build(
        source="sysfs" if root_path.resolve() == Path("/") else f"sysfs:{root_path}",
        cores=cores,
        numa_nodes=numa_nodes,
        gpus=gpus,
        nics=nics,
        hostname=_hostname(root_path),
        notes=notes,
        where=where,
    )


def pci_model_name(device: PciDevice) -> str:
    """A model string from PCI ids alone (sysfs has no marketing names; NVML replaces it).

    >>> pci_model_name(PciDevice("0000:3b:00.0", 0x030200, 0x10DE, 0x20B0, 0, (), ()))
    'NVIDIA [10de:20b0]'
    """
    vendor = {VENDOR_NVIDIA: "NVIDIA", VENDOR_AMD: "AMD", VENDOR_INTEL: "Intel"}.get(
        device.vendor, f"vendor {device.vendor:04x}"
    )
    return f"{vendor} [{device.vendor:04x}:{device.device:04x}]"


def _hostname(root: Path) -> str | None:
    if root.resolve() == Path("/"):
        return socket.gethostname()
    return _read(root / "proc" / "sys" / "kernel" / "hostname") or _read(root / "etc" / "hostname")
