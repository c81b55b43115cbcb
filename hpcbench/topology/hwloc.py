"""Read a node's topology from an hwloc XML export (``lstopo --of xml``).

Handles the hwloc 2 format (NUMA nodes as memory children of a package or group; I/O objects
attached to their locality's object) and the hwloc 1 format (NUMA nodes as parents), and the
``osdev_type`` spellings of both (an enum in hwloc 2, bit flags in hwloc 3's ``version="3.0"``).

- CPUs: ``PU`` objects (OS numbers ``os_index``; the tree holds online PUs only), grouped by their
  ``Core``, package from the nearest ``Package``, NUMA node from the PU's ``nodeset``.
- GPUs: ``PCIDev`` objects of class 0x03xx (see :func:`hpcbench.topology.sysfs.is_gpu`) or with a
  CUDA/NVML OS device; the index comes from an ``nvmlN``/``cudaN`` OS device when present.
- PCIe path: the ``Bridge`` ancestors that have a PCI address (not the host bridge).
- NICs: ``PCIDev`` of class 0x02xx, named after their network OS device.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from hpcbench.cpulist import is_decimal, mask_to_cpus
from hpcbench.errors import TopologyError
from hpcbench.topology.model import Core, Gpu, Nic, Topology, numa_nodes_from_cores
from hpcbench.topology.sysfs import VENDOR_NVIDIA, is_gpu, nearest_switch

_IO_TYPES = {"Bridge", "PCIDev", "OSDev", "Misc"}


def parse_hwloc_bitmap(text: str | None) -> tuple[int, ...]:
    """Indices set in an hwloc bitmap string (comma-separated 32-bit words, most significant first).

    An infinite bitmap starts with ``0xf...f``; that part is ignored.

    >>> parse_hwloc_bitmap("0x00ff00ff")
    (0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23)
    >>> parse_hwloc_bitmap("0x00000001,0x00000000")
    (32,)
    >>> parse_hwloc_bitmap("0xf...f,0x00000003")
    (0, 1)
    >>> parse_hwloc_bitmap(None)
    ()
    """
    if not text:
        return ()
    words = [w.strip() for w in text.strip().split(",")]
    words = [w for w in words if w and "..." not in w]
    value = 0
    for word in words:
        value = (value << 32) | int(word, 16)
    return mask_to_cpus(value)


@dataclass(frozen=True, slots=True)
class _Walk:
    element: ET.Element
    ancestors: tuple[ET.Element, ...]


def _walk(element: ET.Element, ancestors: tuple[ET.Element, ...] = ()) -> Iterator[_Walk]:
    for child in element:
        if child.tag != "object":
            continue
        yield _Walk(child, ancestors)
        yield from _walk(child, (*ancestors, child))


def _infos(element: ET.Element) -> dict[str, str]:
    return {
        i.get("name", ""): i.get("value", "") for i in element if i.tag == "info" and i.get("name")
    }


def _pci_ids(pci_type: str | None) -> tuple[int, int, int]:
    """(24-bit class, vendor, device) from hwloc's ``pci_type="0302 [10de:1094] [...] a1"``."""
    if not pci_type:
        return 0, 0, 0
    match = re.match(r"\s*([0-9a-fA-F]{4})\s*\[([0-9a-fA-F]{4}):([0-9a-fA-F]{4})\]", pci_type)
    if not match:
        return 0, 0, 0
    return int(match.group(1), 16) << 8, int(match.group(2), 16), int(match.group(3), 16)


def _is_netdev(osdev: ET.Element, version: int) -> bool:
    text = osdev.get("osdev_type", "")
    if not is_decimal(text):
        return False
    value = int(text)
    if version >= 3:
        return bool(value & 16) and not value & 32  # NETWORK, not OPENFABRICS
    return value == 2  # HWLOC_OBJ_OSDEV_NETWORK in hwloc 2


