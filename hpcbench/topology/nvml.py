"""Probe this host: sysfs for CPUs, NUMA and PCI, NVML (nvidia-ml-py's ``pynvml``) for the GPUs.

NVML knows what sysfs cannot: the driver's GPU index (what ``nvidia-smi`` and, with
``CUDA_DEVICE_ORDER=PCI_BUS_ID``, CUDA use), the UUID, the marketing name, memory, and CPU affinity.
The two are joined by PCI bus id; the PCIe bridge chain and NUMA node come from sysfs. Without a
driver the GPUs come from sysfs alone, and the topology's notes say so.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any

from hpcbench.cpulist import format_cpulist
from hpcbench.topology.model import Gpu, Topology
from hpcbench.topology.sysfs import SYSFS_GPU_NOTE, normalize_bus_id, read_sysfs


@dataclass(frozen=True, slots=True)
class NvmlGpu:
    """What NVML reports about one GPU."""

    index: int
    pci_bus_id: str
    name: str
    uuid: str | None
    memory_mb: int | None
    cpus: tuple[int, ...]
    numa_node: int | None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _mask_words_to_cpus(words: list[int] | tuple[int, ...], bits_per_word: int) -> tuple[int, ...]:
    """CPU ids from NVML's affinity array (word 0 holds CPUs 0..63).

    >>> _mask_words_to_cpus([0b101, 1], 64)
    (0, 2, 64)
    """
    cpus = []
    for w, word in enumerate(words):
        for bit in range(bits_per_word):
            if int(word) >> bit & 1:
                cpus.append(w * bits_per_word + bit)
    return tuple(cpus)


def read_nvml(nvml: ModuleType | Any, max_cpu: int) -> tuple[list[NvmlGpu], str]:
    """GPUs from an initialised ``pynvml`` module, and the driver version."""
    bits = 64  # NVML's cpuSet is an array of unsigned long, 64 bits on Linux x86-64/aarch64.
    words = max_cpu // bits + 1
    gpus = []
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        pci = nvml.nvmlDeviceGetPciInfo(handle)
        try:
            uuid: str | None = _text(nvml.nvmlDeviceGetUUID(handle))
        except nvml.NVMLError:
            uuid = None
        try:
            memory_mb: int | None = int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // 2**20
        except nvml.NVMLError:
            memory_mb = None
        try:
            cpus = _mask_words_to_cpus(list(nvml.nvmlDeviceGetCpuAffinity(handle, words)), bits)
        except nvml.NVMLError:
            cpus = ()
        numa: int | None = None
        getter = getattr(nvml, "nvmlDeviceGetNumaNodeId", None)
        if getter is not None:
            try:
                value = int(getter(handle))
                numa = value if value >= 0 else None
            except nvml.NVMLError:
                numa = None
        gpus.append(
            NvmlGpu(
                index=index,
                pci_bus_id=normalize_bus_id(_text(pci.busId)),
                name=_text(nvml.nvmlDeviceGetName(handle)),
                uuid=uuid,
                memory_mb=memory_mb,
                cpus=cpus,
                numa_node=numa,
            )
        )
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
    except nvml.NVMLError:
        driver = "unknown"
    return gpus, driver


def merge_nvml(topology: Topology, nvml_gpus: list[NvmlGpu], driver: str) -> Topology:
    """Replace sysfs's GPUs with NVML's, joined by PCI bus id (pure; tested with fake data)."""
    by_bus = {g.pci_bus_id: g for g in topology.gpus}
    online = set(topology.cpus)
    numa_ids = {n.id for n in topology.numa_nodes}
    notes = [n for n in topology.notes if n != SYSFS_GPU_NOTE]
    notes.append(f"GPUs from NVML (driver {driver}), joined with sysfs by PCI bus id")
    gpus = []
    for found in nvml_gpus:
        pci = by_bus.get(found.pci_bus_id)
        numa = pci.numa_node if pci is not None else None
        if numa is None and found.numa_node is not None and found.numa_node in numa_ids:
            numa = found.numa_node
        cpus = pci.cpus if pci is not None and pci.cpus else ()
        if not cpus:
            cpus = tuple(c for c in found.cpus if c in online)
        if numa is None and len(numa_ids) > 1 and cpus and set(cpus) != online:
            homes = [n.id for n in topology.numa_nodes if n.cpus and set(cpus) <= set(n.cpus)]
            if len(homes) == 1:
                numa = homes[0]
                notes.append(f"GPU {found.index}: NUMA node {numa} from its NVML CPU affinity")
        if pci is None:
            notes.append(
                f"GPU {found.index} ({found.pci_bus_id}) is not in sysfs: no PCIe path known"
            )
        gpus.append(
            Gpu(
                index=found.index,
                pci_bus_id=found.pci_bus_id,
                model=found.name,
                numa_node=numa,
                cpus=cpus,
                pcie_path=pci.pcie_path if pci is not None else (),
                pcie_switch=pci.pcie_switch if pci is not None else None,
                uuid=found.uuid,
                memory_mb=found.memory_mb,
            )
        )
    listed = {g.pci_bus_id for g in nvml_gpus}
    for gpu in topology.gpus:
        if gpu.pci_bus_id not in listed:
            notes.append(f"PCI GPU {gpu.pci_bus_id} ({gpu.model}) is not listed by NVML; left out")
    if gpus and all(g.numa_node is None for g in gpus):
        cpus_text = format_cpulist(gpus[0].cpus) if gpus[0].cpus else "none"
        notes.append(
            f"no GPU reports a NUMA node (typical of a VM): one flat domain (affinity: {cpus_text})"
        )
    return Topology.build(
        source=f"{topology.source}+nvml",
        cores=topology.cores,
        numa_nodes=topology.numa_nodes,
        gpus=gpus,
        nics=topology.nics,
        hostname=topology.hostname,
        notes=notes,
    )


def probe_host(root: str | os.PathLike[str] = "/", nvml: Any = None) -> Topology:
    """This host's topology: sysfs, plus NVML when an NVIDIA driver answers.

    ``nvml`` replaces the ``pynvml`` module (tests pass a fake).
    """
    topology = read_sysfs(root)
    module = nvml
    reason = ""
    if module is None:
        try:
            import pynvml

            module = pynvml
        except ImportError as exc:
            reason = f"nvidia-ml-py is not installed ({exc})"
    if module is not None:
        try:
            module.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            reason = f"NVML did not start: {exc}"
            module = None
    if module is None:
        return _without_driver(topology, reason)
    try:
        gpus, driver = read_nvml(module, max(topology.cpus))
    finally:
        # A failing shutdown changes nothing we report.
        with contextlib.suppress(Exception):
            module.nvmlShutdown()
    return merge_nvml(topology, gpus, driver)


def _without_driver(topology: Topology, reason: str) -> Topology:
    note = (
        f"no NVIDIA driver ({reason}): GPUs from sysfs alone; indices in PCI bus order, models "
        f"as PCI ids"
        if topology.gpus
        else f"no NVIDIA driver ({reason}) and no GPU on PCI"
    )
    return replace(topology, notes=(*topology.notes, note))
