"""The NVML join: a fake ``pynvml`` module stands in for the driver (CI has no GPU)."""

from __future__ import annotations

import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from hpcbench.topology.nvml import probe_host
from tests.sysfs_tree import PciFunction, make_sysfs, smt_cpus

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sysfs"


class FakeNvml:
    """The slice of pynvml that hpcbench calls, answering like the driver does."""

    class NVMLError(Exception):
        pass

    def __init__(self, devices: list[dict], fail_init: str | None = None) -> None:
        self.devices = devices
        self.fail_init = fail_init
        self.shutdown = False

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise self.NVMLError(self.fail_init)

    def nvmlShutdown(self) -> None:
        self.shutdown = True

    def nvmlSystemGetDriverVersion(self) -> str:
        return "580.159.04"

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict:
        return self.devices[index]

    def nvmlDeviceGetPciInfo(self, handle: dict) -> SimpleNamespace:
        return SimpleNamespace(busId=handle["bus"])

    def nvmlDeviceGetName(self, handle: dict) -> str:
        return handle.get("name", "NVIDIA H200")

    def nvmlDeviceGetUUID(self, handle: dict) -> str:
        return handle.get("uuid", "GPU-" + handle["bus"])

    def nvmlDeviceGetMemoryInfo(self, handle: dict) -> SimpleNamespace:
        return SimpleNamespace(total=143771 * 2**20)

    def nvmlDeviceGetCpuAffinity(self, handle: dict, words: int) -> list[int]:
        mask = sum(1 << c for c in handle.get("cpus", ()))
        return [(mask >> (64 * w)) & (2**64 - 1) for w in range(words)]

    def nvmlDeviceGetNumaNodeId(self, handle: dict) -> int:
        if "numa" not in handle:
            raise self.NVMLError("Not Supported")
        return handle["numa"]


def h200_root(tmp_path: Path) -> Path:
    with tarfile.open(FIXTURES / "h200-vm-4gpu.tar.gz") as tar:
        tar.extractall(tmp_path, filter="tar")
    return tmp_path / "snapshot"


def test_h200_vm_with_nvml_is_flat(tmp_path: Path) -> None:
    # What NVML answered on the VM: bus ids 00000000:00:0N.0, affinity 0-63, NUMA id unsupported.
    nvml = FakeNvml([{"bus": f"00000000:00:0{6 + i}.0", "cpus": range(64)} for i in range(4)])
    topo = probe_host(h200_root(tmp_path), nvml=nvml)
    assert nvml.shutdown
    assert [(g.index, g.pci_bus_id, g.model, g.memory_mb) for g in topo.gpus] == [
        (i, f"0000:00:0{6 + i}.0", "NVIDIA H200", 143771) for i in range(4)
    ]
    assert topo.flat and topo.source.endswith("+nvml")
    assert any("flat domain" in n for n in topo.notes)
    assert not any("PCI bus order" in n for n in topo.notes)


def test_nvml_indices_win_and_pcie_path_comes_from_sysfs(tmp_path: Path) -> None:
    s0, s1 = [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]
    usp = ("0000:00:01.0", "0000:01:00.0")
    pci = [
        PciFunction("0000:03:00.0", (*usp, "0000:02:00.0"), numa_node=0, local_cpus=s0),
        PciFunction(
            "0000:83:00.0",
            ("0000:80:01.0",),
            numa_node=None,
            local_cpus=range(16),
            domain_root="pci0000:80",
        ),
        PciFunction(
            "0000:84:00.0", ("0000:80:02.0",), numa_node=1, local_cpus=s1, domain_root="pci0000:80"
        ),
    ]
    root = make_sysfs(tmp_path, smt_cpus(2, 4), {0: s0, 1: s1}, pci=pci)
    # The driver numbers 0000:84 first and leaves 0000:83 out (e.g. a failed GPU); for
    # 0000:03 its NUMA id is unsupported but the affinity lies in node 0.
    nvml = FakeNvml(
        [
            {"bus": "00000000:84:00.0", "cpus": s1, "numa": 1, "name": "NVIDIA H100 80GB HBM3"},
            {"bus": "00000000:03:00.0", "cpus": s0},
        ]
    )
    topo = probe_host(root, nvml=nvml)
    assert [(g.index, g.pci_bus_id, g.numa_node) for g in topo.gpus] == [
        (0, "0000:84:00.0", 1),
        (1, "0000:03:00.0", 0),
    ]
    assert topo.gpu(1).pcie_switch == "0000:01:00.0"
    assert topo.gpu(0).model == "NVIDIA H100 80GB HBM3"
    assert any("0000:83:00.0" in n and "not listed by NVML" in n for n in topo.notes)


def test_no_driver_keeps_sysfs_gpus_and_says_so(tmp_path: Path) -> None:
    topo = probe_host(h200_root(tmp_path), nvml=FakeNvml([], fail_init="Driver Not Loaded"))
    assert len(topo.gpus) == 4
    assert any(
        n.startswith("no NVIDIA driver (NVML did not start: Driver Not Loaded)") for n in topo.notes
    )
    assert topo.source == f"sysfs:{tmp_path / 'snapshot'}"


@pytest.mark.gpu
def test_probe_this_gpu_host() -> None:
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        pytest.skip("no NVIDIA driver on this machine")
    topo = probe_host()
    assert topo.gpus and topo.source == "sysfs+nvml"
    assert all(g.uuid and g.pci_bus_id for g in topo.gpus)