def _memory_mb(text: str | None) -> int | None:
    if not text:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]i?B)?\s*", text)
    if not match:
        return None
    number = int(match.group(1))
    unit = (match.group(2) or "B")[0]
    return {"K": number // 1024, "M": number, "G": number * 1024}.get(unit, number // 2**20)


def read_hwloc_xml(path: str | os.PathLike[str]) -> Topology:
    """Read an ``lstopo --of xml`` file into a :class:`Topology`."""
    file = Path(path)
    where = str(file)
    if not file.is_file():
        raise TopologyError(f"hwloc XML not found: {file}")
    try:
        tree = ET.parse(file)
    except ET.ParseError as exc:
        line, column = exc.position
        reason = str(exc).split(":")[0]
        raise TopologyError(
            f"{where}: malformed XML at line {line} column {column + 1}: {reason}"
        ) from None
    except OSError as exc:
        raise TopologyError(f"cannot read {where}: {exc.strerror or exc}") from None
    root = tree.getroot()
    if root.tag != "topology":
        raise TopologyError(f"{where}: not an hwloc XML file (root element <{root.tag}>)")
    version_text = root.get("version", "1.0")
    try:
        version = int(version_text.split(".")[0])
    except ValueError:
        version = 2
    return _topology_from_tree(root, where, version)


def _topology_from_tree(root: ET.Element, where: str, version: int) -> Topology:
    objects = list(_walk(root))
    notes: list[str] = []
    numa_memory: dict[int, int | None] = {}
    for item in objects:
        if item.element.get("type") == "NUMANode":
            index = _os_index(item.element, where)
            memory = item.element.get("local_memory")
            numa_memory[index] = int(memory) // 2**20 if memory and is_decimal(memory) else None

    # hwloc omits os_index when the OS does not say (some VMs): number those packages in order.
    package_elements = [i.element for i in objects if i.element.get("type") == "Package"]
    package_ids = {
        id(el): int(el.get("os_index", "")) if is_decimal(el.get("os_index", "")) else n
        for n, el in enumerate(package_elements)
    }
    core_groups: dict[int, list[int]] = {}
    core_meta: dict[int, tuple[int, int | None]] = {}
    for item in objects:
        element = item.element
        if element.get("type") != "PU":
            continue
        cpu = _os_index(element, where)
        core_el = next((a for a in reversed(item.ancestors) if a.get("type") == "Core"), element)
        package_el = next((a for a in reversed(item.ancestors) if a.get("type") == "Package"), None)
        package = package_ids.get(id(package_el), 0) if package_el is not None else 0
        nodes = parse_hwloc_bitmap(element.get("nodeset"))
        if len(nodes) != 1:
            numa_el = next(
                (a for a in reversed(item.ancestors) if a.get("type") == "NUMANode"), None
            )
            nodes = (_os_index(numa_el, where),) if numa_el is not None else ()
        numa = nodes[0] if len(nodes) == 1 else None
        core_groups.setdefault(id(core_el), []).append(cpu)
        core_meta[id(core_el)] = (package, numa)
    if not core_groups:
        raise TopologyError(f"{where}: no PU objects (is this an lstopo --of xml export?)")
    if not numa_memory:
        numa_memory[0] = None
        notes.append("no NUMANode objects: one NUMA node assumed")
    cores = []
    for key, cpus in core_groups.items():
        package, numa = core_meta[key]
        if numa is None:
            if len(numa_memory) != 1:
                raise TopologyError(f"{where}: PU {cpus[0]} has no single NUMA node in its nodeset")
            numa = next(iter(numa_memory))
        cores.append(Core(package=package, numa_node=numa, cpus=tuple(sorted(cpus))))
    numa_nodes = numa_nodes_from_cores(cores, numa_memory, notes)
    online = {c for core in cores for c in core.cpus}
    gpus, nics = _io_devices(objects, online, set(numa_memory), version, notes)
    infos = {**_infos(root), **(_infos(objects[0].element) if objects else {})}
    return Topology.build(
        source=f"hwloc:{where}",
        cores=cores,
        numa_nodes=numa_nodes,
        gpus=gpus,
        nics=nics,
        hostname=infos.get("HostName"),
        notes=notes,
        where=where,
    )


def _os_index(element: ET.Element, where: str) -> int:
    text = element.get("os_index")
    if text is None or not is_decimal(text.removeprefix("-")):
        raise TopologyError(
            f"{where}: {element.get('type')} object {element.get('gp_index', '?')} has no os_index"
        )
    return int(text)


def _locality(
    ancestors: tuple[ET.Element, ...], online: set[int], numa_ids: set[int]
) -> tuple[int | None, tuple[int, ...]]:
    """NUMA node and CPUs of the nearest non-I/O ancestor (where hwloc attaches I/O objects)."""
    parent = next((a for a in reversed(ancestors) if a.get("type") not in _IO_TYPES), None)
    if parent is None:
        return None, ()
    cpus = tuple(c for c in parse_hwloc_bitmap(parent.get("cpuset")) if c in online)
    nodes = [n for n in parse_hwloc_bitmap(parent.get("nodeset")) if n in numa_ids]
    return (nodes[0] if len(nodes) == 1 else None), cpus


def _io_devices(
    objects: list[_Walk], online: set[int], numa_ids: set[int], version: int, notes: list[str]
) -> tuple[list[Gpu], list[Nic]]:
    found: list[tuple[int | None, int, str, Gpu]] = []
    nics: list[Nic] = []
    for item in objects:
        element = item.element
        if element.get("type") != "PCIDev":
            continue
        address = (element.get("pci_busid") or "").lower()
        pci_class, vendor, device = _pci_ids(element.get("pci_type"))
        osdevs = [c for c in element if c.tag == "object" and c.get("type") == "OSDev"]
        names = [o.get("name", "") for o in osdevs]
        explicit = _explicit_index(names)
        # A GPU OS device (CUDA, NVML, OpenCL, ROCm SMI, Level Zero) makes it a GPU whatever
        # its PCI class says.
        has_gpu_osdev = any(
            re.fullmatch(r"(cuda|nvml|opencl|rsmi|ze)\d+(d\d+)?", name) for name in names
        )
        bridges = tuple(
            (a.get("pci_busid") or "").lower()
            for a in item.ancestors
            if a.get("type") == "Bridge" and a.get("pci_busid")
        )
        numa, cpus = _locality(item.ancestors, online, numa_ids)
        if is_gpu(pci_class, vendor) or has_gpu_osdev:
            infos = _infos(element)
            model = infos.get("PCIDevice") or f"[{vendor:04x}:{device:04x}]"
            uuid = None
            memory_mb = None
            for osdev in osdevs:
                os_infos = _infos(osdev)
                model = os_infos.get("GPUModel", model)
                uuid = uuid or os_infos.get("NVIDIAUUID")
                memory_mb = memory_mb or _memory_mb(os_infos.get("CUDAGlobalMemorySize"))
            gpu = Gpu(
                index=-1,
                pci_bus_id=address,
                model=model,
                numa_node=numa,
                cpus=cpus,
                pcie_path=bridges,
                pcie_switch=nearest_switch(bridges),
                uuid=uuid,
                memory_mb=memory_mb,
            )
            found.append((explicit, vendor, address, gpu))
        elif pci_class >> 16 == 0x02 or pci_class >> 8 == 0x0C06:
            # 0x0207 and 0x0c06 are InfiniBand controllers (ConnectX-4+ and older HCAs).
            kind = "infiniband" if pci_class >> 8 in (0x0207, 0x0C06) else "ethernet"
            netdevs = [o.get("name", "") for o in osdevs if _is_netdev(o, version)]
            preferred = [n for n in netdevs if n.startswith("ib")] if kind == "infiniband" else []
            nics.append(
                Nic(
                    name=(preferred or netdevs or names or [address])[0],
                    kind=kind,
                    pci_bus_id=address,
                    numa_node=numa,
                    pcie_switch=nearest_switch(bridges),
                )
            )
    return _number_gpus(found, notes), nics


def _explicit_index(names: list[str]) -> int | None:
    """The driver's index of a GPU from its OS devices: ``nvmlN`` first, then ``cudaN``.

    >>> _explicit_index(["card0", "cuda1"])
    1
    >>> _explicit_index(["nvml2", "cuda0"])
    2
    >>> _explicit_index(["opencl0d1"]) is None
    True
    """
    for prefix in ("nvml", "cuda"):
        for name in names:
            match = re.fullmatch(prefix + r"(\d+)", name)
            if match:
                return int(match.group(1))
    return None


def _number_gpus(found: list[tuple[int | None, int, str, Gpu]], notes: list[str]) -> list[Gpu]:
    """Keep the driver's indices; number the rest NVIDIA first, in PCI bus order, after them."""
    taken = {explicit for explicit, _, _, _ in found if explicit is not None}
    rest = sorted(
        (item for item in found if item[0] is None), key=lambda i: (i[1] != VENDOR_NVIDIA, i[2])
    )
    free = (n for n in range(len(found) + len(taken) + 1) if n not in taken)
    numbered: list[Gpu] = []
    for explicit, _, _, gpu in found:
        if explicit is not None:
            numbered.append(replace(gpu, index=explicit))
    for _, _, _, gpu in rest:
        numbered.append(replace(gpu, index=next(free)))
    if rest and found:
        notes.append(
            "GPUs without an NVML/CUDA OS device in the XML are numbered NVIDIA first in PCI "
            "bus order"
        )
    return sorted(numbered, key=lambda g: g.index)
